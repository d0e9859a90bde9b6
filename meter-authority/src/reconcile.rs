//! Reconciling a status report with the rows behind it (issue 12, item 5).
//!
//! A report states registers and a head; its segment brings the ledger
//! rows since the last acknowledged report. Nothing the meter says is taken
//! on trust: every row hash is re-derived with `meter_pki::ledger_format`
//! (the meter's own code for its chain, so the two cannot disagree) and
//! every register from the acknowledged point the segment extends, and
//! every row that brings value or authority from outside must carry an
//! object this authority signed, for this meter, applied once. A root on
//! the machine can rewrite the ledger and recompute every hash; he cannot
//! make a voucher for more than the authority issued, nor an unlock order.
//!
//! What is checked, each failure a named finding:
//!
//! * the segment is the one the report signed (digest, length, rows, the
//!   head it extends), of this meter;
//! * it extends a head this authority acknowledged (the genesis link for a
//!   first report), and every row it shares with an acknowledged report
//!   is the same row (no rewritten history);
//! * every row hash, and the registers of every row (credit then debit,
//!   AR + DR = CT, pieces and per-service counts continue, a `reanchor`
//!   unlock as the meter applies it), row times never go backwards;
//! * every credit is a voucher this authority issued to this meter, for the
//!   row's amount, under its own sequence, used once; every unlock is its
//!   clear-lock order or report acknowledgement; lock, account, rate and
//!   anchor rows carry its signed object; control total = the vouchers it
//!   issued that the meter credited;
//! * the report's registers, counts, head, sequence and NV counter agree
//!   with the rows and the last acknowledged report.
//!
//! The authority objects of the rows (vouchers, orders, tables) are opened
//! and matched in `reconcile_objects.rs`.
//!
//! The TPM's attestation of time and counter comes beside the report and
//! is checked by `inspect` with `attested` in the same book update.

use meter_pki::cert::Certificate;
use meter_pki::ledger_format::{
    epoch_previous, genesis_prev, row_hash, Digest, EpochRecord, EPOCH_KIND, EPOCH_NOTE,
};
use meter_pki::payload::RateTable;
use meter_pki::report::StatusReport;
use meter_pki::segment::{self, kind, service, Segment, SegmentRow};
use sha2::{Digest as _, Sha384};

use crate::book::{Book, IndexRow, Point, PostagePair, Registers};
use crate::epochs::EpochRun;
pub use crate::findings::Findings;
use crate::pricing::Pricing;

/// A report that reconciles: what the book gains.
#[derive(Debug, Clone)]
pub struct Reconciled {
    /// The new acknowledged point.
    pub point: Point,
    /// Authority objects applied in the segment (key → row).
    pub applied: Vec<(String, u64)>,
    /// Rows for lookups (postmarks and postage) after the last acknowledged point.
    pub index: Vec<IndexRow>,
    /// First and last rows of the segment.
    pub rows: (u64, u64),
    /// Sum of the vouchers issued to the meter.
    pub issued: u64,
    /// Vouchers issued, not credited yet (sequences).
    pub outstanding: Vec<u64>,
    /// Rows of the segment that record an unclean start (an epoch row whose
    /// previous run wrote no stop row: killed, crashed, powered off, or a
    /// restored copy). Counted, not refused.
    pub unclean: Vec<u64>,
    /// The book's running count of unclean starts after this report.
    pub unclean_total: u64,
    /// Rate tables the segment installed (the book keeps them).
    pub rates: Vec<RateTable>,
}

