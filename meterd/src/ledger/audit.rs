//! The full audit: one pass over the journal in seq order that recomputes
//! the chain, checks the registers and the batch heads, then verifies the
//! last seal and compares its counter value with the TPM's.
//!
//! Only the last seal is verified: it signs the head, and the head commits
//! to every row before it through the recomputed chain. Damage found before
//! a verified `reanchor` Unlock row is forgiven (the authority reviewed it);
//! the reanchor row itself verifies only if it was chained onto the chain as
//! recomputed, so any later edit before it breaks it again.

use std::time::Instant;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row};

use super::chain::{self, RowFields};
use super::checkpoint::{self, Start};
use super::schema::{self, storage};
use super::writer::{kind_from_code, not_defined, Tip};
use super::{
    AuditReport, Digest, EntryKind, LedgerError, LockInfo, Registers, Result, Sealer, Verdict,
};
use crate::service::Service;

/// What the audit hands back to the writer.
pub(crate) struct AuditOutcome {
    pub report: AuditReport,
    pub tip: Tip,
    /// Counter value after any roll-forward.
    pub tpm_nv: u64,
}

struct BatchRec {
    first: u64,
    last: u64,
    nv: u64,
    head: Option<Digest>,
}

/// First damage not (yet) forgiven by a reanchor.
#[derive(Default)]
struct Damage {
    first: Option<(u64, String)>,
    /// Whether anything was ever recorded, forgiven or not.
    ever: bool,
}

impl Damage {
    fn record(&mut self, seq: u64, what: impl FnOnce() -> String) {
        self.ever = true;
        if self.first.is_none() {
            self.first = Some((seq, what()));
        }
    }
}

fn int(row: &Row<'_>, i: usize) -> Option<u64> {
    match row.get_ref(i) {
        Ok(ValueRef::Integer(v)) => Some(v as u64),
        _ => None,
    }
}

