//! Sign: a detached CMS signature made with an installed user certificate's
//! TPM key, for authentication, integrity and non-repudiation.
//!
//! The message arrives as a file descriptor and is hashed by the door, so
//! the signature is built from the digest (`cms::prepare_detached_digest`):
//! eContentType id-data, signed attributes contentType, messageDigest,
//! signingTime and signingCertificateV2, the user certificate embedded. Any
//! relying party checks it with `openssl cms -verify -binary -content MSG
//! -CAfile root.pem`. Charged as service `sign`, idempotent by request id.

use meter_pki::cms::{self, SignOptions};
use meter_pki::oid;

use crate::certs::{CertState, CertStore};
use crate::clock;
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::ledger::{Digest, Key};
use crate::meter::Meter;
use crate::sale::{self, Made, Sale, Spec};
use crate::service::Service;

/// `Sign`: detached CMS SignedData over the message whose SHA-384 is
/// `imprint`, with certificate `serial`.
///
/// Refused before anything is charged when the serial is unknown (or only
/// pending), the certificate expired (`Stale`) or was revoked.
pub async fn sign(
    meter: &Meter,
    certs: &CertStore,
    serial: &str,
    imprint: Digest,
    key: Key,
) -> Result<Vec<u8>> {
    let entry = certs.find(serial).ok_or_else(|| {
        ServiceError::InvalidInput(format!(
            "no user certificate with serial {serial:?} is installed; meterctl certs lists them"
        ))
    })?;
    match entry.state(clock::now()) {
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
    let cert = entry
        .cert
        .clone()
        .ok_or_else(|| ServiceError::InvalidInput("certificate not installed".into()))?;
    let spec = Spec::sale(
        Service::Sign,
        Some(key),
        input_digest("sign", &[entry.serial().as_bytes(), &imprint]),
    );
    let sold = sale::sell(meter, spec, async |sale: &Sale| {
        let prepared = cms::prepare_detached_digest(
            &SignOptions {
                content_type: oid::ID_DATA,
                content: &[],
                signer: &cert,
                extra_certs: &[],
                signing_time: Some(sale.now()),
                ess_cert_id_v2: true,
            },
            imprint,
        )?;
        // The key was matched to this certificate at install.
        let raw = meter
            .housing()
            .sign_digest(&entry.key, prepared.digest())
            .await?;
        Ok(Made::Product(prepared.finish(&raw)?))
    })
    .await?;
    Ok(sold.product)
}
