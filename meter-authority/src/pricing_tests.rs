#![allow(clippy::unwrap_used)]

use meter_pki::indicium::{IndiciumBody, BODY_LEN, SIG_LEN};
use meter_pki::ledger_format::RowFields;
use meter_pki::payload::PostageRate;

use super::*;

const M: &str = "MTR-0123456789ab";
const ZERO: [u8; 48] = [0; 48];

fn table(version: u32, effective: i64, postmark: u64) -> RateTable {
    RateTable {
        version,
        effective,
        currency: "USD".into(),
        digits: 3,
        rates: [
            ("postmark".to_owned(), postmark),
            ("certificate-install".to_owned(), 5000),
            ("revoke".to_owned(), 1000),
            ("status-report".to_owned(), 40),
        ]
        .into_iter()
        .collect(),
        postage: vec![
            PostageRate {
                class: "letter".into(),
                max_grams: 20,
                amount: 730,
            },
            PostageRate {
                class: "letter".into(),
                max_grams: 50,
                amount: 1160,
            },
        ],
    }
}

/// One row as the walk sees it (registers and digest not looked at here).
struct Row {
    seq: u64,
    time: i64,
    kind: u8,
    service: u8,
    key: Option<&'static str>,
    debit: u64,
    note: &'static str,
    product: Option<Vec<u8>>,
    regs: (u64, u64, u64),
}

fn row(seq: u64, kind: u8, service: u8, debit: u64) -> Row {
    Row {
        seq,
        time: 100_000 + seq as i64,
        kind,
        service,
        key: None,
        debit,
        note: "",
        product: None,
        regs: (0, 0, 0),
    }
}

fn price(p: &mut Pricing, r: &Row, f: &mut Findings) {
    let fields = RowFields {
        seq: r.seq,
        time: r.time,
        kind: r.kind,
        service: r.service,
        request_id: r.key.map(str::as_bytes),
        credit: 0,
        debit: r.debit,
        ascending: r.regs.0,
        descending: r.regs.1,
        control_total: 0,
        pieces: 0,
        service_count: r.regs.2,
        product_digest: &ZERO,
        note: r.note.as_bytes(),
        register: 0,
    };
    let sr = SegmentRow {
        canonical: &[],
        fields,
        hash: &ZERO,
        product: r.product.as_deref(),
    };
    p.row(&sr, f);
}

fn pricing() -> Pricing {
    Pricing::new([table(1, 0, 500)], M, None)
}

#[test]
fn each_sale_at_the_rate_in_force_at_its_row() {
    let mut f = Findings::default();
    let mut p = pricing();
    p.installed(table(2, 100, 700));
    price(
        &mut p,
        &Row {
            time: 99_999,
            ..row(5, kind::DEBIT, service::POSTMARK, 500)
        },
        &mut f,
    );
    price(&mut p, &row(6, kind::DEBIT, service::POSTMARK, 700), &mut f);
    // An install at its rate; an event that debits nothing.
    price(
        &mut p,
        &row(7, kind::DEBIT, service::CERTIFICATE_INSTALL, 5000),
        &mut f,
    );
    price(&mut p, &row(8, kind::EVENT, service::POSTMARK, 0), &mut f);
    assert!(f.0.is_empty(), "{:?}", f.0);
    price(&mut p, &row(9, kind::DEBIT, service::POSTMARK, 1), &mut f);
    assert_eq!(f.0.len(), 1);
    assert!(
        f.0[0].contains("row 9: a postmark debited 1, rate table v2"),
        "{:?}",
        f.0
    );
    assert_eq!(p.learned.len(), 1);
    // Validate is priced by no table here.
    price(&mut p, &row(10, kind::DEBIT, 2, 100), &mut f);
    assert!(f.0[1].contains("does not price it"), "{:?}", f.0);
    // An install for less than its rate.
    price(
        &mut p,
        &row(11, kind::DEBIT, service::CERTIFICATE_INSTALL, 1),
        &mut f,
    );
    assert!(
        f.0[2].contains(
            "row 11: a certificate-install debited 1, rate table v2 in force then says 5000"
        ),
        "{:?}",
        f.0
    );
}

#[test]
fn a_certificate_request_is_afforded_not_charged() {
    let mut f = Findings::default();
    let mut p = pricing();
    let request = Row {
        note: "cert-request",
        ..row(3, kind::EVENT, 0, 0)
    };
    price(&mut p, &request, &mut f);
    assert!(f.0.is_empty(), "{:?}", f.0);
    price(
        &mut p,
        &Row {
            debit: 5000,
            ..request
        },
        &mut f,
    );
    assert!(
        f.0[0].contains("row 3: a row of kind 8 (not a sale) debited 5000"),
        "{:?}",
        f.0
    );
}

fn indicium(amount: u64, class: &str, grams: u32, seq: u64) -> Vec<u8> {
    let body = IndiciumBody {
        meter_id: M.into(),
        date: 100,
        seq,
        amount,
        ascending: 10,
        descending: 20,
        pieces: 1,
        rates_version: 1,
        currency: "USD".into(),
        digits: 3,
        class: class.into(),
        grams,
        origin: "10115".into(),
        destination: "SW1A 1AA".into(),
    };
    let bytes: [u8; BODY_LEN] = body.encode().unwrap();
    meter_pki::indicium::assemble(&bytes, &[0u8; SIG_LEN])
}

fn postage(seq: u64, debit: u64, product: Vec<u8>) -> Row {
    Row {
        product: Some(product),
        regs: (10, 20, 1),
        ..row(seq, kind::DEBIT, service::POSTAGE, debit)
    }
}

