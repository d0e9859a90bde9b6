//! One row at a time: the tip of the chain, how an entry becomes a row
//! (checks, registers, canonical bytes, hash) inside the batch transaction,
//! and how a stored row is found again by its key.
//!
//! Shared by the writer (which applies entries) and the audit and scan
//! (which recompute registers and recognise row kinds), so that the
//! three cannot disagree; it imports neither of them.

use rusqlite::{params, Connection, OptionalExtension};

use super::chain::{self, RowFields, MAX_NOTE, MAX_REQUEST_ID};
use super::reserve::AccountTerms;
use super::schema::storage;
use super::{
    Digest, Entry, EntryKind, Finisher, Key, LedgerError, LedgerState, LockInfo, Outcome,
    Registers, Result, RowContext, Stored,
};
use crate::housing::HousingError;
use crate::money::Amount;
use crate::service::Service;

/// Largest product accepted, in bytes.
pub(crate) const MAX_PRODUCT: usize = 16 * 1024 * 1024;

/// The end of the chain as the writer knows it.
#[derive(Debug, Clone)]
pub(crate) struct Tip {
    pub seq: u64,
    pub head: Digest,
    pub registers: Registers,
    pub lock: Option<LockInfo>,
    /// Counter value carried by the last batch.
    pub nv: u64,
    /// Time of the last row (Unix ms; 0 before the first).
    pub time_ms: i64,
}

impl Tip {
    pub fn state(&self) -> LedgerState {
        LedgerState {
            registers: self.registers.clone(),
            rows: self.seq,
            head: self.head,
            nv: self.nv,
            lock: self.lock.clone(),
            time_ms: self.time_ms,
        }
    }
}

/// The counter the ledger is bound to is missing from the TPM.
pub(crate) fn not_defined() -> LedgerError {
    LedgerError::Housing(HousingError::Tpm {
        command: "counter_read",
        message: "NV counter not defined".into(),
    })
}

/// Row time: the meter's clock (`crate::clock`, the one source of time),
/// never earlier than the last row's, so that a clock set back cannot date
/// a row before one already sealed (the sale gate locks the meter on such a
/// clock, see `crate::timecheck`; rows the gate does not see, such as the
/// Lock row itself, are dated at the last row's time).
pub(crate) fn row_time(tip: &Tip) -> i64 {
    crate::clock::now_millis().max(tip.time_ms)
}

/// SQLite stores u64 registers as their i64 bit pattern.
pub(crate) fn to_sql(v: u64) -> i64 {
    v as i64
}

/// A product handed out must be the one the chain vouches for.
pub(crate) fn check_product(seq: i64, digest: &[u8], product: &[u8]) -> Result<()> {
    if chain::sha384(product).as_slice() != digest {
        return Err(LedgerError::Storage(format!(
            "product of row {seq} does not match its digest"
        )));
    }
    Ok(())
}

/// Entry kind from its code.
pub(crate) fn kind_from_code(code: u8) -> Option<EntryKind> {
    use EntryKind::*;
    [
        Genesis, Provision, Rates, Credit, Debit, Lock, Unlock, Event,
    ]
    .into_iter()
    .find(|k| *k as u8 == code)
}

