//! The ledger thread: the only owner of the SQLite connection; the first
//! and last stage of the commit pipeline.
//!
//! Each turn of its loop, while the housing thread is free, it gathers the
//! commit requests waiting into a batch, answers those whose key is already
//! in the ledger (a retry: the stored product; other input: a conflict),
//! holds back those whose key is in a batch not yet written (they are
//! answered from the ledger once it is), and hands the rest to the housing
//! thread as one sequencing job (`sequencer.rs`). Then it writes and fsyncs
//! the batch sequenced the turn before and answers its requests, then waits
//! for the job. So batch k is written while batch k+1 is signed: the TPM is
//! fed back to back, and no product leaves before its row is durable. When
//! there is no batch to write meanwhile (a lone request, the first batch of
//! a burst) and the housing is free, this thread runs the job itself
//! (`HousingHandle::run_here_or_spawn`) instead of waiting for the housing
//! thread to run it: two thread hops less for a lone sale.
//!
//! Failures: an entry the sequencer refuses (funds, limit, a finisher's
//! error) is refused alone. A batch whose explicit seal fails, or whose
//! write fails, fails whole (nothing charged), and a write failure also
//! fails the batch sequenced on top of it; the sequenced tip returns to the
//! durable one. Requests other than commits (queries, audits, close) wait
//! until the pipeline is empty.

use std::collections::{HashSet, VecDeque};
use std::sync::{mpsc, Arc};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::chain::epoch_reason;
use super::checkpoint;
use super::copy::copy_error;
use super::notice::Publisher;
use super::query::ProductList;
use super::reserve::{Reservation, SharedFunds};
use super::rows::{stored_by_key, Tip};
use super::schema::storage;
use super::sequencer::{Advance, Item, Sequenced, Sequencer};
use super::store;
use super::{AuditReport, Entry, EntryKind, Finisher, Key, LedgerError, Outcome, Result, Sealer};
use crate::housing::{Housing, Pending};
use crate::money::Amount;

/// Most entries in one batch.
pub(crate) const MAX_BATCH: usize = 256;
/// Longest an idle pipeline waits for requests still at work before it
/// starts a batch (see `gather`).
pub(crate) const LINGER: std::time::Duration = std::time::Duration::from_millis(100);

/// Where a commit's answer goes: the outcome and the product delivered.
pub(crate) type Reply = oneshot::Sender<Result<(Outcome, Vec<u8>)>>;

/// One commit waiting for its batch.
pub(crate) struct CommitReq {
    pub entry: Entry,
    pub reservation: Option<Reservation>,
    pub finish: Option<Finisher>,
    pub reply: Reply,
}

/// What the handle asks of the thread.
pub(crate) enum Request {
    Commit(CommitReq),
    Products(EntryKind, oneshot::Sender<Result<ProductList>>),
    /// Rows of one kind whose note is exactly the given text.
    ProductsNoted(EntryKind, String, oneshot::Sender<Result<ProductList>>),
    Audit(oneshot::Sender<Result<AuditReport>>),
    /// A signed checkpoint to store (made by a background audit).
    Checkpoint(checkpoint::Signed, oneshot::Sender<Result<()>>),
    Close(oneshot::Sender<()>),
    /// Tests: stop at once, as a killed process would, writing nothing
    /// more (the batch sequenced and not yet written is lost).
    Crash,
}

/// A request in the pipeline, answered when its batch is written.
struct Waiting {
    reply: Reply,
    reservation: Option<Reservation>,
    key: Option<String>,
}

type JobResult = (Sequencer, Result<Sequenced>);

/// A batch on the housing thread.
struct Job {
    pending: Pending<JobResult>,
    waiting: Vec<Waiting>,
}

/// A batch sequenced, to be written.
struct Ready {
    batch: Result<Sequenced>,
    waiting: Vec<Waiting>,
}

