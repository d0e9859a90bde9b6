//! `meterctl cert request|install`: user certificates (Fig. 5), admin side.
//!
//! `request` makes a key in the meter's TPM (the funds for an install are
//! checked, nothing is charged yet) and writes the request the authority
//! certifies (`meter-authority certify REQUEST --out cert.pem`); `install`
//! installs the certificate the authority returned, which activates the key
//! and charges `certificate-install`. `revoke` and `apply-revoke` are the
//! revocation of Fig. 6 (see `revoke.rs`).

use std::collections::HashMap;
use std::path::PathBuf;

use meter_proto::keys::subject as key;
use serde_json::json;
use zbus::zvariant::Value;

use super::postmark::random_request_id;
use super::{read_input, Ctx, Sink, MAX_OBJECT};
use crate::error::CtlError;
use crate::output::Output;

/// `meterctl cert ...`.
#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Make a user key in the TPM and write its certificate request for the authority.
    Request {
        /// Subject of the certificate, `CN=<name>`.
        #[arg(long, value_name = "CN=NAME")]
        subject: String,
        /// The enrolment code the authority gave for that subject.
        #[arg(long, value_name = "CODE")]
        code: String,
        /// What the key is for: `sign` (Sign) or `encrypt` (a key-agreement key for
        /// Decrypt, certified with key usage keyAgreement).
        #[arg(long, value_name = "PURPOSE", default_value = "sign", value_parser = ["sign", "encrypt"])]
        purpose: String,
        /// Where to write the request (DER CMS); default cert-request.der.
        #[arg(
            short = 'o',
            long,
            value_name = "FILE",
            default_value = "cert-request.der"
        )]
        out: PathBuf,
        /// Idempotency key: reuse it to get the same request back (default: random).
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
    },
    /// Install the certificate the authority issued for a pending key (charged).
    Install {
        /// The certificate (PEM or DER).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Write a signed request to the authority to revoke a certificate (not charged).
    Revoke(super::revoke::RevokeArgs),
    /// Apply the authority's revoke order: destroys the key, charges `revoke`
    /// (or records it due when funds are short) and writes the confirmation.
    ApplyRevoke(super::revoke::ApplyArgs),
}

/// `CN=Alice` or `Alice` → `Alice`.
pub fn subject_cn(subject: &str) -> Result<String, CtlError> {
    let cn = subject.strip_prefix("CN=").unwrap_or(subject);
    if cn.is_empty() || cn.contains(',') {
        return Err(CtlError::Usage(format!(
            "--subject {subject:?}: give CN=<name> (one common name)"
        )));
    }
    Ok(cn.to_owned())
}

/// Runs `meterctl cert`.
pub async fn run(ctx: &Ctx, cmd: CertCommand) -> Result<Output, CtlError> {
    match cmd {
        CertCommand::Request {
            subject,
            code,
            purpose,
            out,
            request_id,
        } => {
            let cn = subject_cn(&subject)?;
            let request_id = match request_id {
                Some(id) => id,
                None => random_request_id()?,
            };
            let sink = Sink::open(&out)?;
            let meter = ctx.meter().await?;
            let mut dict: HashMap<&str, Value<'_>> = HashMap::new();
            dict.insert(key::CN, Value::from(cn.as_str()));
            dict.insert(key::ENROLMENT_CODE, Value::from(code.as_str()));
            if purpose != "sign" {
                dict.insert(key::PURPOSE, Value::from(purpose.as_str()));
            }
            let request = meter.request_certificate(dict, &request_id).await?;
            if request.is_empty() {
                return Err(CtlError::Reply(
                    "RequestCertificate returned nothing".into(),
                ));
            }
            sink.commit(&request)?;
            let human = format!(
                "certificate request for CN={cn} written to {} ({} bytes); request id {request_id}\n\
                 next: meter-authority certify {} --out cert.pem, then meterctl cert install cert.pem\n",
                out.display(),
                request.len(),
                out.display()
            );
            Ok(Output::new(
                human,
                json!({"subject": cn, "request_file": out, "request_id": request_id, "bytes": request.len()}),
            ))
        }
        CertCommand::Revoke(args) => super::revoke::request(ctx, args).await,
        CertCommand::ApplyRevoke(args) => super::revoke::apply(ctx, args).await,
        CertCommand::Install { file } => {
            let cert = read_input(&file, MAX_OBJECT)?;
            let meter = ctx.meter().await?;
            let serial = super::certs::shown_serial(&meter.install_certificate(&cert).await?);
            Ok(Output::new(
                format!("certificate installed; serial {serial}\n"),
                json!({"serial": serial}),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_takes_one_cn() {
        assert_eq!(subject_cn("CN=Alice").unwrap(), "Alice");
        assert_eq!(subject_cn("Alice").unwrap(), "Alice");
        assert!(subject_cn("CN=").is_err());
        assert!(subject_cn("CN=A,O=B").is_err());
    }
}
