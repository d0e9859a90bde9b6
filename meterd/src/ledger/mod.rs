//! The ledger: the meter's registers as an append-only, hash-chained SQLite
//! journal, sealed by the TPM and bound to its NV monotonic counter.
//!
//! This module is the only door to SQLite. The commit path is a two-stage
//! pipeline (see `writer.rs` and `sequencer.rs`): the ledger thread gathers
//! every commit request waiting into a batch and hands it to the housing
//! thread as ONE sequencing job (registers, row hashes and links, the
//! products made at commit — the postmark's one TPM signature —, and when
//! needed the batch's explicit seal); while the housing thread sequences
//! batch k+1, the ledger thread writes and fsyncs batch k (one `BEGIN
//! IMMEDIATE` transaction) and answers its requests. No product leaves
//! before its row is durable.
//!
//! # Epochs (layout v2)
//!
//! The NV counter no longer moves per batch. An *epoch* is a value of the
//! counter; the epoch in force is that of the last `epoch` row (an Event
//! row, note `epoch`, key `m/epoch/<counter>`, product the JSON
//! [`meter_pki::ledger_format::EpochRecord`]). The epoch advances at every
//! start (before the first sale), every `epoch_rows` rows (between batches,
//! never in a reply path) and at an orderly stop: the epoch row E+1 is
//! written and sealed first, the counter incremented to E+1 after its fsync
//! (a crash in between is rolled forward at the next start). NV increments:
//! at most 1000 / `epoch_rows` + starts + stops per 1000 rows, at any load.
//!
//! # Seals
//!
//! The last row of every batch is sealed, by one of:
//!
//! * its own product, when it is *seal-bearing*: a postmark token or a CMS
//!   the meter signs carries `(epoch, seq, link)` as a signed attribute
//!   ([`meter_pki::ledger_format::LedgerSeal`]), where `link` =
//!   SHA-384("meterd-link-v2" ‖ meter_id ‖ epoch ‖ prev ‖ canonical row
//!   bytes with the product digest zeroed) ([`link_digest`]). One TPM
//!   signature then makes the product and seals the chain up to its row.
//!   The batch row's `seal` column is empty;
//! * an explicit seal: identity-key signature over SHA-384("meterd-seal-v2"
//!   ‖ meter_id ‖ epoch ‖ head) ([`seal_digest_v2`]), stored in `batches`,
//!   when the last row carries no product seal (validate, recharge, orders,
//!   indicia, user-key signatures, epoch rows). The sequencer puts
//!   seal-bearing rows last in a batch so this is rare under load.
//!
//! The ledger does not parse products: a [`SealReader`] (meterd's over
//! meter-pki; the test [`SoftwareSealReader`]) extracts from a product who
//! signed it (a housing key name fixed in code), the bytes the signature
//! covers and the signature; the ledger checks those bytes contain the
//! row's seal attribute and that the signature verifies under that key's
//! public key as the housing reports it.
//!
//! Ledgers of schema version 2 (layout v1: one seal and one increment per
//! batch, digest "meterd-seal-v1" over the counter value) keep their old
//! batches: the layout changes at the first epoch row, which the first
//! start under schema version 3 writes (counter value of the last v1 batch
//! plus one, as the TPM's next increment gives). Batches before it are
//! audited as v1, batches from it on as v2.
//!
//! # Verdicts
//!
//! At open, after the chain: the ledger's epoch (the last v1 batch's counter
//! value on a ledger not yet upgraded) equal to the TPM counter is Clean;
//! one ahead is an advance interrupted before its increment: RolledForward
//! (the counter is incremented); behind is Rollback; anything else Tamper.
//! The start advance then opens a new epoch, so no copy taken before this
//! start can be accepted again. What the remaining window allows (a copy of
//! the current epoch restored after a kill) is argued in
//! `docs/ARCHITECTURE.md`, "Rollback window".
//!
//! # Storage
//!
//! `journal` (one row per event, append-only by trigger), `products`
//! (what each row delivered, kept apart so the journal stays small; the
//! row holds its SHA-384), `batches` (one per group commit: rows covered,
//! the counter value (v1) or epoch (v2), head, seal — empty when the last
//! row's product carries it), `checkpoints` (signed state after a clean
//! audit, see `checkpoint.rs`; lets a start verify only newer rows),
//! `meta` (schema version, meter id).
//!
//! # Chain
//!
//! Row hash = SHA-384(prev ‖ canonical row bytes), where prev is the
//! *recomputed* hash of the previous row and, for row 1,
//! SHA-384("meterd-ledger-v1" ‖ meter_id). Canonical row bytes, integers
//! big-endian (unchanged since layout v1):
//!
//! ```text
//! seq u64 | time i64 (Unix ms) | kind u8 | service u8 (0 = none)
//! | request_id: 0x00 (absent) or 0x01, len u8, bytes (<= 200; see `key.rs`)
//! | credit u64 | debit u64 | ascending u64 | descending u64 | control_total u64
//! | pieces u64 | service_count u64 (this row's service, after it; 0 if none)
//! | product_digest [48] (SHA-384 of the product) | note: len u8, bytes (<= 64)
//! ```
//!
//! The input digest (kept with the product) is not chained: it only tells
//! a retry from a conflicting reuse of a request id.
//!
//! # Audit
//!
//! One pass in seq order: seq contiguity from 1, every hash and link
//! recomputed, AR + DR = CT on every row and register continuity, epochs
//! strictly increasing, batches contiguous from row 1 with heads equal to
//! the recomputed chain (v1: counter values increasing; v2: the epoch in
//! force at their last row), every row inside a batch; then the last
//! batch's seal (explicit, or the last row's product) is verified — it
//! covers the whole chain — and the epoch compared with the TPM.
//!
//! At start the audit begins at the last signed checkpoint and the meter is
//! ready at once; the full audit from genesis then runs in the background
//! on a read-only connection ([`Ledger::verify_history`]) and the meter
//! locks on damage. `meterctl audit` runs it on demand ([`Ledger::audit`]).
//!
//! Damage (hash, link, register or batch mismatch) at rows before an
//! Unlock row with note `reanchor` is forgiven when that row itself links
//! to the recomputed chain: the authority reviewed it. An edit before the
//! reanchor made later changes the recomputed chain at the reanchor row, so
//! it is caught again. A seal that does not verify, a meter id that is not
//! ours or a counter too far ahead are never forgiven.
//!
//! A product that must state its own row's registers (a postage indicium)
//! or seal its row (a postmark) is made inside the sequencing job: a
//! [`Finisher`] passed to [`Ledger::commit_finishing`] is called on the
//! housing thread with the row's [`RowContext`] (sequence number, time,
//! registers, epoch, link) and the housing itself. Its failure refuses only
//! its entry.
//!
//! A file SQLite cannot read (truncated, not a database) is a
//! [`LedgerError::Storage`] from [`Ledger::open`], not a verdict: there is no
//! working ledger to append the Lock row to.

