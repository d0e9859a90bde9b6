//! The ledger thread: the only owner of the SQLite connection and of the
//! sealer, group-committing every request waiting when a batch starts.
//!
//! A batch is one `BEGIN IMMEDIATE` transaction, one seal and one counter
//! increment. Entries are applied in arrival order against a working copy of
//! the tip; an entry that fails (funds, conflict, overflow, bounds) is
//! refused before anything of it is written, so it cannot poison the others.
//! A storage or seal failure rolls the whole batch back and fails every
//! entry of it: nothing is charged.

use std::sync::mpsc;

use crate::money::Amount;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::{oneshot, watch};

use super::chain::{self, RowFields, MAX_NOTE, MAX_REQUEST_ID};
use super::reserve::{AccountTerms, Reservation, SharedFunds};
use super::schema::storage;
use super::{
    Digest, Entry, EntryKind, Finisher, LedgerError, LedgerState, LockInfo, Outcome, Registers,
    Result, RowContext, Sealer, Stored,
};
use crate::housing::HousingError;
use crate::service::Service;

/// Most entries in one batch.
pub(crate) const MAX_BATCH: usize = 256;
/// Longest a group commit waits for requests still signing (see `gather`).
pub(crate) const LINGER: std::time::Duration = std::time::Duration::from_millis(100);
/// Largest product accepted, in bytes.
pub(crate) const MAX_PRODUCT: usize = 16 * 1024 * 1024;

/// One commit waiting for its batch.
pub(crate) struct CommitReq {
    pub entry: Entry,
    pub reservation: Option<Reservation>,
    pub finish: Option<Finisher>,
    pub reply: oneshot::Sender<Result<Outcome>>,
}

/// Rows of one kind: (seq, note, product).
pub(crate) type ProductList = Vec<(u64, String, Vec<u8>)>;

/// What the handle asks of the thread.
pub(crate) enum Request {
    Commit(CommitReq),
    Products(EntryKind, oneshot::Sender<Result<ProductList>>),
    /// Rows of one kind whose note is exactly the given text.
    ProductsNoted(EntryKind, String, oneshot::Sender<Result<ProductList>>),
    Audit(oneshot::Sender<Result<super::AuditReport>>),
    Close(oneshot::Sender<()>),
}

/// The end of the chain as the writer knows it.
#[derive(Debug, Clone)]
pub(crate) struct Tip {
    pub seq: u64,
    pub head: Digest,
    pub registers: Registers,
    pub lock: Option<LockInfo>,
    /// Counter value carried by the last batch.
    pub nv: u64,
    /// Time of the last row, Unix ms (0 before any).
    pub time: i64,
}

impl Tip {
    pub fn state(&self) -> LedgerState {
        LedgerState {
            registers: self.registers.clone(),
            rows: self.seq,
            head: self.head,
            nv: self.nv,
            lock: self.lock.clone(),
            time_ms: self.time,
        }
    }
}

/// The thread's state.
pub(crate) struct Writer {
    pub conn: Connection,
    pub sealer: Box<dyn Sealer>,
    pub meter_id: String,
    pub tip: Tip,
    /// Last counter value read from or returned by the TPM.
    pub tpm_nv: u64,
    /// The last batch committed but its counter increment failed.
    pub owed: bool,
    pub funds: SharedFunds,
    pub state: watch::Sender<LedgerState>,
    pub buf: Vec<u8>,
}

/// Copies a housing error (it is not `Clone`: it may hold an `io::Error`).
pub(crate) fn copy_housing(e: &HousingError) -> HousingError {
    match e {
        HousingError::Unavailable(s) => HousingError::Unavailable(s.clone()),
        HousingError::Tpm { command, message } => HousingError::Tpm {
            command,
            message: message.clone(),
        },
        HousingError::NvRate => HousingError::NvRate,
        HousingError::NoSuchKey(s) => HousingError::NoSuchKey(s.clone()),
        HousingError::Io(io) => HousingError::Io(std::io::Error::new(io.kind(), io.to_string())),
        HousingError::Stopped => HousingError::Stopped,
    }
}

/// The same failure, for every entry of a failed batch.
fn copy_error(e: &LedgerError) -> LedgerError {
    match e {
        LedgerError::Housing(h) => LedgerError::Housing(copy_housing(h)),
        LedgerError::Stopped => LedgerError::Stopped,
        other => LedgerError::Storage(other.to_string()),
    }
}

pub(crate) fn not_defined() -> LedgerError {
    LedgerError::Housing(HousingError::Tpm {
        command: "counter_read",
        message: "NV counter not defined".into(),
    })
}

