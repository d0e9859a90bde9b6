//! The meter's regime: whether it may sell and under which terms — the
//! lock in force, the current account, the last acknowledged inspection —
//! as one owned state machine on the [`crate::meter::Meter`].
//!
//! The lock itself lives in the sealed ledger (a Lock row, cleared only by
//! an Unlock row), so a restart cannot clear it; what lives here is the
//! serialization of changes and the state derived from the ledger.
//!
//! # Lock order
//!
//! One async mutex, [`Regime::hold`], serializes every change of the
//! regime: a lock engaged, a lock cleared, an authority lock order, an
//! acknowledgement (which may unlock), an account order, a recharge (which
//! must not race an account order: a current account starts with no prepaid
//! funds). Each reads the regime and then commits a row that depends on it;
//! nothing may slip in between (an Unlock row would clear an unseen Lock).
//! A feature's own lock (a credit line's gate, the dues of revocation, the
//! report sequence, a certificate install) may be held when the regime is
//! taken — a sale under a credit line's gate whose clock check fails locks
//! the meter from inside the pipeline — but nothing that holds the regime
//! ever waits for a feature's lock: a recharge releases the regime before
//! it settles fees, a forced revocation releases the dues gate before it
//! locks. So the order is always feature lock → regime, and there is no
//! cycle. Functions that need the regime while a caller already holds it
//! take the [`Held`] token instead of taking it.

use std::sync::{Mutex, RwLock};

use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::ledger::{AccountTerms, Entry, Key, Ledger, Outcome};
use crate::money::Amount;
use crate::timecheck::{ClockGuard, Judgement};

/// Proof that the caller holds the regime's mutex.
pub struct Held<'a>(#[allow(dead_code)] tokio::sync::MutexGuard<'a, ()>);

/// The current account in force (current-account mode, see `account`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Credit limit per period, minor units.
    pub limit: Amount,
    /// Billing period, days.
    pub period_days: u32,
    /// Start of the current period, Unix s.
    pub period_start: i64,
    /// End of the current period, Unix s.
    pub period_end: i64,
    /// Ascending register at the period start.
    pub baseline: Amount,
    /// Ledger row of the order in force.
    pub order_seq: u64,
    /// The order's issue time (an older order is refused).
    pub issued_at: i64,
}

const DAY: i64 = 86_400;

/// End of a period of `days` starting at `start` (Unix s), saturating.
pub fn period_end(start: i64, days: u32) -> i64 {
    start.saturating_add(i64::from(days).saturating_mul(DAY))
}

impl Account {
    /// Whether the period is over at `now` (Unix s).
    pub fn closed(&self, now: i64) -> bool {
        now > self.period_end
    }

    /// Whether a period starting at `start` would be over at `now`.
    pub fn closed_at(&self, start: i64, now: i64) -> bool {
        now > period_end(start, self.period_days)
    }

    /// Charged in the period when the ascending register is `ascending`.
    pub fn used(&self, ascending: Amount) -> Amount {
        self.terms().used(ascending)
    }

    /// The terms the ledger's admission check applies.
    pub fn terms(&self) -> AccountTerms {
        AccountTerms {
            limit: self.limit,
            baseline: self.baseline,
        }
    }
}

/// What the last acknowledgement scan found (see `inspection`), so that
/// Status and the watchdog only look at rows committed since.
#[derive(Debug, Clone, Default)]
pub struct AckMemo {
    /// Rows scanned so far.
    pub scanned: u64,
    /// The last acknowledgement applied (its stored, signed product).
    pub product: Option<Vec<u8>>,
}

/// Where the meter stands with its inspection (see `inspection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Before the warning deadline.
    Ok,
    /// Past the warning deadline, before the lock deadline: a report is due.
    Due,
    /// Past the lock deadline.
    Overdue,
}

impl Standing {
    /// Its name in Status (`ok`, `due`, `overdue`).
    pub fn name(self) -> &'static str {
        use meter_proto::inspection_state as s;
        match self {
            Standing::Ok => s::OK,
            Standing::Due => s::DUE,
            Standing::Overdue => s::OVERDUE,
        }
    }
}

/// The inspection standing the watchdog last saw, with the deadlines it was
/// judged against (Unix s); the bus emits `InspectionDue` from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notice {
    /// The standing.
    pub standing: Standing,
    /// When the inspection falls due (the warning starts).
    pub due: i64,
    /// When the meter locks.
    pub lock: i64,
}

/// The regime state; one per meter.
#[derive(Debug)]
pub struct Regime {
    changes: tokio::sync::Mutex<()>,
    account: RwLock<Option<Account>>,
    ack: Mutex<AckMemo>,
    inspection: tokio::sync::watch::Sender<Option<Notice>>,
    clock: ClockGuard,
}

fn poisoned<T>(_: T) -> ServiceError {
    ServiceError::Internal("regime state lock poisoned".into())
}

impl Regime {
    /// A regime with nothing in force; `clock` judges the time of sales.
    pub fn new(clock: ClockGuard) -> Regime {
        Regime {
            changes: tokio::sync::Mutex::default(),
            account: RwLock::default(),
            ack: Mutex::default(),
            inspection: tokio::sync::watch::Sender::new(None),
            clock,
        }
    }

