//! Signed checkpoints: a clean audit writes one; an open `from_checkpoint`
//! verifies only the rows after it yet ends in the same state as a full
//! audit; a forged or stale checkpoint falls back to the full audit; damage
//! after the checkpoint is caught at start, damage before it by the full
//! audit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::ledger_support;

use std::path::Path;

use ledger_support::*;
use meterd::ledger::{EntryKind, Ledger, Options, Verdict};

fn checkpoints(path: &Path) -> Vec<i64> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut s = c
        .prepare("SELECT seq FROM checkpoints ORDER BY seq")
        .unwrap();
    s.query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn open_cp(path: &Path, counter: u64) -> (Ledger, meterd::ledger::AuditReport) {
    let (s, _) = sealer(&KEY_A, counter);
    Ledger::open_with(path, s, METER, Options::FROM_CHECKPOINT).unwrap()
}

/// genesis, start epoch, credit, 6 debits, a lock, stop epoch: checkpoint
/// at row 11 after a clean reopen; then the start epoch row, an unlock, 2
/// debits and the stop row (rows 12..=16) after it. Returns the counter.
async fn build(path: &Path) -> u64 {
    let (l, c) = create(path);
    l.commit(credit("voucher:1", 1000), None).await.unwrap();
    for i in 0..6 {
        let id = format!("pm-{i}");
        l.commit(debit(&id, 10 + i, id.as_bytes()), None)
            .await
            .unwrap();
    }
    l.commit(event(EntryKind::Lock, "operator", b"nonce-7"), None)
        .await
        .unwrap();
    l.close().await.unwrap();
    assert!(checkpoints(path).is_empty());
    let (l, report, c) = reopen(path, c.counter());
    assert_eq!(report.verdict, Verdict::Clean);
    assert_eq!(checkpoints(path), vec![11]);
    l.commit(event(EntryKind::Unlock, "cleared", b"order"), None)
        .await
        .unwrap();
    for i in 6..8 {
        let id = format!("pm-{i}");
        l.commit(debit(&id, 10 + i, id.as_bytes()), None)
            .await
            .unwrap();
    }
    l.close().await.unwrap();
    c.counter()
}

#[tokio::test]
async fn checkpoint_start_matches_full_audit() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let nv = build(&path).await;
    let full_dir = tempfile::tempdir().unwrap();
    let full_path = db(full_dir.path());
    copy_db(&path, &full_path);

    let (l, report) = open_cp(&path, nv);
    assert_eq!(report.verdict, Verdict::Clean);
    assert_eq!(report.rows, 17);
    // The background audit finds the history clean and checkpoints it.
    let history = l.verify_history().await.unwrap();
    assert_eq!(history.verdict, Verdict::Clean);
    assert_eq!(history.rows, 17);
    let cp_state = l.state();
    l.close().await.unwrap();
    // That start checkpointed the tip it found.
    assert_eq!(checkpoints(&path), vec![11, 16, 17]);

    let (l, report, _) = reopen(&full_path, nv);
    assert_eq!(report.verdict, Verdict::Clean);
    // Same rows and registers (the start epoch rows differ in their TPM clock).
    let full = l.state();
    assert_eq!(
        (full.rows, &full.registers, &full.lock, full.nv),
        (
            cp_state.rows,
            &cp_state.registers,
            &cp_state.lock,
            cp_state.nv
        )
    );
    assert_eq!(cp_state.lock, None);
    l.close().await.unwrap();
}

#[tokio::test]
async fn lock_before_the_checkpoint_survives_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let (l, c) = create(&path);
    l.commit(credit("voucher:1", 100), None).await.unwrap();
    l.commit(event(EntryKind::Lock, "operator", b"nonce-9"), None)
        .await
        .unwrap();
    l.close().await.unwrap();
    let (l, _, c) = reopen(&path, c.counter());
    l.close().await.unwrap();
    let (l, report) = open_cp(&path, c.counter());
    assert_eq!(report.verdict, Verdict::Clean);
    let lock = l.state().lock.unwrap();
    assert_eq!(
        (lock.reason.as_str(), lock.nonce.as_str()),
        ("operator", "nonce-9")
    );
    l.close().await.unwrap();
}

#[tokio::test]
async fn damage_after_the_checkpoint_is_caught_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let nv = build(&path).await;
    attacker(&path)
        .execute("UPDATE journal SET debit = debit + 1 WHERE seq = 14", [])
        .unwrap();
    let (l, report) = open_cp(&path, nv);
    match report.verdict {
        Verdict::Tamper { first_bad_seq, .. } => assert_eq!(first_bad_seq, Some(14)),
        v => panic!("expected tamper, got {v:?}"),
    }
    l.close().await.unwrap();
}

#[tokio::test]
async fn damage_before_the_checkpoint_is_caught_by_the_full_audit() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let nv = build(&path).await;
    attacker(&path)
        .execute("UPDATE journal SET note = 'x' WHERE seq = 4", [])
        .unwrap();
    // The start trusts the signed checkpoint at row 11 for rows 1..=11 ...
    let (l, report) = open_cp(&path, nv);
    assert_eq!(report.verdict, Verdict::Clean);
    // ... the background audit walks from genesis on its own connection ...
    match l.verify_history().await.unwrap().verdict {
        Verdict::Tamper { first_bad_seq, .. } => assert_eq!(first_bad_seq, Some(4)),
        v => panic!("expected tamper, got {v:?}"),
    }
    // ... and so does the full audit on demand.
    match l.audit().await.unwrap().verdict {
        Verdict::Tamper { first_bad_seq, .. } => assert_eq!(first_bad_seq, Some(4)),
        v => panic!("expected tamper, got {v:?}"),
    }
    l.close().await.unwrap();
}

#[tokio::test]
async fn forged_or_stale_checkpoint_falls_back_to_full_audit() {
    // Forged: registers raised in the body, signature left as it was.
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let nv = build(&path).await;
    let a = attacker(&path);
    a.execute_batch("DROP TRIGGER IF EXISTS checkpoints_no_update")
        .unwrap();
    a.execute(
        "UPDATE checkpoints SET body = CAST(substr(body, 1, 64) || x'00000000000fffff' || substr(body, 73) AS BLOB) WHERE seq = 11",
        [],
    )
    .unwrap();
    drop(a);
    let (l, report) = open_cp(&path, nv);
    assert_eq!(report.verdict, Verdict::Clean);
    assert_eq!(
        l.state().registers.descending.0,
        1000 - (10..18).sum::<u64>()
    );
    l.close().await.unwrap();

    // Stale: the row it names was rewritten (its hash no longer matches),
    // so the full audit runs and finds the damage.
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let nv = build(&path).await;
    attacker(&path)
        .execute("UPDATE journal SET hash = prev_hash WHERE seq = 11", [])
        .unwrap();
    let (l, report) = open_cp(&path, nv);
    assert!(
        matches!(report.verdict, Verdict::Tamper { .. }),
        "{:?}",
        report.verdict
    );
    l.close().await.unwrap();
}
