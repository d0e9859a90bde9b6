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

use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::{oneshot, watch};

use super::chain;
use super::reserve::{AccountTerms, Reservation, SharedFunds};
use super::rows::{apply_entry, check_product, not_defined, row_time, to_sql, Tip};
use super::schema::storage;
use super::{Entry, EntryKind, Finisher, LedgerError, LedgerState, Outcome, Result, Sealer};
use crate::housing::HousingError;
use crate::money::Amount;

/// Most entries in one batch.
pub(crate) const MAX_BATCH: usize = 256;
/// Longest a group commit waits for requests still signing (see `gather`).
pub(crate) const LINGER: std::time::Duration = std::time::Duration::from_millis(100);

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
