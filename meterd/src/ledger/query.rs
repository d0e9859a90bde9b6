//! Read-only queries for reports, the watchdogs and services that rebuild
//! their own registers from chained rows (credit lines), served by the ledger's
//! reader connection (WAL readers never wait for a group commit).
//!
//! Kept apart from the writer: nothing here changes the ledger, and every
//! query is bounded by a row number taken from a published state, so the
//! answer is consistent with that state even while commits go on.

use rusqlite::{Connection, OptionalExtension};

use super::schema::storage;
use super::{chain, LedgerError, Result};
use crate::money::Amount;
use crate::service::Service;

/// Which rows [`rows_in`] returns with their product: every row of one of
/// `kinds`, Event rows noted one of `event_notes`, Debit rows of one of
/// `debit_services` or noted one of `debit_notes`. Rows that move money
/// where a plain sale would not (a credit on any row, a debit on a row
/// that is not a Debit) come too, without their product. The ledger knows
/// nothing of what the rows mean: the caller names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowFilter {
    /// Kinds returned whole (product included).
    pub kinds: Vec<super::EntryKind>,
    /// Notes of the Event rows returned whole.
    pub event_notes: Vec<String>,
    /// Services of the Debit rows returned whole.
    pub debit_services: Vec<Service>,
    /// Notes of the Debit rows returned whole.
    pub debit_notes: Vec<String>,
}

/// One row as [`rows_in`] returns it. Kind and service are the raw codes
/// (the chain audit judges unknown ones; a reader must not fail on them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilteredRow {
    /// Sequence number.
    pub seq: u64,
    /// Row time, Unix ms.
    pub time_ms: i64,
    /// [`super::EntryKind`] code.
    pub kind: u8,
    /// [`Service`] code, 0 for none.
    pub service: u8,
    /// Note.
    pub note: String,
    /// Stored request key (`m/<what>/<detail>`, `c/<uid>/<id>`, or a
    /// schema-1 raw key), if any.
    pub key: Option<String>,
    /// Credit.
    pub credit: u64,
    /// Debit.
    pub debit: u64,
    /// Descending register after the row.
    pub descending: u64,
    /// The register pair the row moves ([`super::Fund`] id: 0 services, 1
    /// postage), which the audit checks against what the row holds.
    pub register: u8,
    /// The product, for rows the filter names (`None` for rows returned
    /// only because they move money, or when the products table has no
    /// row for it).
    pub product: Option<Vec<u8>>,
    /// Whether the product is the one the chain vouches for (its SHA-384
    /// is the row's product digest); `true` when no product is returned.
    pub product_matches: bool,
}

/// Rows `after < seq <= upto` that `filter` names or that move money
/// outside a sale (see [`RowFilter`]), in seq order, at most `limit`: the
/// caller pages by passing the last seq it got as the next `after`.
pub(crate) fn rows_in(
    conn: &Connection,
    after: u64,
    upto: u64,
    limit: usize,
    filter: &RowFilter,
) -> Result<Vec<FilteredRow>> {
    let list = |n: usize, first: usize| -> String {
        if n == 0 {
            return "NULL".into();
        }
        (first..first + n)
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut params: Vec<rusqlite::types::Value> = vec![
        to_i64(after)?.into(),
        to_i64(upto)?.into(),
        i64::try_from(limit).unwrap_or(i64::MAX).into(),
    ];
    let kinds = list(filter.kinds.len(), params.len() + 1);
    params.extend(filter.kinds.iter().map(|k| i64::from(*k as u8).into()));
    let event_notes = list(filter.event_notes.len(), params.len() + 1);
    params.extend(filter.event_notes.iter().map(|n| n.clone().into()));
    let services = list(filter.debit_services.len(), params.len() + 1);
    params.extend(
        filter
            .debit_services
            .iter()
            .map(|s| i64::from(s.code()).into()),
    );
    let debit_notes = list(filter.debit_notes.len(), params.len() + 1);
    params.extend(filter.debit_notes.iter().map(|n| n.clone().into()));
    let (event, debit) = (super::EntryKind::Event as u8, super::EntryKind::Debit as u8);
    let named = format!(
        "(j.kind IN ({kinds}) OR (j.kind = {event} AND j.note IN ({event_notes}))
          OR (j.kind = {debit} AND (j.service IN ({services}) OR j.note IN ({debit_notes}))))"
    );
    let sql = format!(
        "SELECT j.seq, j.time, j.kind, j.service, j.note, j.request_id, j.credit, j.debit,
                j.descending, j.product_digest, CASE WHEN {named} THEN p.product END,
                j.register
         FROM journal j LEFT JOIN products p ON p.seq = j.seq
         WHERE j.seq > ?1 AND j.seq <= ?2
           AND ({named} OR j.credit != 0 OR (j.kind != {debit} AND j.debit != 0))
         ORDER BY j.seq LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(storage)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(params), |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, Vec<u8>>(9)?,
                r.get::<_, Option<Vec<u8>>>(10)?,
                r.get::<_, i64>(11)?,
            ))
        })
        .map_err(storage)?;
    let mut out = Vec::new();
    for row in rows {
        let (
            seq,
            time_ms,
            kind,
            service,
            note,
            key,
            credit,
            debit,
            descending,
            digest,
            product,
            register,
        ) = row.map_err(storage)?;
        let product_matches = product
            .as_ref()
            .is_none_or(|p| chain::sha384(p).as_slice() == digest.as_slice());
        out.push(FilteredRow {
            seq: to_u64(seq)?,
            time_ms,
            // Codes out of range read as 0 (no such kind or service).
            kind: u8::try_from(kind).unwrap_or(0),
            service: u8::try_from(service).unwrap_or(0),
            note,
            key,
            // Registers are stored as the i64 bit pattern of the u64.
            credit: credit as u64,
            debit: debit as u64,
            descending: descending as u64,
            // An id out of range reads as 255: no pair, judged as such.
            register: u8::try_from(register).unwrap_or(u8::MAX),
            product,
            product_matches,
        });
    }
    Ok(out)
}