/// Reconciles `report` (verified; `report_digest` = hex SHA-384 of its
/// JSON) and its `segment` against `book`, with the authority's `roots`
/// (current and retired), at `now` (Unix s). `meter_cert` is the identity
/// certificate that signed the report: postage indicia must verify with it
/// (`None`: decoded, not verified).
pub fn reconcile(
    report: &StatusReport,
    report_digest: &str,
    segment_bytes: &[u8],
    book: &Book,
    roots: &[Certificate],
    meter_cert: Option<&Certificate>,
    now: i64,
) -> Result<Reconciled, Findings> {
    let mut f = Findings::default();
    let Some(sref) = &report.segment else {
        f.add("the report names no ledger segment (a meter older than segments?)".into());
        return Err(f);
    };
    let digest = hex::encode(segment::digest(segment_bytes));
    if digest != sref.digest || segment_bytes.len() as u64 != sref.bytes {
        f.add(format!(
            "the segment is not the one the report signed (digest {digest}, {} bytes; the report says {}, {} bytes)",
            segment_bytes.len(),
            sref.digest,
            sref.bytes
        ));
        return Err(f);
    }
    let seg = match Segment::parse(segment_bytes) {
        Ok(s) => s,
        Err(e) => {
            f.add(format!("the segment: {e}"));
            return Err(f);
        }
    };
    if seg.meter_id != report.meter_id
        || seg.first_seq != sref.first_seq
        || seg.last_seq != sref.last_seq
        || hex::encode(seg.prev) != sref.prev_head
    {
        f.add("the segment's header does not match what the report says of it".into());
        return Err(f);
    }
    let Some(start) = start_point(&seg, book, &mut f) else {
        return Err(f);
    };
    let mut walk = Walk {
        meter_id: &report.meter_id,
        book,
        roots,
        now,
        head: *seg.prev,
        regs: start.0,
        time_ms: start.1,
        applied: Vec::new(),
        index: Vec::new(),
        unclean: Vec::new(),
        epochs: EpochRun::new(
            book.acknowledged
                .iter()
                .filter(|p| p.rows < seg.first_seq)
                .max_by_key(|p| p.rows)
                .and_then(|p| p.epoch),
        ),
        pricing: Pricing::new(
            book.rates.values().cloned(),
            &report.meter_id,
            meter_cert.cloned(),
        ),
        indexed_after: book.last().map_or(0, |p| p.rows),
        f,
    };
    for row in seg.rows() {
        match row {
            Ok(r) => walk.row(&r),
            Err(e) => {
                walk.f.add(format!("the segment: {e}"));
                return Err(walk.f);
            }
        }
    }
    walk.finish(report, report_digest, &seg)
}

/// Registers and last row time where the segment starts.
fn start_point(seg: &Segment<'_>, book: &Book, f: &mut Findings) -> Option<(Registers, i64)> {
    let after = seg.first_seq - 1;
    if after == 0 {
        if seg.prev != &genesis_prev(seg.meter_id) {
            f.add("row 1 does not link to this meter's genesis".into());
            return None;
        }
        return Some((Registers::default(), 0));
    }
    match book.point_at(after) {
        Some(p) if p.head == hex::encode(seg.prev) => Some((p.registers.clone(), p.row_time_ms)),
        Some(p) => {
            f.add(format!(
                "the segment extends row {after} with head {}, but report {} acknowledged head {} there: the ledger was rewritten",
                hex::encode(seg.prev),
                p.report_sequence,
                p.head
            ));
            None
        }
        None => {
            f.add(format!(
                "the segment starts after row {after}, where no report of this meter was acknowledged (last acknowledged: row {})",
                book.last().map_or(0, |p| p.rows)
            ));
            None
        }
    }
}

struct Walk<'a> {
    meter_id: &'a str,
    book: &'a Book,
    roots: &'a [Certificate],
    now: i64,
    head: Digest,
    regs: Registers,
    time_ms: i64,
    applied: Vec<(String, u64)>,
    index: Vec<IndexRow>,
    unclean: Vec<u64>,
    epochs: EpochRun,
    pricing: Pricing,
    indexed_after: u64,
    f: Findings,
}