/// Row time: the meter's clock (`crate::clock`, the one source of time),
/// never earlier than the last row's, so that a clock set back cannot date
/// a row before one already sealed (the sale gate locks the meter on such a
/// clock, see `crate::timecheck`; rows the gate does not see, such as the
/// Lock row itself, are dated at the last row's time).
fn row_time(tip: &Tip) -> i64 {
    crate::clock::now_millis().max(tip.time)
}

/// SQLite stores u64 registers as their i64 bit pattern.
pub(crate) fn to_sql(v: u64) -> i64 {
    v as i64
}

impl Writer {
    /// Serves requests until every handle is gone or one asks to close.
    pub fn run(mut self, rx: mpsc::Receiver<Request>) {
        let mut pending: Option<Request> = None;
        let mut closed: Option<oneshot::Sender<()>> = None;
        loop {
            let first = match pending.take() {
                Some(r) => r,
                None => match rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                },
            };
            match first {
                Request::Commit(c) => {
                    let mut batch = vec![c];
                    pending = self.gather(&rx, &mut batch);
                    self.serve_batch(batch);
                }
                Request::Products(kind, reply) => {
                    let _ = reply.send(self.products(kind, None));
                }
                Request::ProductsNoted(kind, note, reply) => {
                    let _ = reply.send(self.products(kind, Some(&note)));
                }
                Request::Audit(reply) => {
                    let _ = reply.send(self.audit());
                }
                Request::Close(reply) => {
                    closed = Some(reply);
                    break;
                }
            }
        }
        // The connection must be closed (WAL checkpointed) before the
        // closer hears back.
        drop(self);
        if let Some(reply) = closed {
            let _ = reply.send(());
        }
    }

    /// Adds to `batch` the commits already waiting and, while other
    /// reserved requests are still at work (signing in the TPM), waits for
    /// them up to [`LINGER`]: every batch costs a TPM seal and an NV
    /// increment, so a batch of one per sign would halve the TPM's
    /// throughput. A lone client never waits. Returns a non-commit request
    /// that ended the gathering, to be served next.
    fn gather(
        &mut self,
        rx: &mpsc::Receiver<Request>,
        batch: &mut Vec<CommitReq>,
    ) -> Option<Request> {
        let start = std::time::Instant::now();
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Request::Commit(c)) => {
                    batch.push(c);
                    continue;
                }
                Ok(other) => return Some(other),
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            let in_flight = self.funds.lock().map(|f| f.holders).unwrap_or(0);
            let elapsed = start.elapsed();
            if batch.len() >= in_flight || elapsed >= LINGER {
                return None;
            }
            // Re-check the holders every millisecond: a request that
            // failed its work drops its reservation without committing.
            let slice = (LINGER - elapsed).min(std::time::Duration::from_millis(1));
            match rx.recv_timeout(slice) {
                Ok(Request::Commit(c)) => batch.push(c),
                Ok(other) => return Some(other),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
        None
    }

    fn serve_batch(&mut self, batch: Vec<CommitReq>) {
        let mut entries = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for c in batch {
            entries.push((c.entry, c.reservation, c.finish));
            replies.push(c.reply);
        }
        let (outcomes, sealed) = self.commit_rows(entries);
        // The rows are durable: answer now, then advance the counter.
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            let _ = reply.send(outcome);
        }
        if sealed {
            self.advance_counter();
        }
    }

    /// Commits a batch (rows, then the TPM counter) and returns one outcome
    /// per entry, in order.
    pub fn commit_entries(
        &mut self,
        entries: Vec<(Entry, Option<Reservation>)>,
    ) -> Vec<Result<Outcome>> {
        let entries = entries.into_iter().map(|(e, r)| (e, r, None)).collect();
        let (outcomes, sealed) = self.commit_rows(entries);
        if sealed {
            self.advance_counter();
        }
        outcomes
    }

    /// Increments the TPM counter to the batch just committed; a failure is
    /// remembered and settled before the next batch.
    fn advance_counter(&mut self) {
        match self.sealer.counter_increment() {
            Ok(v) => self.tpm_nv = v,
            Err(e) => {
                tracing::warn!(error = %e, nv = self.tip.nv, "counter increment failed; retried before the next batch");
                self.owed = true;
            }
        }
    }

    /// Commits a batch's rows and seal (not yet the counter increment);
    /// returns the outcomes and whether a seal was written.
    fn commit_rows(
        &mut self,
        entries: Vec<(Entry, Option<Reservation>, Option<Finisher>)>,
    ) -> (Vec<Result<Outcome>>, bool) {
        let n = entries.len();
        let fail_all = |e: LedgerError| ((0..n).map(|_| Err(copy_error(&e))).collect(), false);
        if let Err(e) = self.settle_counter() {
            return fail_all(e);
        }
        let mut work = self.tip.clone();
        let terms = match self.funds.lock() {
            Ok(f) => f.account,
            Err(p) => p.into_inner().account,
        };
        let mut refs = Vec::with_capacity(n);
        let mut reservations = Vec::with_capacity(n);
        for (mut e, r, f) in entries {
            // Current account: the charge is booked as credit = debit, so AR
            // and CT rise by the price and DR stays put (AR + DR = CT).
            let limit = match (&r, terms) {
                (Some(r), Some(t)) if r.is_account() => {
                    if e.credit == Amount::ZERO {
                        e.credit = e.debit;
                    }
                    Some(t)
                }
                _ => None,
            };
            refs.push((e, f, limit));
            reservations.push(r);
        }
        let outcomes = match self.apply_batch(refs, &mut work) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, entries = n, "ledger batch rolled back");
                return fail_all(e);
            }
        };
        let sealed = work.nv != self.tip.nv;
        self.tip = work;
        {
            let mut funds = match self.funds.lock() {
                Ok(f) => f,
                Err(p) => p.into_inner(),
            };
            funds.descending = self.tip.registers.descending;
            funds.ascending = self.tip.registers.ascending;
            for r in reservations.into_iter().flatten() {
                r.release_locked(&mut funds);
            }
        }
        self.state.send_replace(self.tip.state());
        (outcomes, sealed)
    }

    /// Brings the TPM counter up to the last committed batch if an earlier
    /// increment failed (the ledger is then exactly one ahead).
    fn settle_counter(&mut self) -> Result<()> {
        if !self.owed {
            return Ok(());
        }
        let c = self.sealer.counter_read()?.ok_or_else(not_defined)?;
        if c.checked_add(1) == Some(self.tip.nv) {
            self.tpm_nv = self.sealer.counter_increment()?;
        } else {
            // The increment did happen (its reply was lost), or the TPM
            // moved on its own: take its value; the audit judges the rest.
            self.tpm_nv = c;
        }
        self.owed = false;
        Ok(())
    }

    fn apply_batch(
        &mut self,
        entries: Vec<(Entry, Option<Finisher>, Option<AccountTerms>)>,
        work: &mut Tip,
    ) -> Result<Vec<Result<Outcome>>> {
        let now = row_time(work);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage)?;
        let first_seq = work.seq + 1;
        let mut outcomes = Vec::with_capacity(entries.len());
        for (entry, finish, limit) in entries {
            outcomes.push(apply_entry(
                &tx,
                work,
                (&entry, limit),
                finish,
                now,
                &mut self.buf,
            )?);
        }
        if work.seq >= first_seq {
            let nv = self
                .tpm_nv
                .checked_add(1)
                .ok_or(LedgerError::Overflow(crate::money::Overflow))?;
            let digest = chain::seal_digest(&self.meter_id, nv, &work.head);
            // On failure `tx` drops here: rolled back, nothing charged.
            let seal = self.sealer.sign(&digest)?;
            tx.prepare_cached(
                "INSERT INTO batches(first_seq, last_seq, nv, head, seal, time) VALUES (?1,?2,?3,?4,?5,?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    to_sql(first_seq),
                    to_sql(work.seq),
                    to_sql(nv),
                    &work.head[..],
                    &seal[..],
                    now
                ])
            })
            .map_err(storage)?;
            work.nv = nv;
            work.time = now;
        }
        tx.commit().map_err(storage)?;
        Ok(outcomes)
    }

    fn products(&mut self, kind: EntryKind, note: Option<&str>) -> Result<ProductList> {
        // The note filter runs in SQL so that, e.g., the few certificate rows
        // among many debits are found without loading every product.
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT j.seq, j.note, j.product_digest, p.product
                 FROM journal j JOIN products p ON p.seq = j.seq
                 WHERE j.kind = ?1 AND (?2 IS NULL OR j.note = ?2) ORDER BY j.seq",
            )
            .map_err(storage)?;
        let rows = stmt
            .query_map(rusqlite::params![kind as u8, note], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .map_err(storage)?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, note, digest, product) = row.map_err(storage)?;
            check_product(seq, &digest, &product)?;
            out.push((seq as u64, note, product));
        }
        Ok(out)
    }

    fn audit(&mut self) -> Result<super::AuditReport> {
        self.settle_counter()?;
        // Pages still in the WAL are slower to stream; fold them in first.
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(storage)?;
        let out = super::audit::run(&self.conn, &self.meter_id, self.sealer.as_mut())?;
        self.tpm_nv = out.tpm_nv;
        Ok(out.report)
    }
}

