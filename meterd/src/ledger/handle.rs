//! [`Ledger`], the cheap-to-clone front of the ledger thread, and the
//! thread's start-up (create with a sealed genesis row, or audit), which
//! ends with the start epoch row and its counter increment.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::{oneshot, watch};

use super::chain::{epoch_previous, epoch_reason};
use super::notice::{Notice, Publisher};
use super::reserve::{self, AccountTerms, Funds, Reservation, SharedFunds};
use super::rows::{not_defined, Tip};
use super::sealer::counter_read;
use super::sequencer::Advance;
use super::writer::{CommitReq, Request, Writer};
use super::{
    audit, chain, checkpoint, epoch, schema, AuditReport, Entry, EntryKind, Finisher, LedgerError,
    LedgerState, Outcome, Result, Sealer, Verdict,
};
use crate::money::Amount;

#[path = "handle_reads.rs"]
mod reads;

/// Longest meter id accepted, in bytes.
const MAX_METER_ID: usize = 128;

/// Handle on the ledger; clones share the one ledger thread.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Request>,
    funds: SharedFunds,
    state: watch::Receiver<LedgerState>,
    /// Read-only connection for lookups (WAL readers never wait for the
    /// writer), opened on first use.
    reader: Arc<Mutex<Option<rusqlite::Connection>>>,
    path: PathBuf,
    /// For the background audit (its own connection and thread).
    sealer: Arc<dyn Sealer>,
    meter_id: Arc<str>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

type Started = (watch::Receiver<LedgerState>, AuditReport);

/// Epoch length by default: rows between two periodic epoch advances.
pub const DEFAULT_EPOCH_ROWS: u64 = 128;

/// How a ledger opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Create the ledger (schema and sealed genesis row) when `path` holds none.
    pub create: bool,
    /// Audit from the last signed checkpoint when one verifies (every clean
    /// audit writes one; see `checkpoint.rs`) rather than from genesis:
    /// rows after it are verified in full, rows before it only by a later
    /// full audit ([`Ledger::audit`]). Start time then grows with the rows
    /// since the last clean audit, not the ledger.
    pub from_checkpoint: bool,
    /// Rows per epoch: the counter advances every `epoch_rows` rows (and at
    /// every start and orderly stop).
    pub epoch_rows: u64,
    /// Which commits wake [`Ledger::subscribe`]'s receivers at once (the
    /// state is replaced at every commit either way).
    pub notice: Notice,
}

impl Options {
    /// An existing ledger, audited from its last signed checkpoint.
    pub const FROM_CHECKPOINT: Options = Options {
        create: false,
        from_checkpoint: true,
        epoch_rows: DEFAULT_EPOCH_ROWS,
        notice: Notice::EVERY_BATCH,
    };
}

impl Default for Options {
    fn default() -> Self {
        Options {
            create: false,
            from_checkpoint: false,
            epoch_rows: DEFAULT_EPOCH_ROWS,
            notice: Notice::EVERY_BATCH,
        }
    }
}

impl Ledger {
    /// Opens the ledger at `path` and starts its thread.
    ///
    /// With `create` and no ledger at `path` (no file, or no rows), creates
    /// the schema and a sealed genesis row bound to `meter_id`. Otherwise runs
    /// a full audit and returns its report: a bad verdict does not refuse to
    /// open (the caller appends a Lock row). A file SQLite cannot read
    /// (truncated, not a database) gives [`LedgerError::Storage`]: such a
    /// ledger could not take the Lock row either.
    ///
    /// On a clean (or rolled-forward) ledger the open then advances the
    /// epoch (the start epoch row, sealed, and one counter increment), so no
    /// copy of the ledger taken before this start can be accepted again.
    ///
    /// Blocks for the audit (about a second per million rows).
    pub fn open(
        path: &Path,
        sealer: Box<dyn Sealer>,
        meter_id: &str,
        create: bool,
    ) -> Result<(Ledger, AuditReport)> {
        let opts = Options {
            create,
            ..Options::default()
        };
        Self::open_with(path, sealer, meter_id, opts)
    }