impl Walk<'_> {
    fn row(&mut self, r: &SegmentRow<'_>) {
        let x = &r.fields;
        let seq = x.seq;
        self.head = row_hash(&self.head, r.canonical);
        if &self.head != r.hash {
            self.f.add(format!(
                "row {seq}: the hash stored with it is not the hash of its bytes"
            ));
        }
        if let Some(p) = self.book.point_at(seq) {
            if p.head != hex::encode(self.head) {
                self.f.add(format!(
                    "row {seq}: not the row report {} acknowledged (the ledger was rewritten after it)",
                    p.report_sequence
                ));
            }
        }
        if x.time < self.time_ms {
            self.f.add(format!(
                "row {seq}: time {} ms is before the previous row's {} ms",
                x.time, self.time_ms
            ));
        }
        self.time_ms = x.time;
        self.registers(r);
        self.outside_object(r);
        self.epochs
            .row(seq, x.kind, x.note, x.request_id, r.product, &mut self.f);
        if x.kind == kind::RATES {
            let at = x.time.div_euclid(1000);
            if let Ok(t) = self.open::<RateTable>(r.product.unwrap_or_default(), at) {
                self.pricing.installed(t);
            }
        }
        self.pricing.row(r, &mut self.f);
        if x.kind == EPOCH_KIND && x.note == EPOCH_NOTE.as_bytes() {
            let rec = r.product.and_then(EpochRecord::decode);
            if rec.is_some_and(|e| e.previous == epoch_previous::UNCLEAN) {
                self.unclean.push(seq);
            }
        }
        if x.kind == kind::DEBIT
            && matches!(x.service, service::POSTMARK | service::POSTAGE)
            && seq > self.indexed_after
        {
            self.index.push(IndexRow {
                seq,
                time_ms: x.time,
                service: x.service,
                digest: *x.product_digest,
            });
        }
    }

    fn registers(&mut self, r: &SegmentRow<'_>) {
        let x = &r.fields;
        let seq = x.seq;
        // A split meter's rows name their pair (issue 17): each pair is
        // derived from the rows before that name it.
        let postage = x.register == meter_pki::ledger_format::register::POSTAGE;
        let p = &view(&self.regs, postage);
        let mut n = p.clone();
        if x.kind == kind::UNLOCK && x.note == b"reanchor" {
            n.ascending = p.ascending.min(p.control_total);
            n.descending = p.control_total - n.ascending;
        } else {
            let funds = p.descending.checked_add(x.credit);
            match funds.and_then(|f| f.checked_sub(x.debit)) {
                Some(d) => n.descending = d,
                None => {
                    self.f.add(format!(
                        "row {seq}: debit {} exceeds the funds {}",
                        x.debit,
                        p.descending.saturating_add(x.credit)
                    ));
                    n.descending = 0;
                }
            }
            n.ascending = p.ascending.saturating_add(x.debit);
            n.control_total = p.control_total.saturating_add(x.credit);
            if x.credit > 0 && x.kind != kind::CREDIT {
                // Current account: a sale is booked credit = debit = price.
                if x.kind == kind::DEBIT && x.credit == x.debit && self.account_mode() {
                    n.billed = p.billed.saturating_add(x.credit);
                } else {
                    self.f.add(format!(
                        "row {seq}: a credit of {} that is neither a voucher nor a current-account sale",
                        x.credit
                    ));
                }
            }
            if x.service != 0 {
                n.pieces = p.pieces.saturating_add(1);
                let c = n.per_service.entry(x.service).or_insert(0);
                *c = c.saturating_add(1);
            }
        }
        let count = match x.service {
            0 => 0,
            s => n.per_service.get(&s).copied().unwrap_or(0),
        };
        let said = (
            x.ascending,
            x.descending,
            x.control_total,
            x.pieces,
            x.service_count,
        );
        let derived = (n.ascending, n.descending, n.control_total, n.pieces, count);
        if said != derived {
            self.f.add(format!(
                "row {seq}: registers (AR, DR, CT, pieces, service count) {said:?}, the rows before and its credit and debit give {derived:?}"
            ));
        }
        self.regs = if postage {
            let mut all = self.regs.clone();
            all.postage = PostagePair {
                ascending: n.ascending,
                descending: n.descending,
                control_total: n.control_total,
                pieces: n.pieces,
            };
            all.per_service = n.per_service;
            all
        } else {
            n
        };
    }

    /// Whether an account order was applied before the current row.
    fn account_mode(&self) -> bool {
        let is = |k: &str| k.starts_with("account-order/");
        self.book.applied.keys().any(|k| is(k)) || self.applied.iter().any(|(k, _)| is(k))
    }

    fn finish(
        mut self,
        report: &StatusReport,
        report_digest: &str,
        seg: &Segment<'_>,
    ) -> Result<Reconciled, Findings> {
        let last = seg.last_seq;
        if hex::encode(self.head) != report.ledger_head {
            self.f.add(format!(
                "the rows end at head {}, the report says {}",
                hex::encode(self.head),
                report.ledger_head
            ));
        }
        let r = &self.regs;
        let said = (
            report.ascending,
            report.descending,
            report.control_total,
            report.pieces,
        );
        let derived = (r.ascending, r.descending, r.control_total, r.pieces);
        if said != derived {
            self.f.add(format!(
                "the report's registers (AR, DR, CT, pieces) {said:?}, the rows give {derived:?}"
            ));
        }
        // The postage pair (issue 17): stated by a split meter's report,
        // absent (zero) for a meter never split.
        let p = r.postage;
        let derived_postage = (p.ascending, p.descending, p.control_total, p.pieces);
        let said_postage = report
            .postage
            .map(|p| (p.ascending, p.descending, p.control_total, p.pieces))
            .unwrap_or_default();
        if said_postage != derived_postage {
            self.f.add(format!(
                "the report's postage registers (AR, DR, CT, pieces) {said_postage:?}, the rows give {derived_postage:?}"
            ));
        }
        for (code, name) in segment::SERVICES {
            let n = r.per_service.get(&code).copied().unwrap_or(0);
            let stated = report.counts.get(name).copied().unwrap_or(0);
            if n != stated {
                self.f
                    .add(format!("the report counts {stated} {name}, the rows {n}"));
            }
        }
        let reports = r
            .per_service
            .get(&service::STATUS_REPORT)
            .copied()
            .unwrap_or(0);
        if report.sequence != reports + 1 {
            self.f.add(format!(
                "the report is number {}, the rows hold {reports} reports before it",
                report.sequence
            ));
        }
        if report.time.saturating_mul(1000).saturating_add(999) < self.time_ms {
            self.f.add(format!(
                "the report's time {} is before its last row's ({} ms)",
                report.time, self.time_ms
            ));
        }
        if let Some(p) = self
            .book
            .acknowledged
            .iter()
            .filter(|p| p.rows <= last)
            .max_by_key(|p| p.rows)
        {
            if report.nv_counter < p.nv_counter {
                self.f.add(format!(
                    "NV counter {} is behind the {} of report {} (a restored copy?)",
                    report.nv_counter, p.nv_counter, p.report_sequence
                ));
            }
        }
        // Control total = the vouchers issued that the meter credited.
        let mut credited: Vec<u64> = self
            .book
            .applied
            .iter()
            .map(|(k, s)| (k.as_str(), *s))
            .chain(self.applied.iter().map(|(k, s)| (k.as_str(), *s)))
            .filter(|(_, s)| *s <= last)
            .filter_map(|(k, _)| k.strip_prefix("voucher/")?.parse().ok())
            .collect();
        credited.sort_unstable();
        credited.dedup();
        let sum = credited
            .iter()
            .map(|s| self.book.vouchers.get(s).copied().unwrap_or(0))
            .fold(0u64, u64::saturating_add);
        let control_total = r.control_total.saturating_add(r.postage.control_total);
        if sum.saturating_add(r.billed) != control_total {
            self.f.add(format!(
                "control total {control_total} but the vouchers this authority issued and the meter credited sum to {sum} (+ {} billed on current account)",
                r.billed
            ));
        }
        self.epochs.finish(&self.applied, &mut self.f);
        self.pricing
            .finish(!report.lock_reason.is_empty(), &mut self.f);
        if !self.f.0.is_empty() {
            return Err(self.f);
        }
        let outstanding = self
            .book
            .vouchers
            .keys()
            .filter(|s| credited.binary_search(s).is_err())
            .copied()
            .collect();
        Ok(Reconciled {
            point: Point {
                rows: last,
                head: hex::encode(self.head),
                row_time_ms: self.time_ms,
                registers: self.regs,
                report_sequence: report.sequence,
                report_time: report.time,
                nv_counter: report.nv_counter,
                report_digest: report_digest.to_owned(),
                epoch: self.epochs.epoch,
            },
            applied: self.applied,
            index: self.index,
            rows: (seg.first_seq, last),
            issued: self.book.issued_total(),
            outstanding,
            unclean: self.unclean,
            unclean_total: 0,
            rates: self.pricing.learned,
        })
    }
}

/// The registers as the row's pair sees them: the services pair as it is,
/// or the postage pair in its place (with the counts of both).
fn view(regs: &Registers, postage: bool) -> Registers {
    if !postage {
        return regs.clone();
    }
    let p = regs.postage;
    Registers {
        ascending: p.ascending,
        descending: p.descending,
        control_total: p.control_total,
        pieces: p.pieces,
        per_service: regs.per_service.clone(),
        billed: 0,
        postage: p,
    }
}

/// SHA-384 of bytes, hex (lookups name products by it).
pub fn sha384_hex(b: &[u8]) -> String {
    hex::encode(Sha384::digest(b))
}

#[path = "reconcile_objects.rs"]
mod objects;

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