/// A product handed out must be the one the chain vouches for.
fn check_product(seq: i64, digest: &[u8], product: &[u8]) -> Result<()> {
    if chain::sha384(product).as_slice() != digest {
        return Err(LedgerError::Storage(format!(
            "product of row {seq} does not match its digest"
        )));
    }
    Ok(())
}

/// Entry kind from its code.
pub(crate) fn kind_from_code(code: u8) -> Option<EntryKind> {
    use EntryKind::*;
    [
        Genesis, Provision, Rates, Credit, Debit, Lock, Unlock, Event,
    ]
    .into_iter()
    .find(|k| *k as u8 == code)
}

/// Applies one entry inside the batch transaction. The outer error aborts
/// the batch (storage failed); the inner one refuses this entry only, and
/// is always decided before anything of the entry is written. `limit`:
/// the current-account terms a booked charge must stay within.
fn apply_entry(
    tx: &rusqlite::Transaction<'_>,
    work: &mut Tip,
    (e, limit): (&Entry, Option<AccountTerms>),
    finish: Option<Finisher>,
    now: i64,
    buf: &mut Vec<u8>,
) -> Result<Result<Outcome>> {
    if e.note.len() > MAX_NOTE {
        return Ok(Err(LedgerError::Invalid(format!(
            "note longer than {MAX_NOTE} bytes"
        ))));
    }
    if e.request_id
        .as_ref()
        .is_some_and(|r| r.len() > MAX_REQUEST_ID)
    {
        return Ok(Err(LedgerError::Invalid(format!(
            "request id longer than {MAX_REQUEST_ID} bytes"
        ))));
    }
    if e.product.len() > MAX_PRODUCT {
        return Ok(Err(LedgerError::Invalid("product too large".into())));
    }
    if (e.kind == EntryKind::Genesis) != (work.seq == 0) {
        return Ok(Err(LedgerError::Invalid(
            "genesis is the first row and only it".into(),
        )));
    }
    if let Some(id) = &e.request_id {
        let found = tx
            .prepare_cached(
                "SELECT j.seq, p.input_digest, p.product FROM journal j
                 JOIN products p ON p.seq = j.seq WHERE j.request_id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([id], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })
                .optional()
            })
            .map_err(storage)?;
        if let Some((seq, input, product)) = found {
            if input.as_slice() == e.input_digest.as_slice() {
                return Ok(Ok(Outcome::Existing {
                    seq: seq as u64,
                    product,
                }));
            }
            return Ok(Err(LedgerError::Conflict(id.clone())));
        }
    }
    if let Some(t) = limit {
        let available = t.available(work.registers.ascending, Amount::ZERO);
        if e.debit > available {
            return Ok(Err(LedgerError::CreditLimit {
                needed: e.debit,
                available,
                limit: t.limit,
            }));
        }
    }
    let regs = match next_registers(&work.registers, e) {
        Ok(r) => r,
        Err(err) => return Ok(Err(err)),
    };
    let seq = work.seq + 1;
    // A finisher makes the product now that the row's registers are known;
    // if it fails, nothing of this entry has been written.
    let made;
    let product: &[u8] = match finish {
        None => &e.product,
        Some(f) => {
            let ctx = RowContext {
                seq,
                time_ms: now,
                registers: regs.clone(),
            };
            made = match f(&ctx) {
                Ok(p) => p,
                Err(err) => return Ok(Err(err)),
            };
            if made.len() > MAX_PRODUCT {
                return Ok(Err(LedgerError::Invalid("product too large".into())));
            }
            &made
        }
    };
    let product_digest = chain::sha384(product);
    let service = e.service.map_or(0, Service::code);
    let service_count = e.service.map_or(0, |s| regs.per_service[s.index()]);
    let fields = RowFields {
        seq,
        time: now,
        kind: e.kind as u8,
        service,
        request_id: e.request_id.as_deref().map(str::as_bytes),
        credit: e.credit.0,
        debit: e.debit.0,
        ascending: regs.ascending.0,
        descending: regs.descending.0,
        control_total: regs.control_total.0,
        pieces: regs.pieces,
        service_count,
        product_digest: &product_digest,
        note: e.note.as_bytes(),
    };
    if fields.encode(buf).is_err() {
        return Ok(Err(LedgerError::Invalid("field too long".into())));
    }
    let hash = chain::row_hash(&work.head, buf);
    tx.prepare_cached(
        "INSERT INTO journal(seq, time, kind, service, request_id, credit, debit, ascending,
         descending, control_total, pieces, service_count, product_digest, note, prev_hash, hash)
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16)",
    )
    .and_then(|mut s| {
        s.execute(params![
            to_sql(seq),
            now,
            e.kind as u8,
            service,
            e.request_id,
            to_sql(e.credit.0),
            to_sql(e.debit.0),
            to_sql(regs.ascending.0),
            to_sql(regs.descending.0),
            to_sql(regs.control_total.0),
            to_sql(regs.pieces),
            to_sql(service_count),
            &product_digest[..],
            e.note,
            &work.head[..],
            &hash[..],
        ])
    })
    .and_then(|_| {
        tx.prepare_cached("INSERT INTO products(seq, input_digest, product) VALUES (?1,?2,?3)")?
            .execute(params![to_sql(seq), &e.input_digest[..], product])
    })
    .map_err(storage)?;
    work.seq = seq;
    work.head = hash;
    work.registers = regs.clone();
    match e.kind {
        EntryKind::Lock => {
            work.lock = Some(LockInfo {
                reason: e.note.clone(),
                nonce: String::from_utf8_lossy(&e.product).into_owned(),
            })
        }
        EntryKind::Unlock => work.lock = None,
        _ => {}
    }
    Ok(Ok(Outcome::Committed {
        seq,
        registers: regs,
    }))
}

