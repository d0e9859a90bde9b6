//! Inspection and lock orders: the authority's side of status reports.
//!
//! `inspect_segment` verifies a meter's signed status report (CMS chaining
//! to this authority's root, signed by an identity certificate this
//! authority issued to the meter the report names), reconciles it with the
//! ledger rows of its segment (`reconcile`, against the meter's book,
//! `book`) and answers
//! with a signed acknowledgement bound to the meter, the report's request
//! id, sequence, time and the SHA-384 of its JSON; the acknowledgement may
//! set a new inspection period and warning period ([`Periods`]). `lock_order` signs a lock order for one
//! meter with a fresh random nonce, which the meter applies once.

use meter_pki::payload::Payload;
use meter_pki::report::{self, LockOrder, ReportAck, StatusReport};
use meter_pki::{cert, cms, oid};

use crate::attested::{self, Attestation};
use crate::awaited;
use crate::book::{Book, Rows, Shelf};
use crate::reconcile::{self, Findings, Reconciled};
use crate::{check_meter_id, Authority, AuthorityError, Result};

/// The periods an acknowledgement sets (`None`: the meter keeps its
/// configured one). The meter warns `warn_days` after the report's time and
/// locks `period_days` after it; the payload refuses a warning at or past
/// the lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Periods {
    /// Days to the lock (`inspection-overdue`).
    pub period_days: Option<u32>,
    /// Days to the warning ("inspection due").
    pub warn_days: Option<u32>,
}

/// What a reconciliation ends in: the new point, or what is wrong.
pub type Outcome = std::result::Result<Reconciled, Findings>;

/// A report whose signature (and attestation) was checked, ready to be
/// reconciled under the meter's lock ([`Authority::reconcile_in`]).
pub struct Upload {
    report: StatusReport,
    digest: String,
    signer: cert::Certificate,
    roots: Vec<cert::Certificate>,
    tpm: Attestation,
}

/// Checks that `signer` is an identity certificate this authority issued to
/// `meter_id`, by its serial in `issued` (the register, or its entries for the meter).
fn issued_identity(
    issued: &[crate::state::Issued],
    meter_id: &str,
    signer: &cert::Certificate,
) -> Result<()> {
    let serial = cert::serial_hex(signer);
    let ours = issued.iter().any(|i| {
        i.subject_cn == meter_id
            && i.profile == "MeterIdentity"
            && format!("{:x}", i.serial).eq_ignore_ascii_case(serial.trim_start_matches('0'))
    });
    if !ours {
        return Err(AuthorityError::Invalid(format!(
            "the report is not signed by an identity certificate this authority issued to {meter_id} (serial {serial})"
        )));
    }
    Ok(())
}

impl Upload {
    /// Checks the report's signer against `issued`, the certificates this
    /// authority issued (all, or the meter's own).
    pub fn check_issued(&self, issued: &[crate::state::Issued]) -> Result<()> {
        issued_identity(issued, &self.report.meter_id, &self.signer)
    }

    /// The serial of the certificate that signed the report.
    pub fn signer_serial(&self) -> Option<u64> {
        u64::from_str_radix(&cert::serial_hex(&self.signer), 16).ok()
    }

    /// The meter the report names (and whose identity key signed it).
    pub fn meter_id(&self) -> &str {
        &self.report.meter_id
    }

    /// The report.
    pub fn report(&self) -> &StatusReport {
        &self.report
    }
}

/// A verified report and the acknowledgement issued for it.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The report as verified.
    pub report: StatusReport,
    /// The acknowledgement.
    pub ack: ReportAck,
    /// The acknowledgement, PEM (label CMS).
    pub pem: String,
    /// What the segment showed, when the report was reconciled with one.
    pub reconciled: Option<Reconciled>,
}

