//! The pass over the journal behind every audit: row by row in seq order,
//! recomputing hashes and links, checking registers, kinds, epochs and
//! batch coverage. On a clean ledger the hashing runs on a second thread against
//! the stored chain (half the wall time on two cores); any damage sends the
//! audit to the exact sequential pass.

use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row};

use super::chain::{self, RowFields};
use super::checkpoint::Start;
use super::epoch::EpochTrack;
use super::rows::{is_reanchor, is_split, kind_from_code, reanchored};
use super::schema::storage;
use super::{Digest, EntryKind, Fund, LedgerError, Pair, Registers, Result};
use crate::service::Service;

/// One batch row as the audit reads it.
pub(crate) struct BatchRec {
    pub first: u64,
    pub last: u64,
    /// Counter value (layout v1) or epoch (v2).
    pub nv: u64,
    pub head: Option<Digest>,
    /// No explicit seal: the last row's product carries it (v2 only).
    pub empty_seal: bool,
}

/// First damage not (yet) forgiven by a reanchor.
#[derive(Default)]
pub(crate) struct Damage {
    pub first: Option<(u64, String)>,
    /// Whether anything was ever recorded, forgiven or not.
    pub ever: bool,
}

impl Damage {
    pub fn record(&mut self, seq: u64, what: impl FnOnce() -> String) {
        self.ever = true;
        if self.first.is_none() {
            self.first = Some((seq, what()));
        }
    }
}

/// An integer column as u64 (registers are stored as the i64 bit pattern
/// of the u64).
pub(crate) fn int(row: &Row<'_>, i: usize) -> Option<u64> {
    match row.get_ref(i) {
        Ok(ValueRef::Integer(v)) => Some(v as u64),
        _ => None,
    }
}

pub(crate) fn blob48<'a>(row: &'a Row<'_>, i: usize) -> Option<&'a [u8; 48]> {
    match row.get_ref(i) {
        Ok(ValueRef::Blob(b)) => b.try_into().ok(),
        _ => None,
    }
}

/// The stored `prev_hash` column: rows written since issue 14 store it
/// empty (it is the previous row's hash, derived while reading the chain:
/// 48 bytes a row saved); older rows store the 48 bytes, which must then
/// be the derived value. `Some(None)`: empty; `None`: malformed.
pub(crate) fn stored_prev<'a>(row: &'a Row<'_>, i: usize) -> Option<Option<&'a [u8; 48]>> {
    match row.get_ref(i) {
        Ok(ValueRef::Blob([])) => Some(None),
        Ok(ValueRef::Blob(b)) => b.try_into().ok().map(Some),
        _ => None,
    }
}

fn text<'a>(row: &'a Row<'_>, i: usize) -> Option<&'a [u8]> {
    match row.get_ref(i) {
        Ok(ValueRef::Text(t)) => Some(t),
        _ => None,
    }
}

fn opt_text<'a>(row: &'a Row<'_>, i: usize) -> Option<Option<&'a [u8]>> {
    match row.get_ref(i) {
        Ok(ValueRef::Null) => Some(None),
        Ok(ValueRef::Text(t)) => Some(Some(t)),
        _ => None,
    }
}

/// The hashed fields of a journal row selected in the canonical column
/// order (`seq, time, kind, service, request_id, credit, debit, ascending,
/// descending, control_total, pieces, service_count, product_digest, note`),
/// with the `register` column at `register_col`, or None when a column is
/// not of its type: the one reader of row fields for the scan, the export
/// and the seal check, so all hash exactly the same bytes.
pub(crate) fn row_fields<'a>(r: &'a Row<'_>, register_col: usize) -> Option<RowFields<'a>> {
    Some(RowFields {
        seq: int(r, 0)?,
        time: int(r, 1)? as i64,
        kind: u8::try_from(int(r, 2)?).ok()?,
        service: u8::try_from(int(r, 3)?).ok()?,
        request_id: opt_text(r, 4)?,
        credit: int(r, 5)?,
        debit: int(r, 6)?,
        ascending: int(r, 7)?,
        descending: int(r, 8)?,
        control_total: int(r, 9)?,
        pieces: int(r, 10)?,
        service_count: int(r, 11)?,
        product_digest: blob48(r, 12)?,
        note: text(r, 13)?,
        register: u8::try_from(int(r, register_col)?).ok()?,
    })
}

