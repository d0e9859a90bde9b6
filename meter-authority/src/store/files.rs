//! The file store: the authority directory the command line uses, so
//! `serve` without `--database` works on what `init`, `certify-meter` and
//! `voucher` wrote.
//!
//! Vouchers take their sequence from `state.json` and are recorded in the
//! meter's book as `voucher` does; the purchase (amount, sequence, voucher)
//! is kept in `meters/<id>/purchases/<sha256 of the purchase id>.json`, the
//! answer to an upload in `meters/<id>/uploads/<key>.json`. Operations run
//! one at a time in this process (a mutex; `state.json` has no lock of its
//! own), and books are changed under the meter's `flock` as everywhere.
//!
//! What this store cannot promise (the PostgreSQL one does): a crash between
//! signing a voucher and recording its purchase leaves a voucher issued
//! (in the book) that nobody received, and the retry gets a new one; a crash
//! between extending a book and recording the answer makes the retry
//! reconcile again (the book already holds the point) and sign a new,
//! equally valid acknowledgement.

mod pending;
mod secret;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    check_purchase_id, Answer, Fut, Look, Purchase, Purchased, Reconcile, Result, SignVoucher,
    Store, StoreError, Totals,
};
use crate::book::Shelf;
use crate::lookup::Looked;
use crate::state::{read_json, write_json_atomic};
use crate::{check_meter_id, Authority, AuthorityError};

/// The authority directory as a store.
pub struct FileStore {
    pub(super) dir: PathBuf,
    one_at_a_time: Mutex<()>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredPurchase {
    purchase_id: String,
    amount: u64,
    /// The voucher's register (absent: none, and in purchases stored before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    register: Option<String>,
    sequence: u64,
    voucher_hex: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredAnswer {
    accepted: bool,
    answer_hex: String,
    findings: Vec<String>,
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    hex::decode(s).map_err(|_| StoreError::Corrupt("stored bytes not hex".into()))
}

fn create_dir(d: &Path) -> Result<()> {
    std::fs::create_dir_all(d).map_err(|e| StoreError::Authority(AuthorityError::io(d, e)))
}

impl FileStore {
    /// The store of the authority in `dir`.
    pub fn new(dir: &Path) -> FileStore {
        FileStore {
            dir: dir.to_owned(),
            one_at_a_time: Mutex::new(()),
        }
    }

    fn meter_dir(&self, meter_id: &str) -> Result<PathBuf> {
        check_meter_id(meter_id)?;
        Ok(self.dir.join("meters").join(meter_id))
    }

    pub(super) fn lock(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        self.one_at_a_time
            .lock()
            .map_err(|_| StoreError::Corrupt("an earlier operation panicked".into()))
    }

    fn purchase_now(&self, p: &Purchase, sign: SignVoucher<'_>) -> Result<Purchased> {
        check_purchase_id(&p.purchase_id)?;
        let _one = self.lock()?;
        let dir = self.meter_dir(&p.meter_id)?.join("purchases");
        let path = dir.join(format!(
            "{}.json",
            hex::encode(Sha256::digest(&p.purchase_id))
        ));
        if let Some(s) = read_json::<StoredPurchase>(&path)? {
            if let Some(e) = p.differs(s.amount, s.register.as_deref()) {
                return Err(e);
            }
            return Ok(Purchased {
                sequence: s.sequence,
                voucher: unhex(&s.voucher_hex)?,
                fresh: false,
            });
        }
        let mut a = Authority::open(&self.dir)?;
        let sequence = a.reserve_voucher(&p.meter_id, p.amount)?;
        let voucher = sign(sequence)?;
        create_dir(&dir)?;
        let stored = StoredPurchase {
            purchase_id: p.purchase_id.clone(),
            amount: p.amount,
            register: p.register.clone(),
            sequence,
            voucher_hex: hex::encode(&voucher),
        };
        write_json_atomic(&path, &stored, "purchase")?;
        Ok(Purchased {
            sequence,
            voucher,
            fresh: true,
        })
    }

    fn upload_now(
        &self,
        meter_id: &str,
        key: [u8; 32],
        reconcile: Reconcile<'_>,
    ) -> Result<Answer> {
        let _one = self.lock()?;
        let dir = self.meter_dir(meter_id)?.join("uploads");
        let path = dir.join(format!("{}.json", hex::encode(key)));
        if let Some(s) = read_json::<StoredAnswer>(&path)? {
            let bytes = unhex(&s.answer_hex)?;
            return Ok(match s.accepted {
                true => Answer::Ack(bytes),
                false => Answer::Refused {
                    lock_order: bytes,
                    findings: s.findings,
                },
            });
        }
        let answer =
            Shelf::of(&self.dir, meter_id)?.update(|book, locked| reconcile(book, locked))?;
        let stored = match &answer {
            Answer::Ack(b) => StoredAnswer {
                accepted: true,
                answer_hex: hex::encode(b),
                findings: Vec::new(),
            },
            Answer::Refused {
                lock_order,
                findings,
            } => StoredAnswer {
                accepted: false,
                answer_hex: hex::encode(lock_order),
                findings: findings.clone(),
            },
        };
        create_dir(&dir)?;
        write_json_atomic(&path, &stored, "upload answer")?;
        Ok(answer)
    }

    fn totals_now(&self, meter_id: &str) -> Result<Totals> {
        let dir = self.meter_dir(meter_id)?.join("purchases");
        let purchases = match std::fs::read_dir(&dir) {
            Ok(d) => d
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count() as u64,
            Err(_) => 0,
        };
        let book = Shelf::of(&self.dir, meter_id)?.read()?;
        Ok(Totals {
            vouchers: book.vouchers.len() as u64,
            amount: book.issued_total(),
            purchases,
        })
    }
}

impl Store for FileStore {
    fn purchase<'a>(&'a self, p: &'a Purchase, sign: SignVoucher<'a>) -> Fut<'a, Purchased> {
        Box::pin(async move { self.purchase_now(p, sign) })
    }

