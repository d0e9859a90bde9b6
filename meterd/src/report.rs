//! Status reports (SPEC service 11) and their acknowledgement by the authority.
//!
//! `Report` signs, with the identity key, a register snapshot and the usage
//! since the previous report ([`meter_pki::report::StatusReport`], CMS
//! eContentType `CT_STATUS_REPORT`, opens with `openssl cms -verify`). It is
//! charged as service `status-report` at the rate in force (0 when the
//! table has none) and is one ledger row like any sale; a locked meter must
//! still report (that is how an
//! `inspection-overdue` lock gets resolved), and then the report is free:
//! it goes through the pipeline with [`Guard::Recording`] and
//! [`Price::RateUnlessLocked`].
//!
//! The snapshot is taken at a published ledger state (row N): registers,
//! counts and head are as of row N, usage covers the rows after the previous
//! report's snapshot (its `ledger_rows`) up to N. The report's own row comes after N and so appears
//! in the next report's usage. Reports are serialized so that two never get
//! the same sequence.
//!
//! `AcknowledgeReport` applies the authority's [`ReportAck`]: it must name
//! this meter and a report this meter issued (request id, sequence, time and
//! SHA-384 of the report JSON all match the stored report, found by its
//! sequence), and be newer than the last one applied. It is recorded as a
//! row with note [`inspection::ACK_NOTE`] (key `m/report-ack/<sequence>`, so
//! a replay is refused by the ledger), which resets the watchdog. When the meter is
//! locked `inspection-overdue` and the report was made under that very lock
//! (it carries the lock's nonce), the row is an Unlock: the authority has
//! inspected the meter, which is what the lock waited for. Likewise for a
//! `period-closed` lock (current account, see `account`) when the report
//! opens a billing period not yet over.

use meter_pki::payload;
use meter_pki::report::{
    report_digest, RegisterPair, ReportAck, SegmentRef, ServiceUsage, StatusReport,
};

use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::inspection::{self, ACK_NOTE};
use crate::ledger::{EntryKind, Key};
use crate::meter::Meter;
use crate::sale::{self, Guard, Made, Price, Sale, Spec};
use crate::service::Service;
use crate::spool::{self, Spool};
use crate::{account, clock};

/// What this feature owns: reports are made one at a time, so that two
/// never get the same sequence.
#[derive(Debug, Default)]
pub struct Reports {
    one_at_a_time: tokio::sync::Mutex<()>,
}

/// What an applied acknowledgement changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    /// Sequence of the acknowledged report.
    pub sequence: u64,
    /// Next lock deadline, Unix s.
    pub due: i64,
    /// Period in force, days.
    pub period_days: u32,
    /// Whether it cleared an `inspection-overdue` lock.
    pub unlocked: bool,
}

/// `Report`: the signed status report (DER CMS). A retry with the same
/// request id returns the stored report and charges nothing.
pub async fn report(meter: &Meter, reports: &Reports, key: Key) -> Result<Vec<u8>> {
    let _one = reports.one_at_a_time.lock().await;
    let request_id = key.shown();
    let spec = Spec::sale(
        Service::StatusReport,
        Some(key),
        input_digest("status-report", &[request_id.as_bytes()]),
    )
    .guarded(Guard::Recording)
    // Free when locked (the meter must be able to report its way out of an
    // inspection lock) or when the table in force does not price reports.
    .priced(Price::RateUnlessLocked(Service::StatusReport));
    let sold = sale::sell(meter, spec, async |sale: &Sale| {
        let body = snapshot(meter, sale, &request_id).await?;
        let content = payload::encode(&body)?;
        let signed = meter
            .sign_as_meter(
                &sale.identity,
                meter_pki::oid::CT_STATUS_REPORT,
                &content,
                sale.now(),
            )
            .await?;
        tracing::info!(
            sequence = body.sequence,
            price = sale.price.0,
            "status report issued"
        );
        Ok(Made::Product(signed))
    })
    .await?;
    Ok(sold.product)
}

