//! Current-account mode (SPEC "Registers", the claims' European meters):
//! no prepaid funds, a credit limit per billing period, and a period that
//! must close with an acknowledged report.
//!
//! * An authority [`AccountOrder`] (`CT_ACCOUNT_ORDER`, for this meter, single
//!   use by nonce, not older than the order in force) is applied by
//!   [`apply_order`] as an Event row with note [`ORDER_NOTE`] and request id
//!   `account-order:<nonce>`: tamper-evident, and the mode is rebuilt from
//!   the ledger at start ([`reload`]). It is refused while the descending
//!   register holds prepaid funds, and vouchers are refused in this mode
//!   (`recharge`), so AR = CT throughout.
//! * Sales are admitted by the ledger against the limit (see
//!   `ledger::reserve`: used in the period = AR − AR at the period start) and
//!   booked as credit = debit = price, so AR + DR = CT holds with DR = 0.
//! * The period starts at the order's row, or at the last acknowledged
//!   report made after it (its time; its AR is the new baseline), and ends
//!   `period_days` later. Past the end the watchdog ([`check`], on the
//!   inspection tick) locks `period-closed`; a locked meter still reports,
//!   and the acknowledgement of a report that opens a period not yet over
//!   is an Unlock row (see `report::acknowledge`).

use std::sync::RwLock;

use meter_pki::account::AccountOrder;
use meter_pki::report::StatusReport;

use crate::clock;
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::inspection::{self, ACK_NOTE};
use crate::ledger::{AccountTerms, Entry, EntryKind, LedgerError, Outcome};
use crate::meter::Meter;
use crate::money::Amount;
use crate::service::Service;

/// Note of the ledger row that records an applied account order.
pub const ORDER_NOTE: &str = "account-order";

const DAY: i64 = 86_400;

/// Serializes changes of the mode against recharges (an order is refused
/// while prepaid funds exist, a voucher while the mode is on).
static CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Holds off account-mode changes and recharges while the guard lives.
pub(crate) async fn hold() -> tokio::sync::MutexGuard<'static, ()> {
    CHANGES.lock().await
}

/// The current account in force.
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

impl Account {
    /// Whether the period is over at `now` (Unix s).
    pub fn closed(&self, now: i64) -> bool {
        now > self.period_end
    }

    /// Charged in the period when the ascending register is `ascending`.
    pub fn used(&self, ascending: Amount) -> Amount {
        self.terms().used(ascending)
    }

    fn terms(&self) -> AccountTerms {
        AccountTerms {
            limit: self.limit,
            baseline: self.baseline,
        }
    }
}

/// The account in force, kept on the [`Meter`].
#[derive(Debug, Default)]
pub struct AccountBook {
    current: RwLock<Option<Account>>,
}

impl AccountBook {
    /// The account in force (`None`: prepaid mode).
    pub fn current(&self) -> Option<Account> {
        self.current.read().ok().and_then(|g| g.clone())
    }

    fn set(&self, a: Option<Account>) -> Result<()> {
        *self
            .current
            .write()
            .map_err(|_| ServiceError::Storage("account state lock poisoned".into()))? = a;
        Ok(())
    }
}

/// `SetAccountMode`: applies an authority order (see the module doc).
pub async fn apply_order(meter: &Meter, signed: &[u8]) -> Result<Account> {
    let identity = meter.require_identity()?;
    let ledger = meter.require_ledger()?;
    let (order, verified) =
        meter_pki::payload::open::<AccountOrder>(signed, &identity.anchors, clock::now())?;
    if order.meter_id != identity.meter_id {
        return Err(ServiceError::InvalidInput(format!(
            "the account order is for meter {}, this meter is {}",
            order.meter_id, identity.meter_id
        )));
    }
    let _changing = hold().await;
    let request_id = format!("account-order:{}", order.nonce);
    let replay =
        || ServiceError::Replay(format!("account order {} was already applied", order.nonce));
    if ledger.lookup(&request_id).await?.is_some() {
        return Err(replay());
    }
    if let Some(current) = meter.account().current() {
        if order.issued_at < current.issued_at {
            return Err(ServiceError::Stale(format!(
                "the order was issued at {}, before the order in force ({}); ask the authority for a new order",
                order.issued_at, current.issued_at
            )));
        }
    }
    let funds = ledger.state().registers.descending;
    if funds > Amount::ZERO {
        return Err(ServiceError::InvalidInput(format!(
            "the meter holds {} of prepaid funds; a current account starts with none (use them up first)",
            funds.0
        )));
    }
    let entry = Entry {
        kind: EntryKind::Event,
        service: None,
        request_id: Some(request_id),
        input_digest: input_digest("account-order", &[&verified.content]),
        credit: Amount::ZERO,
        debit: Amount::ZERO,
        product: signed.to_vec(),
        note: ORDER_NOTE.into(),
    };
    match ledger.commit(entry, None).await {
        Ok(Outcome::Committed { .. }) => {}
        Ok(Outcome::Existing { .. }) | Err(LedgerError::Conflict(_)) => return Err(replay()),
        Err(e) => return Err(e.into()),
    }
    let account = reload(meter)
        .await?
        .ok_or_else(|| ServiceError::Storage("the account order row was not found".into()))?;
    tracing::info!(
        limit = account.limit.0,
        period_days = account.period_days,
        period_end = account.period_end,
        "current-account order applied"
    );
    Ok(account)
}

