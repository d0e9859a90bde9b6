//! The sequencing job: what the housing thread does for one batch, with
//! the TPM at hand and no thread hop per signature.
//!
//! Given the entries of a batch and the sequenced tip (which may be ahead
//! of the durable one by the batch the ledger thread is writing), it:
//!
//! 1. increments the counter if an epoch row became durable since
//!    (`durable_epoch` one ahead of the counter);
//! 2. opens a new epoch when asked (start, stop) or when `epoch_rows` rows
//!    have passed — only once the previous advance is settled, so the
//!    ledger is never more than one epoch ahead of the counter;
//! 3. makes the rows: the epoch row first (after the genesis row in a new
//!    ledger), then entries without a seal-bearing product, then those with
//!    one, so that under load a batch ends with a row that seals itself;
//!    finishers run here and sign in the housing directly;
//! 4. seals the batch explicitly (identity key, "meterd-seal-v2") only when
//!    the last row's product does not carry its seal.
//!
//! The job owns the [`Sequencer`] while it runs (it travels to the housing
//! thread and back), so the two threads never share it.

use std::sync::Arc;

use super::chain::{self, epoch_reason, EpochRecord, LedgerSeal, EPOCH_NOTE};
use super::reserve::AccountTerms;
use super::rows::{make_row, row_time, NewRow, RowEnv, Tip};
use super::{Entry, EntryKind, Finisher, Key, LedgerError, Result, Sealer};
use crate::housing::{Housing, HousingError};
use crate::money::Amount;

/// One entry of a batch.
pub(crate) struct Item {
    pub entry: Entry,
    pub finish: Option<Finisher>,
    /// Current-account terms the charge must stay within.
    pub limit: Option<AccountTerms>,
}

/// The row an item got.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placed {
    /// Index in [`Sequenced::rows`].
    pub row: usize,
}

/// A batch as sequenced, ready to be written.
pub(crate) struct Sequenced {
    /// Rows in chain order.
    pub rows: Vec<NewRow>,
    /// Per item, in the order given: its row, or why it was refused.
    pub results: Vec<Result<Placed>>,
    /// Explicit seal; empty when the last row's product carries it.
    pub seal: Vec<u8>,
    /// The tip after the batch.
    pub tip: Tip,
    /// Batch time (Unix ms).
    pub time: i64,
    /// The advance the batch's epoch row made, if any.
    pub advance: Option<Advance>,
}

/// An advance asked for by the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Advance {
    pub reason: &'static str,
    /// For a start: how the previous run ended.
    pub previous: &'static str,
}

/// What the sequencing jobs carry from one batch to the next.
pub(crate) struct Sequencer {
    /// End of the chain as sequenced.
    pub tip: Tip,
    /// The counter as last seen (`None`: unknown, read it again).
    pub counter: Option<u64>,
    /// Epoch of the last durable row, told by the writer before each job.
    pub durable_epoch: u64,
    /// An advance asked for (start, stop), made by the next job that can.
    pub advance: Option<Advance>,
    /// No advance and no increment: the ledger was judged rollback or
    /// tamper at open, and must not be bound to the counter again.
    pub hold: bool,
    /// The last increment failed: retried with the next batch, not at once
    /// (a TPM refusing NV writes must not be hammered).
    retry_later: bool,
    sealer: Arc<dyn Sealer>,
    meter_id: Arc<str>,
    epoch_rows: u64,
    buf: Vec<u8>,
}

/// Row slots of a batch, in chain order.
enum Slot {
    Epoch,
    Item(usize),
}

impl Sequencer {
    pub fn new(
        tip: Tip,
        counter: Option<u64>,
        sealer: Arc<dyn Sealer>,
        meter_id: Arc<str>,
        epoch_rows: u64,
    ) -> Sequencer {
        Sequencer {
            durable_epoch: tip.nv,
            tip,
            counter,
            advance: None,
            hold: false,
            retry_later: false,
            sealer,
            meter_id,
            epoch_rows: epoch_rows.max(1),
            buf: Vec::with_capacity(512),
        }
    }

