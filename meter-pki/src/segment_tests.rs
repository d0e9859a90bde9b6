#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::ledger_format::{genesis_prev, row_hash, sha384};

struct Owned {
    seq: u64,
    kind: u8,
    service: u8,
    request_id: Option<Vec<u8>>,
    credit: u64,
    debit: u64,
    regs: (u64, u64, u64, u64, u64),
    product: Vec<u8>,
    note: Vec<u8>,
}

impl Owned {
    fn fields<'a>(&'a self, digest: &'a Digest) -> RowFields<'a> {
        RowFields {
            seq: self.seq,
            time: 1_700_000_000_000 + self.seq as i64,
            kind: self.kind,
            service: self.service,
            request_id: self.request_id.as_deref(),
            credit: self.credit,
            debit: self.debit,
            ascending: self.regs.0,
            descending: self.regs.1,
            control_total: self.regs.2,
            pieces: self.regs.3,
            service_count: self.regs.4,
            product_digest: digest,
            note: &self.note,
            register: 0,
        }
    }
}

fn rows() -> Vec<Owned> {
    vec![
        Owned {
            seq: 1,
            kind: kind::GENESIS,
            service: 0,
            request_id: None,
            credit: 0,
            debit: 0,
            regs: (0, 0, 0, 0, 0),
            product: b"genesis".to_vec(),
            note: b"genesis".to_vec(),
        },
        Owned {
            seq: 2,
            kind: kind::CREDIT,
            service: 0,
            request_id: Some(b"m/voucher/1".to_vec()),
            credit: 1000,
            debit: 0,
            regs: (0, 1000, 1000, 0, 0),
            product: b"the voucher".to_vec(),
            note: b"seq 1".to_vec(),
        },
        Owned {
            seq: 3,
            kind: kind::DEBIT,
            service: service::POSTMARK,
            request_id: Some(b"c/0/p1".to_vec()),
            credit: 0,
            debit: 30,
            regs: (30, 970, 1000, 1, 1),
            product: vec![7u8; 3000],
            note: Vec::new(),
        },
    ]
}

/// Encodes `rows` in chunks of whatever the encoder buffered.
fn encode(rows: &[Owned]) -> (Vec<u8>, Summary, Vec<Digest>) {
    let prev = genesis_prev("MTR-1");
    let mut enc = Encoder::new("MTR-1", 1, rows.len() as u64, &prev).unwrap();
    let mut out = Vec::new();
    let mut h = prev;
    let mut hashes = Vec::new();
    let mut canon = Vec::new();
    for r in rows {
        let d = sha384(&r.product);
        let f = r.fields(&d);
        f.encode(&mut canon).unwrap();
        h = row_hash(&h, &canon);
        hashes.push(h);
        enc.row(&f, &h, Some(&r.product)).unwrap();
        out.extend(enc.take());
    }
    let (tail, summary) = enc.finish().unwrap();
    out.extend(tail);
    (out, summary, hashes)
}

#[test]
fn round_trip_keeps_products_only_where_the_rule_says() {
    let rows = rows();
    let (bytes, summary, hashes) = encode(&rows);
    assert_eq!(summary.digest, digest(&bytes));
    assert_eq!(summary.bytes, bytes.len() as u64);
    assert_eq!(summary.rows, 3);
    let seg = Segment::parse(&bytes).unwrap();
    assert_eq!((seg.meter_id, seg.first_seq, seg.last_seq), ("MTR-1", 1, 3));
    assert_eq!(seg.prev, &genesis_prev("MTR-1"));
    let got: Vec<_> = seg.rows().collect::<Result<_, _>>().unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].product, Some(&b"the voucher"[..]));
    // The postmark's 3000-byte token stays home: digest only.
    assert_eq!(got[2].product, None);
    assert!(bytes.len() < 3000);
    for (g, (r, h)) in got.iter().zip(rows.iter().zip(&hashes)) {
        assert_eq!(g.fields.seq, r.seq);
        assert_eq!(g.fields.debit, r.debit);
        assert_eq!(g.fields.request_id, r.request_id.as_deref());
        assert_eq!(g.hash, h);
        let mut again = Vec::new();
        g.fields.encode(&mut again).unwrap();
        assert_eq!(again, g.canonical);
    }
}

