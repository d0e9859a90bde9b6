//! Audit on demand (`meterctl audit`): re-check the whole ledger while
//! running, and lock the meter if it finds what the start-up audit would.

use crate::error::Result;
use crate::ledger::{AuditReport, Verdict};
use crate::lock;
use crate::meter::Meter;

/// Runs a full audit; locks on rollback or tamper.
pub async fn audit(meter: &Meter) -> Result<AuditReport> {
    let ledger = meter.require_ledger()?;
    let report = ledger.audit().await?;
    match &report.verdict {
        Verdict::Clean | Verdict::RolledForward => {}
        Verdict::Rollback { .. } => lock::engage(meter, meter_proto::lock_reason::ROLLBACK).await?,
        Verdict::Tamper { .. } => lock::engage(meter, meter_proto::lock_reason::TAMPER).await?,
    }
    Ok(report)
}
