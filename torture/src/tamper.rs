//! Rollback and tamper at the daemon level (issue 7, item 2).
//!
//! The sandbox is taken down and its whole state (swtpm NV + ledger) saved,
//! so every case starts from the same pristine pair: one attack on the
//! ledger files, then the real meterd starts on them. Each case must be
//! detected at start — the meter comes up `locked` (tamper or rollback), or
//! refuses to start with a Storage error in its log — none missed. A control
//! case (the untouched copy) must come up `ready`, proving the restore
//! itself is sound. The attacks are those of `meterd/tests/ledger_tamper.rs`,
//! here against the running daemon.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use crate::error::{io, Result, TortureError};
use crate::sandbox::{status, Sandbox};
use crate::summary::Tally;

/// The ledger's files (database, WAL, shared memory).
const LEDGER_FILES: &[&str] = &["ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"];

/// How meterd's log says the ledger is unreadable: the `Storage` error's
/// kind or its message.
pub(crate) const STORAGE_MARKS: &[&str] = &["Storage", "storage", "the ledger could not be"];

/// An attack on the ledger files in a state directory.
enum Attack {
    /// Nothing (the control case).
    None,
    /// Replace the ledger files by a saved copy (with whatever WAL it had).
    Restore(PathBuf),
    /// SQL run with the append-only triggers dropped.
    Sql(String),
    /// Cut the database file to half its length (after folding the WAL into
    /// it when `checkpoint`; otherwise the WAL, where meterd's recent pages
    /// live, is simply lost with it).
    Truncate {
        /// Checkpoint first, so the cut file holds the whole ledger.
        checkpoint: bool,
    },
    /// Remove only the WAL (and its index): the last commits vanish.
    DeleteWal,
    /// Overwrite the database file with garbage.
    Garbage,
    /// Remove the ledger files altogether.
    Delete,
}

