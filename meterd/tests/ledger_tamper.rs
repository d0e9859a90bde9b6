//! The tamper matrix: each attack on a copy of a closed ledger, reopened
//! with the meter's sealer, must give its verdict — none missed. Attacks go
//! through a raw SQLite connection with the append-only triggers dropped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::ledger_support;

use std::path::{Path, PathBuf};

use ledger_support::*;
use meterd::ledger::{EntryKind, Ledger, LedgerError, Verdict};

/// A closed ledger: genesis, the start epoch row, a credit, debits over
/// several batches (rows 4..=11), an event (row 12), the stop epoch row (13).
/// Returns its path and the counter value it is bound to.
async fn base(dir: &Path) -> (PathBuf, u64) {
    let path = db(dir);
    let (l, c) = create(&path);
    l.commit(credit("voucher:1", 1000), None).await.unwrap();
    for i in 0..8 {
        let id = format!("pm-{i}");
        l.commit(debit(&id, 10 + i, id.as_bytes()), None)
            .await
            .unwrap();
    }
    l.commit(event(EntryKind::Event, "cert-installed", b"cert"), None)
        .await
        .unwrap();
    l.close().await.unwrap();
    (path, c.counter())
}

/// A base ledger in its own directory (kept as long as the first field lives).
async fn fresh_base() -> (tempfile::TempDir, PathBuf, u64) {
    let dir = tempfile::tempdir().unwrap();
    let (path, nv) = base(dir.path()).await;
    (dir, path, nv)
}