/// Registers after `e`: credit first, then the debit, every step checked.
///
/// A `reanchor` Unlock row (an authority cleared a tamper lock) also
/// restores AR + DR = CT when the damage it accepts broke it: the control
/// total and the ascending register stand, the descending register is what
/// is left, so a descending register edited upwards is not kept.
pub(crate) fn next_registers(r: &Registers, e: &Entry) -> Result<Registers> {
    if is_reanchor(e.kind as u8, e.note.as_bytes()) {
        return Ok(reanchored(r));
    }
    let funds = r.descending.checked_add(e.credit)?;
    if e.debit > funds {
        return Err(LedgerError::InsufficientFunds {
            needed: e.debit,
            available: funds,
        });
    }
    let mut n = r.clone();
    n.descending = funds.checked_sub(e.debit)?;
    n.ascending = r.ascending.checked_add(e.debit)?;
    n.control_total = r.control_total.checked_add(e.credit)?;
    if let Some(s) = e.service {
        n.pieces = r.pieces.checked_add(1).ok_or(crate::money::Overflow)?;
        let c = &mut n.per_service[s.index()];
        *c = c.checked_add(1).ok_or(crate::money::Overflow)?;
    }
    Ok(n)
}

/// Whether a row is a `reanchor` Unlock row.
pub(crate) fn is_reanchor(kind: u8, note: &[u8]) -> bool {
    kind == EntryKind::Unlock as u8 && note == b"reanchor"
}

