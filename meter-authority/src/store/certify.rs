//! Certifying a meter over the API, once per request, in either store.
//!
//! The certificates take their serials from, and are recorded in, the
//! store's register of issued certificates (what report uploads verify
//! against):
//!
//! - files: the authority directory's `state.json`, as the command line
//!   does, read and rewritten whole, so certifications run one at a time
//!   under the file store's mutex;
//! - PostgreSQL: the sequence `certificate_serial` and the table
//!   `certificates` (migrations/0005). The serials are taken with
//!   `nextval` before signing (a sequence never hands a value out twice,
//!   even when the transaction that took it rolls back: a crash or a failed
//!   certification leaves a gap, never a reuse), the certificates inserted
//!   in the transaction that records the answer. Certifications of
//!   different meters run at once; those of one meter take turns under an
//!   advisory lock of the meter.
//!
//! The answer is kept per meter with the SHA-256 of the request: the same
//! request again gets the same bytes; another request for a meter already
//! certified this way is a conflict. In the file store, a crash after
//! issuing but before the answer is recorded leaves certificates in the
//! register that nobody received; the retry issues a new pair (both valid,
//! one unused). In PostgreSQL both are one transaction.

use super::files::FileStore;
use super::pg::PgStore;
use super::{Certified, Issue, Result, StoreError};
use crate::state::{read_json, write_json_atomic, Issued, Register, State};
use crate::AuthorityError;

/// Serials one certification may take (a meter's identity and postmark).
pub const SERIALS_PER_CERTIFICATION: i64 = 2;

/// The database register during one certification: serials taken from the
/// sequence beforehand, and the certificates issued with them, to insert.
struct Reserved {
    serials: std::vec::IntoIter<u64>,
    issued: Vec<(Issued, Vec<u8>)>,
}

impl Register for Reserved {
    fn take_serial(&mut self) -> crate::Result<u64> {
        self.serials.next().ok_or_else(|| {
            AuthorityError::Corrupt("a certification took more serials than it reserved".into())
        })
    }

    fn record(&mut self, issued: Issued, der: &[u8]) -> crate::Result<()> {
        self.issued.push((issued, der.to_vec()));
        Ok(())
    }
}

/// An answer to a certification.

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    request_hex: String,
    answer_hex: String,
}

fn other_request(meter_id: &str) -> StoreError {
    StoreError::Conflict(format!(
        "meter {meter_id} was already certified for another request"
    ))
}

impl PgStore {
    pub(super) async fn certify_in(
        &self,
        meter_id: &str,
        key: [u8; 32],
        issue: Issue<'_>,
    ) -> Result<Certified> {
        crate::check_meter_id(meter_id)?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('certify:' || $1, 0))",
            &[&meter_id],
        )
        .await?;
        if let Some(r) = tx
            .query_opt(
                "SELECT request_key, answer FROM certifications WHERE meter_id = $1",
                &[&meter_id],
            )
            .await?
        {
            tx.rollback().await?;
            if r.get::<_, &[u8]>(0) != key {
                return Err(other_request(meter_id));
            }
            return Ok(Certified {
                answer: r.get(1),
                fresh: false,
            });
        }
        let mut reserved = Reserved {
            serials: tx
                .query(
                    "SELECT nextval('certificate_serial') FROM generate_series(1, $1::bigint)",
                    &[&SERIALS_PER_CERTIFICATION],
                )
                .await?
                .iter()
                .map(|r| super::pg::u64_of(r.get(0), "serial"))
                .collect::<Result<Vec<u64>>>()?
                .into_iter(),
            issued: Vec::new(),
        };
        let answer = issue(&mut reserved)?;
        for (i, der) in &reserved.issued {
            tx.execute(
                "INSERT INTO certificates (serial, subject_cn, profile, not_after, der) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &super::pg::i64_of(i.serial, "serial")?,
                    &i.subject_cn,
                    &i.profile,
                    &i.not_after,
                    der,
                ],
            )
            .await?;
        }
        tx.execute(
            "INSERT INTO certifications (meter_id, request_key, answer) VALUES ($1, $2, $3)",
            &[&meter_id, &key.as_slice(), &answer],
        )
        .await?;
        tx.commit().await?;
        Ok(Certified {
            answer,
            fresh: true,
        })
    }
}

impl FileStore {
    pub(super) fn certify_now(
        &self,
        meter_id: &str,
        key: [u8; 32],
        issue: Issue<'_>,
    ) -> Result<Certified> {
        crate::check_meter_id(meter_id)?;
        let _one = self.lock()?;
        let dir = self.dir.join("meters").join(meter_id);
        let path = dir.join("certification.json");
        if let Some(s) = read_json::<Stored>(&path)? {
            if s.request_hex != hex::encode(key) {
                return Err(other_request(meter_id));
            }
            return Ok(Certified {
                answer: hex::decode(&s.answer_hex)
                    .map_err(|_| StoreError::Corrupt("stored answer not hex".into()))?,
                fresh: false,
            });
        }
        let state_path = self.dir.join("state.json");
        let mut state = State::load(&state_path)?;
        let answer = issue(&mut state)?;
        // The register first: a crash can waste the serials, never reuse them.
        state.save(&state_path)?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::Authority(AuthorityError::io(&dir, e)))?;
        let stored = Stored {
            request_hex: hex::encode(key),
            answer_hex: hex::encode(&answer),
        };
        write_json_atomic(&path, &stored, "certification")?;
        Ok(Certified {
            answer,
            fresh: true,
        })
    }
}

impl PgStore {
    pub(super) async fn certificates_in(&self, subject_cn: &str) -> Result<Vec<Issued>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT serial, profile, not_after FROM certificates WHERE subject_cn = $1",
                &[&subject_cn],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Issued {
                    serial: super::pg::u64_of(r.get(0), "serial")?,
                    subject_cn: subject_cn.to_owned(),
                    profile: r.get(1),
                    not_after: r.get(2),
                    meter: None,
                })
            })
            .collect()
    }
}

impl FileStore {
    pub(super) fn certificates_now(&self, subject_cn: &str) -> Result<Vec<Issued>> {
        directory_certificates(&self.dir, subject_cn)
    }
}

/// The certificates the authority directory's register (`state.json`, the
/// command line's) issued to `subject_cn`: what a database store does not
/// hold, for serials below [`crate::state::DATABASE_SERIALS`].
pub fn directory_certificates(dir: &std::path::Path, subject_cn: &str) -> Result<Vec<Issued>> {
    let mut all = State::load(&dir.join("state.json"))?.issued;
    all.retain(|i| i.subject_cn == subject_cn);
    Ok(all)
}
