//! Sign: a detached CMS signature made with an installed user certificate's
//! TPM key, for authentication, integrity and non-repudiation.
//!
//! The message arrives as a file descriptor and is streamed through SHA-384,
//! so the signature is built from the digest (`cms::prepare_detached_digest`):
//! eContentType id-data, signed attributes contentType, messageDigest,
//! signingTime and signingCertificateV2, the user certificate embedded. Any
//! relying party checks it with `openssl cms -verify -binary -content MSG
//! -CAfile root.pem`. Charged as service `sign`, idempotent by request id.

use meter_pki::cms::{self, SignOptions};
use meter_pki::oid;

use crate::certs::CertState;
use tokio_util::sync::CancellationToken;

use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::intake::{hash_message, ReadLimits};
use crate::meter::Meter;
use crate::service::Service;
use crate::{clock, sale};

/// `Sign`: detached CMS SignedData over the message with certificate `serial`.
///
/// Refused before anything is charged when the serial is unknown (or only
/// pending), the certificate expired (`Stale`) or was revoked.
pub async fn sign_file(
    meter: &Meter,
    serial: &str,
    fd: std::os::fd::OwnedFd,
    request_id: &str,
    cancel: &CancellationToken,
) -> Result<Vec<u8>> {
    let entry = meter.certs().find(serial).ok_or_else(|| {
        ServiceError::InvalidInput(format!(
            "no user certificate with serial {serial:?} is installed; meterctl certs lists them"
        ))
    })?;
    let now = clock::now();
    match entry.state(now) {
        CertState::Active => {}
        CertState::Expired => {
            return Err(ServiceError::Stale(format!(
                "certificate {} expired at {} (unix s); request and install a new one",
                entry.serial(),
                entry.not_after()
            )))
        }
        CertState::Revoked => {
            return Err(ServiceError::InvalidInput(format!(
                "certificate {} is revoked",
                entry.serial()
            )))
        }
        CertState::Pending => {
            return Err(ServiceError::InvalidInput(
                "the certificate is not installed yet".into(),
            ))
        }
    }
    let serial_norm = entry.serial();
    let limits = ReadLimits::from_config(meter.config());
    sale::sell(
        meter,
        Service::Sign,
        Some(request_id),
        async move {
            let imprint = hash_message(fd, &limits, cancel).await?;
            Ok((
                input_digest("sign", &[serial_norm.as_bytes(), &imprint]),
                imprint,
            ))
        },
        |imprint, _identity| async move {
            let cert = entry
                .cert
                .as_ref()
                .ok_or_else(|| ServiceError::InvalidInput("certificate not installed".into()))?;
            let prepared = cms::prepare_detached_digest(
                &SignOptions {
                    content_type: oid::ID_DATA,
                    content: &[],
                    signer: cert,
                    extra_certs: &[],
                    signing_time: Some(clock::now()),
                    ess_cert_id_v2: true,
                },
                imprint,
            )?;
            // The key was matched to this certificate at install.
            let raw = meter
                .housing()
                .sign_digest(&entry.key, prepared.digest())
                .await?;
            Ok(prepared.finish(&raw)?)
        },
    )
    .await
}
