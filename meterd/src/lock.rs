//! Locks: the meter stops selling, says why, and waits for the authority.
//!
//! One mechanism for every reason: a Lock row in the ledger (reason and a
//! fresh nonce), cleared only by an authority-signed order that names this
//! meter and that nonce, recorded as an Unlock row. Because the lock lives
//! in the sealed ledger, restarting the daemon does not clear it. Clearing a
//! `tamper` lock re-anchors the chain: the authority accepts the ledger as it
//! now stands.
//!
//! Reasons: `tamper` and `rollback` (the ledger audit), `clock`
//! ([`crate::timecheck`]), `inspection-overdue` ([`crate::inspection`]),
//! `forced` (an authority [`LockOrder`], applied by [`apply_order`]; its
//! nonce is the Lock row's request id, so an order locks once) and
//! `period-closed` (current-account mode). A locked meter refuses every sale
//! (`Meter::ensure_selling`) but still answers Status and Report.

use meter_pki::payload::ClearLockOrder;
use meter_pki::report::LockOrder;

use crate::clock;
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::ledger::{Entry, EntryKind, LedgerError, Outcome};
use crate::meter::Meter;
use crate::money::Amount;

/// Serializes every change of the lock state made in this process (lock,
/// clear, acknowledgement unlock): each reads the lock in force and then
/// commits a row that depends on it, and a Lock row must not slip in between
/// (an Unlock row would clear it unseen).
static CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Holds off other lock-state changes while the guard lives.
pub(crate) async fn hold() -> tokio::sync::MutexGuard<'static, ()> {
    CHANGES.lock().await
}

/// Locks the meter for `reason` (no-op if already locked for it).
pub async fn engage(meter: &Meter, reason: &str) -> Result<()> {
    let _changing = hold().await;
    let ledger = meter.require_ledger()?;
    if let Some(lock) = ledger.state().lock {
        if lock.reason == reason {
            return Ok(());
        }
    }
    lock_row(meter, reason, None).await.map(|_| ())
}

/// Appends a Lock row for `reason` with a fresh nonce (the one a clear order
/// must carry) and an optional request id.
async fn lock_row(meter: &Meter, reason: &str, request_id: Option<String>) -> Result<Outcome> {
    let ledger = meter.require_ledger()?;
    let nonce = fresh_nonce()?;
    let entry = Entry {
        kind: EntryKind::Lock,
        service: None,
        request_id,
        input_digest: input_digest("lock", &[reason.as_bytes(), nonce.as_bytes()]),
        credit: Amount::ZERO,
        debit: Amount::ZERO,
        product: nonce.into_bytes(),
        note: reason.to_owned(),
    };
    let outcome = ledger.commit(entry, None).await?;
    tracing::warn!(reason, "meter locked");
    Ok(outcome)
}

/// `ApplyLockOrder`: locks the meter (reason `forced`) on an authority order
/// for this meter, once per order nonce.
pub async fn apply_order(meter: &Meter, signed: &[u8]) -> Result<()> {
    let identity = meter.require_identity()?;
    let (order, _) =
        meter_pki::payload::open::<LockOrder>(signed, &identity.anchors, clock::now())?;
    if order.meter_id != identity.meter_id {
        return Err(ServiceError::InvalidInput(format!(
            "the lock order is for meter {}, this meter is {}",
            order.meter_id, identity.meter_id
        )));
    }
    let _changing = hold().await;
    let request_id = format!("lock-order:{}", order.nonce);
    let replay = || ServiceError::Replay(format!("lock order {} was already applied", order.nonce));
    if meter.require_ledger()?.lookup(&request_id).await?.is_some() {
        return Err(replay());
    }
    match lock_row(meter, meter_proto::lock_reason::FORCED, Some(request_id)).await {
        Ok(Outcome::Committed { .. }) => {
            tracing::warn!(reason = %order.reason, "authority lock order applied");
            Ok(())
        }
        // The nonce of the Lock row is fresh, so a second copy of the order
        // conflicts with the first on the request id.
        Ok(Outcome::Existing { .. }) | Err(ServiceError::InvalidInput(_)) => Err(replay()),
        Err(e) => Err(e),
    }
}

/// `ClearLock`: applies an authority order for the lock in force.
pub async fn clear(meter: &Meter, signed: &[u8]) -> Result<()> {
    let identity = meter.require_identity()?;
    let ledger = meter.require_ledger()?;
    let verified = meter_pki::cms::verify(
        signed,
        &identity.anchors,
        Some(&meter_pki::oid::CT_CLEAR_LOCK),
        clock::now(),
    )?;
    let order: ClearLockOrder = meter_pki::payload::decode(&verified.content)?;
    if order.meter_id != identity.meter_id {
        return Err(ServiceError::InvalidInput(format!(
            "the order is for meter {}, this meter is {}",
            order.meter_id, identity.meter_id
        )));
    }
    let _changing = hold().await;
    let lock = ledger.state().lock.ok_or_else(|| {
        ServiceError::Stale("the meter is not locked; the order has nothing to clear".into())
    })?;
    if order.nonce != lock.nonce {
        return Err(ServiceError::Stale(format!(
            "the order carries nonce {}, the lock in force has nonce {}; ask the authority for an order for this lock",
            order.nonce, lock.nonce
        )));
    }
    let note = if lock.reason == meter_proto::lock_reason::TAMPER {
        "reanchor"
    } else {
        "clear"
    };
    let entry = Entry {
        kind: EntryKind::Unlock,
        service: None,
        request_id: Some(format!("clear-lock:{}", order.nonce)),
        input_digest: input_digest("clear-lock", &[&verified.content]),
        credit: Amount::ZERO,
        debit: Amount::ZERO,
        product: signed.to_vec(),
        note: note.into(),
    };
    if lock.reason == meter_proto::lock_reason::CLOCK {
        // Before the Unlock row, so that no sale sees the lock gone and the
        // old anchors; harmless if the commit fails (the lock stays).
        meter.clock().cleared(ledger.state().time_ms);
    }
    match ledger.commit(entry, None).await {
        Ok(Outcome::Committed { .. }) => {
            tracing::warn!(reason = %lock.reason, "lock cleared by authority order");
            Ok(())
        }
        Ok(Outcome::Existing { .. }) | Err(LedgerError::Conflict(_)) => Err(ServiceError::Replay(
            "this order was already applied".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// 128 random bits, hex.
fn fresh_nonce() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| ServiceError::Storage(format!("no randomness for the lock nonce: {e}")))?;
    Ok(hex::encode(bytes))
}
