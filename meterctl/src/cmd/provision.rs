//! `meterctl provision`: the two halves of provisioning.
//!
//! `--out-dir D` asks the meter to create its identity and postmark keys and
//! writes their PKCS#10 requests as PEM for the authority, and the TPM's evidence
//! (`attestation.json`: EK certificate, attestation key, TPM2_Certify of both keys)
//! when the meter's TPM can give it; `--install` sends back the authority's answer:
//! the credential of an attested certification (`--credential`, which only this TPM
//! activates) or the certificates of an `--unattested` one, with the root (PEM or DER,
//! as they are: the daemon accepts both).

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
/// File name of the TPM evidence in `--out-dir`.
pub const ATTESTATION_FILE: &str = "attestation.json";

/// Arguments of `meterctl provision`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to write identity.csr.pem and postmark.csr.pem to (created if missing).
    #[arg(long, value_name = "DIR", required_unless_present = "install",
          conflicts_with_all = ["install", "meter_cert", "postmark_cert", "root", "credential"])]
    pub out_dir: Option<PathBuf>,

    /// Install the certificates the authority issued instead.
    #[arg(long)]
    pub install: bool,

    /// The authority's credential (credential.json of an attested certify-meter): the
    /// certificates sealed so that only this meter's TPM opens them.
    #[arg(long, value_name = "FILE", requires = "install",
          conflicts_with_all = ["meter_cert", "postmark_cert"])]
    pub credential: Option<PathBuf>,

    /// The meter (identity) certificate, PEM or DER (unattested certification).
    #[arg(
        long,
        value_name = "FILE",
        requires = "install",
        required_unless_present_any = ["out_dir", "credential"]
    )]
    pub meter_cert: Option<PathBuf>,

    /// The postmark certificate, PEM or DER (unattested certification).
    #[arg(
        long,
        value_name = "FILE",
        requires = "install",
        required_unless_present_any = ["out_dir", "credential"]
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
    match (
        &args.out_dir,
        &args.credential,
        &args.meter_cert,
        &args.postmark_cert,
        &args.root,
    ) {
        (Some(dir), _, _, _, _) => request(ctx, dir).await,
        (None, Some(c), _, _, Some(r)) => install(ctx, Install::Credential(c), r).await,
        (None, None, Some(m), Some(p), Some(r)) => install(ctx, Install::Certs(m, p), r).await,
        _ => Err(CtlError::Usage(
            "provision needs --out-dir DIR, or --install with --root and either --credential \
             or --meter-cert and --postmark-cert"
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
    let attestation_path = match d.bytes(key::ATTESTATION) {
        Some(ev) => {
            let path = dir.join(ATTESTATION_FILE);
            write_output(&path, &ev)?;
            Some(path)
        }
        None => {
            // A stale one from an earlier run must not travel with these requests.
            let _ = std::fs::remove_file(dir.join(ATTESTATION_FILE));
            None
        }
    };

    let human = match &attestation_path {
        Some(a) => format!(
            "meter id: {meter_id}\nwrote {}\nwrote {}\nwrote {} (TPM evidence)\nnext: have the authority certify the meter (certify-meter --attestation), then run\n  meterctl provision --install --credential CREDENTIAL --root ROOT\n",
            identity_path.display(),
            postmark_path.display(),
            a.display()
        ),
        None => format!(
            "meter id: {meter_id}\nwrote {}\nwrote {}\nno TPM evidence: this meter's keys are not attested (the authority must agree to --unattested)\nnext: have the authority issue both certificates, then run\n  meterctl provision --install --meter-cert M --postmark-cert P --root ROOT\n",
            identity_path.display(),
            postmark_path.display()
        ),
    };
    let json = json!({
        "meter_id": meter_id,
        "identity_csr": identity_path,
        "postmark_csr": postmark_path,
        "attestation": attestation_path,
    });
    Ok(Output::new(human, json))
}

/// What the authority answered.
enum Install<'a> {
    /// An attested certification's credential.
    Credential(&'a Path),
    /// An unattested certification's two certificates.
    Certs(&'a Path, &'a Path),
}

async fn install(ctx: &Ctx, what: Install<'_>, root: &Path) -> Result<Output, CtlError> {
    let r = read_input(root, MAX_OBJECT)?;
    let meter = ctx.meter().await?;
    match what {
        Install::Credential(c) => {
            let c = read_input(c, MAX_OBJECT)?;
            meter.install_credential(&c, &r).await?;
        }
        Install::Certs(m, p) => {
            let m = read_input(m, MAX_OBJECT)?;
            let p = read_input(p, MAX_OBJECT)?;
            meter.install_provisioning(&m, &p, &r).await?;
        }
    }
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