    /// [`Ledger::open`] with every option (e.g. `from_checkpoint`).
    pub fn open_with(
        path: &Path,
        sealer: Box<dyn Sealer>,
        meter_id: &str,
        opts: Options,
    ) -> Result<(Ledger, AuditReport)> {
        if meter_id.is_empty() || meter_id.len() > MAX_METER_ID {
            return Err(LedgerError::Invalid("meter id empty or too long".into()));
        }
        let (tx, rx) = mpsc::channel();
        let (init_tx, init_rx) = mpsc::channel::<Result<Started>>();
        let funds: SharedFunds = Arc::new(Mutex::new(Funds::default()));
        let args = StartArgs {
            path: path.to_owned(),
            meter_id: meter_id.to_owned(),
            opts,
            funds: Arc::clone(&funds),
        };
        let sealer: Arc<dyn Sealer> = Arc::from(sealer);
        let kept = Arc::clone(&sealer);
        std::thread::Builder::new()
            .name("ledger".into())
            .spawn(move || match start(args, sealer) {
                Ok((writer, started)) => {
                    if init_tx.send(Ok(started)).is_ok() {
                        writer.run(rx);
                    }
                }
                Err(e) => {
                    let _ = init_tx.send(Err(e));
                }
            })
            .map_err(|e| LedgerError::Storage(format!("cannot start the ledger thread: {e}")))?;
        let (state, report) = init_rx.recv().map_err(|_| LedgerError::Stopped)??;
        let ledger = Ledger {
            tx,
            funds,
            state,
            reader: Arc::new(Mutex::new(None)),
            path: path.to_owned(),
            sealer: kept,
            meter_id: Arc::from(meter_id),
        };
        Ok((ledger, report))
    }

    /// Holds `debit` against the funds not yet reserved, or refuses with
    /// [`LedgerError::InsufficientFunds`]. Call before any TPM work.
    pub fn reserve(&self, debit: Amount) -> Result<Reservation> {
        reserve::reserve(&self.funds, debit)
    }

    /// [`Ledger::reserve`] against the register `fund` pays from: the
    /// postage register for postage once the funds are split, the services
    /// register otherwise; a refusal in split mode names the register.
    pub fn reserve_in(&self, fund: super::Fund, debit: Amount) -> Result<Reservation> {
        reserve::reserve_in(&self.funds, fund, debit)
    }

