//! The authority as a creditor (patent Figs. 8, 9): grants lines of credit
//! on a meter's credit request and settles the payment certificates
//! merchants bring, each once.
//!
//! State lives under `<dir>/credit/`: `lines/<serial>.json` (the line as
//! granted and the SHA-384 of the certificate DER) and
//! `settled/<line serial>/<payment serial>.json`, one file per settled
//! payment created with `create_new`, so a replay finds the file and is
//! refused even across runs; the sum of a line's settled payments may never
//! pass the line amount.

use crate::{Authority, AuthorityError, Result};
use meter_pki::credit::{self as pkicredit, CreditLine, CreditRequest, Payment};
use meter_pki::{cert, payload, pem, tsp};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Longest line validity a grant may have (10 years).
pub const MAX_DAYS: u32 = 3650;

/// A line as the creditor keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredLine {
    /// The line as granted.
    pub line: CreditLine,
    /// SHA-384 (hex) of the line certificate DER (what payments name).
    pub digest_hex: String,
}

/// A payment accepted for settlement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settlement {
    /// The payment certificate's serial.
    pub serial: String,
    /// Line serial.
    pub credit_serial: String,
    /// Amount to pay the merchant.
    pub amount: u64,
    /// The merchant.
    pub payee: String,
    /// Sum settled on the line, this payment included.
    pub settled_total: u64,
    /// Line amount.
    pub line_amount: u64,
    /// When it was settled (unix s).
    pub settled_at: i64,
}

impl Settlement {
    /// The settlement of payment `p` on `line`, `before` being the sum
    /// already settled on it: the one place that arithmetic lives (the
    /// CLI's files and the server's database both settle through it).
    /// Refused when the sum would overflow or pass the line's amount.
    pub fn next(p: &Payment, line: &CreditLine, before: u64, now: i64) -> Result<Settlement> {
        let total = before
            .checked_add(p.amount)
            .filter(|t| *t <= line.amount)
            .ok_or_else(|| {
                invalid(format!(
                    "payment {} of {} would take line {} past its amount ({} settled of {})",
                    p.serial, p.amount, line.serial, before, line.amount
                ))
            })?;
        Ok(Settlement {
            serial: p.serial.clone(),
            credit_serial: line.serial.clone(),
            amount: p.amount,
            payee: p.payee.clone(),
            settled_total: total,
            line_amount: line.amount,
            settled_at: now,
        })
    }
}

fn invalid(m: impl Into<String>) -> AuthorityError {
    AuthorityError::Invalid(m.into())
}

impl Authority {
    fn credit_dir(&self) -> PathBuf {
        self.dir.join("credit")
    }

