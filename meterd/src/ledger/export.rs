//! Rows leaving the meter: the segment a status report brings to the
//! authority ([`meter_pki::segment`]), read back exactly as stored.
//!
//! Read on a connection of its own, opened for the export and closed after
//! it, in chunks of [`CHUNK_ROWS`] rows, each chunk its own read
//! transaction: an export of a million rows neither holds the reader that
//! sales look their keys up on nor pins the WAL for its whole length (rows
//! at or below a published state never change, so chunked reads agree).
//! Products are fetched only for the rows whose product travels.
//!
//! Nothing is checked here beyond what the format needs (rows contiguous, a
//! travelling product matching its row's digest): the segment says what the
//! ledger holds, and the authority re-derives every hash and register.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Row};

use meter_pki::segment::{self, Encoder, Summary};

use super::chain::{self, RowFields};
use super::scan::{blob48, int, row_fields};
use super::schema::{self, storage};
use super::{Digest, LedgerError, Result};

/// Rows read per query.
pub(crate) const CHUNK_ROWS: i64 = 4096;
/// Bytes handed to the sink at a time (about).
const CHUNK_BYTES: usize = 256 * 1024;

/// What an export produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// First row.
    pub first_seq: u64,
    /// Last row.
    pub last_seq: u64,
    /// Hash of row `first_seq - 1` (the genesis link for row 1).
    pub prev: Digest,
    /// Digest, length and rows of the segment.
    pub summary: Summary,
}

/// Streams rows `after < seq <= upto` of the ledger at `path` as a segment,
/// handing its bytes to `sink` in chunks; `sink` returns false to stop (the
/// export then returns `None`).
pub(crate) fn export(
    path: &Path,
    meter_id: &str,
    after: u64,
    upto: u64,
    sink: &mut dyn FnMut(Vec<u8>) -> bool,
) -> Result<Option<Exported>> {
    if upto < after {
        return Err(LedgerError::Invalid(format!(
            "segment rows {after}..{upto}: the end is before the start"
        )));
    }
    let conn = schema::open_reader(path)?;
    let prev = match after {
        0 => chain::genesis_prev(meter_id),
        n => stored_hash(&conn, n)?,
    };
    let first_seq = after + 1;
    let build = |e: segment::SegmentError| LedgerError::Storage(e.to_string());
    let mut enc = Encoder::new(meter_id, first_seq, upto, &prev).map_err(build)?;
    let mut from = after;
    while from < upto {
        let read = chunk(&conn, from, upto, &mut enc)?;
        if read == from {
            return Err(LedgerError::Storage(format!(
                "row {} is missing from the journal",
                from + 1
            )));
        }
        from = read;
        if enc.buffered() >= CHUNK_BYTES && !sink(enc.take()) {
            return Ok(None);
        }
    }
    let (tail, summary) = enc.finish().map_err(build)?;
    if !sink(tail) {
        return Ok(None);
    }
    Ok(Some(Exported {
        first_seq,
        last_seq: upto,
        prev,
        summary,
    }))
}

fn stored_hash(conn: &Connection, seq: u64) -> Result<Digest> {
    let seq_i = to_i64(seq)?;
    let hash: Option<Vec<u8>> = conn
        .query_row("SELECT hash FROM journal WHERE seq = ?1", [seq_i], |r| {
            r.get(0)
        })
        .optional()
        .map_err(storage)?;
    hash.and_then(|h| Digest::try_from(h.as_slice()).ok())
        .ok_or_else(|| LedgerError::Storage(format!("row {seq} has no stored hash")))
}

fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| LedgerError::Invalid(format!("row number {v} out of range")))
}

/// Encodes the rows after `from` (up to [`CHUNK_ROWS`], not past `upto`);
/// returns the last seq read (`from` when none was).
fn chunk(conn: &Connection, from: u64, upto: u64, enc: &mut Encoder) -> Result<u64> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, time, kind, service, request_id, credit, debit, ascending, descending,
             control_total, pieces, service_count, product_digest, note, hash, register
             FROM journal WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(storage)?;
    let mut product_stmt = conn
        .prepare_cached("SELECT product FROM products WHERE seq = ?1")
        .map_err(storage)?;
    let mut q = stmt
        .query([to_i64(from)?, to_i64(upto)?, CHUNK_ROWS])
        .map_err(storage)?;
    let mut last = from;
    while let Some(r) = q.next().map_err(storage)? {
        let (f, hash) = fields(r)?;
        let product: Option<Vec<u8>> = if segment::product_required(f.kind, f.service, f.request_id)
        {
            let p: Option<Vec<u8>> = product_stmt
                .query_row([to_i64(f.seq)?], |r| r.get(0))
                .optional()
                .map_err(storage)?;
            Some(p.ok_or_else(|| {
                LedgerError::Storage(format!("row {} has no stored product", f.seq))
            })?)
        } else {
            None
        };
        enc.row(&f, hash, product.as_deref())
            .map_err(|e| LedgerError::Storage(e.to_string()))?;
        last = f.seq;
    }
    Ok(last)
}

/// The hashed fields of a journal row and its stored hash.
fn fields<'a>(r: &'a Row<'_>) -> Result<(RowFields<'a>, &'a Digest)> {
    (|| Some((row_fields(r, 15)?, blob48(r, 14)?)))().ok_or_else(|| {
        let seq = int(r, 0).unwrap_or(0);
        LedgerError::Storage(format!("row {seq}: malformed columns"))
    })
}