    fn upload<'a>(
        &'a self,
        meter_id: &'a str,
        upload_key: [u8; 32],
        reconcile: Reconcile<'a>,
    ) -> Fut<'a, Answer> {
        Box::pin(async move { self.upload_now(meter_id, upload_key, reconcile) })
    }

    fn lookup<'a>(&'a self, meter_id: &'a str, look: Look<'a>) -> Fut<'a, Looked> {
        Box::pin(async move {
            let _one = self.lock()?;
            Ok(Shelf::of(&self.dir, meter_id)?.update(|book, locked| look(book, locked))?)
        })
    }

    fn totals<'a>(&'a self, meter_id: &'a str) -> Fut<'a, Totals> {
        Box::pin(async move { self.totals_now(meter_id) })
    }

    fn queued<'a>(&'a self, meter_id: &'a str) -> Fut<'a, super::pending::Queued> {
        Box::pin(async move { self.queued_now(meter_id) })
    }

    fn queue_order<'a>(&'a self, meter_id: &'a str, id: &'a str, der: Vec<u8>) -> Fut<'a, Vec<u8>> {
        Box::pin(async move { self.queue_order_now(meter_id, id, der) })
    }

    fn settle<'a>(&'a self, r: &'a super::SettleRequest<'a>) -> Fut<'a, super::Settled> {
        Box::pin(async move { self.settle_now(r) })
    }

    fn certificates<'a>(&'a self, subject_cn: &'a str) -> Fut<'a, Vec<crate::state::Issued>> {
        Box::pin(async move { self.certificates_now(subject_cn) })
    }

    fn certify<'a>(
        &'a self,
        meter_id: &'a str,
        key: [u8; 32],
        issue: super::Issue<'a>,
    ) -> Fut<'a, super::Certified> {
        Box::pin(async move { self.certify_now(meter_id, key, issue) })
    }

    fn shared_secret<'a>(&'a self, name: &'a str, fresh: [u8; 32]) -> Fut<'a, [u8; 32]> {
        Box::pin(async move { self.shared_secret_now(name, fresh) })
    }
}
