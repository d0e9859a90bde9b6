//! Inspection watchdog, as postage meters do it: the inspection falls due
//! (the meter warns) `warn_days` after the last acknowledged status report,
//! and the meter locks (reason `inspection-overdue`) `period_days` after it
//! when no newer acknowledgement arrived (defaults 90 and 120 days, as a
//! Pitney Bowes meter: "Inspection Due" at 90 days without contact, locked
//! at 120).
//!
//! The schedule is derived from the ledger alone, so a restart cannot reset
//! it: the last row with note [`ACK_NOTE`] holds the authority's
//! acknowledgement ([`meter_pki::report::ReportAck`]); both deadlines run
//! from the acknowledged report's own time, with the periods from the
//! acknowledgement, else `inspection_warn_days` / `inspection_period_days`
//! from the configuration. Before any acknowledgement they run from the
//! meter certificate's notBefore, i.e. from certification. An
//! acknowledgement that sets a period but no warning (an older authority's)
//! keeps its meaning: the lock where it says; the warning is the configured
//! one, or three quarters through the period when that would not come first.
//!
//! `watchdog` checks the deadlines at start and at every tick. Entering the
//! warning period is logged once per change of standing (one WARN naming
//! the due date and the days left, not one per tick) and published on the
//! regime ([`Regime::observe_inspection`](crate::regime::Regime)) for the
//! bus's `InspectionDue` signal; a new acknowledgement clears it. Past the
//! lock deadline the meter locks; a meter already locked for another reason
//! is not locked again: one lock at a time, the first reason stays visible.

use meter_pki::cert::Certificate;
use meter_pki::report::ReportAck;

use crate::clock;
use crate::error::Result;
use crate::ledger::Ledger;
use crate::meter::Meter;
use crate::regime::{AckMemo, Notice, Standing};

/// Note of the ledger row that records an applied acknowledgement.
pub const ACK_NOTE: &str = crate::semantic::NOTE_REPORT_ACK;

const DAY: i64 = 86_400;

/// When the inspection falls due and when the meter locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Start of the current period (acknowledged report time, or certification), Unix s.
    pub baseline: i64,
    /// Days from the baseline to the lock.
    pub period_days: u32,
    /// Days from the baseline to the warning (less than `period_days`, or
    /// equal when the period is too short to leave room for one).
    pub warn_days: u32,
    /// Warning deadline ("inspection due"), Unix s.
    pub warn_at: i64,
    /// Lock deadline, Unix s.
    pub lock_at: i64,
    /// Sequence of the last acknowledged report (0: none yet).
    pub acknowledged_sequence: u64,
}

/// The periods in force: the acknowledgement's, else the configuration's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    /// Days to the lock.
    pub period_days: u32,
    /// Days to the warning.
    pub warn_days: u32,
}

impl Periods {
    /// The periods an acknowledgement leaves in force over the configured
    /// ones. A warning that would not come before the lock (an ack setting
    /// a short period and no warning, as an older authority's does) moves
    /// to three quarters of the period, the ratio of the defaults; a period
    /// of a few days may leave none (warning = lock).
    pub fn resolve(ack: Option<(Option<u32>, Option<u32>)>, configured: Periods) -> Periods {
        let (period, warn) = ack.unwrap_or((None, None));
        let period_days = period.unwrap_or(configured.period_days);
        let mut warn_days = warn.unwrap_or(configured.warn_days);
        if warn_days >= period_days {
            warn_days = period_days - period_days / 4;
        }
        Periods {
            period_days,
            warn_days,
        }
    }
}

impl Schedule {
    /// The schedule of a period starting at `baseline` (Unix s).
    pub fn new(baseline: i64, periods: Periods, acknowledged_sequence: u64) -> Schedule {
        let after = |days: u32| baseline.saturating_add(i64::from(days).saturating_mul(DAY));
        Schedule {
            baseline,
            period_days: periods.period_days,
            warn_days: periods.warn_days,
            warn_at: after(periods.warn_days),
            lock_at: after(periods.period_days),
            acknowledged_sequence,
        }
    }

    /// Whether the lock deadline has passed at `now`.
    pub fn overdue(&self, now: i64) -> bool {
        now > self.lock_at
    }