#[test]
fn postage_at_the_band_of_its_indicium() {
    let mut f = Findings::default();
    let mut p = pricing();
    price(
        &mut p,
        &postage(4, 730, indicium(730, "letter", 20, 4)),
        &mut f,
    );
    price(
        &mut p,
        &postage(5, 1160, indicium(1160, "letter", 21, 5)),
        &mut f,
    );
    assert!(f.0.is_empty(), "{:?}", f.0);
    // The row lowered, the indicium kept: both named.
    price(
        &mut p,
        &postage(6, 1, indicium(1160, "letter", 30, 6)),
        &mut f,
    );
    assert!(
        f.0.iter().any(|x| x.contains("row 6: its indicium says")),
        "{:?}",
        f.0
    );
    assert!(
        f.0.iter().any(|x| x.contains(
            "row 6: a postage letter of 30 g debited 1, rate table v1 in force then says 1160"
        )),
        "{:?}",
        f.0
    );
    // Row and indicium lowered together: the band still names it.
    let mut f = Findings::default();
    price(&mut p, &postage(7, 1, indicium(1, "letter", 30, 7)), &mut f);
    assert_eq!(f.0.len(), 1, "{:?}", f.0);
    assert!(
        f.0[0].contains("rate table v1 in force then says 1160"),
        "{:?}",
        f.0
    );
    // An indicium for another row, a class no table prices, no indicium.
    let mut f = Findings::default();
    price(
        &mut p,
        &postage(8, 730, indicium(730, "letter", 20, 3)),
        &mut f,
    );
    price(
        &mut p,
        &postage(9, 730, indicium(730, "parcel", 20, 9)),
        &mut f,
    );
    price(
        &mut p,
        &postage(10, 730, b"not an indicium".to_vec()),
        &mut f,
    );
    assert!(f.0[0].contains("row 8: its indicium says"), "{:?}", f.0);
    assert!(
        f.0[1].contains("row 9: a postage parcel of 20 g, which rate table v1"),
        "{:?}",
        f.0
    );
    assert!(
        f.0[2].contains("row 10: its indicium does not verify"),
        "{:?}",
        f.0
    );
}

#[test]
fn reports_at_their_rate_or_free_while_locked() {
    let report = |seq, debit| row(seq, kind::DEBIT, service::STATUS_REPORT, debit);
    // No lock row: free reports are judged by the report's own lock state.
    for (locked, n) in [(false, 1), (true, 0)] {
        let mut f = Findings::default();
        let mut p = pricing();
        price(&mut p, &report(2, 40), &mut f);
        price(&mut p, &report(3, 0), &mut f);
        p.finish(locked, &mut f);
        assert_eq!(f.0.len(), n, "{:?}", f.0);
    }
    let mut f = Findings::default();
    let mut p = pricing();
    price(&mut p, &row(2, kind::LOCK, 0, 0), &mut f);
    price(&mut p, &report(3, 0), &mut f);
    price(
        &mut p,
        &Row {
            time: 200_000,
            ..row(4, kind::UNLOCK, 0, 0)
        },
        &mut f,
    );
    // Priced while locked, committed just after the unlock.
    price(
        &mut p,
        &Row {
            time: 201_000,
            ..report(5, 0)
        },
        &mut f,
    );
    assert!(f.0.is_empty(), "{:?}", f.0);
    price(
        &mut p,
        &Row {
            time: 300_000,
            ..report(6, 0)
        },
        &mut f,
    );
    price(
        &mut p,
        &Row {
            time: 300_001,
            ..report(7, 7)
        },
        &mut f,
    );
    p.finish(false, &mut f);
    assert!(f.0[0].contains("row 6: a status-report debited 0 while the meter was not locked (rate table v1 in force then says 40)"), "{:?}", f.0);
    assert!(
        f.0[1].contains("row 7: a status-report debited 7"),
        "{:?}",
        f.0
    );
    assert_eq!(f.0.len(), 2);
}

#[test]
fn revokes_at_their_rate_or_due_and_settled_at_it() {
    let mut f = Findings::default();
    let mut p = pricing();
    let revoke = |seq, debit, note| Row {
        note,
        ..row(seq, kind::DEBIT, service::REVOKE, debit)
    };
    let settle = |seq, debit, key| Row {
        note: "revoke-settle",
        key: Some(key),
        ..row(seq, kind::DEBIT, 0, debit)
    };
    price(&mut p, &revoke(2, 1000, "revoke-paid"), &mut f);
    price(&mut p, &revoke(3, 0, "revoke-due"), &mut f);
    price(&mut p, &settle(4, 1000, "m/settle/3"), &mut f);
    // A settle of a row before the segment is not known here.
    price(&mut p, &settle(5, 1, "m/settle/1"), &mut f);
    assert!(f.0.is_empty(), "{:?}", f.0);
    price(&mut p, &revoke(6, 1, "revoke-paid"), &mut f);
    price(&mut p, &revoke(7, 0, "revoke-paid"), &mut f);
    price(&mut p, &revoke(8, 0, "revoke-due"), &mut f);
    price(&mut p, &settle(9, 10, "m/settle/8"), &mut f);
    assert!(
        f.0[0].contains("row 6: a revoke debited 1, the rate in force then is 1000"),
        "{:?}",
        f.0
    );
    assert!(f.0[1].contains("row 7: a revoke debited 0"), "{:?}", f.0);
    assert!(
        f.0[2].contains("row 9: settles the fee of 1000 due at row 8 with a debit of 10"),
        "{:?}",
        f.0
    );
    assert_eq!(f.0.len(), 3);
}
