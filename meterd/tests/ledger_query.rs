//! The ledger's read-only queries behind status reports and the watchdogs:
//! usage over a span of rows, the last row of a service, the last row with a
//! note, the last row's time; each bounded by row numbers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::ledger_support;

use ledger_support::*;
use meterd::ledger::{Entry, EntryKind, Outcome};
use meterd::money::Amount;
use meterd::service::Service;

fn report_row(id: &str, price: u64) -> Entry {
    Entry {
        kind: EntryKind::Debit,
        service: Some(Service::StatusReport),
        key: Some(key(id)),
        input_digest: digest(id.as_bytes()),
        credit: Amount::ZERO,
        debit: Amount(price),
        product: format!("report {id}").into_bytes(),
        note: String::new(),
        fund: meterd::ledger::Fund::Services,
    }
}

fn seq_of(out: Outcome) -> u64 {
    match out {
        Outcome::Committed { seq, .. } => seq,
        other => panic!("not committed: {other:?}"),
    }
}

#[tokio::test]
async fn usage_and_last_rows_follow_the_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _c) = create(&db(dir.path()));
    l.commit(credit("voucher:1", 10_000), None).await.unwrap();
    l.commit(debit("pm-1", 500, b"a"), None).await.unwrap();
    let r1 = seq_of(l.commit(report_row("rep-1", 250), None).await.unwrap());
    l.commit(debit("pm-2", 500, b"b"), None).await.unwrap();
    l.commit(debit("pm-3", 700, b"c"), None).await.unwrap();
    l.commit(credit("voucher:2", 3_000), None).await.unwrap();
    let rows = l.state().rows;

    // Whole ledger.
    let all = l.usage_since(0, rows).await.unwrap();
    let pm = Service::Postmark.index();
    let sr = Service::StatusReport.index();
    assert_eq!(all.per_service[pm], (3, Amount(1_700)));
    assert_eq!(all.per_service[sr], (1, Amount(250)));
    assert_eq!(all.credited, Amount(13_000));
    // The registers agree with the whole-ledger usage.
    let regs = l.state().registers;
    assert_eq!(regs.ascending, Amount(1_950));
    assert_eq!(regs.per_service[pm], 3);

    // After the report's row: only what came later.
    let since = l.usage_since(r1, rows).await.unwrap();
    assert_eq!(since.per_service[pm], (2, Amount(1_200)));
    assert_eq!(since.per_service[sr], (0, Amount::ZERO));
    assert_eq!(since.credited, Amount(3_000));
    // Bounded above too.
    let upto = l.usage_since(r1, r1 + 1).await.unwrap();
    assert_eq!(upto.per_service[pm], (1, Amount(500)));
    assert_eq!(upto.credited, Amount::ZERO);

    let (seq, time, product) = l
        .last_of_service(Service::StatusReport, rows)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((seq, product.as_slice()), (r1, b"report rep-1".as_slice()));
    assert!(time > 0);
    assert!(l
        .last_of_service(Service::StatusReport, r1 - 1)
        .await
        .unwrap()
        .is_none());
    let last = l.last_time().await.unwrap().unwrap();
    assert!(last >= time);
}

#[tokio::test]
async fn last_with_note_looks_only_inside_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _c) = create(&db(dir.path()));
    assert!(l
        .last_with_note("report-ack", 0, 1)
        .await
        .unwrap()
        .is_none());
    let a = seq_of(
        l.commit(event(EntryKind::Event, "report-ack", b"ack 1"), None)
            .await
            .unwrap(),
    );
    l.commit(event(EntryKind::Event, "other", b"x"), None)
        .await
        .unwrap();
    let b = seq_of(
        l.commit(event(EntryKind::Unlock, "report-ack", b"ack 2"), None)
            .await
            .unwrap(),
    );
    let rows = l.state().rows;
    assert_eq!(
        l.last_with_note("report-ack", 0, rows).await.unwrap(),
        Some((b, b"ack 2".to_vec()))
    );
    assert_eq!(
        l.last_with_note("report-ack", 0, b - 1).await.unwrap(),
        Some((a, b"ack 1".to_vec()))
    );
    assert!(l
        .last_with_note("report-ack", b, rows)
        .await
        .unwrap()
        .is_none());
}