    /// Where the meter stands at `now`.
    pub fn standing(&self, now: i64) -> Standing {
        if now > self.lock_at {
            Standing::Overdue
        } else if now > self.warn_at {
            Standing::Due
        } else {
            Standing::Ok
        }
    }

    /// Whole days left before the lock at `now` (rounded up; 0 once past).
    pub fn days_left(&self, now: i64) -> i64 {
        let left = self.lock_at.saturating_sub(now).max(0);
        left / DAY + i64::from(left % DAY != 0)
    }

    /// The notice of the standing at `now`.
    pub fn notice(&self, now: i64) -> Notice {
        Notice {
            standing: self.standing(now),
            due: self.warn_at,
            lock: self.lock_at,
        }
    }
}

/// Computes the schedule from the ledger and the configuration.
pub async fn schedule(meter: &Meter) -> Result<Schedule> {
    let (identity, ledger) = meter.provisioned()?;
    let config = meter.config();
    let configured = Periods {
        period_days: config.inspection_period_days,
        warn_days: config.inspection_warn_days,
    };
    Ok(match latest_ack(meter, &ledger).await? {
        Some(ack) => Schedule::new(
            ack.report_time,
            Periods::resolve(Some((ack.period_days, ack.warn_days)), configured),
            ack.report_sequence,
        ),
        None => Schedule::new(
            meter_pki::cert::not_before(&identity.meter_cert),
            Periods::resolve(None, configured),
            0,
        ),
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

/// Judges the standing at `now`, publishes it on the regime and logs a
/// change of standing once: WARN on entering the warning period (the due
/// date, the lock date, the days left), INFO when an acknowledgement ends
/// it. Past the lock the lock itself is the message (see [`check`]).
pub fn observe(meter: &Meter, s: &Schedule, now: i64) -> Notice {
    let notice = s.notice(now);
    let before = meter.regime().observe_inspection(notice);
    let was = before.map(|n| n.standing);
    match notice.standing {
        Standing::Due if was != Some(Standing::Due) => tracing::warn!(
            inspection_state = notice.standing.name(),
            due = %rfc3339(s.warn_at),
            locks = %rfc3339(s.lock_at),
            days_left = s.days_left(now),
            acknowledged_report = s.acknowledged_sequence,
            "inspection due: send a status report (meterctl report) before the meter locks"
        ),
        Standing::Ok if was.is_some_and(|w| w != Standing::Ok) => tracing::info!(
            inspection_state = notice.standing.name(),
            due = %rfc3339(s.warn_at),
            locks = %rfc3339(s.lock_at),
            acknowledged_report = s.acknowledged_sequence,
            "inspection no longer due: a status report was acknowledged"
        ),
        _ => {}
    }
    notice
}

/// Judges the standing (see [`observe`]); locks with `inspection-overdue`
/// if the lock deadline has passed and the meter is not locked already;
/// returns whether it locked.
pub async fn check(meter: &Meter) -> Result<bool> {
    let (Some(ledger), Some(_)) = (meter.ledger(), meter.identity()) else {
        return Ok(false);
    };
    let s = schedule(meter).await?;
    let now = clock::now();
    observe(meter, &s, now);
    if ledger.state().lock.is_some() || !s.overdue(now) {
        return Ok(false);
    }
    tracing::error!(
        due = %rfc3339(s.warn_at),
        locks = %rfc3339(s.lock_at),
        period_days = s.period_days,
        "no acknowledged status report within the inspection period: locking"
    );
    meter
        .regime()
        .engage(&ledger, meter_proto::lock_reason::INSPECTION_OVERDUE)
        .await?;
    Ok(true)
}

/// Unix seconds as RFC 3339 UTC (`2027-03-01T00:00:00Z`), as the log and
/// meterctl print times.
pub fn rfc3339(secs: i64) -> String {
    u64::try_from(secs)
        .ok()
        .and_then(|s| der::DateTime::from_unix_duration(std::time::Duration::from_secs(s)).ok())
        .map(|t| t.to_string())
        .unwrap_or_else(|| format!("@{secs}"))
}

#[cfg(test)]
#[path = "inspection_tests.rs"]
mod tests;