/// A copy of a ledger in a fresh directory, to attack; the directory goes with it.
struct Copy {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl AsRef<Path> for Copy {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl std::ops::Deref for Copy {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

fn copy(base: &Path) -> Copy {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    copy_db(base, &path);
    Copy { _dir: dir, path }
}

fn open_verdict(path: &Path, counter: u64) -> Verdict {
    reopen(path, counter).1.verdict
}

fn assert_tamper(v: Verdict, seq: Option<u64>) {
    match v {
        Verdict::Tamper { first_bad_seq, .. } => assert_eq!(first_bad_seq, seq, "{v:?}"),
        other => panic!("expected tamper, got {other:?}"),
    }
}

#[tokio::test]
async fn canonical_encoding_matches_the_documented_layout() {
    let (_dir, path, _) = fresh_base().await;
    let c = rusqlite::Connection::open(&path).unwrap();
    let mut prev = meterd::ledger::genesis_prev(METER).to_vec();
    for seq in 1..=11 {
        let h = recompute(&c, seq, &prev);
        assert_eq!(h, stored_hash(&c, seq, "hash"), "row {seq}");
        // prev_hash is stored empty (issue 14): derived from the row before.
        assert!(stored_hash(&c, seq, "prev_hash").is_empty(), "row {seq}");
        prev = h;
    }
}

#[tokio::test]
async fn untouched_copy_is_clean() {
    let (_dir, path, nv) = fresh_base().await;
    assert_eq!(open_verdict(&copy(&path), nv), Verdict::Clean);
}

#[tokio::test]
async fn edited_amount() {
    let (_dir, path, nv) = fresh_base().await;
    let p = copy(&path);
    attacker(&p)
        .execute("UPDATE journal SET debit = debit - 5 WHERE seq = 5", [])
        .unwrap();
    let (l, report, _) = reopen(&p, nv);
    assert_tamper(report.verdict, Some(5));
    // Opening put the append-only triggers back.
    let c = rusqlite::Connection::open(&p).unwrap();
    assert!(c
        .execute("UPDATE journal SET debit = 0 WHERE seq = 5", [])
        .is_err());
    assert!(c.execute("DELETE FROM batches", []).is_err());
    drop(l);
}

#[tokio::test]
async fn edited_registers_consistently_with_recomputed_hash() {
    let (_dir, path, nv) = fresh_base().await;
    let p = copy(&path);
    let c = attacker(&p);
    // Give back funds on the last debit row (seq 10) and fix its own hash.
    c.execute("UPDATE journal SET descending = descending + 5, ascending = ascending - 5, debit = debit - 5 WHERE seq = 10", []).unwrap();
    let prev = stored_hash(&c, 9, "hash");
    let h = recompute(&c, 10, &prev);
    c.execute("UPDATE journal SET hash = ?1 WHERE seq = 10", [&h])
        .unwrap();
    drop(c);
    // Row 11 no longer links; and the batch head of row 10 disagrees.
    assert_tamper(open_verdict(&p, nv), Some(10));
}

#[tokio::test]
async fn edited_row_with_whole_chain_rewritten() {
    let (_dir, path, nv) = fresh_base().await;
    let p = copy(&path);
    let c = attacker(&p);
    c.execute(
        "UPDATE journal SET note = 'nothing here' WHERE seq = 11",
        [],
    )
    .unwrap();
    // Rewrite every hash, link and batch head: only the seal can tell.
    let mut prev = meterd::ledger::genesis_prev(METER).to_vec();
    let last: i64 = c
        .query_row("SELECT MAX(seq) FROM journal", [], |r| r.get(0))
        .unwrap();
    for seq in 1..=last {
        let h = recompute(&c, seq, &prev);
        c.execute(
            "UPDATE journal SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            rusqlite::params![prev, h, seq],
        )
        .unwrap();
        c.execute(
            "UPDATE batches SET head = ?1 WHERE last_seq = ?2",
            rusqlite::params![h, seq],
        )
        .unwrap();
        prev = h;
    }
    drop(c);
    assert_tamper(open_verdict(&p, nv), None);
}

#[tokio::test]
async fn deleted_row() {
    let (_dir, path, nv) = fresh_base().await;
    for (seq, bad) in [(6, 6), (11, 11)] {
        let p = copy(&path);
        attacker(&p)
            .execute("DELETE FROM journal WHERE seq = ?1", [seq])
            .unwrap();
        assert_tamper(open_verdict(&p, nv), Some(bad));
    }
}

#[tokio::test]
async fn deleted_last_batch_is_a_rollback() {
    let (_dir, path, nv) = fresh_base().await;
    let p = copy(&path);
    let c = attacker(&p);
    // The last batch is the stop epoch row: without it the ledger ends in
    // the epoch before the counter.
    c.execute("DELETE FROM journal WHERE seq = 13", []).unwrap();
    c.execute("DELETE FROM batches WHERE last_seq = 13", [])
        .unwrap();
    drop(c);
    assert_eq!(
        open_verdict(&p, nv),
        Verdict::Rollback {
            ledger_nv: nv - 1,
            tpm_nv: nv
        }
    );
}

#[tokio::test]
async fn reordered_rows() {
    let (_dir, path, nv) = fresh_base().await;
    let p = copy(&path);
    let c = attacker(&p);
    let cols = "time, kind, service, request_id, credit, debit, ascending, descending, control_total, pieces, service_count, product_digest, note, prev_hash, hash";
    c.execute_batch(&format!(
        "CREATE TEMP TABLE t AS SELECT * FROM journal WHERE seq IN (5, 6);
         UPDATE journal SET request_id = NULL WHERE seq IN (5, 6);
         UPDATE journal SET ({cols}) = (SELECT {cols} FROM t WHERE t.seq = 6) WHERE seq = 5;
         UPDATE journal SET ({cols}) = (SELECT {cols} FROM t WHERE t.seq = 5) WHERE seq = 6;"
    ))
    .unwrap();
    drop(c);
    assert_tamper(open_verdict(&p, nv), Some(5));
}

#[tokio::test]
async fn truncated_or_garbage_file_is_a_storage_error() {
    let (_dir, path, nv) = fresh_base().await;
    let p = copy(&path);
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (s, _) = sealer(&KEY_A, nv);
    let err = Ledger::open(&p, s, METER, false).unwrap_err();
    assert!(matches!(err, LedgerError::Storage(_)), "{err:?}");

    std::fs::write(&p, vec![0x5a; 8192]).unwrap();
    let (s, _) = sealer(&KEY_A, nv);
    let err = Ledger::open(&p, s, METER, false).unwrap_err();
    assert!(matches!(err, LedgerError::Storage(_)), "{err:?}");
}

#[tokio::test]
async fn restored_older_copy_without_wal() {
    let (_dir, path, nv) = fresh_base().await;
    let saved = copy(&path);
    assert!(!wal(&saved).exists());
    let (l, _, c) = reopen(&path, nv);
    l.commit(debit("pm-later", 5, b"later"), None)
        .await
        .unwrap();
    l.close().await.unwrap();
    copy_db(&saved, &path);
    // The reopen's start epoch and its close's stop epoch moved the counter.
    assert_eq!(
        open_verdict(&path, c.counter()),
        Verdict::Rollback {
            ledger_nv: nv,
            tpm_nv: nv + 2
        }
    );
}

#[tokio::test]
async fn restored_older_hot_copy_with_wal() {
    let (_dir, path, nv) = fresh_base().await;
    let (l, _, c) = reopen(&path, nv);
    l.commit(debit("pm-a", 5, b"a"), None).await.unwrap();
    // Copied while running: the last commit is only in the -wal.
    let old = tempfile::tempdir().unwrap();
    let saved = db(old.path());
    copy_db(&path, &saved);
    assert!(wal(&saved).exists());
    l.commit(debit("pm-b", 5, b"b"), None).await.unwrap();
    l.close().await.unwrap();
    copy_db(&saved, &path);
    let (_l, report, _) = reopen(&path, c.counter());
    assert_eq!(
        report.verdict,
        Verdict::Rollback {
            ledger_nv: nv + 1,
            tpm_nv: nv + 2
        }
    );
    // Rows 1..=13, the start epoch row, pm-a.
    assert_eq!(report.rows, 15);
}

#[tokio::test]
async fn another_meters_database() {
    let (_dir, path, nv) = fresh_base().await;
    // Other meter id, same key.
    let p = copy(&path);
    let (s, _) = sealer(&KEY_A, nv);
    let (_l, r) = Ledger::open(&p, s, "meter-0002", false).unwrap();
    assert!(
        matches!(r.verdict, Verdict::Tamper { .. }),
        "{:?}",
        r.verdict
    );
    // Same id, other meter's key (its counter agrees, even).
    let p = copy(&path);
    let (s, _) = sealer(&KEY_B, nv);
    let (_l, r) = Ledger::open(&p, s, METER, false).unwrap();
    assert_tamper(r.verdict, None);
    // Counter far behind the ledger.
    let p = copy(&path);
    assert_tamper(open_verdict(&p, nv - 2), None);
}

#[tokio::test]
async fn reanchor_forgives_reviewed_damage_only() {
    let (_dir, path, nv) = fresh_base().await;
    attacker(&path)
        .execute("UPDATE journal SET debit = debit + 1 WHERE seq = 5", [])
        .unwrap();
    let (l, report, c) = reopen(&path, nv);
    assert_tamper(report.verdict, Some(5));
    // What the meter does: lock, and later the authority's reanchor.
    l.commit(event(EntryKind::Lock, "ledger-tamper", b"nonce-1"), None)
        .await
        .unwrap();
    l.close().await.unwrap();
    let (l, report, c2) = reopen(&path, c.counter());
    assert_tamper(report.verdict, Some(5));
    assert_eq!(l.state().lock.unwrap().nonce, "nonce-1");
    l.commit(event(EntryKind::Unlock, "reanchor", b"order"), None)
        .await
        .unwrap();
    l.commit(debit("pm-after", 3, b"after"), None)
        .await
        .unwrap();
    l.close().await.unwrap();
    let nv2 = c2.counter();
    let (l, report, _) = reopen(&path, nv2);
    assert_eq!(report.verdict, Verdict::Clean);
    assert_eq!(l.state().lock, None);
    l.close().await.unwrap();

    // A further edit before the reanchor is caught again.
    let p = copy(&path);
    attacker(&p)
        .execute("UPDATE journal SET note = 'x' WHERE seq = 3", [])
        .unwrap();
    assert!(matches!(open_verdict(&p, nv2), Verdict::Tamper { .. }));
    // And an edit after it too.
    let p = copy(&path);
    attacker(&p)
        .execute(
            "UPDATE journal SET debit = 2 WHERE request_id = 'c/0/pm-after'",
            [],
        )
        .unwrap();
    assert!(matches!(open_verdict(&p, nv2), Verdict::Tamper { .. }));
    // A reanchor note on a forged row does not count.
    let p = copy(&path);
    attacker(&p)
        .execute(
            "UPDATE journal SET kind = 7, note = 'reanchor' WHERE seq = 4",
            [],
        )
        .unwrap();
    assert!(matches!(open_verdict(&p, nv2), Verdict::Tamper { .. }));
}