    /// The funds the admission check reads, locked for a change.
    fn funds_now(&self) -> Result<std::sync::MutexGuard<'_, Funds>> {
        self.funds
            .lock()
            .map_err(|_| LedgerError::Storage("funds lock poisoned".into()))
    }

    /// Holds `owed` (funds owed, e.g. a revocation fee due) out of what
    /// [`Ledger::reserve`] grants, so that no sale spends money the meter
    /// owes; the settlement debit is committed without a reservation.
    pub fn set_owed(&self, owed: Amount) -> Result<()> {
        let mut f = self.funds_now()?;
        f.owed = owed;
        Ok(())
    }

    /// Adds `amount` to the owed hold (a fee due is being recorded).
    pub fn hold_owed(&self, amount: Amount) -> Result<()> {
        let mut f = self.funds_now()?;
        f.owed = f.owed.checked_add(amount)?;
        Ok(())
    }

    /// Takes `amount` off the owed hold (the fee's row was not written).
    pub fn release_owed(&self, amount: Amount) -> Result<()> {
        let mut f = self.funds_now()?;
        f.owed = f.owed.checked_sub(amount).unwrap_or(Amount::ZERO);
        Ok(())
    }

    /// Holds `debit` for a settlement of what is owed: granted against the
    /// funds less live reservations (not less the owed hold, which exists
    /// for it), so a settlement never takes money an in-flight sale holds.
    pub fn reserve_owed(&self, debit: Amount) -> Result<Reservation> {
        reserve::reserve_owed(&self.funds, debit)
    }

    /// The amount [`Ledger::set_owed`] holds.
    pub fn owed(&self) -> Amount {
        self.funds.lock().map(|f| f.owed).unwrap_or(Amount::ZERO)
    }

    /// Sets the current-account terms the admission check applies (`None`:
    /// prepaid mode). Requests already admitted keep the mode they were
    /// admitted in; the commit re-checks a booked charge against the terms
    /// in force.
    pub fn set_account(&self, terms: Option<AccountTerms>) -> Result<()> {
        let mut f = self.funds_now()?;
        f.account = terms;
        Ok(())
    }

    /// Current-account terms in force and the amount reserved now.
    pub fn account(&self) -> Option<(AccountTerms, Amount)> {
        let f = self.funds.lock().ok()?;
        f.account.map(|t| (t, f.reserved))
    }

    /// Appends `entry` (in the next group commit) and returns once it is
    /// durable and sealed, or an earlier row with its request id exists.
    pub async fn commit(&self, entry: Entry, reservation: Option<Reservation>) -> Result<Outcome> {
        self.commit_inner(entry, reservation, None)
            .await
            .map(|(o, _)| o)
    }

    /// Like [`Ledger::commit`], but the product is made by `finish` inside
    /// the sequencing job, from the row's own sequence number, time,
    /// registers, epoch and link, on the housing thread. Returns the
    /// outcome and the product delivered: the one just made, or the stored
    /// one of an earlier row with this request id.
    pub async fn commit_finishing(
        &self,
        entry: Entry,
        reservation: Option<Reservation>,
        finish: Finisher,
    ) -> Result<(Outcome, Vec<u8>)> {
        self.commit_inner(entry, reservation, Some(finish)).await
    }

    async fn commit_inner(
        &self,
        entry: Entry,
        reservation: Option<Reservation>,
        finish: Option<Finisher>,
    ) -> Result<(Outcome, Vec<u8>)> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Commit(CommitReq {
            entry,
            reservation,
            finish,
            reply,
        }))?;
        rx.await.map_err(|_| LedgerError::Stopped)?
    }

    /// Tests: stops the ledger thread as a killed process would: no stop
    /// epoch row, the batch in flight lost.
    #[doc(hidden)]
    pub fn crash(&self) {
        let _ = self.send(Request::Crash);
    }

    /// The full audit from genesis in the background of a start from the
    /// checkpoint (design 12-14 §3): on its own read-only connection and
    /// thread, over one read snapshot, while commits go on. It checks every
    /// hash, link, register, epoch and batch of that snapshot and its last
    /// seal; not the counter (the start judged it). A clean history is
    /// stored as a signed checkpoint, so the next start verifies less. The
    /// caller locks the meter on a bad verdict.
    pub async fn verify_history(&self) -> Result<AuditReport> {
        let path = self.path.clone();
        let sealer = Arc::clone(&self.sealer);
        let meter_id = Arc::clone(&self.meter_id);
        let (report, signed) = tokio::task::spawn_blocking(move || {
            let conn = schema::open_reader(&path)?;
            conn.execute_batch("BEGIN").map_err(schema::storage)?;
            let out = audit::run(&conn, &meter_id, sealer.as_ref(), audit::Mode::History);
            let _ = conn.execute_batch("COMMIT");
            let out = out?;
            let signed = match out.report.verdict {
                Verdict::Clean => Some(checkpoint::make(
                    &meter_id,
                    sealer.as_ref(),
                    out.tip.seq,
                    &out.tip.head,
                    &out.tip.registers,
                    out.lock_seq,
                )?),
                _ => None,
            };
            Ok::<_, LedgerError>((out.report, signed))
        })
        .await
        .map_err(|_| LedgerError::Stopped)??;
        if let Some(signed) = signed {
            let (reply, rx) = oneshot::channel();
            self.send(Request::Checkpoint(signed, reply))?;
            if let Err(e) = rx.await.map_err(|_| LedgerError::Stopped)? {
                tracing::warn!(error = %e, "checkpoint of the background audit not stored");
            }
        }
        Ok(report)
    }

    /// Full audit while running (commits wait for it).
    pub async fn audit(&self) -> Result<AuditReport> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Audit(reply))?;
        rx.await.map_err(|_| LedgerError::Stopped)?
    }

    /// Stops the ledger thread and closes the database; other handles then
    /// get [`LedgerError::Stopped`].
    pub async fn close(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Close(reply))?;
        rx.await.map_err(|_| LedgerError::Stopped)
    }

    /// Snapshot of the registers, head and lock.
    pub fn state(&self) -> LedgerState {
        self.state.borrow().clone()
    }

    /// Receiver of the state after each commit: its value is always the
    /// latest; it is woken as [`Options::notice`] says.
    pub fn subscribe(&self) -> watch::Receiver<LedgerState> {
        self.state.clone()
    }

    fn send(&self, r: Request) -> Result<()> {
        self.tx.send(r).map_err(|_| LedgerError::Stopped)
    }
}