mod audit;
mod chain;
mod checkpoint;
mod copy;
mod epoch;
mod export;
mod handle;
mod key;
mod notice;
mod query;
mod registers;
mod reserve;
mod rows;
mod scan;
mod schema;
mod seal;
mod sealer;
mod sequencer;
mod store;
mod verify;
mod writer;

pub use chain::{
    genesis_prev, link_digest, seal_digest, seal_digest_v2, verify_seal, LedgerSeal, MAX_NOTE,
    MAX_REQUEST_ID,
};
pub use export::Exported;
pub use handle::{Ledger, Options, DEFAULT_EPOCH_ROWS};
pub use key::{Key, MAX_CALLER_ID};
pub use notice::Notice;
pub use query::{FilteredRow, RowFilter, Usage};
pub use registers::{Fund, Pair, Registers, SPLIT_NOTE};
pub use reserve::{AccountTerms, Reservation};
pub use seal::{Finisher, ProductSeal, RowContext, SealReader, Sealer};
pub use sealer::{HousingSealer, SoftwareSealReader, SoftwareSealer, SoftwareSealerControl};

use crate::money::{Amount, Overflow};
use crate::service::Service;

/// SHA-384 digest.
pub type Digest = [u8; 48];

/// What kind of event a row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// First row of a ledger; binds it to the meter id.
    Genesis = 1,
    /// Certificates and trust anchor installed (product: the provisioning bundle).
    Provision = 2,
    /// A rate table installed (product: the signed table).
    Rates = 3,
    /// Funds credited (product: the voucher).
    Credit = 4,
    /// A service sold and debited (product: what was delivered).
    Debit = 5,
    /// The meter locked (note: reason; product: the nonce a clear order must carry).
    Lock = 6,
    /// A lock cleared by an authority order (product: the order). A row with
    /// note `reanchor` also accepts earlier chain damage the authority reviewed.
    Unlock = 7,
    /// Any other recorded event (note says what; product: its data).
    Event = 8,
}