/// Applies one entry inside the batch transaction. The outer error aborts
/// the batch (storage failed); the inner one refuses this entry only, and
/// is always decided before anything of the entry is written. `limit`:
/// the current-account terms a booked charge must stay within.
pub(crate) fn apply_entry(
    tx: &rusqlite::Transaction<'_>,
    work: &mut Tip,
    (e, limit): (&Entry, Option<AccountTerms>),
    finish: Option<Finisher>,
    now: i64,
    buf: &mut Vec<u8>,
) -> Result<Result<Outcome>> {
    if e.note.len() > MAX_NOTE {
        return Ok(Err(LedgerError::Invalid(format!(
            "note longer than {MAX_NOTE} bytes"
        ))));
    }
    let key = e.key.as_ref().map(Key::encode);
    if key.as_ref().is_some_and(|r| r.len() > MAX_REQUEST_ID) {
        return Ok(Err(LedgerError::Invalid(format!(
            "request id longer than {MAX_REQUEST_ID} bytes"
        ))));
    }
    if e.product.len() > MAX_PRODUCT {
        return Ok(Err(LedgerError::Invalid("product too large".into())));
    }
    if (e.kind == EntryKind::Genesis) != (work.seq == 0) {
        return Ok(Err(LedgerError::Invalid(
            "genesis is the first row and only it".into(),
        )));
    }
    if let (Some(id), Some(k)) = (&key, &e.key) {
        let found = tx
            .prepare_cached(
                "SELECT j.seq, p.input_digest, p.product FROM journal j
                 JOIN products p ON p.seq = j.seq WHERE j.request_id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([id], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })
                .optional()
            })
            .map_err(storage)?;
        if let Some((seq, input, product)) = found {
            if input.as_slice() == e.input_digest.as_slice() {
                return Ok(Ok(Outcome::Existing {
                    seq: seq as u64,
                    product,
                }));
            }
            return Ok(Err(LedgerError::Conflict(k.clone())));
        }
    }
    if let Some(t) = limit {
        let available = t.available(work.registers.ascending, Amount::ZERO);
        if e.debit > available {
            return Ok(Err(LedgerError::CreditLimit {
                needed: e.debit,
                available,
                limit: t.limit,
            }));
        }
    }
    let regs = match next_registers(&work.registers, e) {
        Ok(r) => r,
        Err(err) => return Ok(Err(err)),
    };
    let seq = work.seq + 1;
    // A finisher makes the product now that the row's registers are known;
    // if it fails, nothing of this entry has been written.
    let made;
    let product: &[u8] = match finish {
        None => &e.product,
        Some(f) => {
            let ctx = RowContext {
                seq,
                time_ms: now,
                registers: regs.clone(),
            };
            made = match f(&ctx) {
                Ok(p) => p,
                Err(err) => return Ok(Err(err)),
            };
            if made.len() > MAX_PRODUCT {
                return Ok(Err(LedgerError::Invalid("product too large".into())));
            }
            &made
        }
    };
    let product_digest = chain::sha384(product);
    let service = e.service.map_or(0, Service::code);
    let service_count = e.service.map_or(0, |s| regs.per_service[s.index()]);
    let fields = RowFields {
        seq,
        time: now,
        kind: e.kind as u8,
        service,
        request_id: key.as_deref().map(str::as_bytes),
        credit: e.credit.0,
        debit: e.debit.0,
        ascending: regs.ascending.0,
        descending: regs.descending.0,
        control_total: regs.control_total.0,
        pieces: regs.pieces,
        service_count,
        product_digest: &product_digest,
        note: e.note.as_bytes(),
    };
    if fields.encode(buf).is_err() {
        return Ok(Err(LedgerError::Invalid("field too long".into())));
    }
    let hash = chain::row_hash(&work.head, buf);
    tx.prepare_cached(
        "INSERT INTO journal(seq, time, kind, service, request_id, credit, debit, ascending,
         descending, control_total, pieces, service_count, product_digest, note, prev_hash, hash)
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16)",
    )
    .and_then(|mut s| {
        s.execute(params![
            to_sql(seq),
            now,
            e.kind as u8,
            service,
            key,
            to_sql(e.credit.0),
            to_sql(e.debit.0),
            to_sql(regs.ascending.0),
            to_sql(regs.descending.0),
            to_sql(regs.control_total.0),
            to_sql(regs.pieces),
            to_sql(service_count),
            &product_digest[..],
            e.note,
            &work.head[..],
            &hash[..],
        ])
    })
    .and_then(|_| {
        tx.prepare_cached("INSERT INTO products(seq, input_digest, product) VALUES (?1,?2,?3)")?
            .execute(params![to_sql(seq), &e.input_digest[..], product])
    })
    .map_err(storage)?;
    work.seq = seq;
    work.time_ms = now;
    work.head = hash;
    work.registers = regs.clone();
    match e.kind {
        EntryKind::Lock => {
            work.lock = Some(LockInfo {
                reason: e.note.clone(),
                nonce: String::from_utf8_lossy(&e.product).into_owned(),
            })
        }
        EntryKind::Unlock => work.lock = None,
        _ => {}
    }
    Ok(Ok(Outcome::Committed {
        seq,
        registers: regs,
    }))
}

