//! The durable commit a lone postmark cannot do without, as a one-row
//! batch is written: shared by `rawcommit` (the commit alone, in a loop)
//! and `lonemeter` (the commit inside a minimal meter), so both measure the
//! same transaction.
//!
//! A scratch SQLite file in a temporary directory of the caller's choice
//! (put it on the meter's state filesystem: the fsync is the
//! filesystem's), with the ledger's settings (WAL, `synchronous=FULL`):
//! each commit writes a journal row (~300 bytes) with a unique request id,
//! its product and a batch row. The directory vanishes with the value.

use std::path::Path;

use rusqlite::{params, Connection};

pub struct ScratchLedger {
    conn: Connection,
    seq: i64,
    // Dropped after `conn` (fields drop in order): the file is closed first.
    _dir: tempfile::TempDir,
}

impl ScratchLedger {
    pub fn open(dir: &Path) -> Result<ScratchLedger, Box<dyn std::error::Error>> {
        let scratch = tempfile::tempdir_in(dir)?;
        let conn = Connection::open(scratch.path().join("commit.sqlite"))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if mode != "wal" {
            return Err(format!("journal_mode is {mode}, not wal").into());
        }
        conn.execute_batch(
            "PRAGMA synchronous=FULL; PRAGMA cache_size=-16384;
             CREATE TABLE journal(seq INTEGER PRIMARY KEY, time INTEGER NOT NULL,
                 request_id TEXT UNIQUE, registers BLOB NOT NULL, digest BLOB NOT NULL,
                 hash BLOB NOT NULL);
             CREATE TABLE products(seq INTEGER PRIMARY KEY, input_digest BLOB NOT NULL,
                 product BLOB NOT NULL);
             CREATE TABLE batches(first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL,
                 head BLOB NOT NULL, seal BLOB NOT NULL, time INTEGER NOT NULL);",
        )?;
        Ok(ScratchLedger {
            conn,
            seq: 0,
            _dir: scratch,
        })
    }

    /// Commits the next row with `product`, durably (one fsync of the WAL).
    pub fn commit(&mut self, product: &[u8]) -> rusqlite::Result<()> {
        let registers = [7u8; 80];
        let digest = [9u8; 48];
        self.seq += 1;
        let seq = self.seq;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.prepare_cached(
            "INSERT INTO journal(seq, time, request_id, registers, digest, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            seq,
            seq * 7,
            format!("c/1000/req-{seq}"),
            &registers[..],
            &digest[..],
            &digest[..]
        ])?;
        tx.prepare_cached("INSERT INTO products(seq, input_digest, product) VALUES (?1, ?2, ?3)")?
            .execute(params![seq, &digest[..], product])?;
        tx.prepare_cached(
            "INSERT INTO batches(first_seq, last_seq, head, seal, time) VALUES (?1, ?1, ?2, x'', ?3)",
        )?
        .execute(params![seq, &digest[..], seq * 7])?;
        tx.commit()
    }
}
