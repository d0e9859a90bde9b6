//! One row at a time: the tip of the chain, how an entry becomes a row
//! (checks, registers, link, product, canonical bytes, hash) in the
//! sequencing job, and how a stored row is found again by its key.
//!
//! Shared by the sequencer (which makes rows), the writer and the audit and
//! scan (which recompute registers and recognise row kinds), so that they
//! cannot disagree; it imports none of them.

use rusqlite::{Connection, OptionalExtension};

use super::chain::{self, RowFields, MAX_NOTE, MAX_REQUEST_ID};
use super::reserve::AccountTerms;
use super::schema::storage;
use super::{
    Digest, Entry, EntryKind, Finisher, Fund, Key, LedgerError, LedgerState, LockInfo, Registers,
    Result, RowContext, Stored, SPLIT_NOTE,
};
use crate::housing::{Housing, HousingError};
use crate::money::Amount;
use crate::service::Service;

/// Largest product accepted, in bytes.
pub(crate) const MAX_PRODUCT: usize = 16 * 1024 * 1024;

/// The end of the chain as the writer (durable) or the sequencer
/// (sequenced, not yet written) knows it.
#[derive(Debug, Clone)]
pub(crate) struct Tip {
    pub seq: u64,
    pub head: Digest,
    pub registers: Registers,
    pub lock: Option<LockInfo>,
    /// Epoch in force: the counter value of the last epoch row (of the
    /// last batch, on a ledger without epoch rows yet).
    pub nv: u64,
    /// Sequence number of the last epoch row (0: none yet, layout v1).
    pub epoch_seq: u64,
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

    /// Rows written since the last epoch row.
    pub fn rows_in_epoch(&self) -> u64 {
        self.seq.saturating_sub(self.epoch_seq)
    }
}

/// A row ready to be written: every column, computed by the sequencer.
#[derive(Debug, Clone)]
pub(crate) struct NewRow {
    pub seq: u64,
    pub time: i64,
    pub kind: u8,
    pub service: u8,
    pub request_id: Option<String>,
    pub credit: u64,
    pub debit: u64,
    /// Registers after the row (both pairs).
    pub registers: Registers,
    /// The pair the row's register columns hold.
    pub fund: Fund,
    pub service_count: u64,
    pub product_digest: Digest,
    pub note: String,
    pub hash: Digest,
    pub input_digest: Digest,
    pub product: Vec<u8>,
    /// The row's link (what a product seal of it signs).
    pub link: Digest,
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

/// What the sequencer knows when it makes a row: the meter, the epoch the
/// row is written in and the row's time.
pub(crate) struct RowEnv<'a> {
    pub meter_id: &'a str,
    pub epoch: u64,
    pub now: i64,
}