impl Authority {
    /// Verifies a status report's signature: CMS chaining to this
    /// authority's root or to one it retired by a rollover (a meter
    /// certified before keeps its identity certificate; without this its
    /// next report, the one that fetches the trust-anchor update, would be
    /// refused), signed by an identity certificate it issued to the meter
    /// the report names. Returns the report, its JSON's digest and
    /// the signer's certificate.
    fn verified_report(
        &self,
        signed_report: &[u8],
        now: i64,
    ) -> Result<(StatusReport, String, cert::Certificate)> {
        let (report, digest, signer) = self.signed_report(signed_report, now)?;
        issued_identity(&self.register()?.issued, &report.meter_id, &signer)?;
        Ok((report, digest, signer))
    }

    /// [`Authority::verified_report`] without the register: the signature
    /// chains to the root, by a certificate naming the meter of the report.
    fn signed_report(
        &self,
        signed_report: &[u8],
        now: i64,
    ) -> Result<(StatusReport, String, cert::Certificate)> {
        let verified = cms::verify(
            signed_report,
            &self.roots()?,
            Some(&oid::CT_STATUS_REPORT),
            now,
        )?;
        let report: StatusReport = meter_pki::payload::decode(&verified.content)?;
        let signer_cn = cert::subject_cn(&verified.signer).unwrap_or_default();
        if signer_cn != report.meter_id {
            return Err(AuthorityError::Invalid(format!(
                "the report names meter {:?} but is signed by {signer_cn:?}",
                report.meter_id
            )));
        }
        let digest = report::report_digest(&verified.content);
        Ok((report, digest, verified.signer))
    }

    fn acknowledge(
        &self,
        report: StatusReport,
        digest: String,
        periods: Periods,
        now: i64,
    ) -> Result<Inspection> {
        let ack = ReportAck {
            meter_id: report.meter_id.clone(),
            report_request_id: report.request_id.clone(),
            report_sequence: report.sequence,
            report_time: report.time,
            report_digest: digest,
            period_days: periods.period_days,
            warn_days: periods.warn_days,
            issued_at: now,
        };
        let pem = self.sign_payload(&ack, now)?;
        Ok(Inspection {
            report,
            ack,
            pem,
            reconciled: None,
        })
    }

    /// Verifies a status report (DER or PEM) and issues its acknowledgement,
    /// optionally setting new inspection and warning periods, WITHOUT its
    /// segment: the registers are taken on the meter's word. Kept for
    /// meters older than segments; [`Authority::inspect_segment`] is the
    /// inspection.
    pub fn inspect(&self, signed_report: &[u8], periods: Periods, now: i64) -> Result<Inspection> {
        let (report, digest, _) = self.verified_report(signed_report, now)?;
        self.acknowledge(report, digest, periods, now)
    }

    /// Verifies a status report and reconciles it with its ledger segment
    /// against the meter's book (see `reconcile`); when everything holds,
    /// extends the book (under the meter's lock) and issues the
    /// acknowledgement. On any discrepancy: no acknowledgement, the refusal
    /// is counted in the book, and a forced lock order for the meter is
    /// signed and returned in [`AuthorityError::Discrepancy`].
    ///
    /// `attestation` is the TPM's (JSON `meter_pki::tpm::ReportAttestation`,
    /// `REPORT.att`), checked with `attested` against the AK kept at
    /// certification and the book; required of a meter certified with one.
    pub fn inspect_segment(
        &self,
        signed_report: &[u8],
        segment: &[u8],
        attestation: Option<&[u8]>,
        periods: Periods,
        now: i64,
    ) -> Result<Inspection> {
        let upload = self.verify_upload(signed_report, attestation, now)?;
        let shelf = Shelf::of(&self.dir, upload.meter_id())?;
        let outcome =
            shelf.update(|book, locked| self.reconcile_in(&upload, segment, book, locked, now))?;
        self.answer(upload, outcome, periods, now)
    }

