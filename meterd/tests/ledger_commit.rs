//! Ledger behaviour through its public API with a software sealer: funds,
//! idempotency, group commit under concurrency, reservations, the crash
//! window between commit and counter increment, and a TPM that is down.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::ledger_support;

use std::sync::Arc;

use ledger_support::*;
use meterd::ledger::{EntryKind, Ledger, LedgerError, LedgerState, Options, Outcome, Verdict};
use meterd::money::Amount;
use meterd::service::Service;

fn balanced(s: &LedgerState) {
    let r = &s.registers;
    assert_eq!(
        r.ascending.checked_add(r.descending).unwrap(),
        r.control_total,
        "AR + DR = CT violated: {r:?}"
    );
}

#[tokio::test]
async fn funds_idempotency_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let (l, _c) = create(&path);
    balanced(&l.state());
    // genesis, then the epoch row the start opens.
    assert_eq!(l.state().rows, 2);

    let out = l.commit(credit("voucher:1", 100), None).await.unwrap();
    assert!(matches!(out, Outcome::Committed { seq: 3, .. }));
    balanced(&l.state());
    assert_eq!(l.state().registers.descending, Amount(100));

    let out = l.commit(debit("pm-1", 30, b"mail 1"), None).await.unwrap();
    let Outcome::Committed { seq, registers } = out else {
        panic!("not committed: {out:?}")
    };
    assert_eq!(seq, 4);
    assert_eq!(registers.ascending, Amount(30));
    assert_eq!(registers.descending, Amount(70));
    assert_eq!(registers.control_total, Amount(100));
    assert_eq!(registers.pieces, 1);
    assert_eq!(registers.per_service[Service::Postmark.index()], 1);
    assert_eq!(l.state().registers, registers);
    balanced(&l.state());

    // Insufficient funds changes nothing.
    let before = l.state();
    let err = l
        .commit(debit("pm-2", 71, b"mail 2"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::InsufficientFunds {
                needed: Amount(71),
                available: Amount(70),
                fund: None
            }
        ),
        "{err:?}"
    );
    assert_eq!(l.state(), before);
    assert!(l.lookup(&key("pm-2")).await.unwrap().is_none());

    // Overflow refused, nothing changes.
    let err = l
        .commit(credit("voucher:big", u64::MAX), None)
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::Overflow(_)), "{err:?}");
    assert_eq!(l.state(), before);

    // Idempotent retry: same product, no second charge.
    let first = l.lookup(&key("pm-1")).await.unwrap().unwrap();
    let again = l.commit(debit("pm-1", 30, b"mail 1"), None).await.unwrap();
    let Outcome::Existing { seq, product } = again else {
        panic!("not existing: {again:?}")
    };
    assert_eq!(seq, 4);
    assert_eq!(product, first.product);
    assert_eq!(first.kind, EntryKind::Debit);
    assert_eq!(first.service, Some(Service::Postmark));
    assert_eq!(l.state(), before);

    // Same id, other input: conflict.
    let err = l
        .commit(debit("pm-1", 30, b"another mail"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::Conflict(ref k) if *k == key("pm-1")),
        "{err:?}"
    );
    assert_eq!(l.state(), before);

    // Bounds.
    let mut e = debit("pm-3", 1, b"m");
    e.note = "x".repeat(65);
    assert!(matches!(
        l.commit(e, None).await,
        Err(LedgerError::Invalid(_))
    ));

    // Rows of a kind, with their products.
    let credits = l.products(EntryKind::Credit).await.unwrap();
    assert_eq!(credits.len(), 1);
    assert_eq!(credits[0].0, 3);
    assert_eq!(credits[0].2, b"voucher voucher:1".to_vec());

    let report = l.audit().await.unwrap();
    assert_eq!(report.verdict, Verdict::Clean);
    assert_eq!(report.rows, 4);
    l.close().await.unwrap();
    assert!(matches!(
        l.commit(credit("late", 1), None).await,
        Err(LedgerError::Stopped)
    ));

    // The close wrote its stop epoch row (counter 7); the reopen its start one.
    let (l, report, c) = reopen(&path, 7);
    assert_eq!(report.verdict, Verdict::Clean);
    assert_eq!(l.state().registers, before.registers);
    assert_eq!(l.state().rows, before.rows + 2);
    assert_eq!(c.counter(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_committers_are_group_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let (l, c) = create(&path);
    l.commit(credit("voucher:1", 1_000_000), None)
        .await
        .unwrap();
    let mut rx = l.subscribe();
    let mut tasks = Vec::new();
    for t in 0..32 {
        let l = l.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let id = format!("t{t}-{i}");
                let out = l.commit(debit(&id, 7, id.as_bytes()), None).await.unwrap();
                assert!(matches!(out, Outcome::Committed { .. }));
                balanced(&l.state());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(rx.has_changed().unwrap());
    let s = rx.borrow_and_update().clone();
    // genesis, start epoch, credit, 320 debits, and the epoch rows every
    // 100 rows (advanced between batches, so batches may overshoot).
    assert!(s.rows > 3 + 320 && s.rows <= 3 + 320 + 4, "{}", s.rows);
    assert_eq!(s.registers.ascending, Amount(7 * 320));
    assert_eq!(s.registers.pieces, 320);
    l.products(EntryKind::Genesis).await.unwrap(); // after the last increment
    let counter = c.counter();
    assert_eq!(s.nv, counter);
    l.close().await.unwrap();

    assert!(counter - 6 <= 5, "{} increments for 320 rows", counter - 6);
    let (l, report, _) = reopen(&path, counter + 1);
    assert_eq!(report.verdict, Verdict::Clean);
    assert_eq!(report.rows, s.rows + 2);
    assert!(
        report.batches < report.rows / 2,
        "{} batches for {} rows: no grouping",
        report.batches,
        report.rows
    );
    assert_eq!(l.state().registers, s.registers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservations_admit_only_what_funds_cover() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _c) = create(&db(dir.path()));
    l.commit(credit("voucher:1", 10 * 25), None).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let mut tasks = Vec::new();
    for t in 0..32 {
        let l = l.clone();
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            let r = l.reserve(Amount(25));
            // Everybody asks before anybody commits.
            barrier.wait().await;
            let r = r.ok()?;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await; // the "TPM work"
            let id = format!("pm-{t}");
            l.commit(debit(&id, 25, id.as_bytes()), Some(r)).await.ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().is_some() {
            ok += 1;
        }
    }
    assert_eq!(ok, 10);
    let s = l.state();
    assert_eq!(s.registers.descending, Amount::ZERO);
    assert_eq!(s.registers.pieces, 10);
    // Every reservation was released: nothing more can be held, and after a
    // credit exactly the new funds can.
    assert!(l.reserve(Amount(1)).is_err());
    l.commit(credit("voucher:2", 50), None).await.unwrap();
    let a = l.reserve(Amount(50)).unwrap();
    assert!(matches!(
        l.reserve(Amount(1)),
        Err(LedgerError::InsufficientFunds {
            available: Amount(0),
            ..
        })
    ));
    drop(a);
    assert!(l.reserve(Amount(50)).is_ok());
}

#[tokio::test]
async fn crash_between_commit_and_increment_rolls_forward() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let (l, c) = create(&path);
    l.commit(credit("voucher:1", 100), None).await.unwrap();
    let before = c.counter();
    c.fail_increment(true);
    // The stop epoch row is durable; its increment fails; the process dies.
    l.close().await.unwrap();
    assert_eq!(c.counter(), before, "increment should have failed");

    let (l, report, c) = reopen(&path, before);
    assert_eq!(report.verdict, Verdict::RolledForward);
    // The roll-forward, then the start epoch.
    assert_eq!(c.counter(), before + 2);
    assert_eq!(report.tpm_nv, before + 2);
    assert_eq!(l.state().nv, before + 2);
    l.close().await.unwrap();
    let (_l, report, _) = reopen(&path, before + 3);
    assert_eq!(report.verdict, Verdict::Clean);
}

#[tokio::test]
async fn failed_increment_is_retried_before_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let (s, c) = sealer(&KEY_A, 5);
    let opts = Options {
        create: true,
        epoch_rows: 2,
        ..Options::default()
    };
    let (l, _) = Ledger::open_with(&path, s, METER, opts).unwrap();
    assert_eq!(c.counter(), 6);
    c.fail_increment(true);
    // Two epochs' worth of rows: an epoch row, its increment failing.
    for i in 0..3 {
        l.commit(credit(&format!("voucher:{i}"), 100), None)
            .await
            .unwrap();
    }
    assert_eq!(c.counter(), 6);
    assert_eq!(l.state().nv, 7, "one epoch ahead at most");
    c.fail_increment(false);
    l.commit(debit("pm-1", 10, b"m"), None).await.unwrap();
    // Replies go out before the increment; any later request on the ledger
    // thread runs after it.
    l.products(EntryKind::Genesis).await.unwrap();
    assert_eq!(c.counter(), l.state().nv);
    assert_eq!(l.audit().await.unwrap().verdict, Verdict::Clean);
}

