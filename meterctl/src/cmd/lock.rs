//! `meterctl lock apply ORDER`: applies an authority lock order.
//!
//! The authority locks a meter (reason `forced`) with a signed order naming
//! the meter and a fresh nonce (`meter-authority lock`); the meter applies
//! each order once. Only an authority clear-lock order unlocks it again.

use std::path::PathBuf;

use serde_json::json;

use super::{read_input, Ctx, MAX_OBJECT};
use crate::error::CtlError;
use crate::output::Output;

/// Subcommands of `meterctl lock`.
#[derive(Debug, clap::Subcommand)]
pub enum LockCommand {
    /// Apply an authority lock order (CMS SignedData, PEM or DER).
    Apply {
        /// The signed lock order.
        #[arg(value_name = "ORDER")]
        order: PathBuf,
    },
}

/// Runs `meterctl lock ...`.
pub async fn run(ctx: &Ctx, args: LockCommand) -> Result<Output, CtlError> {
    match args {
        LockCommand::Apply { order } => {
            let bytes = read_input(&order, MAX_OBJECT)?;
            let meter = ctx.meter().await?;
            meter.apply_lock_order(&bytes).await?;
            let reason = meter.lock_reason().await.unwrap_or_default();
            Ok(Output::new(
                format!("lock order applied; the meter is locked ({reason})\n"),
                json!({"locked": true, "lock_reason": reason}),
            ))
        }
    }
}
