//! SQLite schema and connection settings of the ledger.
//!
//! WAL with `synchronous=FULL` so a COMMIT that returned is on disk before
//! the TPM counter moves; triggers make the journal, products and batches
//! append-only so that even a bug in this crate cannot rewrite history (an
//! attacker with the file can drop them: the hash chain is what catches him).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{LedgerError, Result};

/// Schema version written in `meta`. Version 2: request keys are scoped
/// (`ledger::Key`); a version-1 ledger is upgraded in place at open (only
/// the number changes: its rows keep their raw ids, found again through
/// `Key::legacy`). Version 3: ledger layout v2 (epoch rows, product
/// seals; see the `ledger` module doc); the rows and tables are unchanged,
/// a version-2 ledger keeps its v1 batches and is upgraded at its first
/// start epoch row. The partial index finds the epoch in force at a
/// checkpoint without reading the journal.
pub(crate) const SCHEMA_VERSION: i64 = 3;

/// The partial indexes `journal_rare*` hold every row but the sales and
/// the epoch rows (Debit = 5 and Event = 8 rows without a note): the few
/// rows the loaders at start look up by kind and note, found without
/// reading the journal (issue 14: start to READY must not grow with the
/// sales). A query uses them only if its WHERE has this very term; it
/// leaves out only note-less Debit and Event rows, so add it only to
/// queries for another kind or a non-empty note. Created by `ensure` on
/// an older ledger at its first start (no version change: the rows are
/// the same).
pub(crate) const RARE: &str = "(j.kind NOT IN (5, 8) OR j.note != '')";

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS journal(
    seq INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    service INTEGER NOT NULL,
    request_id TEXT UNIQUE,
    credit INTEGER NOT NULL,
    debit INTEGER NOT NULL,
    ascending INTEGER NOT NULL,
    descending INTEGER NOT NULL,
    control_total INTEGER NOT NULL,
    pieces INTEGER NOT NULL,
    service_count INTEGER NOT NULL,
    product_digest BLOB NOT NULL,
    note TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    register INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS products(
    seq INTEGER PRIMARY KEY,
    input_digest BLOB NOT NULL,
    product BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS batches(
    batch INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    nv INTEGER NOT NULL,
    head BLOB NOT NULL,
    seal BLOB NOT NULL,
    time INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_epochs ON journal(seq) WHERE note = 'epoch' AND kind = 8;
CREATE INDEX IF NOT EXISTS journal_rare ON journal(kind, note) WHERE kind NOT IN (5, 8) OR note != '';
CREATE INDEX IF NOT EXISTS journal_rare_note ON journal(note) WHERE kind NOT IN (5, 8) OR note != '';
CREATE TABLE IF NOT EXISTS checkpoints(
    seq INTEGER PRIMARY KEY,
    body BLOB NOT NULL,
    sig BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS checkpoints_no_update BEFORE UPDATE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS journal_no_update BEFORE UPDATE ON journal
    BEGIN SELECT RAISE(ABORT, 'journal is append-only'); END;
CREATE TRIGGER IF NOT EXISTS journal_no_delete BEFORE DELETE ON journal
    BEGIN SELECT RAISE(ABORT, 'journal is append-only'); END;
CREATE TRIGGER IF NOT EXISTS products_no_update BEFORE UPDATE ON products
    BEGIN SELECT RAISE(ABORT, 'products are append-only'); END;
CREATE TRIGGER IF NOT EXISTS products_no_delete BEFORE DELETE ON products
    BEGIN SELECT RAISE(ABORT, 'products are append-only'); END;
CREATE TRIGGER IF NOT EXISTS batches_no_update BEFORE UPDATE ON batches
    BEGIN SELECT RAISE(ABORT, 'batches are append-only'); END;
CREATE TRIGGER IF NOT EXISTS batches_no_delete BEFORE DELETE ON batches
    BEGIN SELECT RAISE(ABORT, 'batches are append-only'); END;
";

/// Adds the `register` column (issue 17: which register pair a row's
/// register columns hold; 0 = services, the combined pool) to a ledger made
/// before it, in place: every old row reads 0, which is what it was. SQLite
/// stores 0 and 1 in the record header alone, so the column costs one byte
/// a row. Runs before the start audit, which reads it.
pub(crate) fn add_register_column(conn: &Connection) -> Result<()> {
    let has: bool = conn
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('journal') WHERE name = 'register'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(storage)?
        > 0;
    if !has {
        conn.execute_batch("ALTER TABLE journal ADD COLUMN register INTEGER NOT NULL DEFAULT 0")
            .map_err(storage)?;
    }
    Ok(())
}

/// Maps a SQLite failure to the ledger's storage error.
pub(crate) fn storage(e: rusqlite::Error) -> LedgerError {
    LedgerError::Storage(e.to_string())
}

/// Opens the database file with the ledger's settings; creates the file only
/// when `create`.
pub(crate) fn connect(path: &Path, create: bool) -> Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    } else if !path.exists() {
        return Err(LedgerError::Storage(format!(
            "no ledger at {}",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(path, flags).map_err(storage)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(storage)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(storage)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LedgerError::Storage(format!(
            "cannot switch to WAL (journal_mode={mode})"
        )));
    }
    // No mmap in steady state: mapped pages of a large ledger would count in
    // the daemon's resident set for as long as it runs. The audit maps the
    // file for its one pass only (see `set_mmap`).
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA cache_size=-16384; PRAGMA mmap_size=0;")
        .map_err(storage)?;
    Ok(conn)
}

/// Maps the database file (`on`: up to 4 GiB) or unmaps it. The audit maps
/// it to spare a copy of every page it streams and unmaps it after.
pub(crate) fn set_mmap(conn: &Connection, on: bool) -> Result<()> {
    let size: i64 = if on { 1 << 32 } else { 0 };
    conn.query_row(&format!("PRAGMA mmap_size={size}"), [], |_| Ok(()))
        .optional()
        .map(|_| ())
        .map_err(storage)
}

/// Opens a read-only connection for lookups; the writer keeps the only
/// read-write one.
pub(crate) fn open_reader(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(storage)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(storage)?;
    Ok(conn)
}

/// Whether the database already holds a ledger (a journal table with rows).
pub(crate) fn has_rows(conn: &Connection) -> Result<bool> {
    let table: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='journal'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(storage)?;
    if table.is_none() {
        return Ok(false);
    }
    let any: Option<i64> = conn
        .query_row("SELECT seq FROM journal LIMIT 1", [], |r| r.get(0))
        .optional()
        .map_err(storage)?;
    Ok(any.is_some())
}

/// Creates the tables and triggers and records the schema version and meter id.
pub(crate) fn create(conn: &Connection, meter_id: &str) -> Result<()> {
    conn.execute_batch(TABLES).map_err(storage)?;
    add_register_column(conn)?;
    conn.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?1), ('meter_id', ?2)",
        rusqlite::params![SCHEMA_VERSION, meter_id],
    )
    .map_err(storage)?;
    Ok(())
}

/// Re-creates any missing table or append-only trigger of an existing
/// ledger (an attacker who dropped them does not keep the door open).
pub(crate) fn ensure(conn: &Connection) -> Result<()> {
    conn.execute_batch(TABLES).map_err(storage)?;
    add_register_column(conn)?;
    conn.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?1)",
        [SCHEMA_VERSION],
    )
    .map_err(storage)?;
    Ok(())
}