/// What was sold and credited over a span of rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// (pieces, amount debited) per service, indexed by [`Service::index`].
    pub per_service: [(u64, Amount); Service::ALL.len()],
    /// Funds credited.
    pub credited: Amount,
}

/// Usage over rows `after < seq <= upto`.
pub(crate) fn usage_in(conn: &Connection, after: u64, upto: u64) -> Result<Usage> {
    let (after, upto) = (to_i64(after)?, to_i64(upto)?);
    let mut usage = Usage::default();
    let mut stmt = conn
        .prepare_cached(
            "SELECT service, COUNT(*), SUM(debit) FROM journal
             WHERE seq > ?1 AND seq <= ?2 AND service != 0 GROUP BY service",
        )
        .map_err(storage)?;
    let rows = stmt
        .query_map([after, upto], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(storage)?;
    for row in rows {
        let (service, count, debit) = row.map_err(storage)?;
        let service = u8::try_from(service)
            .ok()
            .and_then(Service::from_code)
            .ok_or_else(|| LedgerError::Storage(format!("unknown service code {service}")))?;
        usage.per_service[service.index()] = (to_u64(count)?, Amount(to_u64(debit)?));
    }
    let credited: i64 = conn
        // A Debit row's credit is a current-account charge booked as
        // credit = debit (see `reserve`), not funds credited.
        .prepare_cached(
            "SELECT COALESCE(SUM(credit), 0) FROM journal WHERE seq > ?1 AND seq <= ?2 AND kind != ?3",
        )
        .and_then(|mut s| {
            s.query_row(
                [after, upto, i64::from(super::EntryKind::Debit as u8)],
                |r| r.get(0),
            )
        })
        .map_err(storage)?;
    usage.credited = Amount(to_u64(credited)?);
    Ok(usage)
}

/// The last row of `service` at or before `upto`: (seq, time in Unix ms,
/// product), its product checked against the digest the chain holds.
pub(crate) fn last_of_service_in(
    conn: &Connection,
    service: Service,
    upto: u64,
) -> Result<Option<(u64, i64, Vec<u8>)>> {
    one_of_service(
        conn,
        "j.seq <= ?2 ORDER BY j.seq DESC LIMIT 1",
        service,
        to_i64(upto)?,
    )
}

/// The row that made `service`'s count reach `count` (the `count`-th piece
/// of that service; e.g. status report number `count`): (seq, time in Unix
/// ms, product), its product checked against the digest the chain holds.
pub(crate) fn nth_of_service_in(
    conn: &Connection,
    service: Service,
    count: u64,
) -> Result<Option<(u64, i64, Vec<u8>)>> {
    one_of_service(
        conn,
        "j.service_count = ?2 ORDER BY j.seq LIMIT 1",
        service,
        to_i64(count)?,
    )
}

/// One row of `service` chosen by `rest` (an SQL condition on `?2` and the
/// order): (seq, time, product), its product checked against its digest.
fn one_of_service(
    conn: &Connection,
    rest: &str,
    service: Service,
    arg: i64,
) -> Result<Option<(u64, i64, Vec<u8>)>> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT j.seq, j.time, j.product_digest, p.product FROM journal j
             JOIN products p ON p.seq = j.seq WHERE j.service = ?1 AND {rest}"
        ))
        .and_then(|mut s| {
            s.query_row([i64::from(service.code()), arg], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .optional()
        })
        .map_err(storage)?;
    let Some((seq, time, digest, product)) = row else {
        return Ok(None);
    };
    super::rows::check_product(seq, &digest, &product)?;
    Ok(Some((to_u64(seq)?, time, product)))
}