/// One row to append. Build it with the constructors ([`Entry::debit`],
/// [`Entry::credit`], [`Entry::event`], [`Entry::lock`], [`Entry::unlock`],
/// [`Entry::record`]) so that each kind carries the fields it must.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Event kind.
    pub kind: EntryKind,
    /// Service charged or counted, if any (counts a piece when set).
    pub service: Option<Service>,
    /// Idempotency key; unique in the ledger when present.
    pub key: Option<Key>,
    /// Digest of the request's input, to tell a retry from a conflicting reuse of its key.
    pub input_digest: Digest,
    /// Added to the descending register and the control total.
    pub credit: Amount,
    /// Moved from the descending to the ascending register.
    pub debit: Amount,
    /// What the meter delivers for this row (token, voucher, table, ...);
    /// stored apart from the journal, its SHA-384 is in the row.
    pub product: Vec<u8>,
    /// Short text (lock reason, event name); at most 64 bytes.
    pub note: String,
    /// Register pair the row moves once the meter is split (ignored, i.e.
    /// services, in combined mode). Debits: set from the service by
    /// [`Entry::debit`]; credits: services unless [`Entry::to_fund`].
    pub fund: Fund,
}

impl Entry {
    /// The same entry, paid from or credited to `fund` (in split mode).
    pub fn to_fund(mut self, fund: Fund) -> Entry {
        self.fund = fund;
        self
    }

    /// A sale (or a settlement, `service` None): `debit` moves from DR to AR.
    pub fn debit(
        service: Option<Service>,
        key: Option<Key>,
        input_digest: Digest,
        debit: Amount,
        product: Vec<u8>,
        note: impl Into<String>,
    ) -> Entry {
        Entry {
            kind: EntryKind::Debit,
            service,
            key,
            input_digest,
            credit: Amount::ZERO,
            debit,
            product,
            note: note.into(),
            fund: Fund::of_service(service),
        }
    }

    /// Funds from outside (a voucher): `credit` joins DR and the control total.
    pub fn credit(
        key: Key,
        input_digest: Digest,
        credit: Amount,
        product: Vec<u8>,
        note: impl Into<String>,
    ) -> Entry {
        Entry {
            kind: EntryKind::Credit,
            service: None,
            key: Some(key),
            input_digest,
            credit,
            debit: Amount::ZERO,
            product,
            note: note.into(),
            fund: Fund::Services,
        }
    }

    /// A recorded event that moves no money (an order applied, a request made).
    pub fn event(
        key: Key,
        input_digest: Digest,
        product: Vec<u8>,
        note: impl Into<String>,
    ) -> Entry {
        Entry::record(EntryKind::Event, Some(key), input_digest, product, note)
    }

    /// A lock for `reason`; `nonce` is what a clear-lock order must name;
    /// `order`: the authority's signed lock order it applies, kept in the
    /// row ([`chain::lock_product`]).
    pub fn lock(
        reason: &str,
        nonce: &str,
        order: Option<&[u8]>,
        key: Option<Key>,
        input_digest: Digest,
    ) -> Entry {
        Entry::record(
            EntryKind::Lock,
            key,
            input_digest,
            chain::lock_product(nonce, order),
            reason,
        )
    }

    /// A lock cleared (product: the order or acknowledgement that cleared it).
    pub fn unlock(
        key: Key,
        input_digest: Digest,
        product: Vec<u8>,
        note: impl Into<String>,
    ) -> Entry {
        Entry::record(EntryKind::Unlock, Some(key), input_digest, product, note)
    }

    /// A row of `kind` that moves no money (provisioning, rates, events).
    pub fn record(
        kind: EntryKind,
        key: Option<Key>,
        input_digest: Digest,
        product: Vec<u8>,
        note: impl Into<String>,
    ) -> Entry {
        Entry {
            kind,
            service: None,
            key,
            input_digest,
            credit: Amount::ZERO,
            debit: Amount::ZERO,
            product,
            note: note.into(),
            fund: Fund::Services,
        }
    }
}

/// A lock in force, as recorded by the latest Lock row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// Reason (see `meter_proto::lock_reason`).
    pub reason: String,
    /// Nonce a clear-lock order must carry.
    pub nonce: String,
}