enum Gathered {
    Batch(Vec<CommitReq>),
    /// A batch, then a request that is not a commit.
    Other(Vec<CommitReq>, Box<Request>),
    /// Every handle is gone.
    Gone(Vec<CommitReq>),
}

/// The thread's state.
pub(crate) struct Writer {
    pub conn: Connection,
    pub sealer: Arc<dyn Sealer>,
    pub meter_id: Arc<str>,
    /// End of the chain as written.
    pub durable: Tip,
    /// The sequencer, when it is home (not on the housing thread).
    pub seq: Option<Sequencer>,
    pub epoch_rows: u64,
    pub funds: SharedFunds,
    pub state: Publisher,
    /// Keys of entries in batches not yet written.
    taken: HashSet<String>,
    /// Requests whose key was taken, for the next batch.
    deferred: VecDeque<CommitReq>,
    /// A write failed while a batch sequenced on top of it was on the
    /// housing thread: that batch fails too.
    poisoned: Option<LedgerError>,
    job: Option<Job>,
    ready: Option<Ready>,
    hold: bool,
    /// The lock of a held ledger was cleared (an Unlock row is durable):
    /// the next job lifts the hold and opens an epoch, binding the ledger
    /// to the counter again.
    rebind: bool,
}

fn fail_all(waiting: Vec<Waiting>, e: &LedgerError) {
    let (replies, reservations): (Vec<_>, Vec<_>) = waiting
        .into_iter()
        .map(|w| (w.reply, w.reservation))
        .unzip();
    // Released before anybody hears of the failure.
    drop(reservations);
    for reply in replies {
        let _ = reply.send(Err(copy_error(e)));
    }
}

impl Writer {
    pub fn new(
        conn: Connection,
        sealer: Arc<dyn Sealer>,
        meter_id: Arc<str>,
        durable: Tip,
        counter: Option<u64>,
        epoch_rows: u64,
        (funds, state): (SharedFunds, Publisher),
    ) -> Writer {
        let seq = Sequencer::new(
            durable.clone(),
            counter,
            Arc::clone(&sealer),
            Arc::clone(&meter_id),
            epoch_rows,
        );
        Writer {
            conn,
            sealer,
            meter_id,
            durable,
            seq: Some(seq),
            epoch_rows,
            funds,
            state,
            taken: HashSet::new(),
            deferred: VecDeque::new(),
            poisoned: None,
            job: None,
            ready: None,
            hold: false,
            rebind: false,
        }
    }

    /// Serves requests until every handle is gone or one asks to close.
    pub fn run(mut self, rx: mpsc::Receiver<Request>) {
        let mut closed: Option<oneshot::Sender<()>> = None;
        loop {
            if self.job.is_none() {
                let idle = self.ready.is_none() && self.deferred.is_empty() && !self.has_work();
                match self.gather(&rx, idle) {
                    Gathered::Batch(batch) => self.launch(batch),
                    Gathered::Other(_, req) if matches!(*req, Request::Crash) => return,
                    Gathered::Other(batch, req) => {
                        self.launch(batch);
                        self.drain();
                        if let Some(reply) = self.serve(*req) {
                            closed = Some(reply);
                            break;
                        }
                        continue;
                    }
                    Gathered::Gone(batch) => {
                        self.launch(batch);
                        self.drain();
                        break;
                    }
                }
            }
            if let Some(r) = self.ready.take() {
                self.write(r);
            }
            if let Some(j) = self.job.take() {
                self.ready = Some(self.receive(j));
            }
        }
        for c in self.deferred.drain(..) {
            let _ = c.reply.send(Err(LedgerError::Stopped));
        }
        // The connection must be closed (WAL checkpointed) before the
        // closer hears back.
        drop(self);
        if let Some(reply) = closed {
            let _ = reply.send(());
        }
    }

