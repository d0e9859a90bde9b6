//! `ReportSegment`: the ledger rows a status report brings to the
//! authority, streamed to a descriptor the caller hands over.
//!
//! A report (`report`) states registers and a head and signs the digest
//! and row range of its segment ([`meter_pki::report::SegmentRef`]): the
//! rows after the last acknowledged report's snapshot up to its own. This
//! member writes exactly those rows ([`meter_pki::segment`]) for a report
//! the caller made (found by its request id, scoped to the caller's uid like
//! every request key), so a retry writes the same bytes. The authority
//! (`meter-authority inspect REPORT --segment SEG`) re-derives every hash
//! and register from them.
//!
//! The segment holds every caller's rows (their request ids, times and
//! amounts), so the member is for administrators only; a report itself
//! stays a user's call. Nothing is charged: the report was.
//!
//! The bytes come from the spool `Report` wrote as it hashed the rows
//! (`spool`: the rows are exported once per report), or, when there is none
//! of the signed length, are re-read from the ledger; either way they are
//! hashed as they go out; a
//! segment that no longer has the digest its report signed (rows changed
//! underneath, which only a rewritten ledger can do) ends the call with a
//! `Storage` error after the bytes were written, and is logged: the
//! authority refuses such a segment anyway.

use meter_pki::payload;
use meter_pki::report::StatusReport;
use tokio::sync::mpsc;

use crate::clock;
use crate::error::{Result, ServiceError};
use crate::ledger::{EntryKind, Key};
use crate::meter::Meter;
use crate::outlet::Outlet;
use crate::service::Service;
use crate::spool::{self, Spool};

/// Chunks in flight between the ledger export and the descriptor.
const QUEUE: usize = 4;

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// First row.
    pub first_seq: u64,
    /// Last row.
    pub last_seq: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Writes the segment of the caller's report `key` to `out`.
pub async fn stream(meter: &Meter, key: Key, out: Outlet) -> Result<Written> {
    let (identity, ledger) = meter.provisioned()?;
    out.check()?;
    let no_report = || {
        ServiceError::InvalidInput(format!(
            "you made no status report with request id {:?}; make it first (Report), then ask for its segment with the same id",
            key.shown()
        ))
    };
    let stored = ledger.lookup(&key).await?.ok_or_else(no_report)?;
    if stored.kind != EntryKind::Debit || stored.service != Some(Service::StatusReport) {
        return Err(no_report());
    }
    let (report, _) =
        payload::open::<StatusReport>(&stored.product, &identity.anchors, clock::now())?;
    let seg = report.segment.ok_or_else(|| {
        ServiceError::InvalidInput(format!(
            "report {} was made before reports carried segments; make a new report",
            report.sequence
        ))
    })?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let spooled = Spool::new(&meter.config().state_dir).open(report.sequence, seg.bytes);
    let from_spool = spooled.is_some();
    let send = move |chunk| tx.blocking_send(chunk).is_ok();
    let export = async {
        let r: Result<Option<([u8; 48], u64)>> = match spooled {
            // Written by `Report` as it hashed the rows: not exported again.
            Some(file) => tokio::task::spawn_blocking(move || spool::stream(file, send))
                .await
                .map_err(|_| ServiceError::Internal("the segment spool reader stopped".into()))?,
            None => Ok(ledger
                .export_segment(
                    &identity.meter_id,
                    seg.first_seq.saturating_sub(1),
                    seg.last_seq,
                    send,
                )
                .await?
                .map(|e| (e.summary.digest, e.summary.bytes))),
        };
        r
    };
    let (exported, written) = tokio::join!(export, out.write_all(rx));
    let bytes = written?;
    let (digest, _) = exported?.ok_or_else(|| {
        ServiceError::Internal("the segment export stopped before its end".into())
    })?;
    if hex::encode(digest) != seg.digest {
        tracing::error!(
            sequence = report.sequence,
            first = seg.first_seq,
            last = seg.last_seq,
            from_spool,
            "the ledger rows no longer make the segment the report signed"
        );
        return Err(ServiceError::Storage(format!(
            "rows {}..={} no longer make the segment report {} signed: the ledger changed under the meter",
            seg.first_seq, seg.last_seq, report.sequence
        )));
    }
    tracing::info!(
        sequence = report.sequence,
        first = seg.first_seq,
        last = seg.last_seq,
        bytes,
        "report segment written"
    );
    Ok(Written {
        first_seq: seg.first_seq,
        last_seq: seg.last_seq,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use meter_pki::segment::{kind, service_name, SERVICES};

    use crate::ledger::EntryKind;
    use crate::service::Service;

    /// The segment format names rows by the ledger's codes: they must stay equal.
    #[test]
    fn codes_match_the_ledger() {
        assert_eq!(SERVICES.len(), Service::ALL.len());
        for s in Service::ALL {
            assert_eq!(service_name(s as u8), Some(s.name()), "{s:?}");
        }
        for (k, c) in [
            (EntryKind::Genesis, kind::GENESIS),
            (EntryKind::Provision, kind::PROVISION),
            (EntryKind::Rates, kind::RATES),
            (EntryKind::Credit, kind::CREDIT),
            (EntryKind::Debit, kind::DEBIT),
            (EntryKind::Lock, kind::LOCK),
            (EntryKind::Unlock, kind::UNLOCK),
            (EntryKind::Event, kind::EVENT),
        ] {
            assert_eq!(k as u8, c, "{k:?}");
        }
    }
}