/// The report's body at the ledger state published now (row N): registers,
/// counts and head as of row N; usage over the rows after the previous
/// report's snapshot up to N (its own row comes after N and so appears in
/// the next report's usage).
async fn snapshot(meter: &Meter, sale: &Sale, request_id: &str) -> Result<StatusReport> {
    let now = sale.now();
    let identity = &sale.identity;
    let ledger = &sale.ledger;
    let state = ledger.state();
    let book = &sale.rates;
    let table = book.current(now);
    let rows = state.rows;
    let regs = &state.registers;
    let previous = ledger.last_of_service(Service::StatusReport, rows).await?;
    let (previous_rows, previous_time) = match &previous {
        Some((_, time, product)) => {
            let (prev, _) = payload::open::<StatusReport>(product, &identity.anchors, now)?;
            (prev.ledger_rows, time.div_euclid(1000))
        }
        None => (0, 0),
    };
    let usage = ledger.usage_since(previous_rows, rows).await?;
    let schedule = inspection::schedule(meter).await?;
    let done = regs.per_service[Service::StatusReport.index()];
    let spool = Spool::new(&meter.config().state_dir);
    let segment = segment_of(sale, schedule.acknowledged_sequence, rows, &spool, done + 1).await?;
    let (currency, digits) = book.currency(now);
    let lock = state.lock.clone();
    Ok(StatusReport {
        meter_id: identity.meter_id.clone(),
        request_id: request_id.to_owned(),
        sequence: done.saturating_add(1),
        time: now,
        currency,
        digits,
        ascending: regs.ascending.0,
        descending: regs.descending.0,
        control_total: regs.control_total.0,
        pieces: regs.pieces,
        counts: Service::ALL
            .iter()
            .map(|s| (s.name().to_owned(), regs.per_service[s.index()]))
            .collect(),
        ledger_rows: rows,
        ledger_head: hex::encode(state.head),
        nv_counter: state.nv,
        rates_version: table.map_or(0, |t| t.version),
        lock_reason: lock.as_ref().map(|l| l.reason.clone()).unwrap_or_default(),
        lock_nonce: lock.map(|l| l.nonce).unwrap_or_default(),
        previous_sequence: done,
        previous_time,
        usage: Service::ALL
            .iter()
            .filter_map(|s| {
                let (pieces, amount) = usage.per_service[s.index()];
                (pieces > 0).then(|| {
                    (
                        s.name().to_owned(),
                        ServiceUsage {
                            pieces,
                            amount: amount.0,
                        },
                    )
                })
            })
            .collect(),
        credited: usage.credited.0,
        inspection_due: schedule.lock_at,
        segment: Some(segment),
        postage: regs.split.then_some(RegisterPair {
            ascending: regs.postage.ascending.0,
            descending: regs.postage.descending.0,
            control_total: regs.postage.control_total.0,
            pieces: regs.postage.pieces,
        }),
    })
}

/// The segment a report made at row `rows` brings: the rows after the
/// snapshot of the last acknowledged report (`acknowledged`, 0: none, so
/// from the genesis row), hashed here and spooled (`spool`, as report
/// `sequence`) for `ReportSegment` to write out without exporting again.
async fn segment_of(
    sale: &Sale,
    acknowledged: u64,
    rows: u64,
    spool: &Spool,
    sequence: u64,
) -> Result<SegmentRef> {
    let identity = &sale.identity;
    let after = match acknowledged {
        0 => 0,
        n => {
            let (_, _, product) = sale
                .ledger
                .nth_of_service(Service::StatusReport, n)
                .await?
                .ok_or_else(|| {
                    ServiceError::Storage(format!("acknowledged report {n} is not in the ledger"))
                })?;
            let (acked, _) =
                payload::open::<StatusReport>(&product, &identity.anchors, sale.now())?;
            acked.ledger_rows
        }
    };
    if after > rows {
        return Err(ServiceError::Storage(format!(
            "the acknowledged report covers {after} rows, the ledger has {rows}"
        )));
    }
    let file = spool.create(sequence)?;
    let exported = sale
        .ledger
        .export_segment(&identity.meter_id, after, rows, spool::sink(file))
        .await;
    spool.finish(sequence, matches!(exported, Ok(Some(_))))?;
    let exported = exported?.ok_or_else(|| {
        ServiceError::Storage("the segment could not be spooled (see the log)".into())
    })?;
    Ok(SegmentRef {
        first_seq: exported.first_seq,
        last_seq: exported.last_seq,
        prev_head: hex::encode(exported.prev),
        digest: hex::encode(exported.summary.digest),
        bytes: exported.summary.bytes,
    })
}