    /// Serves a request that is not a commit (the pipeline is empty);
    /// returns the closer's reply channel on `Close`.
    fn serve(&mut self, req: Request) -> Option<oneshot::Sender<()>> {
        match req {
            Request::Products(kind, reply) => {
                let _ = reply.send(self.products(kind, None));
            }
            Request::ProductsNoted(kind, note, reply) => {
                let _ = reply.send(self.products(kind, Some(&note)));
            }
            Request::Audit(reply) => {
                let _ = reply.send(self.audit());
            }
            Request::Checkpoint(signed, reply) => {
                let _ = reply.send(checkpoint::insert(&self.conn, &signed));
            }
            Request::Close(reply) => {
                self.stop();
                return Some(reply);
            }
            Request::Commit(c) => self.deferred.push_back(c),
            Request::Crash => {}
        }
        None
    }

    fn has_work(&mut self) -> bool {
        if self.rebind {
            return true;
        }
        let durable = self.durable.nv;
        self.seq.as_mut().is_some_and(|s| {
            s.durable_epoch = durable;
            s.has_work()
        })
    }

    /// Takes the commits waiting (and those held back), up to
    /// [`MAX_BATCH`]. When the pipeline is idle (`idle`) it blocks for the
    /// first request and then, while other reserved requests are still at
    /// work (signing in the TPM before they commit), waits for them up to
    /// [`LINGER`], so a burst makes one batch. When a batch is being
    /// written it never waits: the housing thread must not idle.
    fn gather(&mut self, rx: &mpsc::Receiver<Request>, idle: bool) -> Gathered {
        let mut batch: Vec<CommitReq> = self.deferred.drain(..).collect();
        if batch.is_empty() && idle {
            match rx.recv() {
                Ok(Request::Commit(c)) => batch.push(c),
                Ok(other) => return Gathered::Other(batch, Box::new(other)),
                Err(_) => return Gathered::Gone(batch),
            }
        }
        let start = std::time::Instant::now();
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Request::Commit(c)) => {
                    batch.push(c);
                    continue;
                }
                Ok(other) => return Gathered::Other(batch, Box::new(other)),
                Err(mpsc::TryRecvError::Disconnected) => return Gathered::Gone(batch),
                Err(mpsc::TryRecvError::Empty) => {}
            }
            let in_flight = self.funds.lock().map(|f| f.holders).unwrap_or(0);
            let elapsed = start.elapsed();
            if !idle || batch.is_empty() || batch.len() >= in_flight || elapsed >= LINGER {
                break;
            }
            // Re-check the holders every millisecond: a request that
            // failed its work drops its reservation without committing.
            let slice = (LINGER - elapsed).min(std::time::Duration::from_millis(1));
            match rx.recv_timeout(slice) {
                Ok(Request::Commit(c)) => batch.push(c),
                Ok(other) => return Gathered::Other(batch, Box::new(other)),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Gathered::Gone(batch),
            }
        }
        Gathered::Batch(batch)
    }

    /// Answers what the ledger already holds, then hands the rest (and any
    /// counter work due) to the housing thread as one job.
    fn launch(&mut self, batch: Vec<CommitReq>) {
        let terms = match self.funds.lock() {
            Ok(f) => f.account,
            Err(p) => p.into_inner().account,
        };
        let mut items = Vec::with_capacity(batch.len());
        let mut waiting = Vec::with_capacity(batch.len());
        let mut seen = HashSet::new();
        for c in batch {
            let key = c.entry.key.as_ref().map(Key::encode);
            if let Some(k) = &key {
                if self.taken.contains(k) || !seen.insert(k.clone()) {
                    // Its twin is in a batch not yet written: answered from
                    // the ledger once it is.
                    self.deferred.push_back(c);
                    continue;
                }
                match stored_by_key(&self.conn, k) {
                    Err(e) => {
                        let _ = c.reply.send(Err(e));
                        continue;
                    }
                    Ok(Some((seq, input, product))) => {
                        let out = if input.as_slice() == c.entry.input_digest.as_slice() {
                            Ok((
                                Outcome::Existing {
                                    seq,
                                    product: product.clone(),
                                },
                                product,
                            ))
                        } else {
                            Err(LedgerError::Conflict(
                                c.entry.key.clone().unwrap_or(Key::meter("none", "")),
                            ))
                        };
                        drop(c.reservation);
                        let _ = c.reply.send(out);
                        continue;
                    }
                    Ok(None) => {}
                }
            }
            let mut entry = c.entry;
            // Current account: the charge is booked as credit = debit, so AR
            // and CT rise by the price and DR stays put (AR + DR = CT).
            let limit = match (&c.reservation, terms) {
                (Some(r), Some(t)) if r.is_account() => {
                    if entry.credit == Amount::ZERO {
                        entry.credit = entry.debit;
                    }
                    Some(t)
                }
                _ => None,
            };
            items.push(Item {
                entry,
                finish: c.finish,
                limit,
            });
            waiting.push(Waiting {
                reply: c.reply,
                reservation: c.reservation,
                key,
            });
        }
        if items.is_empty() && !self.has_work() {
            return;
        }
        let mut seq = match self.seq.take() {
            Some(s) => s,
            None => self.fresh_sequencer(),
        };
        seq.durable_epoch = self.durable.nv;
        if self.rebind {
            self.rebind = false;
            seq.hold = false;
            seq.advance.get_or_insert(Advance {
                reason: epoch_reason::CLEARED,
                previous: "",
            });
        }
        for k in waiting.iter().filter_map(|w| w.key.clone()) {
            self.taken.insert(k);
        }
        let job = move |h: &mut dyn Housing| {
            let out = seq.run(h, items);
            Ok((seq, out))
        };
        // With a batch to write meanwhile the TPM signs on its own thread
        // (the pipeline); with none, this thread would only wait, so it
        // runs the job itself when the housing is free (a lone request:
        // no hop to the housing thread and back).
        let job = match self.ready {
            Some(_) => self.sealer.housing().spawn_urgent(job),
            None => self.sealer.housing().run_here_or_spawn(job),
        };
        match job {
            Ok(pending) => self.job = Some(Job { pending, waiting }),
            Err(e) => {
                // The housing is gone, and the sequencer with the job.
                self.seq = Some(self.fresh_sequencer());
                self.release_keys(&waiting);
                fail_all(waiting, &LedgerError::Housing(e));
            }
        }
    }

    fn fresh_sequencer(&self) -> Sequencer {
        let mut s = Sequencer::new(
            self.durable.clone(),
            None,
            Arc::clone(&self.sealer),
            Arc::clone(&self.meter_id),
            self.epoch_rows,
        );
        s.hold = self.hold;
        s
    }

    fn release_keys(&mut self, waiting: &[Waiting]) {
        for k in waiting.iter().filter_map(|w| w.key.as_ref()) {
            self.taken.remove(k);
        }
    }

    /// Waits for the job on the housing thread.
    fn receive(&mut self, job: Job) -> Ready {
        let Job { pending, waiting } = job;
        match pending.wait() {
            Ok((seq, batch)) => {
                self.seq = Some(seq);
                if let Some(e) = self.poisoned.take() {
                    // Sequenced on top of a batch that was not written.
                    if let (Some(s), Ok(b)) = (self.seq.as_mut(), &batch) {
                        s.tip = self.durable.clone();
                        s.requeue(b.advance);
                    }
                    return Ready {
                        batch: Err(e),
                        waiting,
                    };
                }
                Ready { batch, waiting }
            }
            Err(e) => {
                self.poisoned = None;
                self.seq = Some(self.fresh_sequencer());
                Ready {
                    batch: Err(LedgerError::Housing(e)),
                    waiting,
                }
            }
        }
    }

    /// Writes a sequenced batch and answers its requests.
    fn write(&mut self, ready: Ready) {
        let Ready { batch, waiting } = ready;
        self.release_keys(&waiting);
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, entries = waiting.len(), "ledger batch refused");
                fail_all(waiting, &e);
                return;
            }
        };
        if !batch.rows.is_empty() {
            if let Err(e) = store::write_batch(&mut self.conn, &batch) {
                tracing::warn!(error = %e, entries = waiting.len(), "ledger batch not written; it and the batch sequenced on it are refused");
                match self.seq.as_mut() {
                    Some(s) => {
                        s.tip = self.durable.clone();
                        s.requeue(batch.advance);
                    }
                    None => self.poisoned = Some(copy_error(&e)),
                }
                fail_all(waiting, &e);
                return;
            }
            self.durable = batch.tip.clone();
            let unlocked = batch.rows.iter().any(|r| r.kind == EntryKind::Unlock as u8);
            if self.hold && unlocked && self.durable.lock.is_none() {
                tracing::info!("lock cleared: the ledger is bound to the counter again");
                self.hold = false;
                self.rebind = true;
            }
        }
        let mut replies = Vec::with_capacity(waiting.len());
        {
            let mut funds = match self.funds.lock() {
                Ok(f) => f,
                Err(p) => p.into_inner(),
            };
            funds.set_registers(&self.durable.registers);
            for w in waiting {
                if let Some(r) = w.reservation {
                    r.release_locked(&mut funds);
                }
                replies.push(w.reply);
            }
        }
        if !batch.rows.is_empty() {
            self.state.publish(self.durable.state(), &batch.rows);
        }
        for (reply, result) in replies.into_iter().zip(batch.results) {
            let out = result.and_then(|p| {
                let row = batch
                    .rows
                    .get(p.row)
                    .ok_or_else(|| LedgerError::Storage("sequenced row missing".into()))?;
                Ok((
                    Outcome::Committed {
                        seq: row.seq,
                        registers: row.registers.clone(),
                    },
                    row.product.clone(),
                ))
            });
            let _ = reply.send(out);
        }
    }

    /// Runs the pipeline empty: the batch in hand written, the job waited
    /// for and written, then an increment due made.
    fn drain(&mut self) {
        self.flush();
        if self.has_work() {
            self.launch(Vec::new());
            self.flush();
        }
    }

    fn flush(&mut self) {
        loop {
            if let Some(r) = self.ready.take() {
                self.write(r);
            }
            match self.job.take() {
                Some(j) => self.ready = Some(self.receive(j)),
                None => break,
            }
        }
    }

    /// Opens a new epoch now (start, stop) and brings the counter to it;
    /// `items` go into the same batch (the genesis row of a new ledger).
    pub fn advance_now(&mut self, advance: Advance, items: Vec<CommitReq>) {
        if let Some(s) = self.seq.as_mut() {
            s.advance = Some(advance);
        }
        self.launch(items);
        self.drain();
    }

    /// Orderly stop: the stop epoch row, then its increment.
    fn stop(&mut self) {
        self.advance_now(
            Advance {
                reason: epoch_reason::STOP,
                previous: "",
            },
            Vec::new(),
        );
    }

    /// Never advance the epoch nor touch the counter again (a ledger judged
    /// rollback or tamper at open; it only takes its Lock row).
    pub fn hold(&mut self) {
        self.hold = true;
        if let Some(s) = self.seq.as_mut() {
            s.hold = true;
        }
    }

    /// Counter value as the sequencer last saw it.
    pub fn counter(&self) -> Option<u64> {
        self.seq.as_ref().and_then(|s| s.counter)
    }

    fn products(&mut self, kind: EntryKind, note: Option<&str>) -> Result<ProductList> {
        super::query::products_in(&self.conn, kind, note)
    }

    fn audit(&mut self) -> Result<AuditReport> {
        // Pages still in the WAL are slower to stream; fold them in first.
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(storage)?;
        let out = super::audit::run(
            &self.conn,
            &self.meter_id,
            self.sealer.as_ref(),
            super::audit::Mode::Full,
        )?;
        if let Some(s) = self.seq.as_mut() {
            s.counter = out.tpm_nv;
        }
        Ok(out.report)
    }
}