/// In-memory view of the ledger, replaced after every commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerState {
    /// Registers after the last row.
    pub registers: Registers,
    /// Number of rows.
    pub rows: u64,
    /// Chain head (hash of the last row).
    pub head: Digest,
    /// Epoch in force: the NV counter value of the last epoch row (on a
    /// ledger not yet upgraded to epochs, the last batch's counter value).
    pub nv: u64,
    /// Lock in force, if any.
    pub lock: Option<LockInfo>,
    /// Time of the last row, Unix ms (0 before any): no row or sale is
    /// dated earlier (see [`crate::timecheck`]).
    pub time_ms: i64,
}

/// Outcome of a commit.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The row is durable (committed and sealed).
    Committed {
        /// Its sequence number.
        seq: u64,
        /// Registers after it.
        registers: Registers,
    },
    /// A row with this request id and the same input digest exists: here is its product; nothing charged.
    Existing {
        /// Sequence number of the earlier row.
        seq: u64,
        /// Its stored product.
        product: Vec<u8>,
    },
}

/// A stored request, found by its id.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Row sequence number.
    pub seq: u64,
    /// Kind of row.
    pub kind: EntryKind,
    /// Service, if any.
    pub service: Option<Service>,
    /// Input digest recorded with it.
    pub input_digest: Digest,
    /// Product delivered.
    pub product: Vec<u8>,
}

/// What an audit concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Chain, seals and counter agree.
    Clean,
    /// The ledger was one epoch ahead of the counter (a crash between an
    /// epoch row and its increment); the counter was advanced.
    RolledForward,
    /// The ledger is older than the counter: a restored copy.
    Rollback {
        /// Counter value in the ledger.
        ledger_nv: u64,
        /// Counter value in the TPM.
        tpm_nv: u64,
    },
    /// A row was edited, deleted, reordered, or a seal does not verify.
    Tamper {
        /// What was found.
        detail: String,
        /// First row that does not verify, if known.
        first_bad_seq: Option<u64>,
    },
}

/// Result of a full audit.
#[derive(Debug, Clone)]
pub struct AuditReport {
    /// Verdict.
    pub verdict: Verdict,
    /// Rows checked.
    pub rows: u64,
    /// Batches checked.
    pub batches: u64,
    /// Head hash.
    pub head: Digest,
    /// Counter value in the ledger.
    pub ledger_nv: u64,
    /// Counter value in the TPM.
    pub tpm_nv: u64,
    /// Time taken.
    pub millis: u64,
    /// This open created the ledger (it had no rows; a genesis row was just written).
    pub created: bool,
    /// The audit verified the rows after this one: the signed checkpoint it
    /// started from at start (0: from genesis). Rows up to it are verified
    /// again by the background audit (`Ledger::verify_history`).
    pub from_seq: u64,
}

/// Ledger failures.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The descending register cannot cover the debit.
    #[error("insufficient {}funds: {needed} needed, {available} available", fund_word(.fund))]
    InsufficientFunds {
        /// Amount needed.
        needed: Amount,
        /// Amount available (after reservations).
        available: Amount,
        /// The register that refused, in split mode (`None`: the combined pool).
        fund: Option<Fund>,
    },
    /// Current-account mode: the charge would pass the period's credit limit.
    #[error("credit limit reached: {needed} needed, {available} left of the limit {limit}")]
    CreditLimit {
        /// Amount needed.
        needed: Amount,
        /// Amount left in the period (after reservations).
        available: Amount,
        /// Credit limit per period.
        limit: Amount,
    },
    /// A register would overflow.
    #[error("register overflow")]
    Overflow(#[from] Overflow),
    /// The key was used before with different input.
    #[error("request key {0} was already used with different input")]
    Conflict(Key),
    /// An argument is out of bounds (note too long, request id too long, ...).
    #[error("invalid entry: {0}")]
    Invalid(String),
    /// SQLite failed.
    #[error("ledger storage: {0}")]
    Storage(String),
    /// The TPM seal or counter failed.
    #[error("ledger seal: {0}")]
    Housing(#[from] crate::housing::HousingError),
    /// The ledger thread is gone.
    #[error("ledger stopped")]
    Stopped,
}

/// `postage ` / `services ` before "funds" in a refusal, nothing in combined mode.
pub fn fund_word(fund: &Option<Fund>) -> String {
    fund.map(|f| format!("{} ", f.name())).unwrap_or_default()
}

/// Result of ledger operations.
pub type Result<T> = std::result::Result<T, LedgerError>;
