//! Where `meter-authority serve` keeps what it must not lose or double:
//! purchases (each voucher issued once per client purchase id), meter books
//! (what was issued to each meter and what its acknowledged reports showed),
//! the rows a lookup finds, and the answer given to every report upload.
//!
//! Two stores do the same operations: [`files::FileStore`], the authority
//! directory the command line uses (the embedded default: demos, tests, one
//! process), and [`pg::PgStore`], PostgreSQL for a provider serving many
//! meters from several processes. Each operation is one transaction under
//! the meter's lock (a `flock` on the meter's directory, or a `SELECT ... FOR
//! UPDATE` on its row), so two requests for one meter at once run one after
//! the other, and a retried request finds the answer of the first.
//!
//! The signing (a voucher, an acknowledgement) runs inside the operation,
//! so the bytes handed out are the bytes recorded: a retry gets them again.

pub mod certify;
pub mod files;
pub mod marker;
pub mod pending;
pub mod pg;
pub mod settle;

use std::future::Future;
use std::pin::Pin;

use crate::book::Rows;
use crate::book::{Book, IndexRow};
use crate::credit::{Settlement, StoredLine};
use crate::lookup::Looked;
use crate::state::Register;
use crate::AuthorityError;
use meter_pki::credit::Payment;

/// Issues the answer to a certification request (runs under the lock),
/// with the serials of `Register` and recording there what it issued.
pub type Issue<'a> = Box<dyn FnOnce(&mut dyn Register) -> crate::Result<Vec<u8>> + Send + 'a>;

/// The answer to a certification request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certified {
    /// The answer (JSON bytes, see `serve::enrol`).
    pub answer: Vec<u8>,
    /// `false` when an earlier request was answered with these bytes.
    pub fresh: bool,
}

/// A verified payment a creditor asks to settle.
pub struct SettleRequest<'a> {
    /// The creditor's name (from its credential).
    pub creditor: &'a str,
    /// The payment certificate as brought (PEM or DER).
    pub payment_bytes: &'a [u8],
    /// SHA-256 of its DER.
    pub digest: [u8; 32],
    /// The payment, verified.
    pub payment: &'a Payment,
    /// Its line.
    pub line: &'a StoredLine,
    /// Unix seconds.
    pub now: i64,
}

/// The answer to a settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// What was settled.
    pub settlement: Settlement,
    /// `false` when an earlier request settled it.
    pub fresh: bool,
}

/// Failures of a store, by kind (the HTTP layer maps each to a status).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// The authority refused the request or failed.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    /// The request contradicts an earlier one with the same id.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Stored data is damaged.
    #[error("store damaged: {0}")]
    Corrupt(String),
}

impl From<meter_pki::PkiError> for StoreError {
    fn from(e: meter_pki::PkiError) -> Self {
        StoreError::Authority(e.into())
    }
}

impl From<meter_proto::money::AmountError> for StoreError {
    fn from(e: meter_proto::money::AmountError) -> Self {
        StoreError::Authority(e.into())
    }
}

/// Result of a store operation.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A future a store returns (boxed: the server holds `dyn Store`).
pub type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A top-up bought for a meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchase {
    /// The meter.
    pub meter_id: String,
    /// The client's id of the purchase: a retry carries the same one.
    pub purchase_id: String,
    /// Minor units.
    pub amount: u64,
    /// The register the voucher names (`postage` or `services`), if any.
    pub register: Option<String>,
}

impl Purchase {
    /// The conflict of a retry of this purchase id that recorded `amount`
    /// and `register`: another amount or another register.
    pub fn differs(&self, amount: u64, register: Option<&str>) -> Option<StoreError> {
        if amount != self.amount {
            return Some(StoreError::Conflict(format!(
                "purchase {} was for {amount} minor units, not {}",
                self.purchase_id, self.amount
            )));
        }
        if register != self.register.as_deref() {
            return Some(StoreError::Conflict(format!(
                "purchase {} was for register {}, not {}",
                self.purchase_id,
                register.unwrap_or("(none)"),
                self.register.as_deref().unwrap_or("(none)")
            )));
        }
        None
    }
}

/// The voucher of a purchase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchased {
    /// Its sequence number for the meter.
    pub sequence: u64,
    /// The signed voucher (CMS, DER), the same bytes on every retry.
    pub voucher: Vec<u8>,
    /// `false` when an earlier request issued it.
    pub fresh: bool,
}

/// What a report upload is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The acknowledgement (CMS, DER).
    Ack(Vec<u8>),
    /// Refused: the forced lock order (CMS, DER) and what was wrong.
    Refused {
        /// The lock order.
        lock_order: Vec<u8>,
        /// One sentence per discrepancy.
        findings: Vec<String>,
    },
}

