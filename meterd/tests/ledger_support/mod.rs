//! Shared helpers of the ledger integration tests: software sealers,
//! entries, and an attacker's view of the database (raw SQLite, triggers
//! dropped, the documented canonical encoding re-implemented here).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use meterd::ledger::{
    AuditReport, Entry, EntryKind, Fund, Key, Ledger, Sealer, SoftwareSealer, SoftwareSealerControl,
};
use meterd::money::Amount;
use meterd::service::Service;
use rusqlite::Connection;
use sha2::{Digest as _, Sha384};

pub const KEY_A: [u8; 48] = [0x11; 48];
pub const KEY_B: [u8; 48] = [0x22; 48];
pub const METER: &str = "meter-0001";

pub fn sealer(key: &[u8; 48], counter: u64) -> (Box<dyn Sealer>, SoftwareSealerControl) {
    let (s, c) = SoftwareSealer::new(key, counter).unwrap();
    (Box::new(s), c)
}

pub fn db(dir: &Path) -> PathBuf {
    dir.join("ledger.db")
}

/// Creates a ledger with key A and the counter starting at 5.
pub fn create(path: &Path) -> (Ledger, SoftwareSealerControl) {
    let (s, c) = sealer(&KEY_A, 5);
    let (l, report) = Ledger::open(path, s, METER, true).unwrap();
    assert_eq!(report.verdict, meterd::ledger::Verdict::Clean);
    assert_eq!(report.ledger_nv, 6);
    assert_eq!(c.counter(), 6);
    (l, c)
}

/// Reopens with key A and the given counter value.
pub fn reopen(path: &Path, counter: u64) -> (Ledger, AuditReport, SoftwareSealerControl) {
    let (s, c) = sealer(&KEY_A, counter);
    let (l, r) = Ledger::open(path, s, METER, false).unwrap();
    (l, r, c)
}

pub fn credit(id: &str, amount: u64) -> Entry {
    Entry {
        kind: EntryKind::Credit,
        service: None,
        key: Some(Key::meter("voucher", id)),
        input_digest: digest(id.as_bytes()),
        credit: Amount(amount),
        debit: Amount::ZERO,
        product: format!("voucher {id}").into_bytes(),
        note: String::new(),
        fund: Fund::Services,
    }
}

pub fn debit(id: &str, amount: u64, input: &[u8]) -> Entry {
    Entry {
        kind: EntryKind::Debit,
        service: Some(Service::Postmark),
        key: Some(key(id)),
        input_digest: digest(input),
        credit: Amount::ZERO,
        debit: Amount(amount),
        product: format!("token for {id} over {}", hex::encode(input)).into_bytes(),
        note: String::new(),
        fund: Fund::Services,
    }
}

pub fn event(kind: EntryKind, note: &str, product: &[u8]) -> Entry {
    Entry {
        kind,
        service: None,
        key: None,
        input_digest: [0; 48],
        credit: Amount::ZERO,
        debit: Amount::ZERO,
        product: product.to_vec(),
        note: note.to_owned(),
        fund: Fund::Services,
    }
}

/// A caller's key (uid 0) for the test id `id`.
pub fn key(id: &str) -> Key {
    Key::caller(0, id).unwrap()
}

pub fn digest(b: &[u8]) -> [u8; 48] {
    Sha384::digest(b).into()
}

/// A connection with the append-only triggers dropped, as an attacker has.
pub fn attacker(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "DROP TRIGGER IF EXISTS journal_no_update; DROP TRIGGER IF EXISTS journal_no_delete;
         DROP TRIGGER IF EXISTS batches_no_update; DROP TRIGGER IF EXISTS batches_no_delete;",
    )
    .unwrap();
    c
}

/// The documented canonical row bytes, re-implemented from the module doc.
pub fn canonical(c: &Connection, seq: i64) -> Vec<u8> {
    c.query_row(
        "SELECT seq, time, kind, service, request_id, credit, debit, ascending, descending,
         control_total, pieces, service_count, product_digest, note, register
         FROM journal WHERE seq=?1",
        [seq],
        |r| {
            let mut b = Vec::new();
            b.extend_from_slice(&r.get::<_, i64>(0)?.to_be_bytes());
            b.extend_from_slice(&r.get::<_, i64>(1)?.to_be_bytes());
            b.push(r.get::<_, u8>(2)?);
            b.push(r.get::<_, u8>(3)?);
            match r.get::<_, Option<String>>(4)? {
                None => b.push(0),
                Some(id) => {
                    b.push(1);
                    b.push(id.len() as u8);
                    b.extend_from_slice(id.as_bytes());
                }
            }
            for i in 5..12 {
                b.extend_from_slice(&r.get::<_, i64>(i)?.to_be_bytes());
            }
            b.extend_from_slice(&r.get::<_, Vec<u8>>(12)?);
            let note = r.get::<_, String>(13)?;
            b.push(note.len() as u8);
            b.extend_from_slice(note.as_bytes());
            // The register byte, only when not services (issue 17).
            let register = r.get::<_, u8>(14)?;
            if register != 0 {
                b.push(register);
            }
            Ok(b)
        },
    )
    .unwrap()
}

pub fn stored_hash(c: &Connection, seq: i64, col: &str) -> Vec<u8> {
    c.query_row(
        &format!("SELECT {col} FROM journal WHERE seq=?1"),
        [seq],
        |r| r.get(0),
    )
    .unwrap()
}

/// SHA-384(prev ‖ canonical bytes of row `seq`).
pub fn recompute(c: &Connection, seq: i64, prev: &[u8]) -> Vec<u8> {
    let mut h = Sha384::new();
    h.update(prev);
    h.update(canonical(c, seq));
    h.finalize().to_vec()
}

/// Copies the database (and its -wal if present) into `to`.
pub fn copy_db(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    let wal_from = wal(from);
    let wal_to = wal(to);
    let _ = std::fs::remove_file(&wal_to);
    if wal_from.exists() {
        std::fs::copy(&wal_from, &wal_to).unwrap();
    }
}

pub fn wal(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}
