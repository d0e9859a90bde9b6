//! `meterctl clear-lock ORDER`: applies an authority-signed clear-lock order.
//!
//! Only the authority can unlock a meter; the order names the meter and the
//! lock's nonce (see `meterctl status`), so it clears that one lock only.

use std::path::PathBuf;

use serde_json::json;

use super::{read_input, Ctx, MAX_OBJECT};
use crate::error::CtlError;
use crate::output::Output;

/// Arguments of `meterctl clear-lock`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The authority's clear-lock order (CMS SignedData, PEM or DER).
    #[arg(value_name = "ORDER")]
    pub order: PathBuf,
}

/// Runs `meterctl clear-lock`.
pub async fn run(ctx: &Ctx, args: Args) -> Result<Output, CtlError> {
    let order = read_input(&args.order, MAX_OBJECT)?;
    let meter = ctx.meter().await?;
    meter.clear_lock(&order).await?;
    let state = meter.state().await.unwrap_or_default();
    let human = format!(
        "lock cleared; state: {}\n",
        if state.is_empty() { "?" } else { &state }
    );
    Ok(Output::new(human, json!({"cleared": true, "state": state})))
}
