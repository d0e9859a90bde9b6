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

use crate::certs::CertStore;
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::ledger::{Digest, Key};
use crate::meter::Meter;
use crate::sale::{self, Made, Sale, Spec};
use crate::service::Service;

/// `Sign`: detached CMS SignedData over the message whose SHA-384 is
/// `imprint`, with certificate `serial`.
///
/// Refused before any TPM work, nothing charged, when the serial is unknown,
/// the certificate expired (`Stale`) or was revoked.
pub async fn sign(
    meter: &Meter,
    certs: &CertStore,
    serial: &str,
    imprint: Digest,
    key: Key,
) -> Result<Vec<u8>> {
    let entry = certs.installed(serial)?;
    if entry.encrypt {
        return Err(ServiceError::InvalidInput(format!(
            "certificate {} is an encryption (key agreement) certificate; it cannot sign",
            entry.serial()
        )));
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
    // The state is checked after the key lookup (inside the work, before
    // any TPM work), so that a retry of a signature made before the
    // certificate expired or was revoked still gets its stored signature.
    let sold = sale::sell(meter, spec, async |sale: &Sale| {
        entry.check_active(sale.now())?;
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
