//! `meterctl verify-indicium`: checks an indicium offline (no meter, no
//! bus) with the meter's certificate, and prints its fields.
//!
//! The input is the indicium bytes as written by `meterctl postage -o` or
//! read back from the printed symbol (`dmtxread -o FILE`). A malformed or
//! forged indicium is a negative result (exit `NOT_VALID`), not a crash.

use std::path::PathBuf;

use meter_pki::{cert, indicium};
use serde_json::json;

use super::{read_input, Ctx};
use crate::error::CtlError;
use crate::output::Output;
use crate::render;

/// Largest indicium file read (an indicium is far smaller).
const MAX_FILE: u64 = 4096;
/// Largest certificate file read.
const MAX_CERT: u64 = 64 * 1024;

/// Arguments of `meterctl verify-indicium`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The indicium bytes.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// The meter's certificate (PEM or DER), e.g. the `meter.pem` the authority issued.
    #[arg(long, value_name = "PEM")]
    pub cert: PathBuf,

    /// Also check that the meter certificate chains to this authority root
    /// (PEM, may hold several roots) and was valid at the indicium's date.
    #[arg(long, value_name = "PEM")]
    pub root: Option<PathBuf>,
}

/// Runs `meterctl verify-indicium`.
pub async fn run(_ctx: &Ctx, args: Args) -> Result<Output, CtlError> {
    let bytes = read_input(&args.file, MAX_FILE)?;
    let pem = read_input(&args.cert, MAX_CERT)?;
    let meter_cert = cert::parse(&pem)
        .map_err(|e| CtlError::Usage(format!("{}: not a certificate: {e}", args.cert.display())))?;
    let roots =
        match &args.root {
            Some(path) => Some(cert::parse_all(&read_input(path, MAX_CERT)?).map_err(|e| {
                CtlError::Usage(format!("{}: not a certificate: {e}", path.display()))
            })?),
            None => None,
        };
    let checked = indicium::verify(&bytes, &meter_cert).and_then(|ind| {
        if let Some(roots) = &roots {
            cert::verify_chain(&meter_cert, &[], roots, i64::from(ind.body.date))?;
        }
        Ok(ind)
    });
    match checked {
        Ok(ind) => {
            let mut human =
                String::from("indicium valid: signature verifies with the meter certificate\n");
            human.push_str(&render::human_lines(&ind.body).join("\n"));
            human.push('\n');
            let mut j = render::indicium_json(&ind.body);
            j["valid"] = json!(true);
            j["step"] = json!("ok");
            j["chain_checked"] = json!(roots.is_some());
            Ok(Output::new(human, j))
        }
        Err(e) => {
            let step = match e {
                meter_pki::PkiError::BadSignature(_) => "signature",
                meter_pki::PkiError::WrongType(_) => "meter",
                meter_pki::PkiError::Untrusted(_) | meter_pki::PkiError::Expired(_) => {
                    "certificate"
                }
                _ => "format",
            };
            let mut out = Output::new(
                format!("indicium NOT valid ({step}): {e}\n"),
                json!({"valid": false, "step": step, "reason": e.to_string()}),
            );
            out.code = meter_proto::exit::NOT_VALID;
            Ok(out)
        }
    }
}
