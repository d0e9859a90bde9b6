//! Current-account mode in the ledger: charges admitted against a credit
//! limit per period, booked as credit = debit (AR and CT rise, DR stays),
//! concurrent requests unable to pass the limit, the chain still auditing clean.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::ledger_support;

use std::sync::Arc;

use ledger_support::*;
use meterd::ledger::{AccountTerms, LedgerError, Outcome, Verdict};
use meterd::money::Amount;

#[tokio::test]
async fn charges_are_booked_against_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let (l, _c) = create(&path);
    l.set_account(Some(AccountTerms {
        limit: Amount(100),
        baseline: Amount::ZERO,
    }))
    .unwrap();

    let r = l.reserve(Amount(30)).unwrap();
    assert!(r.is_account());
    let out = l.commit(debit("pm-1", 30, b"m1"), Some(r)).await.unwrap();
    let Outcome::Committed { registers, .. } = out else {
        panic!("not committed: {out:?}")
    };
    assert_eq!(registers.ascending, Amount(30));
    assert_eq!(registers.descending, Amount::ZERO);
    assert_eq!(registers.control_total, Amount(30));

    // 70 left: 71 is refused before any work and changes nothing.
    let before = l.state();
    assert!(matches!(
        l.reserve(Amount(71)),
        Err(LedgerError::CreditLimit {
            needed: Amount(71),
            available: Amount(70),
            limit: Amount(100)
        })
    ));
    assert_eq!(l.state(), before);

    // A new period: the baseline moves to the ascending register.
    l.set_account(Some(AccountTerms {
        limit: Amount(100),
        baseline: Amount(30),
    }))
    .unwrap();
    let r = l.reserve(Amount(100)).unwrap();
    l.commit(debit("pm-2", 100, b"m2"), Some(r)).await.unwrap();
    let s = l.state().registers;
    assert_eq!(
        (s.ascending, s.descending, s.control_total),
        (Amount(130), Amount::ZERO, Amount(130))
    );
    assert!(l.reserve(Amount(1)).is_err());
    assert_eq!(l.audit().await.unwrap().verdict, Verdict::Clean);
}

#[tokio::test]
async fn concurrent_requests_cannot_pass_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let (l, _c) = create(&path);
    l.set_account(Some(AccountTerms {
        limit: Amount(1_000),
        baseline: Amount::ZERO,
    }))
    .unwrap();
    let l = Arc::new(l);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let l = Arc::clone(&l);
        tasks.push(tokio::spawn(async move {
            let r = l.reserve(Amount(70))?;
            let id = format!("pm-{i}");
            l.commit(debit(&id, 70, id.as_bytes()), Some(r)).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(Outcome::Committed { .. }) => ok += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(LedgerError::CreditLimit { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    // floor(1000 / 70) = 14 fit, and exactly those were charged.
    assert_eq!(ok, 14);
    let s = l.state().registers;
    assert_eq!(s.ascending, Amount(980));
    assert_eq!(s.control_total, Amount(980));
    assert_eq!(s.descending, Amount::ZERO);
    assert_eq!(l.audit().await.unwrap().verdict, Verdict::Clean);
}

#[tokio::test]
async fn prepaid_reservation_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let (l, _c) = create(&path);
    l.commit(credit("voucher:1", 50), None).await.unwrap();
    let r = l.reserve(Amount(20)).unwrap();
    assert!(!r.is_account());
    l.commit(debit("pm-1", 20, b"m"), Some(r)).await.unwrap();
    let s = l.state().registers;
    assert_eq!(
        (s.ascending, s.descending, s.control_total),
        (Amount(20), Amount(30), Amount(50))
    );
    assert!(matches!(
        l.reserve(Amount(31)),
        Err(LedgerError::InsufficientFunds { .. })
    ));
}
