//! Locks: the meter stops selling, says why, and waits for the authority.
//!
//! One mechanism for every reason: a Lock row in the ledger (reason and a
//! fresh nonce, written by [`crate::regime::Regime::engage`]), cleared only
//! by an authority-signed order that names this meter and that nonce,
//! recorded as an Unlock row. Because the lock lives in the sealed ledger,
//! restarting the daemon does not clear it. Clearing a `tamper` lock
//! re-anchors the chain: the authority accepts the ledger as it now stands.
//!
//! Reasons: `tamper` and `rollback` (the ledger audit), `clock` (the sale
//! pipeline and the watchdog, see `timecheck`), `inspection-overdue`
//! (`inspection`), `forced` (an authority [`LockOrder`], applied by
//! [`apply_order`]; its nonce makes the Lock row's key
//! `m/lock-order/<nonce>`, so an order locks once, and the row keeps the
//! signed order, which the audit verifies again) and `period-closed`
//! (current-account mode). A locked meter refuses every sale but still
//! answers Status and Report.

use meter_pki::payload::ClearLockOrder;
use meter_pki::report::LockOrder;

use crate::clock;
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::ledger::{EntryKind, Key};
use crate::meter::Meter;
use crate::sale::{self, Spec};

/// `ApplyLockOrder`: locks the meter (reason `forced`) on an authority order
/// for this meter, once per order nonce.
pub async fn apply_order(meter: &Meter, signed: &[u8]) -> Result<()> {
    let (identity, ledger) = meter.provisioned()?;
    let (order, _) =
        meter_pki::payload::open::<LockOrder>(signed, &identity.anchors, clock::now())?;
    if order.meter_id != identity.meter_id {
        return Err(ServiceError::InvalidInput(format!(
            "the lock order is for meter {}, this meter is {}",
            order.meter_id, identity.meter_id
        )));
    }
    let regime = meter.regime();
    let held = regime.hold().await;
    let key = Key::meter("lock-order", &order.nonce);
    if regime
        .engage_order(
            &held,
            &ledger,
            meter_proto::lock_reason::FORCED,
            key,
            signed,
        )
        .await?
    {
        tracing::warn!(reason = %order.reason, "authority lock order applied");
        Ok(())
    } else {
        Err(ServiceError::Replay(format!(
            "lock order {} was already applied",
            order.nonce
        )))
    }
}

/// `ClearLock`: applies an authority order for the lock in force.
pub async fn clear(meter: &Meter, signed: &[u8]) -> Result<()> {
    let (identity, ledger) = meter.provisioned()?;
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
    let _held = meter.regime().hold().await;
    let lock = ledger.state().lock.ok_or_else(|| {
        ServiceError::Stale("the meter is not locked; the order has nothing to clear".into())
    })?;
    if order.nonce != lock.nonce {
        return Err(ServiceError::Stale(format!(
            "the order carries nonce {}, the lock in force has nonce {}; ask the authority for an order for this lock",
            order.nonce, lock.nonce
        )));
    }
    if lock.reason == meter_proto::lock_reason::CLOCK {
        // The authority reviewed the clock: the current time becomes the
        // new anchor, before any sale can see the lock gone.
        meter.regime().clock().cleared(ledger.state().time_ms);
    }
    let note = if lock.reason == meter_proto::lock_reason::TAMPER {
        crate::semantic::NOTE_REANCHOR
    } else {
        crate::semantic::NOTE_CLEAR
    };
    let spec = Spec::record(
        EntryKind::Unlock,
        Key::meter("clear-lock", &order.nonce),
        input_digest("clear-lock", &[&verified.content]),
        note,
    );
    sale::record_once(meter, spec, signed.to_vec(), || {
        ServiceError::Replay("this order was already applied".into())
    })
    .await?;
    tracing::warn!(reason = %lock.reason, "lock cleared by authority order");
    Ok(())
}