    /// Whether an epoch row is durable and its increment not yet done.
    pub fn settle_due(&self) -> bool {
        if self.hold {
            return false;
        }
        match self.counter {
            Some(c) => c.checked_add(1) == Some(self.durable_epoch),
            None => true,
        }
    }

    /// Whether a new epoch may be opened now: every earlier advance has
    /// reached the TPM (the counter is at or past the epoch in force).
    fn settled(&self) -> bool {
        !self.hold && self.counter.is_some_and(|c| c >= self.tip.nv)
    }

    /// Whether a job with no entries would do something (an increment due,
    /// an advance asked for that can be made).
    pub fn has_work(&self) -> bool {
        (self.settle_due() && self.counter.is_some() && !self.retry_later)
            || (self.advance.is_some() && self.settled())
    }

    /// Brings the counter up to a durable epoch row. A failure is logged and
    /// retried by the next job: the rows keep their epoch, the next start
    /// rolls forward.
    fn settle(&mut self, h: &mut dyn Housing) {
        let index = self.sealer.nv_index();
        if self.counter.is_none() {
            self.counter = h.counter_read(index).ok().flatten();
        }
        if !self.settle_due() {
            return;
        }
        match h.counter_increment(index) {
            Ok(v) => {
                self.counter = Some(v);
                self.retry_later = false;
            }
            Err(e) => {
                self.retry_later = true;
                tracing::warn!(error = %e, epoch = self.durable_epoch, "epoch counter increment failed; retried with the next batch");
                self.counter = h.counter_read(index).ok().flatten();
            }
        }
    }

    /// The advance this batch makes, if any.
    fn take_advance(&mut self, has_items: bool) -> Option<Advance> {
        if !self.settled() {
            return None;
        }
        if let Some(a) = self.advance.take() {
            return Some(a);
        }
        let due =
            has_items && self.tip.epoch_seq > 0 && self.tip.rows_in_epoch() >= self.epoch_rows;
        due.then_some(Advance {
            reason: epoch_reason::ROWS,
            previous: "",
        })
    }

