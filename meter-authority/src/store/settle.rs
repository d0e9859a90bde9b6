//! Settling a payment certificate for a creditor, once, in either store.
//!
//! The HTTP layer verifies the payment first (`Authority::check_payment`:
//! signed by the meter holding the line, chaining to this authority); the
//! store then records it under a lock on the line, so two settlements of
//! one line never both pass its amount and one payment is paid once. The
//! same creditor bringing the same certificate again gets the recorded
//! answer (a retry); another creditor, or another certificate with the same
//! serial, is a conflict.
//!
//! PostgreSQL: table `settlements` (migrations/0002), one transaction under
//! `pg_advisory_xact_lock` of the line. Files: the authority directory's own
//! `credit/settled/...` (what `meter-authority settle` writes, so the CLI
//! and the server refuse each other's replays) plus
//! `credit/served/<serial>.json` recording the creditor; a crash between
//! the two leaves the payment settled and its retry refused (409).

use sha2::{Digest, Sha256};

use super::files::FileStore;
use super::pg::PgStore;
use super::{Result, SettleRequest, Settled, StoreError};
use crate::credit::Settlement;
use crate::state::{read_json, write_json_atomic};
use crate::AuthorityError;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Served {
    creditor: String,
    digest_hex: String,
    settlement: Settlement,
}

fn conflict(serial: &str) -> StoreError {
    StoreError::Conflict(format!(
        "payment {serial} was already settled for another creditor or certificate"
    ))
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(format!("settlement: {e}"))
}

impl PgStore {
    pub(super) async fn settle_in(&self, r: &SettleRequest<'_>) -> Result<Settled> {
        let p = r.payment;
        let line = &r.line.line;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('line:' || $1, 0))",
            &[&line.serial],
        )
        .await?;
        if let Some(row) = tx
            .query_opt(
                "SELECT creditor, payment_digest, settlement::text FROM settlements \
                 WHERE payment_serial = $1",
                &[&p.serial],
            )
            .await?
        {
            tx.rollback().await?;
            if row.get::<_, &str>(0) != r.creditor || row.get::<_, &[u8]>(1) != r.digest {
                return Err(conflict(&p.serial));
            }
            return Ok(Settled {
                settlement: serde_json::from_str(row.get::<_, &str>(2)).map_err(corrupt)?,
                fresh: false,
            });
        }
        let before: i64 = tx
            .query_one(
                "SELECT coalesce(sum(amount), 0)::bigint FROM settlements WHERE credit_serial = $1",
                &[&line.serial],
            )
            .await?
            .get(0);
        let before = u64::try_from(before)
            .map_err(|_| StoreError::Corrupt("settled sum out of range".into()))?;
        let s = Settlement::next(p, line, before, r.now)?;
        let json = serde_json::to_string(&s).map_err(corrupt)?;
        let amount = i64::try_from(p.amount)
            .map_err(|_| StoreError::Corrupt("amount out of range".into()))?;
        tx.execute(
            "INSERT INTO settlements (payment_serial, credit_serial, amount, creditor, \
             payment_digest, settlement) VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)",
            &[
                &p.serial,
                &line.serial,
                &amount,
                &r.creditor,
                &r.digest.as_slice(),
                &json,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(Settled {
            settlement: s,
            fresh: true,
        })
    }
}

impl FileStore {
    pub(super) fn settle_now(&self, r: &SettleRequest<'_>) -> Result<Settled> {
        let _one = self.lock()?;
        let dir = self.dir.join("credit").join("served");
        let path = dir.join(format!("{}.json", r.payment.serial));
        if let Some(s) = read_json::<Served>(&path)? {
            if s.creditor != r.creditor || s.digest_hex != hex::encode(r.digest) {
                return Err(conflict(&r.payment.serial));
            }
            return Ok(Settled {
                settlement: s.settlement,
                fresh: false,
            });
        }
        let mut a = crate::Authority::open(&self.dir)?;
        let settlement = match a.settle(r.payment_bytes, r.now) {
            Err(AuthorityError::Replay(m)) => return Err(StoreError::Conflict(m)),
            other => other?,
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::Authority(AuthorityError::io(&dir, e)))?;
        let served = Served {
            creditor: r.creditor.to_owned(),
            digest_hex: hex::encode(r.digest),
            settlement: settlement.clone(),
        };
        write_json_atomic(&path, &served, "settlement")?;
        Ok(Settled {
            settlement,
            fresh: true,
        })
    }
}

/// SHA-256 of a payment certificate's DER (PEM accepted).
pub fn payment_digest(bytes: &[u8]) -> crate::Result<[u8; 32]> {
    let der = meter_pki::pem::decode_any(bytes, "CMS")?;
    Ok(Sha256::digest(&der).into())
}