    /// Verifies a meter's credit request (CMS chains to this authority, postmark by the same
    /// meter over the ask) and grants a line of `amount` (default: as asked) valid `days`
    /// for `authorized_use`. Returns the line and its certificate (PEM, label CMS).
    pub fn credit_grant(
        &mut self,
        request: &[u8],
        amount: Option<u64>,
        days: u32,
        authorized_use: &str,
        now: i64,
    ) -> Result<(CreditLine, String)> {
        if days == 0 || days > MAX_DAYS {
            return Err(invalid(format!("days must be 1..{MAX_DAYS}")));
        }
        let der = pem::decode_any(request, "CMS")?;
        let roots = self.roots()?;
        let (req, verified) = payload::open::<CreditRequest>(&der, &roots, now)?;
        let meter_id = &req.ask.meter_id;
        if cert::subject_cn(&verified.signer).as_deref() != Some(meter_id.as_str()) {
            return Err(invalid(format!(
                "the request names meter {meter_id} but is signed by another certificate"
            )));
        }
        let token =
            tsp::verify(&req.postmark()?, &roots, now).map_err(|e| AuthorityError::Token {
                step: e.step(),
                detail: e.to_string(),
            })?;
        if token.signer_cn.as_deref() != Some(meter_id.as_str()) {
            return Err(AuthorityError::Token {
                step: "signer",
                detail: "the postmark is from another meter".into(),
            });
        }
        if token.hash_oid != meter_pki::oid::SHA384
            || token.imprint != CreditRequest::imprint(&req.ask)?.to_vec()
        {
            return Err(AuthorityError::Token {
                step: "digest",
                detail: "the postmark does not cover this request".into(),
            });
        }
        let amount = amount.unwrap_or(req.ask.amount);
        if amount == 0 || amount > req.ask.amount {
            return Err(invalid(format!(
                "the grant must be 1..{} (the amount asked)",
                req.ask.amount
            )));
        }
        let mut raw = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut raw);
        let line = CreditLine {
            serial: format!("CL{}", hex::encode_upper(raw)),
            holder: meter_id.clone(),
            holder_key_hex: hex::encode(cert::public_key_sec1(&verified.signer)?),
            issuer: req.ask.creditor.clone(),
            amount,
            not_before: now,
            not_after: now.saturating_add(i64::from(days) * 86_400),
            authorized_use: authorized_use.to_owned(),
            request_digest_hex: hex::encode(pkicredit::sha384(&der)),
        };
        let pem_text = self.sign_payload(&line, now)?;
        let grant_der = pem::decode_any(pem_text.as_bytes(), "CMS")?;
        let stored = StoredLine {
            line: line.clone(),
            digest_hex: hex::encode(pkicredit::sha384(&grant_der)),
        };
        let lines = self.credit_dir().join("lines");
        std::fs::create_dir_all(&lines).map_err(|e| AuthorityError::io(&lines, e))?;
        let json = serde_json::to_vec_pretty(&stored)
            .map_err(|e| AuthorityError::Corrupt(format!("line encoding: {e}")))?;
        write_new(&lines.join(format!("{}.json", line.serial)), &json)?;
        Ok((line, pem_text))
    }

    /// The line `serial` as granted.
    pub fn credit_line(&self, serial: &str) -> Result<StoredLine> {
        pkicredit::check_serial(serial)?;
        let p = self
            .credit_dir()
            .join("lines")
            .join(format!("{serial}.json"));
        if !p.exists() {
            return Err(invalid(format!(
                "no line of credit {serial} was granted here"
            )));
        }
        let bytes = crate::read_bounded(&p)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| AuthorityError::Corrupt(format!("{}: {e}", p.display())))
    }

    /// Verifies a payment certificate (PEM or DER) without settling it:
    /// signed by the meter holding the line, chaining to this authority,
    /// naming a line granted here by its digest, made before the line
    /// expired. Returns the payment and its line.
    pub fn check_payment(&self, payment: &[u8], now: i64) -> Result<(Payment, StoredLine)> {
        let der = pem::decode_any(payment, "CMS")?;
        let roots = self.roots()?;
        let (p, verified) = payload::open::<Payment>(&der, &roots, now)?;
        let stored = self.credit_line(&p.credit_serial)?;
        let line = &stored.line;
        if !p
            .credit_line_digest_hex
            .eq_ignore_ascii_case(&stored.digest_hex)
        {
            return Err(invalid(format!(
                "the payment names another certificate for line {}",
                line.serial
            )));
        }
        let signer_key = hex::encode(cert::public_key_sec1(&verified.signer)?);
        if p.meter_id != line.holder
            || p.holder != line.holder
            || !signer_key.eq_ignore_ascii_case(&line.holder_key_hex)
        {
            return Err(invalid(
                "the payment is not signed by the meter holding the line".to_string(),
            ));
        }
        if p.time > line.not_after {
            return Err(invalid(format!(
                "payment made at {} after the line expired at {}",
                p.time, line.not_after
            )));
        }
        Ok((p, stored))
    }

    /// Verifies a payment certificate (signed by the meter holding the line, chaining to this
    /// authority, naming a line granted here by its digest) and settles it once; refuses a
    /// replay and a payment that would take the line's settled sum past its amount.
    pub fn settle(&mut self, payment: &[u8], now: i64) -> Result<Settlement> {
        let (p, stored) = self.check_payment(payment, now)?;
        let line = &stored.line;
        let dir = self.credit_dir().join("settled").join(&line.serial);
        std::fs::create_dir_all(&dir).map_err(|e| AuthorityError::io(&dir, e))?;
        let file = dir.join(format!("{}.json", p.serial));
        if file.exists() {
            return Err(AuthorityError::Replay(format!(
                "payment {} was already settled",
                p.serial
            )));
        }
        let s = Settlement::next(&p, line, settled_sum(&dir)?, now)?;
        let json = serde_json::to_vec_pretty(&s)
            .map_err(|e| AuthorityError::Corrupt(format!("settlement encoding: {e}")))?;
        match write_new(&file, &json) {
            Err(AuthorityError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Err(AuthorityError::Replay(format!(
                    "payment {} was already settled",
                    p.serial
                )))
            }
            r => r.map(|()| s),
        }
    }
}