    /// Sequences one batch. `Err` fails the whole batch (its explicit seal
    /// could not be made); the tip is then unchanged.
    pub fn run(&mut self, h: &mut dyn Housing, items: Vec<Item>) -> Result<Sequenced> {
        self.settle(h);
        let advance = self.take_advance(!items.is_empty());
        let mut work = self.tip.clone();
        let now = row_time(&work);
        let mut order: Vec<Slot> = Vec::with_capacity(items.len() + 1);
        let (sealing, plain): (Vec<usize>, Vec<usize>) = (0..items.len())
            .partition(|&i| items[i].finish.as_ref().is_some_and(Finisher::is_sealing));
        order.extend(plain.into_iter().map(Slot::Item));
        order.extend(sealing.into_iter().map(Slot::Item));
        if advance.is_some() {
            // The epoch row opens the batch; a new ledger's genesis row
            // stays row 1.
            let at = usize::from(work.seq == 0 && !order.is_empty());
            order.insert(at, Slot::Epoch);
        }
        let mut items: Vec<Option<Item>> = items.into_iter().map(Some).collect();
        let mut results: Vec<Result<Placed>> = (0..items.len())
            .map(|_| Err(LedgerError::Invalid("entry not sequenced".into())))
            .collect();
        let mut rows: Vec<NewRow> = Vec::with_capacity(order.len());
        let mut last_sealing = false;
        let mut made_advance = None;
        for slot in order {
            match slot {
                Slot::Epoch => {
                    let Some(a) = advance else { continue };
                    match self.epoch_row(h, &mut work, a, now) {
                        Ok(row) => {
                            rows.push(row);
                            last_sealing = false;
                            made_advance = Some(a);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "epoch row not made; the advance is retried");
                            self.requeue(Some(a));
                        }
                    }
                }
                Slot::Item(i) => {
                    let Some(item) = items[i].take() else {
                        continue;
                    };
                    let sealing = item.finish.as_ref().is_some_and(Finisher::is_sealing);
                    let env = RowEnv {
                        meter_id: &self.meter_id,
                        epoch: work.nv,
                        now,
                    };
                    let made = make_row(
                        &mut work,
                        (&item.entry, item.limit),
                        item.finish,
                        &env,
                        h,
                        &mut self.buf,
                    );
                    results[i] = made.map(|row| {
                        rows.push(row);
                        last_sealing = sealing;
                        Placed {
                            row: rows.len() - 1,
                        }
                    });
                }
            }
        }
        let seal = match rows.last() {
            None => Vec::new(),
            Some(last) if last_sealing && self.carries_seal(last, work.nv) => Vec::new(),
            Some(_) => {
                let digest = chain::seal_digest_v2(&self.meter_id, work.nv, &work.head);
                match h.sign_digest(self.sealer.key(), &digest) {
                    Ok(sig) => sig.to_vec(),
                    Err(e) => {
                        self.requeue(made_advance);
                        return Err(e.into());
                    }
                }
            }
        };
        self.tip = work.clone();
        Ok(Sequenced {
            rows,
            results,
            seal,
            tip: work,
            time: now,
            advance: made_advance,
        })
    }

    /// An advance asked for (start, stop) that did not happen is asked for
    /// again; a periodic one comes back by itself.
    pub fn requeue(&mut self, a: Option<Advance>) {
        if let Some(a) = a.filter(|a| a.reason != epoch_reason::ROWS) {
            self.advance.get_or_insert(a);
        }
    }

    /// Whether `row`'s product carries its own seal: a cheap check that the
    /// finisher kept its promise, a search of the product's bytes for the
    /// row's seal attribute (its 48-byte link is this row's alone). Not a
    /// parse: parsing the CMS the finisher had just built cost an eighth of
    /// a postmark's instructions (issue 14, callgrind). The audit parses the
    /// product, finds the attribute among the signed attributes and
    /// verifies the TPM's signature over them.
    fn carries_seal(&self, row: &NewRow, epoch: u64) -> bool {
        let seal = LedgerSeal {
            epoch,
            seq: row.seq,
            link: row.link,
        };
        let found = chain::contains_seal(&seal, &row.product);
        if !found {
            tracing::warn!(
                seq = row.seq,
                "a product promised as seal-bearing carries no seal; sealing the batch explicitly"
            );
        }
        found
    }

    /// Makes the epoch row that opens epoch `counter + 1`.
    fn epoch_row(
        &mut self,
        h: &mut dyn Housing,
        work: &mut Tip,
        a: Advance,
        now: i64,
    ) -> Result<NewRow> {
        let counter = self
            .counter
            .and_then(|c| c.checked_add(1))
            .ok_or(LedgerError::Housing(HousingError::Tpm {
                command: "counter_read",
                message: "epoch counter unknown".into(),
            }))?;
        let clock = h.clock().ok();
        let record = EpochRecord {
            counter,
            reason: a.reason.into(),
            previous: a.previous.into(),
            tpm_clock_ms: clock.map_or(0, |c| c.clock_ms),
            reset_count: clock.map_or(0, |c| c.reset_count),
            restart_count: clock.map_or(0, |c| c.restart_count),
        };
        let product = record.encode();
        let entry = Entry {
            kind: EntryKind::Event,
            service: None,
            key: Some(Key::meter("epoch", counter)),
            input_digest: chain::sha384(&product),
            credit: Amount::ZERO,
            debit: Amount::ZERO,
            product,
            note: EPOCH_NOTE.into(),
            fund: super::Fund::Services,
        };
        let env = RowEnv {
            meter_id: &self.meter_id,
            epoch: counter,
            now,
        };
        let row = make_row(work, (&entry, None), None, &env, h, &mut self.buf)?;
        work.nv = counter;
        work.epoch_seq = row.seq;
        tracing::info!(
            epoch = counter,
            reason = a.reason,
            seq = row.seq,
            "epoch opened"
        );
        Ok(row)
    }
}