struct StartArgs {
    path: PathBuf,
    meter_id: String,
    opts: Options,
    funds: SharedFunds,
}

/// Runs on the ledger thread: open, create or audit, build the writer,
/// open the start epoch.
fn start(a: StartArgs, sealer: Arc<dyn Sealer>) -> Result<(Writer, Started)> {
    let started = std::time::Instant::now();
    let conn = schema::connect(&a.path, a.opts.create)?;
    let fresh = !schema::has_rows(&conn)?;
    if fresh && !a.opts.create {
        return Err(LedgerError::Storage(format!(
            "no ledger rows in {}",
            a.path.display()
        )));
    }
    let (tip, counter, report) = if fresh {
        schema::create(&conn, &a.meter_id)?;
        let c = counter_read(sealer.as_ref())?.ok_or_else(not_defined)?;
        let tip = Tip {
            head: chain::genesis_prev(&a.meter_id),
            nv: c,
            epoch_seq: 0,
            seq: 0,
            registers: super::Registers::default(),
            lock: None,
            time_ms: 0,
        };
        (tip, Some(c), None)
    } else {
        let mode = if a.opts.from_checkpoint {
            audit::Mode::Start
        } else {
            audit::Mode::Full
        };
        schema::add_register_column(&conn)?;
        let out = audit::run(&conn, &a.meter_id, sealer.as_ref(), mode)?;
        schema::ensure(&conn)?;
        (out.tip, out.tpm_nv, Some(out.report))
    };
    if let Ok(mut f) = a.funds.lock() {
        f.set_registers(&tip.registers);
    }
    let (state, state_rx) = watch::channel(tip.state());
    let meter_id: Arc<str> = Arc::from(a.meter_id.as_str());
    let previous = match &report {
        None => epoch_previous::NONE,
        Some(_) => epoch::previous_run(&conn, &tip)?,
    };
    let mut writer = Writer::new(
        conn,
        sealer,
        Arc::clone(&meter_id),
        tip,
        counter,
        a.opts.epoch_rows,
        (a.funds, Publisher::new(state, a.opts.notice)),
    );
    let start_advance = Advance {
        reason: epoch_reason::START,
        previous,
    };
    let report = match report {
        Some(mut r) => {
            if matches!(r.verdict, Verdict::Clean | Verdict::RolledForward) {
                writer.advance_now(start_advance, Vec::new());
                r.ledger_nv = writer.durable.nv;
                r.tpm_nv = writer.counter().unwrap_or(r.tpm_nv);
                r.rows = writer.durable.seq;
            } else {
                // A ledger judged rollback or tamper never opens an epoch:
                // that would bind it to the counter again.
                writer.hold();
            }
            r
        }
        None => genesis(&mut writer, &meter_id, start_advance, started)?,
    };
    Ok((writer, (state_rx, report)))
}

/// Commits the sealed genesis row of a new ledger, with the first epoch row.
fn genesis(
    w: &mut Writer,
    meter_id: &str,
    advance: Advance,
    started: std::time::Instant,
) -> Result<AuditReport> {
    let entry = Entry {
        kind: EntryKind::Genesis,
        service: None,
        key: None,
        input_digest: [0; 48],
        credit: Amount::ZERO,
        debit: Amount::ZERO,
        product: meter_id.as_bytes().to_vec(),
        note: "genesis".into(),
        fund: super::Fund::Services,
    };
    let (reply, mut rx) = oneshot::channel();
    let req = CommitReq {
        entry,
        reservation: None,
        finish: None,
        reply,
    };
    w.advance_now(advance, vec![req]);
    match rx.try_recv() {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(LedgerError::Storage("genesis not committed".into())),
    }
    if w.durable.epoch_seq == 0 {
        return Err(LedgerError::Storage("first epoch not opened".into()));
    }
    Ok(AuditReport {
        verdict: Verdict::Clean,
        rows: w.durable.seq,
        batches: 1,
        head: w.durable.head,
        ledger_nv: w.durable.nv,
        tpm_nv: w.counter().unwrap_or(0),
        millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        created: true,
        from_seq: 0,
    })
}
