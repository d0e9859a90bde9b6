//! `meterctl rates install FILE`: sends an authority-signed rate table.
//!
//! The meter checks the signature and refuses a table older than the one in
//! force; meterctl only reads the file (bounded) and reports the new version.

use std::path::PathBuf;

use serde_json::json;

use super::{read_input, Ctx, MAX_OBJECT};
use crate::error::CtlError;
use crate::output::Output;

/// Subcommands of `meterctl rates`.
#[derive(Debug, clap::Subcommand)]
pub enum RatesCommand {
    /// Install a signed rate table (CMS SignedData, PEM or DER).
    Install {
        /// The signed rate table.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Runs `meterctl rates ...`.
pub async fn run(ctx: &Ctx, args: RatesCommand) -> Result<Output, CtlError> {
    match args {
        RatesCommand::Install { file } => {
            let table = read_input(&file, MAX_OBJECT)?;
            let meter = ctx.meter().await?;
            meter.install_rates(&table).await?;
            // Informational only: the install already succeeded.
            let version = meter.rates_version().await.ok();
            let human = match version {
                Some(v) => format!("rate table installed; version {v} in force\n"),
                None => "rate table installed\n".to_string(),
            };
            Ok(Output::new(
                human,
                json!({"installed": true, "rates_version": version}),
            ))
        }
    }
}
