//! Current-account mode (SPEC "Registers", the claims' European meters):
//! no prepaid funds, a credit limit per billing period, and a period that
//! must close with an acknowledged report.
//!
//! * An authority [`AccountOrder`] (`CT_ACCOUNT_ORDER`, for this meter, single
//!   use by nonce, not older than the order in force) is applied by
//!   [`apply_order`] as an Event row with note [`ORDER_NOTE`] and key
//!   `m/account-order/<nonce>`: tamper-evident, and the mode is rebuilt from
//!   the ledger at start ([`reload`]). It is refused while the descending
//!   register holds prepaid funds, and vouchers are refused in this mode
//!   (`recharge`, under the same regime mutex), so AR = CT throughout.
//! * Sales are admitted by the ledger against the limit (see
//!   `ledger::reserve`: used in the period = AR − AR at the period start) and
//!   booked as credit = debit = price, so AR + DR = CT holds with DR = 0.
//! * The period starts at the order's row, or at the last acknowledged
//!   report made after it (its time; its AR is the new baseline), and ends
//!   `period_days` later. Past the end the watchdog ([`check`], on the
//!   inspection tick) locks `period-closed`; a locked meter still reports,
//!   and the acknowledgement of a report that opens a period not yet over
//!   is an Unlock row (see `report::acknowledge`).

use meter_pki::account::AccountOrder;
use meter_pki::report::StatusReport;

use crate::clock;
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::inspection::{self, ACK_NOTE};
use crate::ledger::{EntryKind, Key};
use crate::meter::Meter;
use crate::money::Amount;
use crate::regime::{period_end, Account, Held};
use crate::sale::{self, Spec};
use crate::service::Service;

/// Note of the ledger row that records an applied account order.
pub const ORDER_NOTE: &str = crate::semantic::NOTE_ACCOUNT_ORDER;

/// `SetAccountMode`: applies an authority order on the meter's terms: a
/// funds order (by its content type) goes to [`crate::funds::apply_split`]
/// and answers the period end in force (0: none); an account order is
/// applied here (see the module doc).
pub async fn apply(meter: &Meter, signed: &[u8]) -> Result<i64> {
    let funds = meter_pki::cms::peek(signed)
        .is_ok_and(|p| p.content_type == meter_pki::oid::CT_FUNDS_ORDER);
    if funds {
        crate::funds::apply_split(meter, signed).await?;
        return Ok(meter.regime().account().map_or(0, |a| a.period_end));
    }
    apply_order(meter, signed).await.map(|a| a.period_end)
}

/// Applies an authority current-account order (see the module doc).
pub async fn apply_order(meter: &Meter, signed: &[u8]) -> Result<Account> {
    let (identity, ledger) = meter.provisioned()?;
    let (order, verified) =
        meter_pki::payload::open::<AccountOrder>(signed, &identity.anchors, clock::now())?;
    if order.meter_id != identity.meter_id {
        return Err(ServiceError::InvalidInput(format!(
            "the account order is for meter {}, this meter is {}",
            order.meter_id, identity.meter_id
        )));
    }
    let regime = meter.regime();
    let held = regime.hold().await;
    let replay =
        || ServiceError::Replay(format!("account order {} was already applied", order.nonce));
    let key = Key::meter("account-order", &order.nonce);
    if ledger.lookup(&key).await?.is_some() {
        return Err(replay());
    }
    if let Some(current) = regime.account() {
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
    let spec = Spec::record(
        EntryKind::Event,
        key,
        input_digest("account-order", &[&verified.content]),
        ORDER_NOTE,
    );
    sale::record_once(meter, spec, signed.to_vec(), replay).await?;
    let account = reload(meter, &held)
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
/// acknowledgement, with the regime held.
pub async fn reload(meter: &Meter, held: &Held<'_>) -> Result<Option<Account>> {
    let ledger = meter.require_ledger()?;
    let rows = ledger.state().rows;
    let account = match ledger.last_with_note(ORDER_NOTE, 0, rows).await? {
        None => None,
        Some((order_seq, product)) => Some(derive(meter, order_seq, &product, rows).await?),
    };
    ledger.set_account(account.as_ref().map(Account::terms))?;
    meter.regime().set_account(held, account.clone())?;
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
        let ack = inspection::decode_applied(&ack, &anchors)?;
        if let Some((_, _, product)) = ledger
            .nth_of_service(Service::StatusReport, ack.report_sequence)
            .await?
        {
            let (report, _) = meter_pki::payload::open::<StatusReport>(&product, &anchors, now)?;
            // A report made before the order says nothing about this account.
            if report.ledger_rows >= order_seq {
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

/// Whether acknowledging `report` opens a period not yet over at `now`:
/// then it clears a `period-closed` lock (see `report::acknowledge`).
pub fn ack_reopens(meter: &Meter, report: &StatusReport, now: i64) -> bool {
    meter
        .regime()
        .account()
        .is_some_and(|a| report.ledger_rows >= a.order_seq && !a.closed_at(report.time, now))
}

/// Watchdog step: locks `period-closed` when the period is over. A meter
/// already locked is left as it is (one lock at a time).
pub async fn check(meter: &Meter) -> Result<bool> {
    let (Some(ledger), Some(account)) = (meter.ledger(), meter.regime().account()) else {
        return Ok(false);
    };
    if ledger.state().lock.is_some() || !account.closed(clock::now()) {
        return Ok(false);
    }
    tracing::error!(
        period_end = account.period_end,
        "billing period closed without an acknowledged report: locking"
    );
    meter
        .regime()
        .engage(&ledger, meter_proto::lock_reason::PERIOD_CLOSED)
        .await?;
    Ok(true)
}
