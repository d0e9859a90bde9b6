#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use meter_pki::ledger_format::{genesis_prev, row_hash, sha384, RowFields};
use meter_pki::report::SegmentRef;
use meter_pki::segment::Encoder;

use super::*;
use crate::Authority;

const M: &str = "MTR-1";
const T0: i64 = 1_700_000_000_000;

/// One row: (kind, service, key, credit, debit, product).
type Spec = (u8, u8, Option<String>, u64, u64, Vec<u8>);

/// Encodes `specs` as a meter would (registers, hashes); returns the
/// segment, its last head and registers (AR, DR, CT, pieces).
fn ledger(
    specs: &[Spec],
    edit: impl Fn(&mut RowFields<'_>),
) -> (Vec<u8>, Digest, (u64, u64, u64, u64)) {
    let prev = genesis_prev(M);
    let mut enc = Encoder::new(M, 1, specs.len() as u64, &prev).unwrap();
    let (mut h, mut regs, mut counts) =
        (prev, (0u64, 0u64, 0u64, 0u64), BTreeMap::<u8, u64>::new());
    let mut out = Vec::new();
    let mut canon = Vec::new();
    for (i, (kind, service, key, credit, debit, product)) in specs.iter().enumerate() {
        regs.2 += credit;
        regs.1 = regs.1 + credit - debit;
        regs.0 += debit;
        let mut sc = 0;
        if *service != 0 {
            regs.3 += 1;
            let c = counts.entry(*service).or_insert(0);
            *c += 1;
            sc = *c;
        }
        let d = sha384(product);
        let mut f = RowFields {
            seq: i as u64 + 1,
            time: T0 + i as i64,
            kind: *kind,
            service: *service,
            request_id: key.as_deref().map(str::as_bytes),
            credit: *credit,
            debit: *debit,
            ascending: regs.0,
            descending: regs.1,
            control_total: regs.2,
            pieces: regs.3,
            service_count: sc,
            product_digest: &d,
            note: b"",
            register: 0,
        };
        edit(&mut f);
        f.encode(&mut canon).unwrap();
        h = row_hash(&h, &canon);
        enc.row(&f, &h, Some(product)).unwrap();
        out.extend(enc.take());
    }
    let (tail, _) = enc.finish().unwrap();
    out.extend(tail);
    (out, h, regs)
}

fn report_for(seg: &[u8], head: &Digest, regs: (u64, u64, u64, u64)) -> StatusReport {
    let n = Segment::parse(seg).unwrap().last_seq;
    StatusReport {
        meter_id: M.into(),
        request_id: "r1".into(),
        sequence: 1,
        time: T0 / 1000 + 10,
        currency: "USD".into(),
        digits: 3,
        ascending: regs.0,
        descending: regs.1,
        control_total: regs.2,
        pieces: regs.3,
        counts: [("postmark".to_string(), 1u64)].into_iter().collect(),
        ledger_rows: n,
        ledger_head: hex::encode(head),
        nv_counter: 3,
        segment: Some(SegmentRef {
            first_seq: 1,
            last_seq: n,
            prev_head: hex::encode(genesis_prev(M)),
            digest: hex::encode(segment::digest(seg)),
            bytes: seg.len() as u64,
        }),
        ..Default::default()
    }
}

fn specs(voucher: Vec<u8>, amount: u64) -> Vec<Spec> {
    vec![
        (kind::GENESIS, 0, None, 0, 0, b"genesis".to_vec()),
        (
            kind::CREDIT,
            0,
            Some("m/voucher/1".into()),
            amount,
            0,
            voucher,
        ),
        (
            kind::DEBIT,
            service::POSTMARK,
            Some("c/0/p1".into()),
            0,
            30,
            b"token".to_vec(),
        ),
    ]
}

/// The findings refusing the segment `seg` with its report against `book`.
fn refusal(seg: &[u8], rep: &StatusReport, book: &Book, roots: &[Certificate]) -> Vec<String> {
    reconcile(rep, "00", seg, book, roots, None, crate::now())
        .unwrap_err()
        .0
}

/// The findings refusing the ledger of `specs` (its rows changed by `edit`,
/// the chain recomputed) with its own report against `book`.
fn refused(
    specs: &[Spec],
    edit: impl Fn(&mut RowFields<'_>),
    book: &Book,
    roots: &[Certificate],
) -> Vec<String> {
    let (seg, head, regs) = ledger(specs, edit);
    refusal(&seg, &report_for(&seg, &head, regs), book, roots)
}

/// Asserts that a finding says `what`.
fn names(f: &[String], what: &str) {
    assert!(f.iter().any(|x| x.contains(what)), "{what}: {f:?}");
}

#[test]
fn an_honest_ledger_reconciles_and_an_edited_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Authority::init(dir.path(), "Test Root", crate::now()).unwrap();
    let (_, voucher) = a.voucher(M, 1000, T0 / 1000).unwrap();
    let book = crate::book::Shelf::of(dir.path(), M)
        .unwrap()
        .read()
        .unwrap();
    assert_eq!(book.vouchers.get(&1), Some(&1000));
    let roots = a.roots().unwrap();

    let (seg, head, regs) = ledger(&specs(voucher.clone().into_bytes(), 1000), |_| {});
    let rep = report_for(&seg, &head, regs);
    let ok = reconcile(&rep, "00", &seg, &book, &roots, None, crate::now()).unwrap();
    assert_eq!(ok.point.rows, 3);
    assert_eq!(ok.point.registers.control_total, 1000);
    assert_eq!(ok.index.len(), 1);
    assert_eq!(ok.applied, vec![("voucher/1".to_string(), 2)]);

    // The operator credits 100 times the voucher, with a recomputed chain.
    let good = voucher.clone();
    let f = refused(&specs(voucher.into_bytes(), 100_000), |_| {}, &book, &roots);
    names(&f, "row 2: credits 100000, voucher 1 says 1000");
    names(&f, "control total 100000");

    // A credit with a voucher the authority never signed.
    let f = refused(&specs(b"a voucher".to_vec(), 1000), |_| {}, &book, &roots);
    names(&f, "row 2: not an object this authority signed");

    // Registers that do not follow from the rows (DR edited up).
    let f = refused(
        &specs(good.into_bytes(), 1000),
        |f| {
            if f.seq == 3 {
                f.descending += 5;
            }
        },
        &book,
        &roots,
    );
    assert!(f.iter().any(|x| x.starts_with("row 3: registers")), "{f:?}");
}

#[test]
fn a_segment_must_extend_an_acknowledged_head() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Authority::init(dir.path(), "Test Root", crate::now()).unwrap();
    let (_, voucher) = a.voucher(M, 1000, T0 / 1000).unwrap();
    let shelf = crate::book::Shelf::of(dir.path(), M).unwrap();
    let roots = a.roots().unwrap();
    let (seg, head, regs) = ledger(&specs(voucher.into_bytes(), 1000), |_| {});
    let rep = report_for(&seg, &head, regs);
    let ok = reconcile(
        &rep,
        "00",
        &seg,
        &shelf.read().unwrap(),
        &roots,
        None,
        crate::now(),
    )
    .unwrap();
    // Acknowledged at row 3 with another head: this ledger rewrote it.
    let mut book = shelf.read().unwrap();
    let mut p = ok.point.clone();
    p.head = "11".repeat(48);
    book.acknowledged.push(p);
    let f = refusal(&seg, &rep, &book, &roots);
    names(&f, "row 3: not the row report 1 acknowledged");
    // A segment signed for other bytes.
    let mut other = seg.clone();
    other.push(0);
    let f = refusal(&other, &rep, &shelf.read().unwrap(), &roots);
    assert!(f[0].contains("not the one the report signed"), "{f:?}");
}
