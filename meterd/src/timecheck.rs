//! Clock check: lock with reason `clock` when time went backwards.
//!
//! The patent's secure clock is the TPM's: its `clock_ms` only moves forward
//! while the TPM runs, and `reset_count` tells one power epoch from the next.
//! The system clock (what postmarks carry) is checked against it: the last
//! (system time, TPM clock, reset count) reading is kept in `clock.json` in
//! the state directory, and the time of the ledger's last row is a second,
//! sealed witness. The meter locks when
//!
//! * system time is earlier than the latest of those two minus a tolerance
//!   (the clock was set back), or
//! * within one TPM reset epoch, system time advanced much less than the TPM
//!   clock (set back and then partly forward between two checks).
//!
//! Reading the TPM per sale would put a TPM command in front of every
//! postmark, so the check runs at start and then every
//! [`CHECK_INTERVAL`] in the background ([`crate::inspection::start`]).
//! Deleting `clock.json` only drops the first witness: the ledger's row
//! times stay. While a `clock` lock is in force the reading is not moved;
//! once the authority clears it, the current time is accepted as the new mark.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock;
use crate::error::{Result, ServiceError};
use crate::housing::TpmClock;

/// How often the background task checks the clock and the inspection deadline.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// The last accepted reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockMark {
    /// System time, Unix ms (the meter's clock).
    pub system_ms: i64,
    /// TPM clock, ms.
    pub tpm_ms: u64,
    /// TPM reset count.
    pub reset_count: u32,
}

/// What a check concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Time moved forward (or stood within the tolerance).
    Fine,
    /// System time is before a time already seen.
    Backwards {
        /// System time now, Unix ms.
        now_ms: i64,
        /// Latest time seen before, Unix ms.
        floor_ms: i64,
    },
    /// System time advanced much less than the TPM clock in one epoch.
    Slow {
        /// System time elapsed, ms.
        system_ms: i64,
        /// TPM time elapsed, ms.
        tpm_ms: i64,
    },
}

/// Judges a reading against the previous mark and the ledger's last row time.
///
/// The TPM clock may drift from real time, so the slow check allows the
/// tolerance plus 5 % of the TPM interval.
pub fn judge(
    prev: Option<&ClockMark>,
    ledger_last_ms: Option<i64>,
    now_ms: i64,
    tpm: &TpmClock,
    tolerance_ms: i64,
) -> Judgement {
    let floor = prev
        .map(|m| m.system_ms)
        .into_iter()
        .chain(ledger_last_ms)
        .max();
    if let Some(floor_ms) = floor {
        if now_ms < floor_ms.saturating_sub(tolerance_ms) {
            return Judgement::Backwards { now_ms, floor_ms };
        }
    }
    if let Some(m) = prev {
        if m.reset_count == tpm.reset_count && tpm.clock_ms >= m.tpm_ms {
            let tpm_ms = i64::try_from(tpm.clock_ms - m.tpm_ms).unwrap_or(i64::MAX);
            let system_ms = now_ms.saturating_sub(m.system_ms);
            let allowed = tolerance_ms.saturating_add(tpm_ms / 20);
            if system_ms < tpm_ms.saturating_sub(allowed) {
                return Judgement::Slow { system_ms, tpm_ms };
            }
        }
    }
    Judgement::Fine
}

/// Reads a mark file; a missing or unreadable file is no mark (logged).
pub fn load(path: &Path) -> Option<ClockMark> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "clock mark unreadable; ignored");
            None
        }
    }
}

/// Writes a mark file atomically.
pub fn store(path: &Path, mark: &ClockMark) -> Result<()> {
    let json = serde_json::to_vec(mark)
        .map_err(|e| ServiceError::Storage(format!("clock mark encoding: {e}")))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| ServiceError::Storage(format!("{}: {e}", path.display())))
}

/// The clock watcher: judges every sale against the last reading
/// (no TPM command) and, at each tick, the TPM clock against the mark.
#[derive(Debug)]
pub struct ClockGuard {
    path: PathBuf,
    tolerance_ms: i64,
    state: Mutex<GuardState>,
}

#[derive(Debug, Default)]
struct GuardState {
    prev: Option<ClockMark>,
    was_clock_locked: Option<bool>,
}

impl ClockGuard {
    /// Guard over `state_dir/clock.json` allowing `tolerance_ms` of slack.
    pub fn new(state_dir: &Path, tolerance_ms: i64) -> ClockGuard {
        let path = state_dir.join("clock.json");
        let prev = load(&path);
        ClockGuard {
            path,
            tolerance_ms,
            state: Mutex::new(GuardState {
                prev,
                was_clock_locked: None,
            }),
        }
    }

