//! What a route of `serve` and the command line with `--database` both do
//! around a store operation, kept here once: how a voucher is signed inside
//! a purchase, how an upload is keyed, checked against the certificates
//! issued and reconciled, how a certification request is keyed and issued,
//! how a payment is checked before it is settled, and how a lookup looks.
//! Both sides calling these is what makes a purchase, an upload or a
//! certification made by one a retry (the same recorded answer) for the
//! other, not a second, different one.

use std::path::Path;
use std::sync::Mutex;

use meter_pki::{cert, csr, pem};
use sha2::{Digest, Sha256};

use crate::inspect::{Inspection, Periods, Upload};
use crate::lookup::Shown;
use crate::state::Register;
use crate::store::settle::payment_digest;
use crate::store::SettleRequest;
use crate::store::{Answer, Look, Purchase, Reconcile, Store};
use crate::{Authority, AuthorityError, MeterCerts};

/// Signs the voucher of `p` with the sequence the store hands out, as DER
/// (what the store records and a retry gets again).
pub fn voucher_signer<'a>(
    a: &'a Authority,
    p: &'a Purchase,
    now: i64,
) -> impl Fn(u64) -> crate::Result<Vec<u8>> + Sync + 'a {
    move |sequence| {
        let (_, pem) =
            a.sign_voucher(&p.meter_id, sequence, p.amount, p.register.as_deref(), now)?;
        Ok(pem::decode_any(pem.as_bytes(), "CMS")?)
    }
}

/// The key of an upload in the store: SHA-256 of its framed body
/// ([`super::frame_upload`]). `meterctl sync` sends the report as DER, so
/// the command line frames it as DER too: an inspection there and the
/// same upload over HTTP are one upload.
pub fn upload_key(report_der: &[u8], attestation: &[u8], segment: &[u8]) -> [u8; 32] {
    Sha256::digest(super::frame_upload(report_der, attestation, segment)).into()
}

/// Checks the report's signer against the certificates issued to its meter:
/// the store's register (per meter), then, for a serial of the directory's
/// range when the store is a database, the directory's (a meter the command
/// line certified without `--database`).
pub async fn issued_signer(
    store: &dyn Store,
    dir: &Path,
    upload: &Upload,
) -> crate::store::Result<()> {
    let known = store.certificates(upload.meter_id()).await?;
    match upload.check_issued(&known) {
        Err(_)
            if upload
                .signer_serial()
                .is_some_and(|n| n < crate::state::DATABASE_SERIALS)
                && known
                    .iter()
                    .all(|i| i.serial >= crate::state::DATABASE_SERIALS) =>
        {
            let dir = crate::store::certify::directory_certificates(dir, upload.meter_id())?;
            Ok(upload.check_issued(&dir)?)
        }
        other => Ok(other?),
    }
}

/// What a reconciliation run now (not answered from an earlier upload's
/// record) ended in: the inspection acknowledged, or the refusal's lock
/// order nonce. `None` in the slot: the store answered from its record.
pub type Reconciled = Option<std::result::Result<Box<Inspection>, String>>;

/// The reconciliation of `upload` with `segment` under the meter's lock, as
/// the store runs it ([`Store::upload`]): the acknowledgement, or the forced
/// lock order and the findings. What it found is also left in `seen`.
pub fn reconcile_upload<'a>(
    a: &'a Authority,
    upload: Upload,
    segment: &'a [u8],
    periods: Periods,
    now: i64,
    seen: &'a Mutex<Reconciled>,
) -> Reconcile<'a> {
    Box::new(
        move |book: &mut crate::book::Book, rows: &mut dyn crate::book::Rows| {
            let outcome = a.reconcile_in(&upload, segment, book, rows, now)?;
            let (answer, found) = match a.answer(upload, outcome, periods, now) {
                Ok(i) => {
                    let der = pem::decode_any(i.pem.as_bytes(), "CMS")?;
                    (Answer::Ack(der), Ok(Box::new(i)))
                }
                Err(AuthorityError::Discrepancy {
                    findings,
                    lock_order,
                    ..
                }) => {
                    let der = pem::decode_any(lock_order.1.as_bytes(), "CMS")?;
                    let nonce = lock_order.0.nonce.clone();
                    let answer = Answer::Refused {
                        lock_order: der,
                        findings,
                    };
                    (answer, Err(nonce))
                }
                Err(e) => return Err(e),
            };
            if let Ok(mut slot) = seen.lock() {
                *slot = Some(found);
            }
            Ok(answer)
        },
    )
}

