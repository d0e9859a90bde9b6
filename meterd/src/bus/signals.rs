//! PropertiesChanged and the meter's signals, driven by the ledger.
//!
//! The ledger replaces its state after every commit batch and wakes this
//! task at once for what the signals need (a lock, a threshold crossing, a
//! row other than a sale: `ledger::Notice`), for sales alone at most every
//! [`REGISTERS_EVERY`]. The task diffs the states it is woken for and emits
//! only what changed: the signals at once, the registers' PropertiesChanged
//! at most every [`REGISTERS_EVERY`] with the latest values, read on its own
//! timer (a burst of postmarks costs a few messages and a few wake-ups, not
//! one per postmark or per batch).
//! `InspectionDue` is driven by the inspection standing the watchdog
//! publishes on the regime: once per entry into the warning period
//! (including one found at start), not once per tick.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use zbus::names::InterfaceName;
use zbus::object_server::InterfaceRef;
use zbus::zvariant::Value;
use zbus::Connection;

use super::MeterIface;
use crate::ledger::{LedgerState, Registers};
use crate::meter::Meter;
use crate::regime::Standing;

/// Longest the registers' PropertiesChanged lags the ledger, and so at
/// most how often it goes out: at one client a message per sale was about
/// 7 % of meterd's CPU and a third of dbus-daemon's (issue 14). A watcher
/// sees the first change at once and the latest within this; the signals
/// (LowFunds, Locked, Unlocked) are never held back.
const REGISTERS_EVERY: Duration = crate::meter::STATE_NOTICE_EVERY;

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
    tokio::spawn(emit_inspection_due(iface.clone(), Arc::clone(&meter)));
    let threshold = meter.config().low_funds_threshold;
    let mut rx = ledger.subscribe();
    let mut prev: Option<LedgerState> = None;
    let mut prev_state = "";
    let mut prev_rates = u32::MAX;
    let mut shown = Shown::default();
    // Sales may move the registers without waking this task for up to
    // REGISTERS_EVERY after the ledger last woke it: read them then. Any
    // sale after that wakes it (the ledger's `Notice::every`).
    let mut check_at: Option<Instant> = None;
    loop {
        if prev.is_some() {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = sleep_until(check_at), if check_at.is_some() => {
                    check_at = None;
                    let latest = rx.borrow().registers.clone();
                    if latest != shown.registers {
                        shown.send(&iface, &latest).await;
                    }
                    continue;
                }
            }
        }
        let cur = rx.borrow_and_update().clone();
        let state = meter.state_name();
        let rates = meter.rates().latest_version();
        let changed = prev_state != state || prev_rates != rates;
        prev_rates = rates;
        // Signals at once, from every state woken for (so LowFunds carries
        // the register of the batch that crossed the threshold); the
        // registers' PropertiesChanged at most every REGISTERS_EVERY, the
        // latest values always sent last (the timer above).
        if let Err(e) = emit_events(&iface, prev.as_ref(), &cur, changed, threshold).await {
            tracing::warn!(error = %e, "signal emission failed");
        }
        if shown.at.is_none_or(|t| t.elapsed() >= REGISTERS_EVERY) {
            shown.send(&iface, &cur.registers).await;
        }
        check_at = Some(Instant::now() + REGISTERS_EVERY);
        prev = Some(cur);
        prev_state = state;
    }
}

/// The registers last put in a PropertiesChanged, and when it went out.
#[derive(Default)]
struct Shown {
    registers: Registers,
    at: Option<Instant>,
}

impl Shown {
    /// PropertiesChanged from the registers shown to `cur`, which are then
    /// the ones shown.
    async fn send(&mut self, iface: &InterfaceRef<MeterIface>, cur: &Registers) {
        if let Err(e) = emit_registers(iface, &self.registers, cur).await {
            tracing::warn!(error = %e, "signal emission failed");
        }
        self.registers = cur.clone();
        self.at = Some(Instant::now());
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// PropertiesChanged for the registers that differ between `shown` and
/// `cur`, in ONE message (issue 14: four messages a sale cost meterd and
/// dbus-daemon a third of a sale's CPU at one client); values as the
/// getters read them.
async fn emit_registers(
    iface: &InterfaceRef<MeterIface>,
    shown: &Registers,
    r: &Registers,
) -> zbus::Result<()> {
    let mut changed: HashMap<&str, Value<'_>> = HashMap::new();
    if shown.descending != r.descending {
        changed.insert("Descending", r.descending.0.into());
    }
    if shown.ascending != r.ascending {
        changed.insert("Ascending", r.ascending.0.into());
    }
    if shown.control_total != r.control_total {
        changed.insert("ControlTotal", r.control_total.0.into());
    }
    if shown.pieces != r.pieces {
        changed.insert("PieceCount", r.pieces.into());
    }
    if changed.is_empty() {
        return Ok(());
    }
    let name = InterfaceName::from_static_str_unchecked(meter_proto::INTERFACE);
    zbus::fdo::Properties::properties_changed(
        iface.signal_emitter(),
        name,
        changed,
        Cow::Borrowed(&[]),
    )
    .await
}

async fn emit_events(
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
    if p_regs.descending != r.descending
        && p_regs.descending.0 >= threshold
        && r.descending.0 < threshold
        && prev.is_some()
    {
        MeterIface::low_funds(em, r.descending.0).await?;
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

/// Emits `InspectionDue` each time the standing the watchdog published
/// turns `due` (from none, `ok` or `overdue`); runs until the regime goes.
async fn emit_inspection_due(iface: InterfaceRef<MeterIface>, meter: Arc<Meter>) {
    let mut rx = meter.regime().watch_inspection();
    let mut was_due = false;
    loop {
        let notice = *rx.borrow_and_update();
        let due = notice.is_some_and(|n| n.standing == Standing::Due);
        if let (true, false, Some(n)) = (due, was_due, notice) {
            if let Err(e) = MeterIface::inspection_due(iface.signal_emitter(), n.due, n.lock).await
            {
                tracing::warn!(error = %e, "InspectionDue emission failed");
            }
        }
        was_due = due;
        if rx.changed().await.is_err() {
            return;
        }
    }
}