fn blob48<'a>(row: &'a Row<'_>, i: usize) -> Option<&'a [u8; 48]> {
    match row.get_ref(i) {
        Ok(ValueRef::Blob(b)) => b.try_into().ok(),
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

fn load_batches(conn: &Connection, damage: &mut Vec<(u64, String)>) -> Result<Vec<BatchRec>> {
    let mut stmt = conn
        .prepare("SELECT first_seq, last_seq, nv, head FROM batches ORDER BY batch")
        .map_err(storage)?;
    let mut rows = stmt.query([]).map_err(storage)?;
    let mut out: Vec<BatchRec> = Vec::new();
    while let Some(r) = rows.next().map_err(storage)? {
        let (Some(first), Some(last), Some(nv)) = (int(r, 0), int(r, 1), int(r, 2)) else {
            let at = out.last().map_or(1, |b| b.last + 1);
            damage.push((at, "batch row has malformed columns".into()));
            continue;
        };
        let expected = out.last().map_or(1, |b| b.last.saturating_add(1));
        if first != expected || last < first {
            damage.push((
                first.min(expected),
                format!("batch {first}..={last} does not follow the previous batch"),
            ));
        }
        if let Some(prev) = out.last() {
            if nv <= prev.nv {
                damage.push((
                    first,
                    format!("batch {first}..={last}: counter value {nv} does not increase"),
                ));
            }
        }
        out.push(BatchRec {
            first,
            last,
            nv,
            head: blob48(r, 3).copied(),
        });
    }
    damage.sort_by_key(|d| d.0);
    Ok(out)
}

/// Audits the whole ledger; rolls the counter forward when the ledger is
/// exactly one batch ahead. Storage failures (unreadable file) are errors,
/// not verdicts.
pub(crate) fn run(
    conn: &Connection,
    meter_id: &str,
    sealer: &mut dyn Sealer,
) -> Result<AuditOutcome> {
    run_with(conn, meter_id, sealer, false)
}

/// The audit at start: from the last signed checkpoint when one verifies
/// (see [`super::checkpoint`]), else the full audit.
pub(crate) fn run_at_start(
    conn: &Connection,
    meter_id: &str,
    sealer: &mut dyn Sealer,
) -> Result<AuditOutcome> {
    run_with(conn, meter_id, sealer, true)
}

fn run_with(
    conn: &Connection,
    meter_id: &str,
    sealer: &mut dyn Sealer,
    incremental: bool,
) -> Result<AuditOutcome> {
    schema::set_mmap(conn, true)?;
    let out = run_mapped(conn, meter_id, sealer, incremental);
    let unmapped = schema::set_mmap(conn, false);
    let out = out?;
    unmapped?;
    Ok(out)
}

fn run_mapped(
    conn: &Connection,
    meter_id: &str,
    sealer: &mut dyn Sealer,
    incremental: bool,
) -> Result<AuditOutcome> {
    let started = Instant::now();
    let mut fatal: Option<String> = None;
    match schema::meta_text(conn, "meter_id")? {
        Some(id) if id == meter_id => {}
        other => {
            fatal = Some(format!(
                "ledger belongs to meter {other:?}, not {meter_id:?}"
            ))
        }
    }
    let mut batch_damage = Vec::new();
    let batches = load_batches(conn, &mut batch_damage)?;
    let from = match incremental {
        true => checkpoint::load(conn, meter_id, sealer.public_key())?,
        false => None,
    }
    .unwrap_or_else(|| Start::genesis(meter_id));
    // Batches that end at or before the checkpoint were verified with it.
    batch_damage.retain(|d| d.0 > from.seq);

    // Fast path: the hashes are checked on a second thread against the
    // stored ones while this thread reads and checks everything else. On a
    // clean ledger that is the same verdict as the sequential recomputation
    // (stored = recomputed on every row, by induction from the genesis
    // link); on any damage the sequential pass runs to find and report it
    // exactly: a reanchor forgives only on the recomputed chain, so any
    // damage at all, even forgiven, sends the audit to the sequential pass.
    let fast = scan_parallel(conn, &from, &batches, &batch_damage)?;
    let scan = match fast {
        Some(s) if !s.damage.ever => s,
        _ => scan(conn, &from, &batches, &batch_damage, None)?,
    };
    let Scan {
        mut damage,
        regs,
        prev,
        rows,
        expected_seq,
        lock_at,
    } = scan;
    let last_seq = expected_seq.saturating_sub(1);
    if rows == 0 {
        return Err(LedgerError::Storage("ledger has no rows".into()));
    }

    let last = conn
        .query_row(
            "SELECT nv, head, seal FROM batches ORDER BY batch DESC LIMIT 1",
            [],
            |r| {
                Ok((
                    int(r, 0),
                    blob48(r, 1).copied(),
                    r.get_ref(2)
                        .ok()
                        .and_then(|v| v.as_blob().ok().map(<[u8]>::to_vec)),
                ))
            },
        )
        .optional()
        .map_err(storage)?;
    let ledger_nv = match last {
        None => {
            fatal.get_or_insert_with(|| "no sealed batch".into());
            0
        }
        Some((nv, head, seal)) => {
            let nv = nv.unwrap_or(0);
            if let Some(b) = batches.last() {
                if b.last == last_seq && b.head != Some(prev) {
                    damage.record(last_seq, || {
                        format!("last batch head does not match row {last_seq}")
                    });
                }
                if b.last != last_seq {
                    damage.record(b.last.min(last_seq + 1), || {
                        format!(
                            "last batch ends at row {}, journal at row {last_seq}",
                            b.last
                        )
                    });
                }
            }
            let ok = match (head, seal) {
                (Some(h), Some(s)) => chain::verify_seal(sealer.public_key(), meter_id, nv, &h, &s),
                _ => false,
            };
            if !ok {
                fatal.get_or_insert_with(|| {
                    "last batch seal does not verify with this meter's key".into()
                });
            }
            nv
        }
    };

    let tpm_read = sealer.counter_read()?;
    let mut tpm_nv = tpm_read.unwrap_or(0);
    let verdict = if let Some((seq, detail)) = damage.first.take() {
        Verdict::Tamper {
            detail,
            first_bad_seq: Some(seq),
        }
    } else if let Some(detail) = fatal {
        Verdict::Tamper {
            detail,
            first_bad_seq: None,
        }
    } else if tpm_read.is_none() {
        Verdict::Tamper {
            detail: not_defined().to_string(),
            first_bad_seq: None,
        }
    } else if ledger_nv == tpm_nv {
        Verdict::Clean
    } else if Some(ledger_nv) == tpm_nv.checked_add(1) {
        tpm_nv = sealer.counter_increment()?;
        Verdict::RolledForward
    } else if ledger_nv < tpm_nv {
        Verdict::Rollback { ledger_nv, tpm_nv }
    } else {
        Verdict::Tamper {
            detail: format!(
                "ledger counter {ledger_nv} is ahead of the TPM's {tpm_nv} by more than one batch"
            ),
            first_bad_seq: None,
        }
    };

    if matches!(verdict, Verdict::Clean | Verdict::RolledForward) {
        let lock_seq = lock_at.as_ref().map_or(0, |l| l.0);
        // Without a checkpoint the next start audits more: not an error.
        if let Err(e) = checkpoint::write(conn, meter_id, sealer, last_seq, &prev, &regs, lock_seq)
        {
            tracing::warn!(error = %e, "ledger checkpoint not written");
        }
    }
    let lock = match lock_at {
        None => None,
        Some((seq, reason)) => {
            let nonce: Option<Vec<u8>> = conn
                .query_row(
                    "SELECT product FROM products WHERE seq=?1",
                    [seq as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(storage)?;
            Some(LockInfo {
                reason,
                nonce: String::from_utf8_lossy(&nonce.unwrap_or_default()).into_owned(),
            })
        }
    };
    let report = AuditReport {
        verdict,
        rows,
        batches: batches.len() as u64,
        head: prev,
        ledger_nv,
        tpm_nv,
        millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    let tip = Tip {
        seq: last_seq,
        head: prev,
        registers: regs,
        lock,
        nv: ledger_nv,
    };
    Ok(AuditOutcome {
        report,
        tip,
        tpm_nv,
    })
}

/// Register checks of one row: AR + DR = CT, and continuity from the
/// previous row. `regs` becomes this row's registers either way.
fn check_row(f: &RowFields<'_>, regs: &mut Registers, damage: &mut Damage) {
    let seq = f.seq;
    if f.ascending.checked_add(f.descending) != Some(f.control_total) {
        damage.record(seq, || {
            format!("row {seq}: ascending + descending != control total")
        });
    }
    let continuous = if super::writer::is_reanchor(f.kind, f.note) {
        let want = super::writer::reanchored(regs);
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
                let c = &mut regs.per_service[s.index()];
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
}

/// What one pass over the journal found.
struct Scan {
    damage: Damage,
    regs: Registers,
    /// Hash of the last row.
    prev: Digest,
    rows: u64,
    expected_seq: u64,
    lock_at: Option<(u64, String)>,
}

/// Rows handed to the hashing thread: per row, stored prev (48) ‖ stored
/// hash (48) ‖ canonical bytes, back to back; `ends[i]` is where row i ends.
struct Chunk {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

/// Rows per chunk: small enough to keep the audit's memory at a few
/// hundred KiB, large enough that the channel costs nothing.
const CHUNK_ROWS: usize = 1024;

/// Whether every row of `chunk` satisfies SHA-384(stored prev ‖ canonical)
/// = stored hash.
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
fn scan_parallel(
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
fn scan(
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
    let mut buf = Vec::with_capacity(512);
    let new_chunk = || Chunk {
        bytes: Vec::with_capacity(CHUNK_ROWS * 320),
        ends: Vec::with_capacity(CHUNK_ROWS),
    };
    let mut chunk = new_chunk();

    let mut stmt = conn
        .prepare(
            "SELECT seq, time, kind, service, request_id, credit, debit, ascending, descending,
             control_total, pieces, service_count, product_digest, note, prev_hash, hash
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
        let parsed = (|| {
            Some((
                RowFields {
                    seq,
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
                },
                blob48(r, 14)?,
                blob48(r, 15)?,
            ))
        })();
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
                chunk.bytes.extend_from_slice(stored_prev);
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
        let linked = stored_prev == &prev && stored_hash == &hash;
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
    })
}
