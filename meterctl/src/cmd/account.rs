//! `meterctl account apply ORDER`: puts the meter in current-account mode.
//!
//! The authority sets a credit limit per billing period and the period's
//! length with a signed order (`meter-authority account`); the meter applies
//! each order once, refuses older ones, and from then on bills by report:
//! no vouchers, AR = CT, and a period that ends without an acknowledged
//! report locks the meter (`period-closed`).

use std::path::PathBuf;

use meter_proto::keys::status as key;
use serde_json::json;

use super::{read_input, Ctx, MAX_OBJECT};
use crate::error::CtlError;
use crate::output::{format_unix_time, Dict, Output};

/// Subcommands of `meterctl account`.
#[derive(Debug, clap::Subcommand)]
pub enum AccountCommand {
    /// Apply an authority current-account order (CMS SignedData, PEM or DER).
    Apply {
        /// The signed account order.
        #[arg(value_name = "ORDER")]
        order: PathBuf,
    },
    /// Apply an authority funds order (`meter-authority funds-split`): postage
    /// funds kept apart from services funds from then on, for good.
    Split {
        /// The signed funds order.
        #[arg(value_name = "ORDER")]
        order: PathBuf,
    },
}

/// Runs `meterctl account ...`.
pub async fn run(ctx: &Ctx, args: AccountCommand) -> Result<Output, CtlError> {
    match args {
        AccountCommand::Apply { order } => {
            let bytes = read_input(&order, MAX_OBJECT)?;
            let meter = ctx.meter().await?;
            let period_end = meter.set_account_mode(&bytes).await?;
            let status = meter.status().await?;
            let d = Dict(&status);
            let limit = d.u64(key::CREDIT_LIMIT).unwrap_or(0);
            let used = d.u64(key::PERIOD_USED).unwrap_or(0);
            Ok(Output::new(
                format!(
                    "current-account mode: credit limit {limit} per period, {used} used, period ends {}\n",
                    format_unix_time(period_end)
                ),
                json!({
                    "account_mode": true,
                    "credit_limit": limit,
                    "period_used": used,
                    "period_end": period_end,
                }),
            ))
        }
        AccountCommand::Split { order } => {
            let bytes = read_input(&order, MAX_OBJECT)?;
            let meter = ctx.meter().await?;
            meter.set_account_mode(&bytes).await?;
            let status = meter.status().await?;
            let d = Dict(&status);
            let mode = d.str(key::FUNDS_MODE).unwrap_or_else(|| "combined".into());
            Ok(Output::new(
                format!("funds: {mode}\n"),
                json!({ "funds_mode": mode }),
            ))
        }
    }
}
