//! The watchdog: at start (before the bus name is taken, so no sale comes
//! first) and then every `check_interval`, the clock against the TPM clock
//! (`timecheck`), the inspection deadline (`inspection`) and the billing
//! period (`account`), each locking the meter when it has run out.
//!
//! Sales do not wait for it: each sale checks the clock against the
//! monotonic clock itself (`sale`), and a closed period refuses sales at
//! once; the tick is what reads the TPM and writes the Lock rows.

use std::sync::Arc;

use crate::meter::Meter;
use crate::{account, inspection};

/// Runs the first check now, then starts the background task.
pub async fn start(meter: Arc<Meter>) -> tokio::task::JoinHandle<()> {
    run_once(&meter).await;
    let every = meter.config().check_interval();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            run_once(&meter).await;
        }
    })
}

/// One round: clock first (a clock lock makes the deadline moot), then the
/// deadline, then the current-account billing period. Public so that tests
/// can run a round without waiting for the interval.
pub async fn run_once(meter: &Meter) {
    if let Err(e) = clock_tick(meter).await {
        tracing::warn!(error = %e, "clock check failed; retrying at the next tick");
    }
    if let Err(e) = inspection::check(meter).await {
        tracing::warn!(error = %e, "inspection check failed; retrying at the next tick");
    }
    if let Err(e) = account::check(meter).await {
        tracing::warn!(error = %e, "billing period check failed; retrying at the next tick");
    }
}

/// Reads the TPM clock, judges it, and locks `clock` on a bad judgement.
async fn clock_tick(meter: &Meter) -> crate::error::Result<()> {
    let (Some(ledger), Some(_)) = (meter.ledger(), meter.identity()) else {
        return Ok(());
    };
    let state = ledger.state();
    let clock_locked = state
        .lock
        .as_ref()
        .is_some_and(|l| l.reason == meter_proto::lock_reason::CLOCK);
    let tpm = meter.housing().call(|h| h.clock()).await?;
    let last = (state.time_ms > 0).then_some(state.time_ms);
    let verdict = meter.regime().clock().tick(tpm, last, clock_locked)?;
    if !verdict.is_fine() {
        tracing::error!(?verdict, ?tpm, "the clock went backwards: locking");
        meter
            .regime()
            .engage(&ledger, meter_proto::lock_reason::CLOCK)
            .await?;
    }
    Ok(())
}