/// `AcknowledgeReport`: applies an authority acknowledgement (see the module doc).
pub async fn acknowledge(meter: &Meter, signed: &[u8]) -> Result<Acknowledged> {
    let (identity, ledger) = meter.provisioned()?;
    let now = clock::now();
    let (ack, verified) = payload::open::<ReportAck>(signed, &identity.anchors, now)?;
    if ack.meter_id != identity.meter_id {
        return Err(ServiceError::InvalidInput(format!(
            "the acknowledgement is for meter {}, this meter is {}",
            ack.meter_id, identity.meter_id
        )));
    }
    let not_ours = || {
        ServiceError::InvalidInput(format!(
            "this meter issued no report with request id {:?}, sequence {}; the acknowledgement is for another report",
            ack.report_request_id, ack.report_sequence
        ))
    };
    // Reports are found by their sequence (their keys are scoped to the
    // caller who asked, which the authority does not know).
    let (_, _, stored) = ledger
        .nth_of_service(Service::StatusReport, ack.report_sequence)
        .await?
        .ok_or_else(not_ours)?;
    let (report, opened) = payload::open::<StatusReport>(&stored, &identity.anchors, now)?;
    if report.sequence != ack.report_sequence
        || report.request_id != ack.report_request_id
        || report.time != ack.report_time
        || !report_digest(&opened.content).eq_ignore_ascii_case(&ack.report_digest)
    {
        return Err(not_ours());
    }
    let current = inspection::schedule(meter).await?;
    if ack.report_sequence == current.acknowledged_sequence {
        return Err(ServiceError::Replay(format!(
            "report {} is already acknowledged",
            ack.report_sequence
        )));
    }
    if ack.report_sequence < current.acknowledged_sequence {
        return Err(ServiceError::Stale(format!(
            "report {} is older than report {}, already acknowledged; send the newest acknowledgement",
            ack.report_sequence, current.acknowledged_sequence
        )));
    }
    // No lock may change between reading it and the commit below.
    let held = meter.regime().hold().await;
    // A `period-closed` lock (current account) is lifted by an ack that
    // opens a period not yet over.
    let unlocks = ledger.state().lock.is_some_and(|l| {
        (l.reason == meter_proto::lock_reason::INSPECTION_OVERDUE && l.nonce == report.lock_nonce)
            || (l.reason == meter_proto::lock_reason::PERIOD_CLOSED
                && account::ack_reopens(meter, &report, now))
    });
    let kind = if unlocks {
        EntryKind::Unlock
    } else {
        EntryKind::Event
    };
    let spec = Spec::record(
        kind,
        Key::meter("report-ack", ack.report_sequence),
        input_digest("report-ack", &[&verified.content]),
        ACK_NOTE,
    );
    sale::record_once(meter, spec, signed.to_vec(), || {
        ServiceError::Replay(format!(
            "report {} is already acknowledged",
            ack.report_sequence
        ))
    })
    .await?;
    account::reload(meter, &held).await?;
    drop(held);
    let next = inspection::schedule(meter).await?;
    tracing::info!(
        sequence = ack.report_sequence,
        due = %inspection::rfc3339(next.warn_at),
        locks = %inspection::rfc3339(next.lock_at),
        unlocked = unlocks,
        "status report acknowledged"
    );
    // A warning in force ends now, not at the next tick.
    inspection::observe(meter, &next, clock::now());
    Ok(Acknowledged {
        sequence: ack.report_sequence,
        due: next.lock_at,
        period_days: next.period_days,
        unlocked: unlocks,
    })
}
