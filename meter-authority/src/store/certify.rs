//! Certifying a meter over the API, once per request, in either store.
//!
//! The certificates themselves are issued by the authority directory (its
//! serial counter and register of issued certificates in `state.json`, what
//! report uploads verify against), so issuing runs one at a time: under the
//! file store's mutex, or under a PostgreSQL advisory lock held by the
//! transaction that records the answer (servers sharing one database and one
//! directory take turns). The answer is kept per meter with the SHA-256 of
//! the request: the same request again gets the same bytes; another request
//! for a meter already certified this way is a conflict. A crash after
//! issuing but before the commit leaves certificates in the register that
//! nobody received; the retry issues a new pair (both valid, one unused).

use super::files::FileStore;
use super::pg::PgStore;
use super::{Result, StoreError};
use crate::state::{read_json, write_json_atomic};
use crate::AuthorityError;

/// Issues the answer to a certification request (runs under the lock).
pub type Issue<'a> = Box<dyn FnOnce() -> crate::Result<Vec<u8>> + Send + 'a>;

/// Key of the advisory lock that serialises certifications.
const CERTIFY_LOCK: i64 = 0x0063_6572_7469_6679;

/// An answer to a certification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certified {
    /// The answer (JSON bytes, see `serve::enrol`).
    pub answer: Vec<u8>,
    /// `false` when an earlier request was answered with these bytes.
    pub fresh: bool,
}

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
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CERTIFY_LOCK])
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
        let answer = issue()?;
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
        let answer = issue()?;
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