    /// The clock guard (see `timecheck`).
    pub fn clock(&self) -> &ClockGuard {
        &self.clock
    }

    /// The time to stamp a sale with (Unix ms), never earlier than the
    /// ledger's last row `last_row_ms`; a clock that was stepped or walked
    /// back is a [`Judgement`] (the caller locks the meter).
    pub fn check_clock(&self, last_row_ms: i64) -> std::result::Result<i64, Judgement> {
        self.clock.check_sale(last_row_ms)
    }

    /// Takes the regime's mutex (see the module doc for the order).
    pub async fn hold(&self) -> Held<'_> {
        Held(self.changes.lock().await)
    }

    /// The account in force (`None`: prepaid mode).
    pub fn account(&self) -> Option<Account> {
        self.account.read().ok().and_then(|g| g.clone())
    }

    /// Replaces the account in force (after an order or an acknowledgement).
    pub fn set_account(&self, _held: &Held<'_>, account: Option<Account>) -> Result<()> {
        *self.account.write().map_err(poisoned)? = account;
        Ok(())
    }

    /// The acknowledgement memo.
    pub fn ack_memo(&self) -> AckMemo {
        self.ack.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Records what an acknowledgement scan found.
    pub fn set_ack_memo(&self, memo: AckMemo) {
        if let Ok(mut g) = self.ack.lock() {
            *g = memo;
        }
    }

    /// Records the inspection standing just judged; returns the one seen
    /// before (`None`: first judgement since start). Watchers are woken only
    /// when the notice changed.
    pub fn observe_inspection(&self, notice: Notice) -> Option<Notice> {
        let mut before = None;
        self.inspection.send_if_modified(|cur| {
            before = *cur;
            let changed = *cur != Some(notice);
            *cur = Some(notice);
            changed
        });
        before
    }

    /// Follows the inspection standing (see [`Regime::observe_inspection`]).
    pub fn watch_inspection(&self) -> tokio::sync::watch::Receiver<Option<Notice>> {
        self.inspection.subscribe()
    }

    /// Locks the meter for `reason`; a no-op if a lock is already in force
    /// (one lock at a time: the first reason stays visible and its nonce
    /// stays the one the authority's clear order must name).
    pub async fn engage(&self, ledger: &Ledger, reason: &str) -> Result<()> {
        let held = self.hold().await;
        self.engage_held(&held, ledger, reason).await
    }

    /// [`Regime::engage`] for a caller that already holds the regime.
    pub async fn engage_held(&self, _held: &Held<'_>, ledger: &Ledger, reason: &str) -> Result<()> {
        if let Some(lock) = ledger.state().lock {
            if lock.reason != reason {
                tracing::warn!(in_force = %lock.reason, reason, "already locked; the lock in force stays");
            }
            return Ok(());
        }
        lock_row(ledger, reason, None).await.map(|_| ())
    }

    /// Appends a Lock row for an authority lock order (key
    /// `m/lock-order/<nonce>`, so an order locks once; the row keeps the signed
    /// `order`); `Ok(false)` when that
    /// order was applied before.
    pub async fn engage_order(
        &self,
        _held: &Held<'_>,
        ledger: &Ledger,
        reason: &str,
        key: Key,
        order: &[u8],
    ) -> Result<bool> {
        if ledger.lookup(&key).await?.is_some() {
            return Ok(false);
        }
        Ok(matches!(
            lock_row(ledger, reason, Some((key, order))).await?,
            Outcome::Committed { .. }
        ))
    }
}

/// Appends a Lock row with a fresh nonce (the one a clear order must carry);
/// for an authority's order, its key and the signed order the row keeps.
async fn lock_row(ledger: &Ledger, reason: &str, order: Option<(Key, &[u8])>) -> Result<Outcome> {
    let nonce = fresh_nonce()?;
    let (key, signed) = match order {
        Some((k, o)) => (Some(k), Some(o)),
        None => (None, None),
    };
    let entry = Entry::lock(
        reason,
        &nonce,
        signed,
        key,
        input_digest("lock", &[reason.as_bytes(), nonce.as_bytes()]),
    );
    let outcome = ledger.commit(entry, None).await?;
    tracing::warn!(reason, "meter locked");
    Ok(outcome)
}

/// 128 random bits, hex.
pub fn fresh_nonce() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| ServiceError::Internal(format!("no randomness for a nonce: {e}")))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn account() -> Account {
        Account {
            limit: Amount(1_000),
            period_days: 30,
            period_start: 1_000,
            period_end: period_end(1_000, 30),
            baseline: Amount(400),
            order_seq: 7,
            issued_at: 5,
        }
    }

    #[test]
    fn period_bounds_and_usage() {
        let a = account();
        assert_eq!(a.period_end, 1_000 + 30 * DAY);
        assert!(!a.closed(a.period_end));
        assert!(a.closed(a.period_end + 1));
        assert_eq!(a.used(Amount(650)), Amount(250));
        assert_eq!(a.used(Amount(100)), Amount::ZERO);
        assert!(a.closed_at(0, 30 * DAY + 1));
        assert!(!a.closed_at(DAY, 30 * DAY + 1));
        assert_eq!(period_end(i64::MAX - 1, 3650), i64::MAX);
    }
}