/// Rebuilds the account from the ledger (last order row, then the last
/// acknowledged report made after it) and hands its terms to the ledger's
/// admission check. Called at start, after an order and after an
/// acknowledgement, with [`hold`] taken except at start.
pub async fn reload(meter: &Meter) -> Result<Option<Account>> {
    let ledger = meter.require_ledger()?;
    let rows = ledger.state().rows;
    let account = match ledger.last_with_note(ORDER_NOTE, 0, rows).await? {
        None => None,
        Some((order_seq, product)) => Some(derive(meter, order_seq, &product, rows).await?),
    };
    ledger.set_account(account.as_ref().map(Account::terms))?;
    meter.account().set(account.clone())?;
    Ok(account)
}

async fn derive(meter: &Meter, order_seq: u64, product: &[u8], rows: u64) -> Result<Account> {
    let ledger = meter.require_ledger()?;
    let anchors = meter.anchors();
    let now = clock::now();
    let (order, _) = meter_pki::payload::open::<AccountOrder>(product, &anchors, now)?;
    let (time_ms, ascending) = ledger
        .time_and_ascending_at(order_seq)
        .await?
        .ok_or_else(|| ServiceError::Storage(format!("row {order_seq} is missing")))?;
    let mut start = (time_ms.div_euclid(1000), ascending);
    if let Some((_, ack)) = ledger.last_with_note(ACK_NOTE, order_seq, rows).await? {
        let ack = inspection::decode_applied(&ack, meter)?;
        if let Some(stored) = ledger.lookup(&ack.report_request_id).await? {
            let (report, _) =
                meter_pki::payload::open::<StatusReport>(&stored.product, &anchors, now)?;
            // A report made before the order says nothing about this account.
            if report.ledger_rows >= order_seq && stored.service == Some(Service::StatusReport) {
                start = (report.time, Amount(report.ascending));
            }
        }
    }
    Ok(Account {
        limit: Amount(order.credit_limit),
        period_days: order.period_days,
        period_start: start.0,
        period_end: period_end(start.0, order.period_days),
        baseline: start.1,
        order_seq,
        issued_at: order.issued_at,
    })
}

fn period_end(start: i64, days: u32) -> i64 {
    start.saturating_add(i64::from(days).saturating_mul(DAY))
}

/// Whether acknowledging `report` opens a period not yet over at `now`:
/// then it clears a `period-closed` lock (see `report::acknowledge`).
pub fn ack_reopens(meter: &Meter, report: &StatusReport, now: i64) -> bool {
    meter
        .account()
        .current()
        .is_some_and(|a| report.ledger_rows >= a.order_seq && !a.closed_at(report.time, now))
}

impl Account {
    /// Whether a period starting at `start` is over at `now`.
    fn closed_at(&self, start: i64, now: i64) -> bool {
        now > period_end(start, self.period_days)
    }
}

/// Watchdog step: locks `period-closed` when the period is over. A meter
/// already locked is left as it is (one lock at a time).
pub async fn check(meter: &Meter) -> Result<bool> {
    let (Some(ledger), Some(account)) = (meter.ledger(), meter.account().current()) else {
        return Ok(false);
    };
    if ledger.state().lock.is_some() || !account.closed(clock::now()) {
        return Ok(false);
    }
    tracing::error!(
        period_end = account.period_end,
        "billing period closed without an acknowledged report: locking"
    );
    crate::lock::engage(meter, meter_proto::lock_reason::PERIOD_CLOSED).await?;
    Ok(true)
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
