//! Read-only queries for services that rebuild their own registers from
//! chained rows (e.g. the credit lines): rows of one service, with their
//! products checked against the digests the hash chain vouches for.
//!
//! Kept apart from the writer and the audit: it reads, never appends, and
//! runs on the ledger's separate reader connection.

use rusqlite::Connection;

use super::schema::storage;
use super::{chain, LedgerError, Result};
use crate::service::Service;

/// Every Debit or other row charged to `service`, as (seq, note, product), in seq order.
pub(crate) fn service_products_in(
    conn: &Connection,
    service: Service,
) -> Result<Vec<(u64, String, Vec<u8>)>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT j.seq, j.note, j.product_digest, p.product
             FROM journal j JOIN products p ON p.seq = j.seq WHERE j.service = ?1 ORDER BY j.seq",
        )
        .map_err(storage)?;
    let rows = stmt
        .query_map([service.code()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })
        .map_err(storage)?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, note, digest, product) = row.map_err(storage)?;
        if chain::sha384(&product).as_slice() != digest.as_slice() {
            return Err(LedgerError::Storage(format!(
                "product of row {seq} does not match its digest"
            )));
        }
        let seq = u64::try_from(seq)
            .map_err(|_| LedgerError::Storage(format!("negative row number {seq}")))?;
        out.push((seq, note, product));
    }
    Ok(out)
}
