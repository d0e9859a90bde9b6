//! The attacker's ledger rewriting for the `attack_rewrite*` tests: a raw
//! SQLite connection with the append-only triggers dropped, and the chain
//! recomputed with the ledger's public canonical encoding
//! (`meter_pki::ledger_format`), as anyone with the file and the format
//! can.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use meter_pki::ledger_format::{genesis_prev, row_hash, seal_digest_v2, sha384, RowFields};
use meterd::housing::soft::SoftwareHousingControl;
use meterd::housing::Housing;
use rusqlite::{params, Connection};

/// The attacker's connection: triggers dropped.
pub fn attacker(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    for t in [
        "journal_no_update",
        "journal_no_delete",
        "products_no_update",
        "products_no_delete",
        "batches_no_update",
        "batches_no_delete",
        "checkpoints_no_update",
    ] {
        c.execute_batch(&format!("DROP TRIGGER IF EXISTS {t}"))
            .unwrap();
    }
    c
}

pub fn last_seq(c: &Connection) -> i64 {
    c.query_row("SELECT MAX(seq) FROM journal", [], |r| r.get(0))
        .unwrap()
}

/// Recomputes every row hash and link from row 1 and the batch heads, and
/// drops the checkpoints (signed: easier deleted than forged). Returns the
/// last batch and the digest its seal must sign (at its counter value).
pub fn rechain(c: &Connection, meter_id: &str) -> (i64, [u8; 48]) {
    let mut prev = genesis_prev(meter_id);
    let mut buf = Vec::new();
    for seq in 1..=last_seq(c) {
        let hash = c
            .query_row(
                "SELECT seq, time, kind, service, request_id, credit, debit, ascending, \
                 descending, control_total, pieces, service_count, product_digest, note, \
                 register FROM journal WHERE seq=?1",
                [seq],
                |r| {
                    let request_id: Option<String> = r.get(4)?;
                    let digest: Vec<u8> = r.get(12)?;
                    let note: String = r.get(13)?;
                    let u = |i: usize| r.get::<_, i64>(i).map(|v| v as u64);
                    let digest: [u8; 48] = digest.try_into().unwrap();
                    let f = RowFields {
                        seq: u(0)?,
                        time: r.get(1)?,
                        kind: r.get(2)?,
                        service: r.get(3)?,
                        request_id: request_id.as_deref().map(str::as_bytes),
                        credit: u(5)?,
                        debit: u(6)?,
                        ascending: u(7)?,
                        descending: u(8)?,
                        control_total: u(9)?,
                        pieces: u(10)?,
                        service_count: u(11)?,
                        product_digest: &digest,
                        note: note.as_bytes(),
                        register: r.get(14)?,
                    };
                    f.encode(&mut buf).unwrap();
                    Ok(row_hash(&prev, &buf))
                },
            )
            .unwrap();
        c.execute(
            "UPDATE journal SET prev_hash=?1, hash=?2 WHERE seq=?3",
            params![&prev[..], &hash[..], seq],
        )
        .unwrap();
        prev = hash;
    }
    c.execute_batch(
        "UPDATE batches SET head = (SELECT hash FROM journal WHERE seq = batches.last_seq);
         DELETE FROM checkpoints;",
    )
    .unwrap();
    let (batch, nv, head): (i64, i64, Vec<u8>) = c
        .query_row(
            "SELECT batch, nv, head FROM batches ORDER BY batch DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    (
        batch,
        // Layout v2 (every test ledger is made by v2 code): the explicit
        // seal over the epoch in force (the batch's `nv` column) and the head.
        seal_digest_v2(meter_id, nv as u64, &head.try_into().unwrap()),
    )
}

/// Rechains (see `rewrite::rechain`) and signs the last batch's seal
/// again with the identity key.
pub fn rechain_and_reseal(c: &Connection, meter_id: &str, tpm: &SoftwareHousingControl) {
    let (batch, digest) = rechain(c, meter_id);
    let seal = tpm
        .housing()
        .sign_digest(meterd::meter::IDENTITY_KEY, &digest)
        .unwrap();
    c.execute(
        "UPDATE batches SET seal=?1 WHERE batch=?2",
        params![&seal[..], batch],
    )
    .unwrap();
}

/// Appends a row after the last (registers following from it, `credit`
/// added), alone in a new batch of the epoch in force (the counter does not
/// move: a batch at counter + 1 would need an epoch row, and the chain
/// would be caught for that instead of for the row); the caller rechains
/// and reseals.
pub fn append(c: &Connection, (kind, note, key, product, credit): (u8, &str, &str, &[u8], i64)) {
    let seq = last_seq(c) + 1;
    c.execute(
        "INSERT INTO journal(seq, time, kind, service, request_id, credit, debit, ascending,
            descending, control_total, pieces, service_count, product_digest, note,
            prev_hash, hash)
         SELECT ?1, time + 1, ?2, 0, ?3, ?4, 0, ascending, descending + ?4,
            control_total + ?4, pieces, 0, ?5, ?6, x'', x''
         FROM journal WHERE seq = ?1 - 1",
        params![seq, kind, key, credit, &sha384(product)[..], note],
    )
    .unwrap();
    c.execute(
        "INSERT INTO products(seq, input_digest, product) VALUES (?1, ?2, ?3)",
        params![seq, &[0u8; 48][..], product],
    )
    .unwrap();
    let nv: i64 = c
        .query_row("SELECT MAX(nv) FROM batches", [], |r| r.get(0))
        .unwrap();
    c.execute(
        "INSERT INTO batches(first_seq, last_seq, nv, head, seal, time)
         SELECT ?1, ?1, ?2, x'', x'', time FROM journal WHERE seq = ?1",
        params![seq, nv],
    )
    .unwrap();
}
