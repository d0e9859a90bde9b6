//! Funds kept apart (issue 17 item 3) through the ledger's public API with a
//! software sealer: combined mode (one pool, every existing ledger), the
//! split row, each register pair moving alone with AR + DR = CT on both,
//! refusals that name the register and touch nothing, both pairs recomputed
//! by the audit after a clean stop and after a crash, a ledger made before
//! the register column opening in combined mode, and a register id edited
//! by an attacker caught.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::ledger_support;

use ledger_support::*;
use meterd::ledger::{
    Entry, EntryKind, Fund, Ledger, LedgerError, LedgerState, Options, Outcome, Verdict, SPLIT_NOTE,
};
use meterd::money::Amount;
use meterd::service::Service;

fn balanced(s: &LedgerState) {
    let r = &s.registers;
    assert_eq!(
        r.ascending.checked_add(r.descending).unwrap(),
        r.control_total,
        "services AR + DR = CT violated: {r:?}"
    );
    let p = &r.postage;
    assert_eq!(
        p.ascending.checked_add(p.descending).unwrap(),
        p.control_total,
        "postage AR + DR = CT violated: {r:?}"
    );
}

fn postage(id: &str, amount: u64) -> Entry {
    Entry {
        service: Some(Service::Postage),
        fund: Fund::Postage,
        ..debit(id, amount, id.as_bytes())
    }
}

fn postage_voucher(id: &str, amount: u64) -> Entry {
    credit(id, amount).to_fund(Fund::Postage)
}

fn split_row() -> Entry {
    Entry {
        key: Some(meterd::ledger::Key::meter("funds", "split")),
        ..event(EntryKind::Event, SPLIT_NOTE, b"order")
    }
}

fn register_of(path: &std::path::Path, seq: u64) -> i64 {
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row(
        "SELECT register FROM journal WHERE seq=?1",
        [seq as i64],
        |r| r.get(0),
    )
    .unwrap()
}

fn seq_of(o: Outcome) -> u64 {
    match o {
        Outcome::Committed { seq, .. } => seq,
        other => panic!("not committed: {other:?}"),
    }
}

async fn split_ledger(l: &Ledger) {
    l.commit(credit("v-services", 50), None).await.unwrap();
    l.commit(split_row(), None).await.unwrap();
    assert!(l.state().registers.split);
    l.commit(postage_voucher("v-postage", 100), None)
        .await
        .unwrap();
    balanced(&l.state());
}

#[tokio::test]
async fn combined_mode_is_one_pool() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let (l, _c) = create(&path);
    // A postage voucher and a postage sale in combined mode: the one pool.
    l.commit(postage_voucher("v1", 100), None).await.unwrap();
    let seq = seq_of(l.commit(postage("p1", 30), None).await.unwrap());
    l.commit(debit("pm1", 20, b"m"), None).await.unwrap();
    let r = l.state().registers;
    assert!(!r.split);
    assert_eq!(
        (r.ascending, r.descending, r.control_total, r.pieces),
        (Amount(50), Amount(50), Amount(100), 2)
    );
    assert_eq!(r.postage, Default::default());
    assert_eq!(register_of(&path, seq), 0, "every row is register 0");
    // A reservation for postage comes from the pool, and a refusal names none.
    let err = l.reserve_in(Fund::Postage, Amount(51)).unwrap_err();
    assert!(
        matches!(err, LedgerError::InsufficientFunds { fund: None, .. }),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("insufficient funds"), "{err}");
    balanced(&l.state());
}

