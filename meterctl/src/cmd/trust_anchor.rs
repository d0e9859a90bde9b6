//! `meterctl trust-anchor update MSG`: applies an authority trust-anchor update.
//!
//! The authority rolls its root over with `meter-authority rollover`; the
//! message it writes is signed by a root the meter trusts now, so the meter
//! accepts the new root only from the authority it already knows.

use std::path::PathBuf;

use serde_json::json;

use super::{read_input, Ctx, MAX_OBJECT};
use crate::error::CtlError;
use crate::output::Output;

/// Subcommands of `meterctl trust-anchor`.
#[derive(Debug, clap::Subcommand)]
pub enum TrustAnchorCommand {
    /// Apply a trust-anchor update (CMS SignedData, PEM or DER) from `meter-authority rollover`.
    Update {
        /// The signed trust-anchor update.
        #[arg(value_name = "MSG")]
        message: PathBuf,
    },
}

/// Runs `meterctl trust-anchor ...`.
pub async fn run(ctx: &Ctx, args: TrustAnchorCommand) -> Result<Output, CtlError> {
    match args {
        TrustAnchorCommand::Update { message } => {
            let msg = read_input(&message, MAX_OBJECT)?;
            let meter = ctx.meter().await?;
            let anchors = meter.update_trust_anchor(&msg).await?;
            Ok(Output::new(
                format!("trust anchors updated; the meter now trusts {anchors} roots\n"),
                json!({"updated": true, "anchors": anchors}),
            ))
        }
    }
}