    /// The first step of [`Authority::inspect_segment`], before any book is
    /// read: the report's signature and its TPM attestation.
    pub fn verify_upload(
        &self,
        signed_report: &[u8],
        attestation: Option<&[u8]>,
        now: i64,
    ) -> Result<Upload> {
        let upload = self.verify_upload_signed(signed_report, attestation, now)?;
        upload.check_issued(&self.register()?.issued)?;
        Ok(upload)
    }

    /// [`Authority::verify_upload`] but for the register: the caller checks
    /// the signer with [`Upload::check_issued`] against the certificates
    /// issued to the meter (`serve` reads them from its store, per meter).
    pub fn verify_upload_signed(
        &self,
        signed_report: &[u8],
        attestation: Option<&[u8]>,
        now: i64,
    ) -> Result<Upload> {
        let (report, digest, signer) = self.signed_report(signed_report, now)?;
        let roots = self.roots()?;
        let tpm = self.report_attestation(&report.meter_id, &digest, attestation)?;
        Ok(Upload {
            report,
            digest,
            signer,
            roots,
            tpm,
        })
    }

    /// The second step, under the meter's lock (a file lock or a database
    /// row lock): reconciles the upload with `segment` against `book` and
    /// changes the book as the outcome says (extended, or one more refusal).
    /// The caller saves the book (and the rows `rows` was given) in one
    /// step, or nothing.
    pub fn reconcile_in(
        &self,
        upload: &Upload,
        segment: &[u8],
        book: &mut Book,
        rows: &mut dyn Rows,
        now: i64,
    ) -> Result<Outcome> {
        let Upload {
            report,
            digest,
            signer,
            roots,
            tpm,
        } = upload;
        let reconciled =
            reconcile::reconcile(report, digest, segment, book, roots, Some(signer), now);
        let mut findings = match &reconciled {
            Ok(_) => Findings::default(),
            Err(f) => f.clone(),
        };
        let state = attested::check(report, tpm, book.tpm.as_ref(), &mut findings);
        if let (Ok(rec), Some(now), Some(last), Some(from)) =
            (&reconciled, &state, &book.tpm, book.last())
        {
            attested::rows_within_clock(
                last,
                now,
                from.row_time_ms,
                rec.point.row_time_ms,
                &mut findings,
            );
        }
        // Products relying parties showed before this report must be in its rows.
        let covered = match &reconciled {
            Ok(rec) if !book.awaited.is_empty() => {
                let mut all = rows.index_rows(book)?;
                all.extend_from_slice(&rec.index);
                awaited::check(book, &rec.point, &all, &mut findings)
            }
            _ => Vec::new(),
        };
        awaited::forget(book, &covered);
        let reconciled = match reconciled {
            Ok(rec) if findings.0.is_empty() => Ok(rec),
            _ => Err(findings),
        };
        match reconciled {
            Ok(mut rec) => {
                if state.is_some() {
                    book.tpm = state;
                }
                let new = rec.unclean.iter().filter(|s| **s > book.unclean_counted_to);
                book.unclean_starts = book.unclean_starts.saturating_add(new.count() as u64);
                book.unclean_counted_to = book.unclean_counted_to.max(rec.rows.1);
                rec.unclean_total = book.unclean_starts;
                if book.point_at(rec.point.rows).is_none() {
                    book.acknowledged.push(rec.point.clone());
                    book.acknowledged.sort_by_key(|p| p.rows);
                }
                for t in &rec.rates {
                    book.rates.entry(t.version).or_insert_with(|| t.clone());
                }
                for (k, s) in &rec.applied {
                    book.applied.entry(k.clone()).or_insert(*s);
                }
                if !rec.index.is_empty() {
                    rows.add_index(book, rec.rows.0, rec.rows.1, &rec.index)?;
                }
                Ok(Ok(rec))
            }
            Err(findings) => {
                book.refused = book.refused.saturating_add(1);
                Ok(Err(findings))
            }
        }
    }