fn copy_ledger(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for f in LEDGER_FILES {
        let dst = to.join(f);
        let _ = std::fs::remove_file(&dst);
        let src = from.join(f);
        if src.exists() {
            std::fs::copy(&src, &dst).map_err(io(&src))?;
        }
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(to);
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .map_err(io("cp"))?;
    if !out.status.success() {
        return Err(TortureError::Setup(format!(
            "cp -a {} {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

fn attack(state: &Path, a: &Attack) -> Result<()> {
    let db = state.join("ledger.sqlite");
    match a {
        Attack::None => {}
        Attack::Restore(from) => copy_ledger(from, state)?,
        Attack::Sql(sql) => {
            let c = Connection::open(&db)?;
            let triggers: Vec<String> = c
                .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'")?
                .query_map([], |r| r.get(0))?
                .collect::<std::result::Result<_, _>>()?;
            for t in triggers {
                c.execute_batch(&format!("DROP TRIGGER \"{t}\";"))?;
            }
            c.execute_batch(sql)?;
            // Leave a closed, checkpointed file: the attacker covers his tracks.
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        }
        Attack::Truncate { checkpoint } => {
            if *checkpoint {
                let c = Connection::open(&db)?;
                c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
            }
            let len = std::fs::metadata(&db).map_err(io(&db))?.len();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&db)
                .map_err(io(&db))?;
            f.set_len(len / 2).map_err(io(&db))?;
            for f in &LEDGER_FILES[1..] {
                let _ = std::fs::remove_file(state.join(f));
            }
        }
        Attack::Garbage => {
            std::fs::write(&db, vec![0x5a; 8192]).map_err(io(&db))?;
            for f in &LEDGER_FILES[1..] {
                let _ = std::fs::remove_file(state.join(f));
            }
        }
        Attack::DeleteWal => {
            for f in &LEDGER_FILES[1..] {
                let _ = std::fs::remove_file(state.join(f));
            }
        }
        Attack::Delete => {
            for f in LEDGER_FILES {
                let _ = std::fs::remove_file(state.join(f));
            }
        }
    }
    Ok(())
}

async fn postmarks(sb: &Sandbox, tag: &str, n: u64) -> Result<()> {
    let attempts = crate::load::run(sb, crate::load::Spec::new(1, n, tag)).await?;
    if crate::load::products(&attempts) != n {
        return Err(TortureError::Setup(format!(
            "setup postmarks {tag}: {:?}",
            crate::load::failure_kinds(&attempts)
        )));
    }
    Ok(())
}

async fn script(sb: &Sandbox, verb: &'static str) -> Result<bool> {
    let sb2 = sb.clone();
    tokio::task::spawn_blocking(move || sb2.try_script(verb, &[])).await?
}

/// Runs every case; `other` is another meter's sandbox directory (down).
pub async fn run(sb: &Sandbox, other: &Path) -> Result<Tally> {
    let work = sb.dir.join("tamper");
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let (old, hot) = (work.join("old"), work.join("hot"));

    // History: old copy (cold), more sales, a hot copy with its WAL, more sales.
    postmarks(sb, "tamper-a-", 5).await?;
    script(sb, "stop-meterd").await?;
    copy_ledger(&sb.state, &old)?;
    script(sb, "start-meterd").await?;
    postmarks(sb, "tamper-b-", 5).await?;
    copy_ledger(&sb.state, &hot)?;
    let hot_has_wal = std::fs::metadata(hot.join("ledger.sqlite-wal"))
        .map(|m| m.len() > 0)
        .unwrap_or(false);
    postmarks(sb, "tamper-c-", 5).await?;
    if !script(sb, "down").await? {
        return Err(TortureError::Setup("tests/sandbox down failed".into()));
    }
    let (tpm_b, state_b) = (work.join("tpm"), work.join("state"));
    copy_tree(&sb.dir.join("tpm"), &tpm_b)?;
    copy_tree(&sb.state, &state_b)?;

    let mid = "(SELECT seq FROM journal WHERE debit > 0 ORDER BY seq LIMIT 1 OFFSET 4)";
    let cases: Vec<(&str, Attack)> = vec![
        ("control: untouched copy", Attack::None),
        ("older copy restored (no WAL)", Attack::Restore(old.clone())),
        (
            if hot_has_wal {
                "older hot copy restored with its WAL"
            } else {
                "older hot copy restored (its WAL was empty)"
            },
            Attack::Restore(hot.clone()),
        ),
        (
            "row edited (debit)",
            Attack::Sql(format!("UPDATE journal SET debit = debit - 1, ascending = ascending - 1, descending = descending + 1 WHERE seq = {mid};")),
        ),
        (
            "last row edited (descending + 100000)",
            Attack::Sql("UPDATE journal SET descending = descending + 100000, control_total = control_total + 100000 WHERE seq = (SELECT max(seq) FROM journal);".into()),
        ),
        (
            "row deleted (middle)",
            Attack::Sql(format!("DELETE FROM products WHERE seq = {mid}; DELETE FROM journal WHERE seq = {mid};")),
        ),
        (
            "last row deleted",
            Attack::Sql("DELETE FROM products WHERE seq = (SELECT max(seq) FROM journal); DELETE FROM journal WHERE seq = (SELECT max(seq) FROM journal);".into()),
        ),
        (
            "rows reordered",
            Attack::Sql(reorder_sql()),
        ),
        ("WAL deleted (last commits lost)", Attack::DeleteWal),
        (
            "file truncated to half (WAL folded in first)",
            Attack::Truncate { checkpoint: true },
        ),
        (
            "file cut to half, WAL deleted",
            Attack::Truncate { checkpoint: false },
        ),
        ("file replaced by garbage", Attack::Garbage),
        ("ledger files deleted", Attack::Delete),
        (
            "another meter's database swapped in",
            Attack::Restore(other.join("state")),
        ),
    ];

    let mut t = Tally::default();
    for (name, a) in &cases {
        t.iterations += 1;
        t.operations += 1;
        copy_tree(&tpm_b, &sb.dir.join("tpm"))?;
        copy_tree(&state_b, &sb.state)?;
        attack(&sb.state, a)?;
        let log_from = sb.log_len();
        let started = script(sb, "start").await?;
        let control = matches!(a, Attack::None);
        let verdict = if started {
            let proxy = sb.connect().await?;
            let regs = status(&proxy).await?;
            let locked = regs.state == meter_proto::state::LOCKED
                && ["tamper", "rollback"].contains(&regs.lock_reason.as_str());
            // A locked meter sells nothing and charges nothing.
            if locked {
                let r = sb.mix.call(&proxy, 0, "tamper-after").await;
                let after = status(&proxy).await?;
                if !matches!(r, Err(meter_proto::MeterError::Locked(_)))
                    || after.pairs() != regs.pairs()
                {
                    t.fault(format!("{name}: locked meter sold or charged: {r:?}"));
                }
            }
            match (control, locked) {
                (true, false) if regs.state == meter_proto::state::READY => {
                    "ready (as it must)".to_string()
                }
                (true, _) => {
                    t.fault(format!(
                        "{name}: came up {} {}",
                        regs.state, regs.lock_reason
                    ));
                    format!("{} {} (FAULT)", regs.state, regs.lock_reason)
                }
                (false, true) => format!("locked: {}", regs.lock_reason),
                (false, false) => {
                    t.missed += 1;
                    t.note(format!("missed: {name}: meter came up {}", regs.state));
                    format!("MISSED: came up {}", regs.state)
                }
            }
        } else {
            let log = sb.log_since(log_from);
            let line = log
                .lines()
                .rev()
                .find(|l| STORAGE_MARKS.iter().any(|m| l.contains(m)))
                .map(str::to_string);
            match (control, line) {
                (false, Some(l)) => format!("refused to start: {}", l.trim()),
                (true, _) => {
                    t.fault(format!("{name}: meterd did not start"));
                    "did not start (FAULT)".to_string()
                }
                (false, None) => {
                    t.missed += 1;
                    t.note(format!(
                        "missed: {name}: meterd failed without a Storage error"
                    ));
                    "MISSED: failed without a Storage error".to_string()
                }
            }
        };
        eprintln!("torture: tamper {name:<45} -> {verdict:.160}");
        script(sb, "down").await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Leave the sandbox as found: pristine state, running.
    copy_tree(&tpm_b, &sb.dir.join("tpm"))?;
    copy_tree(&state_b, &sb.state)?;
    script(sb, "start").await?;
    Ok(t)
}

fn reorder_sql() -> String {
    let cols = "time, kind, service, request_id, credit, debit, ascending, descending, control_total, pieces, service_count, product_digest, note, prev_hash, hash";
    let pick = "(SELECT seq FROM journal WHERE debit > 0 ORDER BY seq LIMIT 1 OFFSET 2)";
    format!(
        "CREATE TEMP TABLE t AS SELECT * FROM journal WHERE seq IN ({pick}, {pick} + 1);
         UPDATE journal SET request_id = NULL WHERE seq IN (SELECT seq FROM t);
         UPDATE journal SET ({cols}) = (SELECT {cols} FROM t WHERE t.seq = (SELECT max(seq) FROM t)) WHERE seq = (SELECT min(seq) FROM t);
         UPDATE journal SET ({cols}) = (SELECT {cols} FROM t WHERE t.seq = (SELECT min(seq) FROM t)) WHERE seq = (SELECT max(seq) FROM t);"
    )
}