/// Register checks of one row, on the pair its `register` names: AR + DR
/// = CT, and continuity from that pair's previous row (the other pair does
/// not move). A postage row before the split, or a register id that is not
/// one, is damage. `regs` becomes this row's registers either way.
fn check_row(f: &RowFields<'_>, all: &mut Registers, damage: &mut Damage) {
    let seq = f.seq;
    let fund = match Fund::from_id(f.register) {
        Some(Fund::Postage) if !all.split => {
            damage.record(seq, || {
                format!("row {seq}: a postage register row before the funds were split")
            });
            Fund::Postage
        }
        Some(fund) => fund,
        None => {
            damage.record(seq, || {
                format!("row {seq}: register {} is not one", f.register)
            });
            Fund::Services
        }
    };
    // After the split each sale is paid from its service's own pair: a
    // postage sale booked on services (or the reverse), chained and sealed
    // by root, moves money between the post's books and the provider's.
    if all.split && f.service != 0 {
        let own = Service::from_code(f.service).map(|s| Fund::of_service(Some(s)));
        if own.is_some_and(|own| own != fund) {
            damage.record(seq, || {
                format!("row {seq}: a sale paid from the other register pair")
            });
        }
    }
    if is_split(f.kind, f.note) {
        if f.register != 0 || all.split {
            damage.record(seq, || format!("row {seq}: a second or misplaced split"));
        }
        all.split = true;
    }
    let mut pair = all.pair(fund);
    let regs = &mut pair;
    if f.ascending.checked_add(f.descending) != Some(f.control_total) {
        damage.record(seq, || {
            format!("row {seq}: ascending + descending != control total")
        });
    }
    let continuous = if is_reanchor(f.kind, f.note) {
        let want = reanchored(&pair_registers(regs));
        f.credit == 0
            && f.debit == 0
            && want.ascending.0 == f.ascending
            && want.descending.0 == f.descending
            && want.control_total.0 == f.control_total
            && regs.pieces == f.pieces
    } else {
        regs.descending
            .0
            .checked_add(f.credit)
            .and_then(|d| d.checked_sub(f.debit))
            == Some(f.descending)
            && regs.ascending.0.checked_add(f.debit) == Some(f.ascending)
            && regs.control_total.0.checked_add(f.credit) == Some(f.control_total)
            && regs.pieces.checked_add(u64::from(f.service != 0)) == Some(f.pieces)
    };
    let service_ok = match f.service {
        0 => f.service_count == 0,
        code => match Service::from_code(code) {
            Some(s) => {
                let c = &mut all.per_service[s.index()];
                let ok = c.checked_add(1) == Some(f.service_count);
                *c = f.service_count;
                ok
            }
            None => false,
        },
    };
    if !continuous || !service_ok {
        damage.record(seq, || {
            format!("row {seq}: registers do not follow from the previous row")
        });
    }
    regs.ascending.0 = f.ascending;
    regs.descending.0 = f.descending;
    regs.control_total.0 = f.control_total;
    regs.pieces = f.pieces;
    all.set_pair(fund, pair);
}

/// A pair as services registers (what [`reanchored`] takes).
fn pair_registers(p: &Pair) -> Registers {
    let mut r = Registers::default();
    r.set_pair(Fund::Services, *p);
    r
}

/// What one pass over the journal found.
pub(crate) struct Scan {
    pub damage: Damage,
    pub regs: Registers,
    /// Hash of the last row.
    pub prev: Digest,
    pub rows: u64,
    pub expected_seq: u64,
    pub lock_at: Option<(u64, String)>,
    /// Epochs as of the last row.
    pub track: EpochTrack,
}

/// Rows handed to the hashing thread: per row, prev (48: the previous
/// row's stored hash, which the chunks check in turn) ‖ stored hash (48) ‖
/// canonical bytes, back to back; `ends[i]` is where row i ends.
pub(crate) struct Chunk {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

/// Rows per chunk: small enough to keep the audit's memory at a few
/// hundred KiB, large enough that the channel costs nothing.
const CHUNK_ROWS: usize = 1024;

/// Whether every row of `chunk` satisfies SHA-384(prev ‖ canonical) =
/// stored hash.
fn chunk_hashes_ok(chunk: &Chunk) -> bool {
    let mut start = 0;
    for &end in &chunk.ends {
        let Some(row) = chunk.bytes.get(start..end) else {
            return false;
        };
        start = end;
        let (Some(prev), Some(hash), Some(canonical)) =
            (row.get(..48), row.get(48..96), row.get(96..))
        else {
            return false;
        };
        let Ok(prev) = <&Digest>::try_from(prev) else {
            return false;
        };
        if chain::row_hash(prev, canonical).as_slice() != hash {
            return false;
        }
    }
    true
}

/// The scan with hashing on a second thread. `None` when a stored hash does
/// not match its row (the caller then runs the sequential scan).
pub(crate) fn scan_parallel(
    conn: &Connection,
    from: &Start,
    batches: &[BatchRec],
    batch_damage: &[(u64, String)],
) -> Result<Option<Scan>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(4);
    std::thread::scope(|s| {
        let hasher = s.spawn(move || {
            let mut ok = true;
            for chunk in rx {
                // Keep draining after a failure so the sender never blocks.
                ok = ok && chunk_hashes_ok(&chunk);
            }
            ok
        });
        let scanned = scan(conn, from, batches, batch_damage, Some(tx));
        let hashes_ok = hasher.join().unwrap_or(false);
        Ok(match scanned? {
            s if hashes_ok => Some(s),
            _ => None,
        })
    })
}