/// Registers after `e`: credit first, then the debit, every step checked.
///
/// A `reanchor` Unlock row (an authority cleared a tamper lock) also
/// restores AR + DR = CT when the damage it accepts broke it: the control
/// total and the ascending register stand, the descending register is what
/// is left, so a descending register edited upwards is not kept.
pub(crate) fn next_registers(r: &Registers, e: &Entry) -> Result<Registers> {
    if is_reanchor(e.kind as u8, e.note.as_bytes()) {
        return Ok(reanchored(r));
    }
    let funds = r.descending.checked_add(e.credit)?;
    if e.debit > funds {
        return Err(LedgerError::InsufficientFunds {
            needed: e.debit,
            available: funds,
        });
    }
    let mut n = r.clone();
    n.descending = funds.checked_sub(e.debit)?;
    n.ascending = r.ascending.checked_add(e.debit)?;
    n.control_total = r.control_total.checked_add(e.credit)?;
    if let Some(s) = e.service {
        n.pieces = r.pieces.checked_add(1).ok_or(crate::money::Overflow)?;
        let c = &mut n.per_service[s.index()];
        *c = c.checked_add(1).ok_or(crate::money::Overflow)?;
    }
    Ok(n)
}

/// Whether a row is a `reanchor` Unlock row.
pub(crate) fn is_reanchor(kind: u8, note: &[u8]) -> bool {
    kind == EntryKind::Unlock as u8 && note == b"reanchor"
}

/// Registers a reanchor row carries after `r` (see [`next_registers`]).
pub(crate) fn reanchored(r: &Registers) -> Registers {
    let mut n = r.clone();
    n.ascending = Amount(r.ascending.0.min(r.control_total.0));
    n.descending = Amount(r.control_total.0 - n.ascending.0);
    n
}

/// The row stored under `key`, read through any connection (the writer's,
/// or the ledger's separate reader so that lookups need not wait for a
/// group commit). A meter key not found in its scoped form is looked for in
/// its schema-1 form (see [`Key::legacy`]): every key written since has a
/// `c/` or `m/` prefix, so only rows of an older ledger can match it.
pub(crate) fn lookup_in(conn: &Connection, key: &Key) -> Result<Option<Stored>> {
    if let Some(found) = stored_row(conn, &key.encode())? {
        return Ok(Some(found));
    }
    match key.legacy() {
        Some(old) => stored_row(conn, &old),
        None => Ok(None),
    }
}

fn stored_row(conn: &Connection, request_id: &str) -> Result<Option<Stored>> {
    let row = conn
        .prepare_cached(
            "SELECT j.seq, j.kind, j.service, j.product_digest, p.input_digest, p.product
             FROM journal j JOIN products p ON p.seq = j.seq WHERE j.request_id = ?1",
        )
        .and_then(|mut s| {
            s.query_row([request_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, Vec<u8>>(5)?,
                ))
            })
            .optional()
        })
        .map_err(storage)?;
    let Some((seq, kind, service, digest, input, product)) = row else {
        return Ok(None);
    };
    check_product(seq, &digest, &product)?;
    let bad = |what: &str| LedgerError::Storage(format!("row {seq}: bad {what}"));
    Ok(Some(Stored {
        seq: seq as u64,
        kind: u8::try_from(kind)
            .ok()
            .and_then(kind_from_code)
            .ok_or_else(|| bad("kind"))?,
        service: match service {
            0 => None,
            s => Some(
                u8::try_from(s)
                    .ok()
                    .and_then(Service::from_code)
                    .ok_or_else(|| bad("service"))?,
            ),
        },
        input_digest: input
            .as_slice()
            .try_into()
            .map_err(|_| bad("input digest"))?,
        product,
    }))
}
