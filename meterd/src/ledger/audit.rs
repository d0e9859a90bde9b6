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

use rusqlite::{Connection, OptionalExtension};

use super::chain;
use super::checkpoint::{self, Start};
use super::scan::{blob48, int, scan, scan_parallel, Scan};
use super::schema::{self, storage};
use super::writer::{not_defined, Tip};
use super::{AuditReport, Digest, LedgerError, LockInfo, Result, Sealer, Verdict};

/// What the audit hands back to the writer.
pub(crate) struct AuditOutcome {
    pub report: AuditReport,
    pub tip: Tip,
    /// Counter value after any roll-forward.
    pub tpm_nv: u64,
}

pub(crate) struct BatchRec {
    pub first: u64,
    pub last: u64,
    pub nv: u64,
    pub head: Option<Digest>,
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
        created: false,
    };
    let tip = Tip {
        seq: last_seq,
        head: prev,
        registers: regs,
        lock,
        nv: ledger_nv,
        time: 0,
    };
    Ok(AuditOutcome {
        report,
        tip,
        tpm_nv,
    })
}
