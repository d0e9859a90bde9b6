//! Writing a sequenced batch: its rows, products and batch row in one
//! `BEGIN IMMEDIATE` transaction; the COMMIT (WAL, `synchronous=FULL`) is
//! the fsync after which its products may leave. A row's `prev_hash` is
//! stored empty (see `scan::stored_prev`).

use rusqlite::{params, Connection, TransactionBehavior};

use super::rows::to_sql;
use super::schema::storage;
use super::sequencer::Sequenced;
use super::Result;

/// What a row stores in `prev_hash` since issue 14 (bytes a row): an empty
/// blob, the column kept so older ledgers and tools read as before.
const EMPTY_PREV: &[u8] = &[];

/// Writes `batch` durably, or nothing of it.
pub(crate) fn write_batch(conn: &mut Connection, batch: &Sequenced) -> Result<()> {
    let (Some(first), Some(last)) = (batch.rows.first(), batch.rows.last()) else {
        return Ok(());
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(storage)?;
    {
        let mut journal = tx
            .prepare_cached(
                "INSERT INTO journal(seq, time, kind, service, request_id, credit, debit, ascending,
                 descending, control_total, pieces, service_count, product_digest, note, prev_hash, hash,
                 register)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17)",
            )
            .map_err(storage)?;
        let mut products = tx
            .prepare_cached("INSERT INTO products(seq, input_digest, product) VALUES (?1,?2,?3)")
            .map_err(storage)?;
        for r in &batch.rows {
            let pair = r.registers.pair(r.fund);
            journal
                .execute(params![
                    to_sql(r.seq),
                    r.time,
                    r.kind,
                    r.service,
                    r.request_id,
                    to_sql(r.credit),
                    to_sql(r.debit),
                    to_sql(pair.ascending.0),
                    to_sql(pair.descending.0),
                    to_sql(pair.control_total.0),
                    to_sql(pair.pieces),
                    to_sql(r.service_count),
                    &r.product_digest[..],
                    r.note,
                    // prev_hash stored empty: it is the previous row's
                    // hash, derived by every reader (48 bytes a row).
                    EMPTY_PREV,
                    &r.hash[..],
                    r.fund.id(),
                ])
                .map_err(storage)?;
            products
                .execute(params![to_sql(r.seq), &r.input_digest[..], &r.product])
                .map_err(storage)?;
        }
        tx.prepare_cached(
            "INSERT INTO batches(first_seq, last_seq, nv, head, seal, time) VALUES (?1,?2,?3,?4,?5,?6)",
        )
        .and_then(|mut s| {
            s.execute(params![
                to_sql(first.seq),
                to_sql(last.seq),
                to_sql(batch.tip.nv),
                &batch.tip.head[..],
                &batch.seal[..],
                batch.time
            ])
        })
        .map_err(storage)?;
    }
    // On failure `tx` drops here: rolled back, nothing charged.
    tx.commit().map_err(storage)
}
