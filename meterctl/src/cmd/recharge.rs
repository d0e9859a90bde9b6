//! `meterctl recharge FILE`: credits an authority voucher.
//!
//! A voucher is single use and bound to one meter; the meter refuses a
//! replay or a foreign voucher. Prints the new descending register.

use std::path::PathBuf;

use serde_json::json;

use super::{read_input, Ctx, MAX_OBJECT};
use crate::error::CtlError;
use crate::output::{format_amount, Output};

/// Arguments of `meterctl recharge`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The authority's voucher (CMS SignedData, PEM or DER).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// Runs `meterctl recharge`.
pub async fn run(ctx: &Ctx, args: Args) -> Result<Output, CtlError> {
    let voucher = read_input(&args.file, MAX_OBJECT)?;
    let meter = ctx.meter().await?;
    let descending = meter.recharge(&voucher).await?;
    // The digits only shape the display; fall back to raw units if unreadable.
    let human = match meter.currency_digits().await {
        Ok(digits) => format!(
            "recharged; descending register: {} ({descending} minor units)\n",
            format_amount(descending, digits, "")
        ),
        Err(_) => format!("recharged; descending register: {descending} minor units\n"),
    };
    Ok(Output::new(human, json!({"descending": descending})))
}