    /// Per-sale check: the time to stamp (Unix ms), never earlier than the
    /// ledger's last row; a clock behind that row beyond the tolerance is a
    /// bad judgement.
    pub fn check_sale(&self, last_row_ms: i64) -> std::result::Result<i64, Judgement> {
        let now_ms = clock::now_millis();
        if now_ms < last_row_ms.saturating_sub(self.tolerance_ms) {
            return Err(Judgement::Backwards {
                now_ms,
                floor_ms: last_row_ms,
            });
        }
        Ok(now_ms.max(last_row_ms))
    }

    /// One background check against the TPM clock `tpm`: judges, records
    /// the reading when fine, and returns the judgement; the caller locks
    /// on a bad one. While a `clock` lock is in force the reading is not
    /// moved; once the authority clears it, the current time is accepted.
    pub fn tick(
        &self,
        tpm: TpmClock,
        last_row_ms: Option<i64>,
        clock_locked: bool,
    ) -> Result<Judgement> {
        let now_ms = clock::now_millis();
        let mark = ClockMark {
            system_ms: now_ms,
            tpm_ms: tpm.clock_ms,
            reset_count: tpm.reset_count,
        };
        let mut st = self
            .state
            .lock()
            .map_err(|_| ServiceError::Internal("clock guard lock poisoned".into()))?;
        let cleared = st.was_clock_locked == Some(true) && !clock_locked;
        st.was_clock_locked = Some(clock_locked);
        if clock_locked {
            return Ok(Judgement::Fine);
        }
        if cleared {
            tracing::info!("clock lock cleared: accepting the current time");
            store(&self.path, &mark)?;
            st.prev = Some(mark);
            return Ok(Judgement::Fine);
        }
        let verdict = judge(
            st.prev.as_ref(),
            last_row_ms,
            now_ms,
            &tpm,
            self.tolerance_ms,
        );
        match verdict {
            Judgement::Fine => {
                store(&self.path, &mark)?;
                st.prev = Some(mark);
            }
            _ => st.was_clock_locked = Some(true),
        }
        Ok(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpm(ms: u64, reset: u32) -> TpmClock {
        TpmClock {
            clock_ms: ms,
            reset_count: reset,
            restart_count: 0,
            safe: true,
        }
    }

    const TOL: i64 = 300_000;

    #[test]
    fn forward_time_is_fine() {
        let m = ClockMark {
            system_ms: 1_000_000_000,
            tpm_ms: 5_000,
            reset_count: 1,
        };
        let j = judge(
            Some(&m),
            Some(999_000_000),
            1_000_010_000,
            &tpm(15_000, 1),
            TOL,
        );
        assert_eq!(j, Judgement::Fine);
        // A forward jump (NTP, or a test clock) is not a lock reason.
        let j = judge(Some(&m), None, 9_000_000_000, &tpm(15_000, 1), TOL);
        assert_eq!(j, Judgement::Fine);
        assert_eq!(judge(None, None, 5, &tpm(0, 0), TOL), Judgement::Fine);
    }

    #[test]
    fn backwards_against_mark_or_ledger() {
        let m = ClockMark {
            system_ms: 1_000_000_000,
            tpm_ms: 5_000,
            reset_count: 1,
        };
        let now = 1_000_000_000 - 3_600_000;
        assert!(matches!(
            judge(Some(&m), None, now, &tpm(6_000, 2), TOL),
            Judgement::Backwards { .. }
        ));
        // Without the mark file, the ledger's last row still witnesses.
        assert!(matches!(
            judge(None, Some(1_000_000_000), now, &tpm(6_000, 2), TOL),
            Judgement::Backwards { .. }
        ));
        // Within the tolerance: fine.
        assert_eq!(
            judge(Some(&m), None, 1_000_000_000 - 1_000, &tpm(6_000, 1), TOL),
            Judgement::Fine
        );
    }

    #[test]
    fn slow_within_one_epoch_only() {
        let m = ClockMark {
            system_ms: 1_000_000_000,
            tpm_ms: 0,
            reset_count: 3,
        };
        // The TPM ran a day, the system clock an hour: set back in between.
        let day = 86_400_000u64;
        let now = 1_000_000_000 + 3_600_000;
        assert!(matches!(
            judge(Some(&m), None, now, &tpm(day, 3), TOL),
            Judgement::Slow { .. }
        ));
        // After a TPM reset the intervals are not comparable.
        assert_eq!(
            judge(Some(&m), None, now, &tpm(day, 4), TOL),
            Judgement::Fine
        );
    }

    #[test]
    fn mark_file_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("clock.json");
        assert_eq!(load(&p), None);
        let m = ClockMark {
            system_ms: 7,
            tpm_ms: 8,
            reset_count: 9,
        };
        store(&p, &m).expect("store");
        assert_eq!(load(&p), Some(m));
        std::fs::write(&p, b"garbage").expect("write");
        assert_eq!(load(&p), None);
    }
}