fn settled_sum(dir: &Path) -> Result<u64> {
    let mut sum = 0u64;
    let entries = std::fs::read_dir(dir).map_err(|e| AuthorityError::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| AuthorityError::io(dir, e))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let s: Settlement = serde_json::from_slice(&crate::read_bounded(&path)?)
            .map_err(|e| AuthorityError::Corrupt(format!("{}: {e}", path.display())))?;
        sum = sum
            .checked_add(s.amount)
            .ok_or_else(|| AuthorityError::Corrupt("settled sum overflows".into()))?;
    }
    Ok(sum)
}

/// Writes a file that must not exist yet, durably.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| AuthorityError::io(path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| AuthorityError::io(path, e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use meter_pki::cms::{sign_with_key, SignOptions};
    use meter_pki::credit::CreditAsk;
    use meter_pki::issue::Profile;
    use meter_pki::payload::{encode, Payload};
    use meter_pki::tsp::TokenParams;
    use p384::ecdsa::SigningKey;

    const NOW: i64 = 1_790_000_000;

    /// A software stand-in for a meter certified by the authority.
    struct FakeMeter {
        id: String,
        key: SigningKey,
        cert: cert::Certificate,
        pm_key: SigningKey,
        pm_cert: cert::Certificate,
    }

    fn sec1(k: &SigningKey) -> Vec<u8> {
        k.verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    }

    fn meter(a: &mut Authority, id: &str) -> FakeMeter {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let pm_key = SigningKey::random(&mut rand_core::OsRng);
        let (cert, pm_cert) = a
            .with_state(|a, st| {
                Ok((
                    a.issue_one(st, id, &sec1(&key), Profile::MeterIdentity, NOW)?,
                    a.issue_one(st, id, &sec1(&pm_key), Profile::Postmark, NOW)?,
                ))
            })
            .unwrap();
        FakeMeter {
            id: id.into(),
            key,
            cert,
            pm_key,
            pm_cert,
        }
    }

    impl FakeMeter {
        fn sign<T: Payload>(&self, v: &T) -> Vec<u8> {
            let content = encode(v).unwrap();
            sign_with_key(
                &SignOptions {
                    content_type: T::CONTENT_TYPE,
                    content: &content,
                    signer: &self.cert,
                    extra_certs: &[],
                    signing_time: Some(NOW),
                    ess_cert_id_v2: true,
                },
                &self.key,
            )
            .unwrap()
        }

        fn request(&self, amount: u64, postmarked: &CreditAsk) -> Vec<u8> {
            let params = TokenParams {
                imprint: CreditRequest::imprint(postmarked).unwrap(),
                serial: 7,
                gen_time: NOW,
                policy: meter_pki::oid::POSTMARK_POLICY,
                accuracy_secs: 1,
                nonce: None,
            };
            let prepared = tsp::prepare(&params, &self.pm_cert, &[]).unwrap();
            let raw = meter_pki::sig::sign_prehash_raw(&self.pm_key, &prepared.digest()).unwrap();
            let token = prepared.finish(&raw).unwrap();
            let mut ask = postmarked.clone();
            ask.amount = amount;
            self.sign(&CreditRequest {
                ask,
                postmark_hex: hex::encode(token),
            })
        }

        fn ask(&self, amount: u64) -> CreditAsk {
            CreditAsk {
                meter_id: self.id.clone(),
                creditor: "Bank".into(),
                amount,
                requested_at: NOW,
                request_id: "r1".into(),
            }
        }

        fn payment(&self, line: &CreditLine, grant_pem: &str, seq: u64, amount: u64) -> Vec<u8> {
            self.payment_at(line, grant_pem, seq, amount, NOW)
        }

        fn payment_at(
            &self,
            line: &CreditLine,
            grant_pem: &str,
            seq: u64,
            amount: u64,
            time: i64,
        ) -> Vec<u8> {
            let der = pem::decode_any(grant_pem.as_bytes(), "CMS").unwrap();
            self.sign(&Payment {
                holder: line.holder.clone(),
                serial: Payment::serial_for(&line.serial, seq),
                meter_id: self.id.clone(),
                credit_serial: line.serial.clone(),
                credit_line_digest_hex: hex::encode(pkicredit::sha384(&der)),
                amount,
                payee: "shop".into(),
                credit_remaining: 0,
                sequence: seq,
                time,
            })
        }
    }

    #[test]
    fn grant_then_settle_once_and_never_past_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Authority::init(&dir.path().join("a"), "Root", NOW - 10).unwrap();
        let m = meter(&mut a, "MTR-AAAAAAAAAAAA");
        let req = m.request(1000, &m.ask(1000));
        let (line, pem_text) = a.credit_grant(&req, None, 30, "any", NOW).unwrap();
        assert_eq!(
            (line.amount, line.holder.as_str()),
            (1000, "MTR-AAAAAAAAAAAA")
        );
        assert_eq!(line.holder_key_hex, hex::encode(sec1(&m.key)));
        assert!(a.credit_grant(&req, Some(1001), 30, "any", NOW).is_err());

        let p1 = m.payment(&line, &pem_text, 1, 600);
        assert_eq!(a.settle(&p1, NOW).unwrap().settled_total, 600);
        assert!(matches!(a.settle(&p1, NOW), Err(AuthorityError::Replay(_))));
        // A (broken) meter paying past the line is refused by the creditor.
        let p2 = m.payment(&line, &pem_text, 2, 500);
        assert!(
            matches!(a.settle(&p2, NOW), Err(AuthorityError::Invalid(m)) if m.contains("past"))
        );
        let p3 = m.payment(&line, &pem_text, 3, 400);
        assert_eq!(a.settle(&p3, NOW).unwrap().settled_total, 1000);

        // Another meter cannot pay from this line, even when certified here.
        let other = meter(&mut a, "MTR-BBBBBBBBBBBB");
        let stolen = other.payment(&line, &pem_text, 4, 0);
        assert!(matches!(
            a.settle(&stolen, NOW),
            Err(AuthorityError::Invalid(_))
        ));
        // A payment dated after the line expired is refused.
        let late = m.payment_at(&line, &pem_text, 5, 0, line.not_after + 1);
        assert!(
            matches!(a.settle(&late, NOW), Err(AuthorityError::Invalid(m)) if m.contains("expired"))
        );
    }

    #[test]
    fn a_request_whose_postmark_covers_other_content_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Authority::init(&dir.path().join("a"), "Root", NOW - 10).unwrap();
        let m = meter(&mut a, "MTR-AAAAAAAAAAAA");
        // Postmarked for 10, then the amount raised to 10000.
        let req = m.request(10_000, &m.ask(10));
        match a.credit_grant(&req, None, 30, "any", NOW) {
            Err(AuthorityError::Token { step, .. }) => assert_eq!(step, "digest"),
            other => panic!("expected a digest refusal, got {other:?}"),
        }
        // A request signed by a key this authority never certified.
        let mut rogue = meter(&mut a, "MTR-AAAAAAAAAAAA");
        rogue.cert =
            meter_pki::issue::self_signed_root(&rogue.key, "MTR-AAAAAAAAAAAA", 9, NOW - 10, 10)
                .unwrap();
        let req = rogue.request(10, &rogue.ask(10));
        assert!(matches!(
            a.credit_grant(&req, None, 30, "any", NOW),
            Err(AuthorityError::Pki(_))
        ));
    }
}