#[test]
fn product_rule() {
    assert!(product_required(kind::CREDIT, 0, Some(b"m/voucher/1")));
    assert!(product_required(kind::EVENT, 0, Some(b"c/0/x")));
    assert!(product_required(kind::LOCK, 0, None));
    assert!(!product_required(
        kind::DEBIT,
        service::POSTMARK,
        Some(b"c/0/x")
    ));
    assert!(!product_required(kind::DEBIT, 2, None));
    assert!(product_required(
        kind::DEBIT,
        service::CREDIT_LINE,
        Some(b"c/0/x")
    ));
    assert!(product_required(kind::DEBIT, 0, Some(b"m/settle/4")));
    // The indicium carries a postage piece's class and weight: it travels.
    assert!(product_required(
        kind::DEBIT,
        service::POSTAGE,
        Some(b"c/0/x")
    ));
    assert!(product_required(
        kind::DEBIT,
        service::REVOKE,
        Some(b"m/revoke-order/ab")
    ));
    assert_eq!(service_name(9), Some("status-report"));
    assert_eq!(service_name(0), None);
}

#[test]
fn encoder_refuses_what_would_not_parse() {
    let rows = rows();
    let prev = genesis_prev("MTR-1");
    let mut enc = Encoder::new("MTR-1", 1, 3, &prev).unwrap();
    let d = sha384(&rows[1].product);
    // Out of order.
    assert!(enc
        .row(&rows[1].fields(&d), &prev, Some(&rows[1].product))
        .is_err());
    let d0 = sha384(&rows[0].product);
    // A required product missing, or not matching its digest.
    assert!(enc.row(&rows[0].fields(&d0), &prev, None).is_err());
    assert!(enc
        .row(&rows[0].fields(&d0), &prev, Some(b"other"))
        .is_err());
    enc.row(&rows[0].fields(&d0), &prev, Some(&rows[0].product))
        .unwrap();
    // Rows missing at the end.
    assert!(enc.finish().is_err());
    assert!(Encoder::new("", 1, 0, &prev).is_err());
    assert!(Encoder::new("bad id", 1, 0, &prev).is_err());
    assert!(Encoder::new("M", 0, 0, &prev).is_err());
    assert!(Encoder::new("M", 5, 3, &prev).is_err());
    // An empty segment is fine (nothing since the last report).
    let (tail, s) = Encoder::new("M", 5, 4, &prev).unwrap().finish().unwrap();
    assert_eq!(s.rows, 0);
    assert_eq!(Segment::parse(&tail).unwrap().rows().count(), 0);
}

fn all_rows(bytes: &[u8]) -> Result<usize, SegmentError> {
    let seg = Segment::parse(bytes)?;
    let mut n = 0;
    for r in seg.rows() {
        r?;
        n += 1;
    }
    Ok(n)
}

#[test]
fn parsing_is_strict() {
    let (bytes, _, _) = encode(&rows());
    assert_eq!(all_rows(&bytes), Ok(3));
    // Trailing bytes, truncation, bad magic.
    let mut more = bytes.clone();
    more.push(0);
    assert!(all_rows(&more).is_err());
    for cut in [1, 10, 60, bytes.len() / 2, bytes.len() - 1] {
        assert!(all_rows(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut bad = bytes.clone();
    bad[0] ^= 1;
    assert!(all_rows(&bad).is_err());
    // A product altered: no longer the one the row's digest names.
    let at = bytes.windows(11).position(|w| w == b"the voucher").unwrap();
    let mut bad = bytes.clone();
    bad[at] ^= 1;
    let e = all_rows(&bad).unwrap_err();
    assert!(e.to_string().contains("row 2"), "{e}");
    // A row count the bytes cannot hold is refused before any row.
    let mut bad = bytes.clone();
    let last_at = 8 + 1 + 5 + 8;
    bad[last_at..last_at + 8].copy_from_slice(&(1u64 << 40).to_be_bytes());
    assert!(Segment::parse(&bad).is_err());
}

#[test]
fn decode_row_is_the_inverse_of_encode() {
    let r = &rows()[2];
    let d = sha384(&r.product);
    let mut b = Vec::new();
    r.fields(&d).encode(&mut b).unwrap();
    let f = decode_row(&b).unwrap();
    let mut again = Vec::new();
    f.encode(&mut again).unwrap();
    assert_eq!(again, b);
    assert!(decode_row(&b[..b.len() - 1]).is_err());
    let mut longer = b.clone();
    longer.push(0);
    assert!(decode_row(&longer).is_err());
    // Request id flag must be 0 or 1.
    let mut bad = b.clone();
    bad[18] = 2;
    assert!(decode_row(&bad).is_err());
}

#[test]
fn random_damage_never_panics() {
    let (bytes, _, _) = encode(&rows());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = bytes.clone();
        let at = (x as usize) % b.len();
        b[at] = (x >> 32) as u8;
        if x.is_multiple_of(3) {
            b.truncate((x as usize >> 8) % b.len());
        }
        let _ = all_rows(&b);
    }
}