/// Reads a text value from `meta`.
pub(crate) fn meta_text(conn: &Connection, key: &str) -> Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key=?1", [key], |r| {
        r.get::<_, Option<String>>(0)
    })
    .optional()
    .map(Option::flatten)
    .map_err(storage)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the child this test runs under strace: the directory whose
    /// ledger it commits to.
    const PROBE_DIR: &str = "METERD_SYNC_PROBE_DIR";

    /// A commit syncs with fdatasync(2), never fsync(2) (`.cargo/config.toml`
    /// builds SQLite with HAVE_FDATASYNC): fsync also writes the WAL's inode
    /// for its new mtime, a journal commit a sale on a journaled ext4. Seen
    /// the way an operator would, with strace on a real commit; fails if the
    /// build loses the flag.
    #[test]
    fn a_commit_syncs_its_data_not_its_inode() {
        if let Some(dir) = std::env::var_os(PROBE_DIR) {
            let conn = connect(&Path::new(&dir).join("ledger.sqlite"), true).unwrap();
            conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
                .unwrap();
            return;
        }
        let have_strace = std::process::Command::new("strace")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !have_strace {
            // CI installs strace (tests/packages): a skip there would be a
            // test that cannot fail.
            assert!(std::env::var_os("CI").is_none(), "CI: strace missing");
            eprintln!("SKIPPED a_commit_syncs_its_data_not_its_inode: no strace");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("trace");
        let out = std::process::Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=fsync,fdatasync", "-o"])
            .arg(&trace)
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "ledger::schema::tests::a_commit_syncs_its_data_not_its_inode",
            ])
            .env(PROBE_DIR, dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let trace = std::fs::read_to_string(&trace).unwrap();
        let calls = |name: &str| {
            trace
                .lines()
                .filter(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .is_some_and(|c| c.starts_with(&format!("{name}(")))
                })
                .count()
        };
        assert!(calls("fdatasync") >= 1, "no fdatasync in:\n{trace}");
        assert_eq!(calls("fsync"), 0, "fsync in:\n{trace}");
    }
}
