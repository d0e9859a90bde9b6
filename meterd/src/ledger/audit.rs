//! The audit: one pass over the journal in seq order that recomputes the
//! chain, checks the registers, epochs and batch heads, then verifies the
//! last seal (`verify.rs`) and, at start and on demand, compares the
//! ledger's epoch with the TPM's counter.
//!
//! Only the last seal is verified: it signs the head (or the last row's
//! link), which commits to every row before it through the recomputed
//! chain. Damage found before a verified `reanchor` Unlock row is forgiven
//! (the authority reviewed it); the reanchor row itself verifies only if it
//! was chained onto the chain as recomputed, so any later edit before it
//! breaks it again.

use std::time::Instant;

use rusqlite::{Connection, OptionalExtension};

use super::checkpoint::{self, Start};
use super::rows::{not_defined, Tip};
use super::scan::{blob48, int, scan, scan_parallel, BatchRec, Scan};
use super::schema::{self, storage};
use super::sealer::{counter_increment, counter_read};
use super::verify::{last_batch, last_seal};
use super::{AuditReport, LedgerError, LockInfo, Result, Sealer, Verdict};

/// Which audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// At start: from the last signed checkpoint when one verifies, against
    /// the TPM counter (rolled forward when one epoch behind), checkpoint
    /// written when clean.
    Start,
    /// On demand: from genesis, against the TPM counter, checkpoint written.
    Full,
    /// In the background after a start, on a read-only connection: from
    /// genesis, chain and last seal only (the start judged the counter);
    /// writes nothing.
    History,
}

/// What the audit hands back.
pub(crate) struct AuditOutcome {
    pub report: AuditReport,
    pub tip: Tip,
    /// Counter value after any roll-forward (`None`: not read, or not defined).
    pub tpm_nv: Option<u64>,
    /// Sequence number of the Lock row in force (0: none).
    pub lock_seq: u64,
}

fn load_batches(
    conn: &Connection,
    after: u64,
    damage: &mut Vec<(u64, String)>,
) -> Result<Vec<BatchRec>> {
    let mut stmt = conn
        .prepare(
            "SELECT first_seq, last_seq, nv, head, length(seal) FROM batches
             WHERE last_seq > ?1 ORDER BY batch",
        )
        .map_err(storage)?;
    let mut rows = stmt
        .query([i64::try_from(after).unwrap_or(i64::MAX)])
        .map_err(storage)?;
    let mut out: Vec<BatchRec> = Vec::new();
    while let Some(r) = rows.next().map_err(storage)? {
        let (Some(first), Some(last), Some(nv)) = (int(r, 0), int(r, 1), int(r, 2)) else {
            let at = out.last().map_or(after + 1, |b| b.last + 1);
            damage.push((at, "batch row has malformed columns".into()));
            continue;
        };
        let expected = out.last().map_or(after + 1, |b| b.last.saturating_add(1));
        if first != expected || last < first {
            damage.push((
                first.min(expected),
                format!("batch {first}..={last} does not follow the previous batch"),
            ));
        }
        out.push(BatchRec {
            first,
            last,
            nv,
            head: blob48(r, 3).copied(),
            empty_seal: int(r, 4) == Some(0),
        });
    }
    damage.sort_by_key(|d| d.0);
    Ok(out)
}

/// Audits the ledger (see [`Mode`]). Storage and housing failures are
/// errors, not verdicts.
pub(crate) fn run(
    conn: &Connection,
    meter_id: &str,
    sealer: &dyn Sealer,
    mode: Mode,
) -> Result<AuditOutcome> {
    schema::set_mmap(conn, true)?;
    let out = run_mapped(conn, meter_id, sealer, mode);
    let unmapped = schema::set_mmap(conn, false);
    let out = out?;
    unmapped?;
    Ok(out)
}

fn run_mapped(
    conn: &Connection,
    meter_id: &str,
    sealer: &dyn Sealer,
    mode: Mode,
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
    let from = match mode {
        Mode::Start => checkpoint::load(conn, meter_id, sealer.public_key())?,
        Mode::Full | Mode::History => None,
    }
    .unwrap_or_else(|| Start::genesis(meter_id));
    let from_seq = from.seq;
    // Batches that end at or before the checkpoint were verified with it.
    let mut batch_damage = Vec::new();
    let batches = load_batches(conn, from.seq, &mut batch_damage)?;

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
        track,
    } = scan;
    let last_seq = expected_seq.saturating_sub(1);
    if rows == 0 {
        return Err(LedgerError::Storage("ledger has no rows".into()));
    }

    let last = last_batch(conn)?;
    let ledger_nv = match &last {
        None => {
            fatal.get_or_insert_with(|| "no sealed batch".into());
            0
        }
        Some(b) => {
            if let Some(bl) = batches.last() {
                if bl.last == last_seq && bl.head != Some(prev) {
                    damage.record(last_seq, || {
                        format!("last batch head does not match row {last_seq}")
                    });
                }
                if bl.last != last_seq {
                    damage.record(bl.last.min(last_seq + 1), || {
                        format!(
                            "last batch ends at row {}, journal at row {last_seq}",
                            bl.last
                        )
                    });
                }
            }
            match last_seal(conn, meter_id, sealer, &track, b)? {
                Ok(nv) => nv,
                Err(why) => {
                    fatal.get_or_insert(why);
                    b.nv.unwrap_or(0)
                }
            }
        }
    };

    let tpm_read = match mode {
        Mode::History => Some(ledger_nv),
        Mode::Start | Mode::Full => counter_read(sealer)?,
    };
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
        tpm_nv = counter_increment(sealer)?;
        Verdict::RolledForward
    } else if ledger_nv < tpm_nv {
        Verdict::Rollback { ledger_nv, tpm_nv }
    } else {
        Verdict::Tamper {
            detail: format!(
                "ledger epoch {ledger_nv} is ahead of the TPM counter {tpm_nv} by more than one"
            ),
            first_bad_seq: None,
        }
    };

    let lock_seq = lock_at.as_ref().map_or(0, |l| l.0);
    let clean = matches!(verdict, Verdict::Clean | Verdict::RolledForward);
    if clean && mode != Mode::History {
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
                nonce: String::from_utf8_lossy(
                    super::chain::split_lock_product(&nonce.unwrap_or_default()).0,
                )
                .into_owned(),
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
        from_seq,
    };
    let tip = Tip {
        seq: last_seq,
        head: prev,
        registers: regs,
        lock,
        nv: ledger_nv,
        epoch_seq: track.epoch_seq,
        time_ms: super::query::last_time_in(conn)?.unwrap_or(0),
    };
    Ok(AuditOutcome {
        report,
        tip,
        tpm_nv: tpm_read.map(|_| tpm_nv),
        lock_seq,
    })
}
