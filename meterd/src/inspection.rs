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
//! [`start`] runs the background task that checks, at start and every
//! `check_interval_ms` (configuration, 10 s by default), first the clock
//! ([`crate::timecheck`], against the TPM clock) and then the deadline. A
//! meter already locked for another reason is not locked again for the
//! deadline: one lock at a time, the first reason stays visible.

use std::sync::Arc;

use meter_pki::report::ReportAck;

use crate::clock;
use crate::error::Result;
use crate::ledger::Ledger;
use crate::lock;
use crate::meter::Meter;
use crate::timecheck::Judgement;

/// Note of the ledger row that records an applied acknowledgement.
pub const ACK_NOTE: &str = "report-ack";

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
    let identity = meter.require_identity()?;
    let ledger = meter.require_ledger()?;
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

/// What [`latest_ack`] found so far, so that Status and the 10 s tick only
/// look at rows committed since (the journal has no index on notes).
struct AckCache {
    meter_id: String,
    scanned: u64,
    ack: Option<ReportAck>,
}

static ACK_CACHE: std::sync::Mutex<Option<AckCache>> = std::sync::Mutex::new(None);

/// The last acknowledgement applied, looking only at rows not yet scanned.
async fn latest_ack(meter: &Meter, ledger: &Ledger) -> Result<Option<ReportAck>> {
    let rows = ledger.state().rows;
    let meter_id = meter.meter_id().unwrap_or_default();
    let (from, cached) = match ACK_CACHE.lock().as_deref() {
        Ok(Some(c)) if c.meter_id == meter_id && c.scanned <= rows => (c.scanned, c.ack.clone()),
        _ => (0, None),
    };
    let ack = match ledger.last_with_note(ACK_NOTE, from, rows).await? {
        Some((_, product)) => Some(decode_applied(&product, meter)?),
        None => cached,
    };
    if let Ok(mut g) = ACK_CACHE.lock() {
        *g = Some(AckCache {
            meter_id,
            scanned: rows,
            ack: ack.clone(),
        });
    }
    Ok(ack)
}

/// Re-opens an acknowledgement the meter applied earlier (it is in the
/// sealed ledger; verifying it again also checks the product's type).
pub(crate) fn decode_applied(product: &[u8], meter: &Meter) -> Result<ReportAck> {
    let (ack, _) = meter_pki::payload::open::<ReportAck>(product, &meter.anchors(), clock::now())?;
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
    lock::engage(meter, meter_proto::lock_reason::INSPECTION_OVERDUE).await?;
    Ok(true)
}

/// Runs the first check now (so that the meter does not serve a sale before
/// it) and then starts the background watchdog, every `check_interval_ms`.
pub async fn start(meter: Arc<Meter>) -> tokio::task::JoinHandle<()> {
    run_once(&meter).await;
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(meter.config().check_interval());
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            run_once(&meter).await;
        }
    })
}

/// Clock first (a clock lock makes the deadline moot), then the deadline,
/// then the current-account billing period.
async fn run_once(meter: &Meter) {
    if let Err(e) = clock_tick(meter).await {
        tracing::warn!(error = %e, "clock check failed; retrying at the next tick");
    }
    if let Err(e) = check(meter).await {
        tracing::warn!(error = %e, "inspection check failed; retrying at the next tick");
    }
    if let Err(e) = crate::account::check(meter).await {
        tracing::warn!(error = %e, "billing period check failed; retrying at the next tick");
    }
}

/// One clock check against the TPM clock ([`crate::timecheck::ClockGuard::tick`]);
/// locks with `clock` on a bad verdict. Does nothing before provisioning.
async fn clock_tick(meter: &Meter) -> Result<Judgement> {
    let (Some(ledger), Some(_)) = (meter.ledger(), meter.identity()) else {
        return Ok(Judgement::Fine);
    };
    let state = ledger.state();
    let clock_locked = state
        .lock
        .as_ref()
        .is_some_and(|l| l.reason == meter_proto::lock_reason::CLOCK);
    let tpm = meter.housing().call(|h| h.clock()).await?;
    let last_row = (state.time_ms > 0).then_some(state.time_ms);
    let verdict = meter.clock().tick(tpm, last_row, clock_locked)?;
    if !verdict.is_fine() {
        tracing::error!(?verdict, ?tpm, "the clock went back: locking");
        lock::engage(meter, meter_proto::lock_reason::CLOCK).await?;
    }
    Ok(verdict)
}
