//! `meterctl provision`: the two halves of provisioning.
//!
//! `--out-dir D` asks the meter to create its identity and postmark keys and
//! writes their PKCS#10 requests as PEM for the authority; `--install` sends
//! back the authority's certificates and root (PEM or DER, as they are: the
//! daemon accepts both).

use std::path::{Path, PathBuf};

use meter_proto::keys::provision as key;
use serde_json::json;

use super::{read_input, write_output, Ctx, MAX_OBJECT};
use crate::error::CtlError;
use crate::output::{Dict, Output};

/// File name of the identity (communications) key's request in `--out-dir`.
pub const IDENTITY_CSR_FILE: &str = "identity.csr.pem";
/// File name of the postmark key's request in `--out-dir`.
pub const POSTMARK_CSR_FILE: &str = "postmark.csr.pem";

/// Arguments of `meterctl provision`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to write identity.csr.pem and postmark.csr.pem to (created if missing).
    #[arg(long, value_name = "DIR", required_unless_present = "install",
          conflicts_with_all = ["install", "meter_cert", "postmark_cert", "root"])]
    pub out_dir: Option<PathBuf>,

    /// Install the certificates the authority issued instead.
    #[arg(long)]
    pub install: bool,

    /// The meter (identity) certificate, PEM or DER.
    #[arg(
        long,
        value_name = "FILE",
        requires = "install",
        required_if_eq("install", "true")
    )]
    pub meter_cert: Option<PathBuf>,

    /// The postmark certificate, PEM or DER.
    #[arg(
        long,
        value_name = "FILE",
        requires = "install",
        required_if_eq("install", "true")
    )]
    pub postmark_cert: Option<PathBuf>,

    /// The authority's root certificate (becomes the trust anchor), PEM or DER.
    #[arg(
        long,
        value_name = "FILE",
        requires = "install",
        required_if_eq("install", "true")
    )]
    pub root: Option<PathBuf>,
}

/// Runs `meterctl provision`.
pub async fn run(ctx: &Ctx, args: Args) -> Result<Output, CtlError> {
    match (&args.out_dir, &args.meter_cert, &args.postmark_cert, &args.root) {
        (Some(dir), _, _, _) => request(ctx, dir).await,
        (None, Some(m), Some(p), Some(r)) => install(ctx, m, p, r).await,
        _ => Err(CtlError::Usage(
            "provision needs --out-dir DIR, or --install with --meter-cert, --postmark-cert and --root"
                .into(),
        )),
    }
}

async fn request(ctx: &Ctx, dir: &Path) -> Result<Output, CtlError> {
    let meter = ctx.meter().await?;
    let reply = meter.provision().await?;
    let d = Dict(&reply);
    let missing = |k: &str| CtlError::Reply(format!("Provision reply lacks `{k}`"));
    let meter_id = d.str(key::METER_ID).ok_or_else(|| missing(key::METER_ID))?;
    let identity = d
        .bytes(key::IDENTITY_CSR)
        .ok_or_else(|| missing(key::IDENTITY_CSR))?;
    let postmark = d
        .bytes(key::POSTMARK_CSR)
        .ok_or_else(|| missing(key::POSTMARK_CSR))?;

    std::fs::create_dir_all(dir).map_err(|source| CtlError::File {
        path: dir.to_path_buf(),
        source,
    })?;
    let identity_path = dir.join(IDENTITY_CSR_FILE);
    let postmark_path = dir.join(POSTMARK_CSR_FILE);
    write_output(&identity_path, csr_pem(&identity)?.as_bytes())?;
    write_output(&postmark_path, csr_pem(&postmark)?.as_bytes())?;

    let human = format!(
        "meter id: {meter_id}\nwrote {}\nwrote {}\nnext: have the authority issue both certificates, then run\n  meterctl provision --install --meter-cert M --postmark-cert P --root ROOT\n",
        identity_path.display(),
        postmark_path.display()
    );
    let json = json!({
        "meter_id": meter_id,
        "identity_csr": identity_path,
        "postmark_csr": postmark_path,
    });
    Ok(Output::new(human, json))
}

async fn install(
    ctx: &Ctx,
    meter_cert: &Path,
    postmark_cert: &Path,
    root: &Path,
) -> Result<Output, CtlError> {
    let m = read_input(meter_cert, MAX_OBJECT)?;
    let p = read_input(postmark_cert, MAX_OBJECT)?;
    let r = read_input(root, MAX_OBJECT)?;
    let meter = ctx.meter().await?;
    meter.install_provisioning(&m, &p, &r).await?;
    let meter_id = meter.meter_id().await.unwrap_or_default();
    let human = if meter_id.is_empty() {
        "provisioning installed\n".to_string()
    } else {
        format!("provisioning installed; meter id: {meter_id}\n")
    };
    Ok(Output::new(
        human,
        json!({"installed": true, "meter_id": meter_id}),
    ))
}

/// DER PKCS#10 request → PEM text (`CERTIFICATE REQUEST`, 64-column lines).
pub fn csr_pem(der: &[u8]) -> Result<String, CtlError> {
    pem_rfc7468::encode_string("CERTIFICATE REQUEST", pem_rfc7468::LineEnding::LF, der)
        .map_err(|e| CtlError::Reply(format!("cannot PEM-encode the request: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_pem_round_trips() {
        let der: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        let pem = csr_pem(&der).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"));
        assert!(pem.ends_with("-----END CERTIFICATE REQUEST-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        let (label, back) = pem_rfc7468::decode_vec(pem.as_bytes()).unwrap();
        assert_eq!(label, "CERTIFICATE REQUEST");
        assert_eq!(back, der);
    }
}