    /// The last step: the acknowledgement of a reconciled upload, or
    /// [`AuthorityError::Discrepancy`] with a forced lock order.
    pub fn answer(
        &self,
        upload: Upload,
        outcome: Outcome,
        periods: Periods,
        now: i64,
    ) -> Result<Inspection> {
        let Upload { report, digest, .. } = upload;
        match outcome {
            Ok(rec) => {
                let mut i = self.acknowledge(report, digest, periods, now)?;
                i.reconciled = Some(rec);
                Ok(i)
            }
            Err(findings) => {
                let (order, pem) = self.lock_order(&report.meter_id, "inspection refused", now)?;
                Err(AuthorityError::Discrepancy {
                    meter_id: report.meter_id,
                    report_sequence: report.sequence,
                    findings: findings.0,
                    lock_order: Box::new((order, pem)),
                })
            }
        }
    }

    /// What a report's attestation is before the book is read (see `attested`).
    fn report_attestation(
        &self,
        meter_id: &str,
        digest_hex: &str,
        attestation: Option<&[u8]>,
    ) -> Result<Attestation> {
        let attests = self.meter_ak(meter_id)?.is_some();
        let Some(bytes) = attestation else {
            return Ok(match attests {
                true => Attestation::Missing,
                false => Attestation::NotExpected,
            });
        };
        let digest = hex::decode(digest_hex)
            .map_err(|_| AuthorityError::Invalid("report digest not hex".into()))?;
        let verified = meter_pki::tpm::ReportAttestation::from_json(bytes)
            .map_err(AuthorityError::from)
            .and_then(|a| self.verify_report_attestation(meter_id, &a, &digest));
        Ok(match verified {
            Ok(v) => Attestation::Verified(Box::new(v)),
            Err(e) => Attestation::Invalid(e.to_string()),
        })
    }

    /// Issues a lock order for `meter_id` with a fresh nonce.
    pub fn lock_order(
        &self,
        meter_id: &str,
        reason: &str,
        now: i64,
    ) -> Result<(LockOrder, String)> {
        self.lock_order_with(meter_id, &crate::fresh_nonce_hex(), reason, now)
    }

    /// A lock order for `meter_id` with the caller's `nonce` (`serve`'s
    /// queued orders: the operator's id, so a retry names the same order).
    pub fn lock_order_with(
        &self,
        meter_id: &str,
        nonce: &str,
        reason: &str,
        now: i64,
    ) -> Result<(LockOrder, String)> {
        check_meter_id(meter_id)?;
        let order = LockOrder {
            meter_id: meter_id.to_owned(),
            nonce: nonce.to_owned(),
            reason: reason.to_owned(),
            issued_at: now,
        };
        order.validate()?;
        let pem = self.sign_payload(&order, now)?;
        Ok((order, pem))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn lock_orders_have_fresh_nonces_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authority::init(dir.path(), "Test Root", crate::now()).unwrap();
        let (o1, pem1) = a.lock_order("MTR-1", "audit", crate::now()).unwrap();
        let (o2, _) = a.lock_order("MTR-1", "audit", crate::now()).unwrap();
        assert_ne!(o1.nonce, o2.nonce);
        let (back, _) = meter_pki::payload::open::<LockOrder>(
            pem1.as_bytes(),
            std::slice::from_ref(a.root()),
            crate::now(),
        )
        .unwrap();
        assert_eq!(back, o1);
        assert!(a.lock_order("bad id", "audit", 0).is_err());
        assert!(a.lock_order("MTR-1", "", 0).is_err());
    }

    #[test]
    fn inspect_refuses_what_is_not_a_report() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authority::init(dir.path(), "Test Root", crate::now()).unwrap();
        // A lock order is signed by the root but is not a report.
        let (_, pem) = a.lock_order("MTR-1", "audit", crate::now()).unwrap();
        assert!(matches!(
            a.inspect(pem.as_bytes(), Periods::default(), crate::now()),
            Err(AuthorityError::Pki(meter_pki::PkiError::WrongType(_)))
        ));
        assert!(a
            .inspect(b"garbage", Periods::default(), crate::now())
            .is_err());
    }
}
