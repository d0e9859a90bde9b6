//! Decrypt: message confidentiality with a user encryption certificate (issue 17).
//!
//! A correspondent encrypts to the user's certificate with any CMS tool
//! (`openssl cms -encrypt -aes256 -recip cert.pem`); the meter opens the
//! envelope with the key-agreement key that was born in its TPM and never
//! leaves it: the TPM computes only the ECDH shared point (`TPM2_ECDH_ZGen`),
//! the KDF, key unwrap and AES-CBC run here (`meter_pki::unseal`).
//!
//! Order of checks, so that nothing is charged for what cannot be opened: the
//! certificate must be an installed encryption certificate, the envelope must
//! parse and name it (else `NotDecryptable`), then the sale pipeline reserves
//! the `decrypt` rate (refused before any TPM work when funds are short);
//! inside the sale the TPM does the ECDH and the envelope is opened; a key
//! unwrap or padding failure is `NotDecryptable` and the reservation is
//! dropped: nothing charged, registers untouched.
//!
//! Confidentiality of the ledger: rows are exported to the authority in
//! reports, so the row keeps neither the plaintext nor the content key. Its
//! product is a JSON [`Record`]: the SHA-384 of the envelope and of the
//! plaintext, and the plaintext's length. A retry with the same request id
//! (and the same envelope: the input digest binds it) is not charged again:
//! the envelope is opened once more in the TPM and the plaintext must hash
//! to the stored digest before it is written. The plaintext goes to the
//! caller's output descriptor after the row is committed; if that write
//! fails, the caller retries with the same request id.

use std::sync::Mutex;

use meter_pki::unseal::{self, Prepared, UnsealError};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha384};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::certs::{CertEntry, CertStore};
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::ledger::Key;
use crate::meter::Meter;
use crate::outlet::Outlet;
use crate::sale::{self, Made, Sale, Spec};
use crate::service::Service;

/// Largest plaintext opened (the envelope is also bounded by `max_message_bytes`).
pub const MAX_PLAINTEXT: usize = 64 << 20;

/// Bytes per chunk written to the output descriptor.
const CHUNK: usize = 64 * 1024;

/// The product of a Decrypt row: digests only, never the plaintext or a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// SHA-384 of the envelope as received, hex.
    pub envelope_sha384: String,
    /// SHA-384 of the plaintext, hex.
    pub plaintext_sha384: String,
    /// Length of the plaintext.
    pub bytes: u64,
}

fn unsealed(e: UnsealError) -> ServiceError {
    match e {
        UnsealError::NotForUs(_) | UnsealError::Undecryptable(_) => {
            ServiceError::NotDecryptable(e.to_string())
        }
        UnsealError::Pki(p) => p.into(),
    }
}

/// The installed encryption certificate `serial`, or why not.
fn encryption_entry(certs: &CertStore, serial: &str) -> Result<CertEntry> {
    let entry = certs.installed(serial)?;
    if !entry.encrypt {
        return Err(ServiceError::InvalidInput(format!(
            "certificate {} is a signing certificate; decrypt with an encryption certificate \
             (meterctl certs request --purpose encrypt)",
            entry.serial()
        )));
    }
    Ok(entry)
}

/// The envelope opened with the TPM's ECDH.
async fn open(meter: &Meter, key_name: &str, prepared: &Prepared) -> Result<Zeroizing<Vec<u8>>> {
    let name = key_name.to_owned();
    let peer = prepared.ephemeral_sec1.clone();
    let shared = meter
        .housing()
        .call(move |h| h.ecdh_z_gen(&name, &peer))
        .await?;
    prepared.finish(&shared).map_err(unsealed)
}

/// `Decrypt`: opens `envelope` with certificate `serial`'s TPM key, writes the
/// plaintext to `out`; returns the bytes written. See the module doc.
pub async fn decrypt(
    meter: &Meter,
    certs: &CertStore,
    serial: &str,
    envelope: &[u8],
    out: Outlet,
    key: Key,
) -> Result<u64> {
    let entry = encryption_entry(certs, serial)?;
    let cert = entry
        .cert
        .clone()
        .ok_or_else(|| ServiceError::InvalidInput("certificate not installed".into()))?;
    out.check()?;
    let prepared = unseal::prepare(envelope, &cert, MAX_PLAINTEXT).map_err(unsealed)?;
    let envelope_sha384: [u8; 48] = Sha384::digest(envelope).into();
    let spec = Spec::sale(
        Service::Decrypt,
        Some(key),
        input_digest("decrypt", &[entry.serial().as_bytes(), &envelope_sha384]),
    );
    let fresh_plain: Mutex<Option<Zeroizing<Vec<u8>>>> = Mutex::new(None);
    // As for Sign, the state is checked inside the work: a retry of a
    // decryption made before the certificate expired still gets its bytes.
    let sold = sale::sell(meter, spec, async |sale: &Sale| {
        entry.check_active(sale.now())?;
        let plain = open(meter, &entry.key, &prepared).await?;
        let record = Record {
            envelope_sha384: hex::encode(envelope_sha384),
            plaintext_sha384: hex::encode(Sha384::digest(plain.as_slice())),
            bytes: plain.len() as u64,
        };
        let product = serde_json::to_vec(&record)
            .map_err(|e| ServiceError::Internal(format!("decrypt record: {e}")))?;
        if let Ok(mut slot) = fresh_plain.lock() {
            *slot = Some(plain);
        }
        Ok(Made::Product(product))
    })
    .await?;
    let plain = match fresh_plain.into_inner().ok().flatten() {
        Some(p) if sold.fresh => p,
        _ => {
            // A retry: open again (not charged) and check against the row.
            let stored: Record = serde_json::from_slice(&sold.product)
                .map_err(|e| ServiceError::Storage(format!("decrypt row: {e}")))?;
            let plain = open(meter, &entry.key, &prepared).await?;
            if hex::encode(Sha384::digest(plain.as_slice())) != stored.plaintext_sha384 {
                return Err(ServiceError::Internal(
                    "the envelope opened to other bytes than on the first call".into(),
                ));
            }
            plain
        }
    };
    write(out, plain).await
}

/// Writes the plaintext to the caller's descriptor, in chunks.
async fn write(out: Outlet, plain: Zeroizing<Vec<u8>>) -> Result<u64> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    let producer = async move {
        for chunk in plain.chunks(CHUNK) {
            if tx.send(chunk.to_vec()).await.is_err() {
                break;
            }
        }
    };
    let (written, ()) = tokio::join!(out.write_all(rx), producer);
    written
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_record_holds_digests_only_and_is_strict() {
        let r = Record {
            envelope_sha384: "aa".into(),
            plaintext_sha384: "bb".into(),
            bytes: 3,
        };
        let j = serde_json::to_vec(&r).unwrap();
        assert_eq!(serde_json::from_slice::<Record>(&j).unwrap(), r);
        assert!(serde_json::from_slice::<Record>(
            br#"{"envelope_sha384":"","plaintext_sha384":"","bytes":0,"plaintext":""}"#
        )
        .is_err());
    }

    #[test]
    fn refusals_to_open_are_named() {
        assert!(matches!(
            unsealed(UnsealError::NotForUs("7".into())),
            ServiceError::NotDecryptable(_)
        ));
        assert!(matches!(
            unsealed(UnsealError::Undecryptable("wrap".into())),
            ServiceError::NotDecryptable(_)
        ));
        assert!(matches!(
            unsealed(UnsealError::Pki(meter_pki::PkiError::TooLarge(1))),
            ServiceError::InvalidInput(_)
        ));
    }
}
