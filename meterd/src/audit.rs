//! Audit on demand (`meterctl audit`): re-check the whole ledger while
//! running (the chain, then every row's signed objects: `semantic`), and
//! lock the meter if it finds what the start-up audit would.

use crate::error::Result;
use crate::ledger::{AuditReport, Verdict};
use crate::meter::Meter;

/// Runs a full audit; locks on rollback or tamper.
pub async fn audit(meter: &Meter) -> Result<AuditReport> {
    let ledger = meter.require_ledger()?;
    let report = ledger.audit().await?;
    let meter_id = meter.meter_id().unwrap_or_default();
    let report = crate::semantic::confirm(&ledger, &meter_id, 0, report).await?;
    let reason = match &report.verdict {
        Verdict::Clean | Verdict::RolledForward => return Ok(report),
        Verdict::Rollback { .. } => meter_proto::lock_reason::ROLLBACK,
        Verdict::Tamper { .. } => meter_proto::lock_reason::TAMPER,
    };
    meter.regime().engage(&ledger, reason).await?;
    Ok(report)
}