/// Time (Unix ms) of the last row, if any.
pub(crate) fn last_time_in(conn: &Connection) -> Result<Option<i64>> {
    conn.prepare_cached("SELECT time FROM journal ORDER BY seq DESC LIMIT 1")
        .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
        .map_err(storage)
}

/// (time in Unix ms, ascending register) of row `seq`.
pub(crate) fn time_and_ascending_in(conn: &Connection, seq: u64) -> Result<Option<(i64, Amount)>> {
    let seq = to_i64(seq)?;
    let v: Option<(i64, i64)> = conn
        .prepare_cached("SELECT time, ascending FROM journal WHERE seq = ?1")
        .and_then(|mut s| {
            s.query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(storage)?;
    // Registers are stored as the i64 bit pattern of the u64 (see the writer).
    Ok(v.map(|(t, a)| (t, Amount(a as u64))))
}

/// (seq, product) of the last row with `after < seq <= upto` whose note is
/// `note`, its product checked against the digest the chain holds. The range
/// keeps a repeated query cheap: the caller remembers how far it looked.
pub(crate) fn last_with_note_in(
    conn: &Connection,
    note: &str,
    after: u64,
    upto: u64,
) -> Result<Option<(u64, Vec<u8>)>> {
    let (after, upto) = (to_i64(after)?, to_i64(upto)?);
    let row = conn
        .prepare_cached(&format!(
            "SELECT j.seq, j.product_digest, p.product FROM journal j
             JOIN products p ON p.seq = j.seq
             WHERE j.seq > ?2 AND j.seq <= ?3 AND j.note = ?1 {and}{rare}
             ORDER BY j.seq DESC LIMIT 1",
            // A note-less row is not in the partial index (schema::RARE).
            and = if note.is_empty() { "" } else { "AND " },
            rare = if note.is_empty() {
                ""
            } else {
                super::schema::RARE
            },
        ))
        .and_then(|mut s| {
            s.query_row(rusqlite::params![note, after, upto], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .optional()
        })
        .map_err(storage)?;
    let Some((seq, digest, product)) = row else {
        return Ok(None);
    };
    super::rows::check_product(seq, &digest, &product)?;
    Ok(Some((to_u64(seq)?, product)))
}

fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| LedgerError::Invalid(format!("row number {v} out of range")))
}

fn to_u64(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| LedgerError::Storage(format!("negative value {v} in the journal")))
}

/// Every Debit or other row charged to `service`, as (seq, note, product), in seq order.
pub(crate) fn service_products_in(conn: &Connection, service: Service) -> Result<ProductList> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT j.seq, j.note, j.product_digest, p.product
             FROM journal j JOIN products p ON p.seq = j.seq WHERE j.service = ?1 ORDER BY j.seq",
        )
        .map_err(storage)?;
    let rows = stmt
        .query_map([service.code()], product_row)
        .map_err(storage)?;
    checked_products(rows)
}

/// Rows of one kind or service: (seq, note, product).
pub(crate) type ProductList = Vec<(u64, String, Vec<u8>)>;

/// One (seq, note, product_digest, product) row of the product queries.
type ProductRow = (i64, String, Vec<u8>, Vec<u8>);

fn product_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ProductRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

/// The rows of a product query as (seq, note, product), each product
/// checked against its row's digest: one reader for every product query,
/// so a copy cannot forget the check.
fn checked_products(
    rows: impl Iterator<Item = rusqlite::Result<ProductRow>>,
) -> Result<ProductList> {
    let mut out = Vec::new();
    for row in rows {
        let (seq, note, digest, product) = row.map_err(storage)?;
        super::rows::check_product(seq, &digest, &product)?;
        out.push((to_u64(seq)?, note, product));
    }
    Ok(out)
}

/// Every row of `kind` (whose note is `note`, if given) as (seq, note,
/// product), in seq order, each product checked against its row's digest.
/// On the writer's connection (`Ledger::products`): read at start by the
/// loaders, through the partial indexes where it can (`schema::RARE`).
pub(crate) fn products_in(
    conn: &Connection,
    kind: super::EntryKind,
    note: Option<&str>,
) -> Result<ProductList> {
    // The note filter runs in SQL so that, e.g., the few certificate rows
    // among many debits are found without loading every product.
    let common = matches!(kind, super::EntryKind::Debit | super::EntryKind::Event);
    let rare = if common && note.unwrap_or_default().is_empty() {
        ""
    } else {
        super::schema::RARE
    };
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT j.seq, j.note, j.product_digest, p.product
             FROM journal j JOIN products p ON p.seq = j.seq
             WHERE j.kind = ?1 AND (?2 IS NULL OR j.note = ?2) {and}{rare} ORDER BY j.seq",
            and = if rare.is_empty() { "" } else { "AND " },
        ))
        .map_err(storage)?;
    let rows = stmt
        .query_map(rusqlite::params![kind as u8, note], product_row)
        .map_err(storage)?;
    checked_products(rows)
}