/// Signs the voucher of a sequence number (runs inside the purchase).
pub type SignVoucher<'a> = &'a (dyn Fn(u64) -> crate::Result<Vec<u8>> + Sync);

/// Reconciles an upload against the meter's book and signs the answer
/// (runs inside the upload, under the meter's lock).
pub type Reconcile<'a> =
    Box<dyn FnOnce(&mut Book, &mut dyn Rows) -> crate::Result<Answer> + Send + 'a>;

/// Answers a lookup from the meter's book and every indexed row, and may
/// keep the object in the book as awaited (runs under the meter's lock).
pub type Look<'a> = Box<dyn FnOnce(&mut Book, &mut dyn Rows) -> crate::Result<Looked> + Send + 'a>;

/// Totals of one meter, for checks and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Vouchers issued.
    pub vouchers: u64,
    /// Their sum (minor units).
    pub amount: u64,
    /// Purchases recorded.
    pub purchases: u64,
}

/// The operations `serve` needs; see the module docs.
pub trait Store: Send + Sync {
    /// Issues the voucher of `p` once: a purchase id seen before returns the
    /// voucher it got (and a conflict if the amount differs).
    fn purchase<'a>(&'a self, p: &'a Purchase, sign: SignVoucher<'a>) -> Fut<'a, Purchased>;

    /// Runs `reconcile` on the book of `meter_id` once per `upload_key`
    /// (a digest of the whole upload): a repeated upload returns the answer
    /// recorded the first time without reconciling again.
    fn upload<'a>(
        &'a self,
        meter_id: &'a str,
        upload_key: [u8; 32],
        reconcile: Reconcile<'a>,
    ) -> Fut<'a, Answer>;

    /// Runs `look` on the book of `meter_id` (a relying party's lookup).
    fn lookup<'a>(&'a self, meter_id: &'a str, look: Look<'a>) -> Fut<'a, Looked>;

    /// What the store holds for `meter_id`, re-derived from its records.
    fn totals<'a>(&'a self, meter_id: &'a str) -> Fut<'a, Totals>;

    /// What is bought or queued for `meter_id`, with its book (see [`pending`]).
    fn queued<'a>(&'a self, meter_id: &'a str) -> Fut<'a, pending::Queued>;

    /// Queues the signed order `id` (`clear-lock/<nonce>`) for `meter_id`
    /// once: an id queued before returns the bytes queued then.
    fn queue_order<'a>(&'a self, meter_id: &'a str, id: &'a str, der: Vec<u8>) -> Fut<'a, Vec<u8>>;

    /// Settles a verified payment once (see `settle`).
    fn settle<'a>(&'a self, r: &'a SettleRequest<'a>) -> Fut<'a, Settled>;

    /// The certificates this authority issued to `subject_cn` (a meter id),
    /// what a report upload's signer is checked against (see `certify`).
    fn certificates<'a>(&'a self, subject_cn: &'a str) -> Fut<'a, Vec<crate::state::Issued>>;

    /// Certifies `meter_id` once per request `key` (see `certify`).
    fn certify<'a>(
        &'a self,
        meter_id: &'a str,
        key: [u8; 32],
        issue: Issue<'a>,
    ) -> Fut<'a, Certified>;

    /// The secret `name` every server on this store shares: the one stored,
    /// or `fresh` (random bytes the caller drew) stored now if there is
    /// none. Kept beside the state it guards, at the same trust: who can
    /// read the store can read the pending lists the secret opens.
    fn shared_secret<'a>(&'a self, name: &'a str, fresh: [u8; 32]) -> Fut<'a, [u8; 32]>;
}

/// Rows kept in memory during one database transaction: the meter's
/// indexed rows (loaded when the reconciliation needs them) and the rows it
/// adds, written in the same transaction.
#[derive(Debug, Default)]
pub struct MemRows {
    /// Rows already indexed (`None`: not loaded).
    pub existing: Option<Vec<IndexRow>>,
    /// Rows the reconciliation added.
    pub added: Vec<IndexRow>,
}

impl Rows for MemRows {
    fn index_rows(&mut self, _book: &Book) -> crate::Result<Vec<IndexRow>> {
        self.existing
            .clone()
            .ok_or_else(|| AuthorityError::Corrupt("indexed rows were not loaded".into()))
    }

    fn add_index(
        &mut self,
        _book: &mut Book,
        _first: u64,
        _last: u64,
        rows: &[IndexRow],
    ) -> crate::Result<()> {
        self.added.extend_from_slice(rows);
        Ok(())
    }
}

/// Checks a client's purchase id: 1 to 128 visible ASCII characters.
pub fn check_purchase_id(id: &str) -> crate::Result<()> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AuthorityError::Invalid(
            "a purchase id is 1 to 128 visible ASCII characters".into(),
        ));
    }
    Ok(())
}