/// One pass in seq order. Without `defer`, every row hash is recomputed
/// here and the chain followed as recomputed. With `defer`, the stored
/// hashes are taken as the chain and every row goes to the hashing thread,
/// which checks them; the result is only valid if that thread agrees.
pub(crate) fn scan(
    conn: &Connection,
    from: &Start,
    batches: &[BatchRec],
    batch_damage: &[(u64, String)],
    defer: Option<std::sync::mpsc::SyncSender<Chunk>>,
) -> Result<Scan> {
    let mut batch_damage = batch_damage.iter().cloned().peekable();
    let mut damage = Damage::default();
    let mut prev: Digest = from.prev;
    let mut regs = from.regs.clone();
    let mut expected_seq = from.seq + 1;
    let mut rows = from.seq;
    let mut bi = 0usize;
    let mut lock_at: Option<(u64, String)> = from.lock_at.clone();
    let mut track = from.track.clone();
    let mut buf = Vec::with_capacity(512);
    let new_chunk = || Chunk {
        bytes: Vec::with_capacity(CHUNK_ROWS * 320),
        ends: Vec::with_capacity(CHUNK_ROWS),
    };
    let mut chunk = new_chunk();

    let mut stmt = conn
        .prepare(
            "SELECT seq, time, kind, service, request_id, credit, debit, ascending, descending,
             control_total, pieces, service_count, product_digest, note, prev_hash, hash, register
             FROM journal WHERE seq > ?1 ORDER BY seq",
        )
        .map_err(storage)?;
    let after = i64::try_from(from.seq).unwrap_or(i64::MAX);
    let mut q = stmt.query([after]).map_err(storage)?;
    while let Some(r) = q.next().map_err(storage)? {
        rows += 1;
        let seq = int(r, 0).unwrap_or(0);
        if seq != expected_seq {
            damage.record(expected_seq.min(seq), || {
                format!("row {expected_seq} expected, found {seq} (rows deleted or reordered)")
            });
        }
        expected_seq = seq.saturating_add(1);
        let parsed = (|| Some((row_fields(r, 16)?, stored_prev(r, 14)?, blob48(r, 15)?)))();
        let Some((f, stored_prev, stored_hash)) = parsed else {
            damage.record(seq, || format!("row {seq}: malformed columns"));
            continue;
        };
        if f.encode(&mut buf).is_err() {
            damage.record(seq, || format!("row {seq}: field too long"));
            continue;
        }
        let hash = match &defer {
            None => chain::row_hash(&prev, &buf),
            Some(tx) => {
                chunk.bytes.extend_from_slice(&prev);
                chunk.bytes.extend_from_slice(stored_hash);
                chunk.bytes.extend_from_slice(&buf);
                chunk.ends.push(chunk.bytes.len());
                if chunk.ends.len() == CHUNK_ROWS {
                    let full = std::mem::replace(&mut chunk, new_chunk());
                    if tx.send(full).is_err() {
                        return Err(LedgerError::Storage("audit hashing thread stopped".into()));
                    }
                }
                *stored_hash
            }
        };
        // The link is the derived `prev` (hashed in); a stored copy, when
        // present (rows written before issue 14), must agree with it.
        let linked = stored_prev.is_none_or(|p| p == &prev) && stored_hash == &hash;
        while let Some((at, what)) = batch_damage.next_if(|d| d.0 < seq) {
            damage.record(at, || what);
        }
        // A verified reanchor forgives what came before it, not itself.
        if linked && f.kind == EntryKind::Unlock as u8 && f.note == b"reanchor" {
            damage.first = None;
        }
        while let Some((at, what)) = batch_damage.next_if(|d| d.0 <= seq) {
            damage.record(at, || what);
        }
        if !linked {
            damage.record(seq, || {
                format!("row {seq}: hash does not match its content or link")
            });
        }
        check_row(&f, &mut regs, &mut damage);
        let kind = kind_from_code(f.kind);
        if kind.is_none() || (kind == Some(EntryKind::Genesis)) != (seq == 1) {
            damage.record(seq, || format!("row {seq}: kind {} out of place", f.kind));
        }
        match kind {
            Some(EntryKind::Lock) => {
                lock_at = Some((seq, String::from_utf8_lossy(f.note).into_owned()));
            }
            Some(EntryKind::Unlock) => lock_at = None,
            _ => {}
        }
        if let Err(what) = track.row(seq, f.kind, f.note, f.request_id) {
            damage.record(seq, move || what);
        }
        while bi < batches.len() && batches[bi].last < seq {
            bi += 1;
        }
        match batches.get(bi) {
            Some(b) if b.first <= seq => {
                if b.last == seq && b.head != Some(hash) {
                    damage.record(seq, || {
                        format!("batch ending at row {seq}: head does not match the chain")
                    });
                }
                if b.last == seq {
                    if let Err(what) = track.batch_end(seq, b.nv, b.empty_seal) {
                        damage.record(seq, move || what);
                    }
                }
            }
            _ => damage.record(seq, || {
                format!("row {seq} is not covered by a sealed batch")
            }),
        }
        prev = hash;
    }
    if let Some(tx) = defer {
        if !chunk.ends.is_empty() && tx.send(chunk).is_err() {
            return Err(LedgerError::Storage("audit hashing thread stopped".into()));
        }
    }
    for (at, what) in batch_damage {
        damage.record(at, || what);
    }
    Ok(Scan {
        damage,
        regs,
        prev,
        rows,
        expected_seq,
        lock_at,
        track,
    })
}