#[tokio::test]
async fn split_registers_move_apart_and_refuse_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let (l, c) = create(&path);
    split_ledger(&l).await;
    let r = l.state().registers;
    // What the pool held before the split stays in services.
    assert_eq!(r.descending, Amount(50));
    assert_eq!(r.postage.descending, Amount(100));

    let seq = seq_of(l.commit(postage("p1", 30), None).await.unwrap());
    assert_eq!(register_of(&path, seq), 1);
    let r = l.state().registers;
    assert_eq!(
        (
            r.postage.ascending,
            r.postage.descending,
            r.postage.control_total,
            r.postage.pieces
        ),
        (Amount(30), Amount(70), Amount(100), 1)
    );
    assert_eq!(
        (r.ascending, r.descending, r.pieces),
        (Amount(0), Amount(50), 0)
    );
    let seq = seq_of(l.commit(debit("pm1", 40, b"m"), None).await.unwrap());
    assert_eq!(register_of(&path, seq), 0);
    balanced(&l.state());

    // Services has 10 left, postage 70: neither pays for the other.
    let before = l.state();
    let err = l.commit(debit("pm2", 11, b"m2"), None).await.unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::InsufficientFunds {
                fund: Some(Fund::Services),
                available: Amount(10),
                ..
            }
        ),
        "{err:?}"
    );
    let err = l.commit(postage("p2", 71), None).await.unwrap_err();
    assert!(
        err.to_string().starts_with("insufficient postage funds"),
        "{err}"
    );
    assert_eq!(l.state().registers, before.registers, "registers untouched");
    // A sale paid from the other pair is refused: each is paid from its own.
    let wrong = Entry {
        fund: Fund::Postage,
        ..debit("pm3", 1, b"m3")
    };
    let err = l.commit(wrong, None).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Invalid(_)) && err.to_string().contains("its own register"),
        "{err:?}"
    );
    assert_eq!(l.state().registers, before.registers, "registers untouched");
    // Reservations: each register on its own.
    let err = l.reserve_in(Fund::Postage, Amount(71)).unwrap_err();
    assert!(matches!(
        err,
        LedgerError::InsufficientFunds {
            fund: Some(Fund::Postage),
            ..
        }
    ));
    let held = l.reserve_in(Fund::Postage, Amount(70)).unwrap();
    assert_eq!(held.fund(), Fund::Postage);
    assert!(l.reserve_in(Fund::Postage, Amount(1)).is_err());
    assert!(l.reserve_in(Fund::Services, Amount(10)).is_ok());
    drop(held);
    assert!(l.reserve_in(Fund::Postage, Amount(70)).is_ok());

    // Both pairs recomputed by the full audit, then by a start from the
    // checkpoint, after an orderly stop.
    assert_eq!(l.audit().await.unwrap().verdict, Verdict::Clean);
    let want = l.state().registers;
    l.close().await.unwrap();
    let (l, report, c2) = reopen(&path, c.counter());
    assert_eq!(report.verdict, Verdict::Clean);
    assert_eq!(l.state().registers, want);
    // Then from the signed checkpoint that audit wrote (both pairs in it).
    l.close().await.unwrap();
    let (s, _) = sealer(&KEY_A, c2.counter());
    let (l, report) = Ledger::open_with(&path, s, METER, Options::FROM_CHECKPOINT).unwrap();
    assert_eq!(report.verdict, Verdict::Clean);
    assert!(report.from_seq > 0, "started from a checkpoint");
    assert_eq!(l.state().registers, want);
}

#[tokio::test]
async fn a_crash_keeps_both_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let (l, c) = create(&path);
    split_ledger(&l).await;
    for i in 0..5 {
        l.commit(postage(&format!("p{i}"), 7), None).await.unwrap();
        l.commit(debit(&format!("s{i}"), 3, format!("m{i}").as_bytes()), None)
            .await
            .unwrap();
    }
    let want = l.state().registers;
    balanced(&l.state());
    l.crash();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (l, report, _) = reopen(&path, c.counter());
    assert_eq!(report.verdict, Verdict::Clean);
    assert_eq!(l.state().registers, want);
    assert_eq!(want.postage.descending, Amount(65));
    assert_eq!(want.descending, Amount(35));
    assert_eq!(want.postage.pieces, 5);
    assert_eq!(want.pieces, 5);
    balanced(&l.state());
    assert_eq!(l.audit().await.unwrap().verdict, Verdict::Clean);
}

#[tokio::test]
async fn a_ledger_without_the_register_column_opens_combined() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let (l, c) = create(&path);
    l.commit(credit("v1", 100), None).await.unwrap();
    l.commit(postage("p1", 30), None).await.unwrap();
    let want = l.state().registers;
    l.close().await.unwrap();
    // As a ledger written before issue 17: no register column at all.
    let a = rusqlite::Connection::open(&path).unwrap();
    a.execute_batch("ALTER TABLE journal DROP COLUMN register")
        .unwrap();
    drop(a);
    let (l, report, _) = reopen(&path, c.counter());
    assert_eq!(report.verdict, Verdict::Clean);
    assert_eq!(l.state().registers, want);
    assert!(!want.split);
    // The pool still pays for everything.
    l.commit(postage("p2", 70), None).await.unwrap();
    assert_eq!(l.state().registers.descending, Amount(0));
    assert_eq!(l.audit().await.unwrap().verdict, Verdict::Clean);
}

#[tokio::test]
async fn an_edited_register_id_is_tamper() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let (l, c) = create(&path);
    split_ledger(&l).await;
    let seq = seq_of(l.commit(postage("p1", 30), None).await.unwrap());
    l.close().await.unwrap();
    // The attacker books the postage row on services (DR 70 would then be
    // services money): the row's hash covers its register id.
    let a = attacker(&path);
    a.execute(
        "UPDATE journal SET register = 0 WHERE seq = ?1",
        [seq as i64],
    )
    .unwrap();
    drop(a);
    let (s, _) = sealer(&KEY_A, c.counter());
    let (_l, report) = Ledger::open(&path, s, METER, false).unwrap();
    assert!(
        matches!(report.verdict, Verdict::Tamper { .. }),
        "{:?}",
        report.verdict
    );
}