/// Makes the row of one entry on top of `work` (moved on only when the row
/// is made): bounds, the account limit, registers, link, the product (the
/// finisher runs here, on the housing thread), hash. An error refuses this
/// entry only and is always decided before `work` moves.
pub(crate) fn make_row(
    work: &mut Tip,
    (e, limit): (&Entry, Option<AccountTerms>),
    finish: Option<Finisher>,
    env: &RowEnv<'_>,
    h: &mut dyn Housing,
    buf: &mut Vec<u8>,
) -> Result<NewRow> {
    if e.note.len() > MAX_NOTE {
        return Err(LedgerError::Invalid(format!(
            "note longer than {MAX_NOTE} bytes"
        )));
    }
    let key = e.key.as_ref().map(Key::encode);
    if key.as_ref().is_some_and(|r| r.len() > MAX_REQUEST_ID) {
        return Err(LedgerError::Invalid(format!(
            "request id longer than {MAX_REQUEST_ID} bytes"
        )));
    }
    if e.product.len() > MAX_PRODUCT {
        return Err(LedgerError::Invalid("product too large".into()));
    }
    if (e.kind == EntryKind::Genesis) != (work.seq == 0) {
        return Err(LedgerError::Invalid(
            "genesis is the first row and only it".into(),
        ));
    }
    // Current-account terms bound the services register only: postage in
    // split mode is prepaid (the reservation was refused otherwise).
    let fund = work.registers.fund_of(e.fund);
    if work.registers.split && e.service.is_some() && fund != Fund::of_service(e.service) {
        return Err(LedgerError::Invalid(format!(
            "a sale of {} is paid from its own register, not {}",
            e.service.map_or("", Service::name),
            fund.name()
        )));
    }
    if let Some(t) = limit.filter(|_| fund == Fund::Services) {
        let available = t.available(work.registers.ascending, Amount::ZERO);
        if e.debit > available {
            return Err(LedgerError::CreditLimit {
                needed: e.debit,
                available,
                limit: t.limit,
            });
        }
    }
    let regs = next_registers(&work.registers, e)?;
    let seq = work.seq + 1;
    let service = e.service.map_or(0, Service::code);
    let service_count = e.service.map_or(0, |s| regs.per_service[s.index()]);
    let pair = regs.pair(fund);
    let zero = [0u8; 48];
    let mut fields = RowFields {
        seq,
        time: env.now,
        kind: e.kind as u8,
        service,
        request_id: key.as_deref().map(str::as_bytes),
        credit: e.credit.0,
        debit: e.debit.0,
        ascending: pair.ascending.0,
        descending: pair.descending.0,
        control_total: pair.control_total.0,
        pieces: pair.pieces,
        service_count,
        product_digest: &zero,
        note: e.note.as_bytes(),
        register: fund.id(),
    };
    if fields.encode(buf).is_err() {
        return Err(LedgerError::Invalid("field too long".into()));
    }
    let link = chain::link_digest(env.meter_id, env.epoch, &work.head, &fields);
    // A finisher makes the product now that the row's registers and link
    // are known; if it fails, nothing of this entry has been made.
    let product = match finish {
        None => e.product.clone(),
        Some(f) => {
            let ctx = RowContext {
                seq,
                time_ms: env.now,
                registers: regs.clone(),
                epoch: env.epoch,
                link,
            };
            let made = f.make(&ctx, h)?;
            if made.len() > MAX_PRODUCT {
                return Err(LedgerError::Invalid("product too large".into()));
            }
            made
        }
    };
    let product_digest = chain::sha384(&product);
    fields.product_digest = &product_digest;
    if fields.encode(buf).is_err() {
        return Err(LedgerError::Invalid("field too long".into()));
    }
    let hash = chain::row_hash(&work.head, buf);
    let row = NewRow {
        seq,
        time: env.now,
        kind: e.kind as u8,
        service,
        request_id: key,
        credit: e.credit.0,
        debit: e.debit.0,
        registers: regs.clone(),
        fund,
        service_count,
        product_digest,
        note: e.note.clone(),
        hash,
        input_digest: e.input_digest,
        product,
        link,
    };
    work.seq = seq;
    work.time_ms = env.now;
    work.head = hash;
    work.registers = regs;
    match e.kind {
        EntryKind::Lock => {
            work.lock = Some(LockInfo {
                reason: e.note.clone(),
                nonce: String::from_utf8_lossy(chain::split_lock_product(&e.product).0)
                    .into_owned(),
            })
        }
        EntryKind::Unlock => work.lock = None,
        _ => {}
    }
    Ok(row)
}

/// A stored row as the writer's idempotency check needs it: (seq, input
/// digest, product).
pub(crate) type KeyedRow = (u64, Vec<u8>, Vec<u8>);

/// The row stored under the exact encoded key `request_id`: (seq, input
/// digest, product), for the writer's idempotency check before a batch.
pub(crate) fn stored_by_key(conn: &Connection, request_id: &str) -> Result<Option<KeyedRow>> {
    conn.prepare_cached(
        "SELECT j.seq, p.input_digest, p.product FROM journal j
         JOIN products p ON p.seq = j.seq WHERE j.request_id = ?1",
    )
    .and_then(|mut s| {
        s.query_row([request_id], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })
        .optional()
    })
    .map_err(storage)
}

/// Registers after `e`: credit first, then the debit, every step checked,
/// on the one pair the entry moves (`Registers::fund_of`); the other pair
/// is untouched. A [`SPLIT_NOTE`] Event row splits the funds from the next
/// row on (what the combined pool held stays in services).
///
/// A `reanchor` Unlock row (an authority cleared a tamper lock) also
/// restores AR + DR = CT when the damage it accepts broke it: the control
/// total and the ascending register stand, the descending register is what
/// is left, so a descending register edited upwards is not kept.
pub(crate) fn next_registers(r: &Registers, e: &Entry) -> Result<Registers> {
    if is_reanchor(e.kind as u8, e.note.as_bytes()) {
        return Ok(reanchored(r));
    }
    let fund = r.fund_of(e.fund);
    let p = r.pair(fund);
    let funds = p.descending.checked_add(e.credit)?;
    if e.debit > funds {
        return Err(LedgerError::InsufficientFunds {
            needed: e.debit,
            available: funds,
            fund: r.split.then_some(fund),
        });
    }
    let mut q = p;
    q.descending = funds.checked_sub(e.debit)?;
    q.ascending = p.ascending.checked_add(e.debit)?;
    q.control_total = p.control_total.checked_add(e.credit)?;
    let mut n = r.clone();
    if let Some(s) = e.service {
        q.pieces = p.pieces.checked_add(1).ok_or(crate::money::Overflow)?;
        let c = &mut n.per_service[s.index()];
        *c = c.checked_add(1).ok_or(crate::money::Overflow)?;
    }
    n.set_pair(fund, q);
    if is_split(e.kind as u8, e.note.as_bytes()) {
        n.split = true;
    }
    Ok(n)
}

/// Whether a row is the split order's Event row.
pub(crate) fn is_split(kind: u8, note: &[u8]) -> bool {
    kind == EntryKind::Event as u8 && note == SPLIT_NOTE.as_bytes()
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