/// Registers a reanchor row carries after `r` (see [`next_registers`]).
pub(crate) fn reanchored(r: &Registers) -> Registers {
    let mut n = r.clone();
    n.ascending = Amount(r.ascending.0.min(r.control_total.0));
    n.descending = Amount(r.control_total.0 - n.ascending.0);
    n
}

/// The row stored under `request_id`, read through any connection (the
/// writer's, or the ledger's separate reader so that lookups need not wait
/// for a group commit).
pub(crate) fn lookup_in(conn: &Connection, request_id: &str) -> Result<Option<Stored>> {
    let row = conn
        .prepare_cached(
            "SELECT j.seq, j.kind, j.service, j.product_digest, p.input_digest, p.product
             FROM journal j JOIN products p ON p.seq = j.seq WHERE j.request_id = ?1",
        )
        .and_then(|mut s| {
            s.query_row([request_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, Vec<u8>>(5)?,
                ))
            })
            .optional()
        })
        .map_err(storage)?;
    let Some((seq, kind, service, digest, input, product)) = row else {
        return Ok(None);
    };
    check_product(seq, &digest, &product)?;
    let bad = |what: &str| LedgerError::Storage(format!("row {seq}: bad {what}"));
    Ok(Some(Stored {
        seq: seq as u64,
        kind: u8::try_from(kind)
            .ok()
            .and_then(kind_from_code)
            .ok_or_else(|| bad("kind"))?,
        service: match service {
            0 => None,
            s => Some(
                u8::try_from(s)
                    .ok()
                    .and_then(Service::from_code)
                    .ok_or_else(|| bad("service"))?,
            ),
        },
        input_digest: input
            .as_slice()
            .try_into()
            .map_err(|_| bad("input digest"))?,
        product,
    }))
}