#[tokio::test]
async fn seal_failure_charges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let (l, c) = create(&path);
    l.commit(credit("voucher:1", 100), None).await.unwrap();
    l.products(EntryKind::Genesis).await.unwrap(); // after the increment
    let before = l.state();
    let counter = c.counter();
    c.fail_sign(true);
    let r = l.reserve(Amount(40)).unwrap();
    let err = l
        .commit(debit("pm-1", 40, b"m"), Some(r))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::Housing(_)), "{err:?}");
    assert_eq!(l.state(), before);
    assert_eq!(c.counter(), counter);
    assert!(l.lookup(&key("pm-1")).await.unwrap().is_none());
    // The reservation was released with the failure.
    assert!(l.reserve(Amount(100)).is_ok());
    c.fail_sign(false);
    l.commit(debit("pm-1", 40, b"m"), None).await.unwrap();
    assert_eq!(l.state().registers.descending, Amount(60));
    l.close().await.unwrap();
    let (_l, report, _) = reopen(&path, c.counter());
    assert_eq!(report.verdict, Verdict::Clean);
    // genesis, start, credit, pm-1, stop, and the new start.
    assert_eq!(report.rows, 6);
}

#[tokio::test]
async fn lock_rows_set_and_clear_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let (l, c) = create(&path);
    assert_eq!(l.state().lock, None);
    l.commit(event(EntryKind::Lock, "ledger-tamper", b"nonce-123"), None)
        .await
        .unwrap();
    let lock = l.state().lock.unwrap();
    assert_eq!(lock.reason, "ledger-tamper");
    assert_eq!(lock.nonce, "nonce-123");
    l.close().await.unwrap();
    let (l, report, _) = reopen(&path, c.counter());
    assert_eq!(report.verdict, Verdict::Clean);
    assert_eq!(l.state().lock.unwrap().nonce, "nonce-123");
    l.commit(event(EntryKind::Unlock, "order", b"order"), None)
        .await
        .unwrap();
    assert_eq!(l.state().lock, None);
}

#[tokio::test]
async fn open_without_create_refuses_a_missing_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = sealer(&KEY_A, 1);
    let err = meterd::ledger::Ledger::open(&db(dir.path()), s, METER, false).unwrap_err();
    assert!(matches!(err, LedgerError::Storage(_)), "{err:?}");
}
