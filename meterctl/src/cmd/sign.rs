//! `meterctl sign --cert SERIAL FILE`: a detached CMS signature over a file
//! with an installed user certificate (charged as `sign`).
//!
//! The signature verifies with `openssl cms -verify -binary -content FILE
//! -inform DER -in FILE.p7s -CAfile root.pem`.

use std::path::{Path, PathBuf};

use serde_json::json;
use zbus::zvariant::Fd;

use super::postmark::random_request_id;
use super::{open_message, Ctx, Sink};
use crate::error::CtlError;
use crate::output::Output;

/// Arguments of `meterctl sign`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Serial (hex) of the user certificate to sign with (see `meterctl certs`).
    #[arg(long = "cert", value_name = "SERIAL")]
    pub serial: String,
    /// The file to sign.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Where to write the signature (DER CMS); default FILE.p7s.
    #[arg(short = 'o', long = "out", value_name = "SIG")]
    pub out: Option<PathBuf>,
    /// Idempotency key: reuse it to retry without a second charge (default: random).
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
}

/// `doc.pdf` → `doc.pdf.p7s`.
pub fn default_sig_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".p7s");
    PathBuf::from(name)
}

/// Runs `meterctl sign`.
pub async fn run(ctx: &Ctx, args: Args) -> Result<Output, CtlError> {
    let out = args.out.unwrap_or_else(|| default_sig_path(&args.file));
    let message = open_message(&args.file)?;
    let sink = Sink::open(&out)?;
    let request_id = match args.request_id {
        Some(id) => id,
        None => {
            let id = random_request_id()?;
            eprintln!("request id: {id} (retry with --request-id {id} to avoid a second charge)");
            id
        }
    };
    let meter = ctx.meter().await?;
    let sig = meter
        .sign(&args.serial, Fd::from(&message), &request_id)
        .await?;
    if sig.is_empty() {
        return Err(CtlError::Reply("Sign returned an empty signature".into()));
    }
    sink.commit(&sig)?;
    Ok(Output::new(
        format!(
            "signature written to {} ({} bytes); request id {request_id}\n",
            out.display(),
            sig.len()
        ),
        json!({"signature_file": out, "bytes": sig.len(), "request_id": request_id, "serial": super::certs::shown_serial(&args.serial)}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sig_path_appends_p7s() {
        assert_eq!(
            default_sig_path(Path::new("a/d.txt")),
            PathBuf::from("a/d.txt.p7s")
        );
    }
}
