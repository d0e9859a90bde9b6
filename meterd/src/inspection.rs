//! Inspection watchdog: the meter locks when no acknowledged status report
//! arrived within the inspection period (reason `inspection-overdue`).
//!
//! The schedule is derived from the ledger alone, so a restart cannot reset
//! it: the last row with note [`ACK_NOTE`] holds the authority's
//! acknowledgement ([`meter_pki::report::ReportAck`]); the next report is due
//! `period_days` after the acknowledged report's own time (the period from
//! the acknowledgement, else `inspection_period_days` from the
//! configuration). Before any acknowledgement the period runs from the
//! meter certificate's notBefore, i.e. from certification.
//!
//! `watchdog` checks the deadline at start and at every tick. A meter
//! already locked for another reason is not locked again: one lock at a
//! time, the first reason stays visible.

use meter_pki::cert::Certificate;
use meter_pki::report::ReportAck;

use crate::clock;
use crate::error::Result;
use crate::ledger::Ledger;
use crate::meter::Meter;
use crate::regime::AckMemo;

/// Note of the ledger row that records an applied acknowledgement.
pub const ACK_NOTE: &str = crate::semantic::NOTE_REPORT_ACK;

const DAY: i64 = 86_400;

/// When the next acknowledged report is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Start of the current period (acknowledged report time, or certification), Unix s.
    pub baseline: i64,
    /// Period length, days.
    pub period_days: u32,
    /// Deadline, Unix s.
    pub due: i64,
    /// Sequence of the last acknowledged report (0: none yet).
    pub acknowledged_sequence: u64,
}

impl Schedule {
    /// Whether the deadline has passed at `now`.
    pub fn overdue(&self, now: i64) -> bool {
        now > self.due
    }
}

/// Computes the schedule from the ledger and the configuration.
pub async fn schedule(meter: &Meter) -> Result<Schedule> {
    let (identity, ledger) = meter.provisioned()?;
    let default = meter.config().inspection_period_days;
    let (baseline, period_days, acknowledged_sequence) = match latest_ack(meter, &ledger).await? {
        Some(ack) => (
            ack.report_time,
            ack.period_days.unwrap_or(default),
            ack.report_sequence,
        ),
        None => (
            meter_pki::cert::not_before(&identity.meter_cert),
            default,
            0,
        ),
    };
    Ok(Schedule {
        baseline,
        period_days,
        due: baseline.saturating_add(i64::from(period_days).saturating_mul(DAY)),
        acknowledged_sequence,
    })
}

/// The last acknowledgement applied, looking only at rows not scanned
/// before (the journal has no index on notes; Status and the watchdog ask
/// often). The memo lives in the meter's regime.
async fn latest_ack(meter: &Meter, ledger: &Ledger) -> Result<Option<ReportAck>> {
    let rows = ledger.state().rows;
    let memo = meter.regime().ack_memo();
    let (from, cached) = if memo.scanned <= rows {
        (memo.scanned, memo.product)
    } else {
        (0, None)
    };
    let product = match ledger.last_with_note(ACK_NOTE, from, rows).await? {
        Some((_, product)) => Some(product),
        None => cached,
    };
    meter.regime().set_ack_memo(AckMemo {
        scanned: rows,
        product: product.clone(),
    });
    product
        .map(|p| decode_applied(&p, &meter.anchors()))
        .transpose()
}

/// Re-opens an acknowledgement the meter applied earlier (it is in the
/// sealed ledger; verifying it again also checks the product's type).
pub fn decode_applied(product: &[u8], anchors: &[Certificate]) -> Result<ReportAck> {
    let (ack, _) = meter_pki::payload::open::<ReportAck>(product, anchors, clock::now())?;
    Ok(ack)
}

/// Locks with `inspection-overdue` if the deadline has passed and the meter
/// is not locked already; returns whether it locked.
pub async fn check(meter: &Meter) -> Result<bool> {
    let (Some(ledger), Some(_)) = (meter.ledger(), meter.identity()) else {
        return Ok(false);
    };
    if ledger.state().lock.is_some() {
        return Ok(false);
    }
    let s = schedule(meter).await?;
    if !s.overdue(clock::now()) {
        return Ok(false);
    }
    tracing::error!(
        due = s.due,
        period_days = s.period_days,
        "no acknowledged status report within the inspection period: locking"
    );
    meter
        .regime()
        .engage(&ledger, meter_proto::lock_reason::INSPECTION_OVERDUE)
        .await?;
    Ok(true)
}
