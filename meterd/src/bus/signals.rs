//! PropertiesChanged and the meter's signals, driven by the ledger.
//!
//! The ledger publishes its state after every commit batch; this task diffs
//! consecutive states and emits only what changed, so a burst of postmarks
//! costs one PropertiesChanged per batch, not one per postmark.

use std::sync::Arc;

use zbus::object_server::InterfaceRef;
use zbus::Connection;

use super::MeterIface;
use crate::ledger::LedgerState;
use crate::meter::Meter;

/// Runs until the connection or the ledger goes away.
pub async fn watch_and_emit(conn: Connection, meter: Arc<Meter>) {
    let iface: InterfaceRef<MeterIface> = match conn
        .object_server()
        .interface(meter_proto::OBJECT_PATH)
        .await
    {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "cannot emit signals: interface not served");
            return;
        }
    };
    let mut opened = meter.ledger_opened();
    let ledger = loop {
        if let Some(l) = opened.borrow_and_update().clone() {
            break l;
        }
        if opened.changed().await.is_err() {
            return;
        }
    };
    let threshold = meter.config().low_funds_threshold;
    let mut rx = ledger.subscribe();
    let mut prev: Option<LedgerState> = None;
    let mut prev_state = "";
    let mut prev_rates = u32::MAX;
    loop {
        let cur = rx.borrow_and_update().clone();
        let state = meter.state_name();
        let rates = meter.rates().latest_version();
        let changed = prev_state != state || prev_rates != rates;
        prev_rates = rates;
        if let Err(e) = emit(&iface, prev.as_ref(), &cur, changed, threshold).await {
            tracing::warn!(error = %e, "signal emission failed");
        }
        prev = Some(cur);
        prev_state = state;
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn emit(
    iface: &InterfaceRef<MeterIface>,
    prev: Option<&LedgerState>,
    cur: &LedgerState,
    identity_changed: bool,
    threshold: u64,
) -> zbus::Result<()> {
    let em = iface.signal_emitter();
    let me = iface.get().await;
    let (p_regs, p_lock) = match prev {
        Some(p) => (p.registers.clone(), p.lock.clone()),
        None => (Default::default(), None),
    };
    let r = &cur.registers;
    if p_regs.descending != r.descending {
        me.descending_changed(em).await?;
        if p_regs.descending.0 >= threshold && r.descending.0 < threshold && prev.is_some() {
            MeterIface::low_funds(em, r.descending.0).await?;
        }
    }
    if p_regs.ascending != r.ascending {
        me.ascending_changed(em).await?;
    }
    if p_regs.control_total != r.control_total {
        me.control_total_changed(em).await?;
    }
    if p_regs.pieces != r.pieces {
        me.piece_count_changed(em).await?;
    }
    if identity_changed {
        me.state_changed(em).await?;
        me.meter_id_changed(em).await?;
        me.rates_version_changed(em).await?;
        me.currency_digits_changed(em).await?;
    }
    if p_lock != cur.lock {
        me.lock_reason_changed(em).await?;
        match &cur.lock {
            Some(l) => MeterIface::locked(em, &l.reason).await?,
            None => MeterIface::unlocked(em).await?,
        }
    }
    Ok(())
}