/// The key of a certification request in the store: SHA-256 over the two
/// CSRs (surrounding whitespace trimmed) and the attestation, each with its
/// length.
pub fn certify_key(identity_csr: &str, postmark_csr: &str, attestation: Option<&[u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        identity_csr.trim().as_bytes(),
        postmark_csr.trim().as_bytes(),
        attestation.unwrap_or_default(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// A certification request whose CSRs were verified (both naming the meter).
pub struct CertifyRequest<'a> {
    /// The identity CSR, PEM.
    pub identity_csr: &'a str,
    /// The postmark CSR, PEM.
    pub postmark_csr: &'a str,
    /// The identity CSR, verified.
    pub identity: csr::VerifiedCsr,
    /// The postmark CSR, verified.
    pub postmark: csr::VerifiedCsr,
    /// The meter's TPM evidence (`attestation.json`), if any.
    pub attestation: Option<Vec<u8>>,
}

fn cert_pem(c: &cert::Certificate) -> crate::Result<String> {
    Ok(pem::encode("CERTIFICATE", &cert::to_der(c)?))
}

/// Issues the certificates of `r` with the serials of `register` (under
/// the store's lock) and the answer recorded for the request (JSON: see
/// `serve::enrol`): with an attestation, the certificates only sealed in a
/// credential for the TPM of an EK chaining to `ek_cas`.
pub fn issue_certification(
    a: &Authority,
    register: &mut dyn Register,
    r: &CertifyRequest<'_>,
    ek_cas: &[cert::Certificate],
    now: i64,
) -> crate::Result<(MeterCerts, Vec<u8>)> {
    let (id, pm) = (r.identity_csr.as_bytes(), r.postmark_csr.as_bytes());
    let (certs, json) = match &r.attestation {
        Some(ev) => {
            let (certs, sealed) = a.certify_meter_attested_in(register, id, pm, ev, ek_cas, now)?;
            let credential: serde_json::Value = serde_json::from_slice(&sealed.to_json()?)
                .map_err(|e| AuthorityError::Corrupt(format!("credential: {e}")))?;
            let json = serde_json::json!({
                "meter_id": certs.meter_id,
                "attested": true,
                "credential": credential,
            });
            (certs, json)
        }
        None => {
            let certs = a.certify_meter_in(register, &r.identity, &r.postmark, now)?;
            let json = serde_json::json!({
                "meter_id": certs.meter_id,
                "attested": false,
                "identity": cert_pem(&certs.identity)?,
                "postmark": cert_pem(&certs.postmark)?,
            });
            (certs, json)
        }
    };
    Ok((certs, json.to_string().into_bytes()))
}

/// A payment certificate checked for settlement (`Authority::check_payment`)
/// with its digest, to settle in the name of `creditor`.
pub struct CheckedPayment {
    /// The payment.
    pub payment: meter_pki::credit::Payment,
    /// Its line.
    pub line: crate::credit::StoredLine,
    /// SHA-256 of its DER.
    pub digest: [u8; 32],
}

impl CheckedPayment {
    /// Verifies `bytes` (PEM or DER) as a payment on a line granted here.
    pub fn check(a: &Authority, bytes: &[u8], now: i64) -> crate::Result<CheckedPayment> {
        let (payment, line) = a.check_payment(bytes, now)?;
        Ok(CheckedPayment {
            payment,
            line,
            digest: payment_digest(bytes)?,
        })
    }

    /// The store's request settling it for `creditor`.
    pub fn request<'a>(
        &'a self,
        creditor: &'a str,
        bytes: &'a [u8],
        now: i64,
    ) -> SettleRequest<'a> {
        SettleRequest {
            creditor,
            payment_bytes: bytes,
            digest: self.digest,
            payment: &self.payment,
            line: &self.line,
            now,
        }
    }
}

/// A lookup of `shown` under the meter's lock ([`Store::lookup`]): the
/// answer, and the object kept as awaited when not reported.
pub fn look(shown: Shown, now: i64) -> Look<'static> {
    Box::new(
        move |book: &mut crate::book::Book, rows: &mut dyn crate::book::Rows| {
            shown.look_in(book, rows, now)
        },
    )
}
