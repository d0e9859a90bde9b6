//! `meterctl postal-key request|import`: the postal secret key (claim 21).
//!
//! `request` writes the meter's request (signed by its identity key, naming its TPM storage
//! parent) for `meter-authority postal-key`; `import` hands the authority's delivery to the
//! meter, which imports the wrapped key into its TPM. From then on every postage indicium
//! carries a MAC the post checks with the shared key (docs/INDICIUM.md).

use std::path::PathBuf;

use serde_json::json;

use super::{read_input, Ctx, Sink, MAX_OBJECT};
use crate::error::CtlError;
use crate::output::Output;

/// Subcommands of `meterctl postal-key`.
#[derive(Debug, clap::Subcommand)]
pub enum PostalKeyCommand {
    /// Write the postal-key request (names the TPM storage parent) for the authority.
    Request {
        /// Where to write the request (PEM, label CMS).
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: PathBuf,
    },
    /// Import the authority's postal-key delivery into the TPM.
    Import {
        /// The delivery (CMS SignedData, PEM or DER).
        #[arg(value_name = "FILE")]
        delivery: PathBuf,
    },
}

/// Runs `meterctl postal-key ...`.
pub async fn run(ctx: &Ctx, args: PostalKeyCommand) -> Result<Output, CtlError> {
    match args {
        PostalKeyCommand::Request { out } => {
            let sink = Sink::open(&out)?;
            let meter = ctx.meter().await?;
            let request = meter.postal_key_request().await?;
            let pem = pem_rfc7468::encode_string("CMS", pem_rfc7468::LineEnding::LF, &request)
                .map_err(|e| CtlError::Reply(format!("cannot PEM-encode the reply: {e}")))?;
            sink.commit(pem.as_bytes())?;
            Ok(Output::new(
                format!(
                    "postal-key request written to {}; have the authority answer it \
                     (meter-authority postal-key {} --out delivery.pem)\n",
                    out.display(),
                    out.display()
                ),
                json!({"request": out.display().to_string()}),
            ))
        }
        PostalKeyCommand::Import { delivery } => {
            let bytes = read_input(&delivery, MAX_OBJECT)?;
            let meter = ctx.meter().await?;
            let id = meter.import_postal_key(&bytes).await?;
            Ok(Output::new(
                format!("postal key {id} imported into the TPM\n"),
                json!({"imported": true, "delivery_id": id}),
            ))
        }
    }
}
