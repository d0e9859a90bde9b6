//! A simulated meter's ledger: the rows a real meter writes (genesis,
//! voucher credits, postmark sales, its own status-report rows), chained
//! and with registers as `meter_pki::ledger_format` defines them, cut into
//! the segment each report carries (the rows since the last acknowledged
//! report), and the report signed by the meter's software identity key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::BTreeMap;

use meter_pki::ledger_format::{genesis_prev, row_hash, sha384, Digest, RowFields};
use meter_pki::report::{SegmentRef, StatusReport};
use meter_pki::segment::{self, kind, service, Encoder};

use crate::serve_support::{sign_as_meter, Meter};

struct Row {
    seq: u64,
    time: i64,
    kind: u8,
    service: u8,
    request_id: Option<String>,
    credit: u64,
    debit: u64,
    regs: (u64, u64, u64, u64),
    service_count: u64,
    product: Vec<u8>,
    digest: Digest,
    hash: Digest,
}

/// One simulated meter's ledger.
pub struct Ledger {
    pub id: String,
    head: Digest,
    regs: (u64, u64, u64, u64),
    per_service: BTreeMap<u8, u64>,
    time_ms: i64,
    rows: Vec<Row>,
    /// Rows and head of the last acknowledged report.
    acked: (u64, Digest),
    reports: u64,
    previous_time: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

impl Ledger {
    pub fn new(id: &str) -> Ledger {
        let prev = genesis_prev(id);
        let mut l = Ledger {
            id: id.to_owned(),
            head: prev,
            regs: (0, 0, 0, 0),
            per_service: BTreeMap::new(),
            time_ms: 0,
            rows: Vec::new(),
            acked: (0, prev),
            reports: 0,
            previous_time: 0,
        };
        l.push(kind::GENESIS, 0, None, 0, 0, b"genesis".to_vec());
        l
    }

    fn last_seq(&self) -> u64 {
        self.rows.last().map_or(self.acked.0, |r| r.seq)
    }

    fn push(
        &mut self,
        k: u8,
        svc: u8,
        req: Option<String>,
        credit: u64,
        debit: u64,
        product: Vec<u8>,
    ) {
        let seq = self.last_seq() + 1;
        self.time_ms = (self.time_ms + 1).max(now_ms() - 3000);
        self.regs.2 += credit;
        self.regs.1 = self.regs.1 + credit - debit;
        self.regs.0 += debit;
        let mut service_count = 0;
        if svc != 0 {
            self.regs.3 += 1;
            let c = self.per_service.entry(svc).or_default();
            *c += 1;
            service_count = *c;
        }
        let digest = sha384(&product);
        let f = RowFields {
            seq,
            time: self.time_ms,
            kind: k,
            service: svc,
            request_id: req.as_deref().map(str::as_bytes),
            credit,
            debit,
            ascending: self.regs.0,
            descending: self.regs.1,
            control_total: self.regs.2,
            pieces: self.regs.3,
            service_count,
            product_digest: &digest,
            note: b"",
            register: 0,
        };
        let mut canon = Vec::new();
        f.encode(&mut canon).unwrap();
        self.head = row_hash(&self.head, &canon);
        self.rows.push(Row {
            seq,
            time: self.time_ms,
            kind: k,
            service: svc,
            request_id: req,
            credit,
            debit,
            regs: self.regs,
            service_count,
            product,
            digest,
            hash: self.head,
        });
    }

    /// Credits voucher `sequence` of `amount` (its signed DER).
    pub fn credit(&mut self, sequence: u64, amount: u64, voucher: &[u8]) {
        let req = format!("m/voucher/{sequence}");
        self.push(kind::CREDIT, 0, Some(req), amount, 0, voucher.to_vec());
    }

    /// Sells `n` postmarks at `price` (products: 320-byte stand-ins for
    /// tokens; the authority indexes their digests and checks no signature).
    pub fn sell(&mut self, n: u64, price: u64) {
        for _ in 0..n {
            let seq = self.last_seq() + 1;
            let mut product = format!("token of {} row {seq} ", self.id).into_bytes();
            product.resize(320, b'.');
            let req = format!("c/{seq}/p");
            self.push(kind::DEBIT, service::POSTMARK, Some(req), 0, price, product);
        }
    }

    /// Funds left (descending register).
    pub fn funds(&self) -> u64 {
        self.regs.1
    }

    /// The next report (signed) and its segment; the report's own row is
    /// written after it (it appears in the next segment).
    pub fn report(&mut self, m: &Meter) -> (Vec<u8>, Vec<u8>) {
        let first = self.acked.0 + 1;
        let last = self.last_seq();
        let pending: Vec<&Row> = self.rows.iter().filter(|r| r.seq >= first).collect();
        let mut enc = Encoder::new(&self.id, first, last, &self.acked.1).unwrap();
        let mut seg = Vec::new();
        for r in &pending {
            let f = RowFields {
                seq: r.seq,
                time: r.time,
                kind: r.kind,
                service: r.service,
                request_id: r.request_id.as_deref().map(str::as_bytes),
                credit: r.credit,
                debit: r.debit,
                ascending: r.regs.0,
                descending: r.regs.1,
                control_total: r.regs.2,
                pieces: r.regs.3,
                service_count: r.service_count,
                product_digest: &r.digest,
                note: b"",
                register: 0,
            };
            enc.row(&f, &r.hash, Some(&r.product)).unwrap();
            seg.extend(enc.take());
        }
        let (tail, _) = enc.finish().unwrap();
        seg.extend(tail);
        let now = meter_authority::now();
        let counts = segment::SERVICES
            .iter()
            .filter_map(|(code, name)| {
                let n = self.per_service.get(code).copied().unwrap_or(0);
                (n > 0).then(|| (name.to_string(), n))
            })
            .collect();
        let sequence = self
            .per_service
            .get(&service::STATUS_REPORT)
            .copied()
            .unwrap_or(0)
            + 1;
        let r = StatusReport {
            meter_id: self.id.clone(),
            request_id: format!("r{sequence}"),
            sequence,
            time: now,
            currency: "USD".into(),
            digits: 3,
            ascending: self.regs.0,
            descending: self.regs.1,
            control_total: self.regs.2,
            pieces: self.regs.3,
            counts,
            ledger_rows: last,
            ledger_head: hex::encode(self.head),
            nv_counter: 3 + sequence,
            previous_sequence: sequence - 1,
            previous_time: self.previous_time,
            segment: Some(SegmentRef {
                first_seq: first,
                last_seq: last,
                prev_head: hex::encode(self.acked.1),
                digest: hex::encode(segment::digest(&seg)),
                bytes: seg.len() as u64,
            }),
            ..Default::default()
        };
        let signed = sign_as_meter(m, &r);
        self.previous_time = now;
        (signed, seg)
    }

    /// The report just made was acknowledged: its rows are the new
    /// acknowledged point; the meter writes the report's own row.
    pub fn acknowledged(&mut self, signed_report: &[u8]) {
        let last = self.last_seq();
        self.acked = (last, self.head);
        self.rows.clear();
        self.reports += 1;
        let req = format!("c/r/{}", self.reports);
        self.push(
            kind::DEBIT,
            service::STATUS_REPORT,
            Some(req),
            0,
            0,
            signed_report.to_vec(),
        );
    }
}
