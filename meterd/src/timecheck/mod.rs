//! Clock check: the meter locks with reason `clock` when its wall clock
//! goes back, and no sale is dated earlier than the ledger's last row.
//!
//! Postmarks carry the wall clock, which root can set. [`ClockGuard`]
//! judges it against witnesses root cannot set (see [`judge`] for the
//! arithmetic and why each witness answers which attack):
//!
//! * **at every sale** ([`ClockGuard::check_sale`], no TPM command: a
//!   postmark must not wait for the TPM), against CLOCK_BOOTTIME since the
//!   last accepted reading and since the first of this boot, and against the
//!   ledger's last row. A step back is caught at the next sale, not at the
//!   next tick; a walk in small steps adds up against the origin.
//! * **at every tick of the watchdog** ([`ClockGuard::tick`], at start and
//!   every `check_interval_ms`), the same, plus the TPM clock since the last
//!   TPM reading and since the first: across restarts and reboots, where the
//!   boot clock starts again, the TPM clock bounds how much time passed.
//!
//! The accepted readings (the anchors) are kept in `clock.json` in the state
//! directory, so a restart in the same boot is judged against the boot clock
//! and a reboot against the TPM clock. The file is a convenience witness:
//! root can rewrite it while the meter is stopped; the sealed witness is the
//! ledger's last row. The guard owns its state (no global); the caller
//! engages the lock on a bad judgement (the sale pipeline, the watchdog).
//!
//! While a `clock` lock is in force nothing moves. Once the authority clears
//! it ([`ClockGuard::cleared`], called where the Unlock row is made),
//! the current time is accepted as the new anchor, and the ledger floor is
//! waived until a row is later than the last row at the clear: rows and
//! tokens are dated at that last row's time until the wall clock passes it
//! (never earlier than the last row).

pub mod judge;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::Deserialize;

use crate::error::{Result, ServiceError};
use crate::housing::TpmClock;
pub use judge::{Anchors, BootMark, Judgement, Reading, TpmMark};

/// File of the anchors in the state directory.
pub const FILE: &str = "clock.json";

/// Judges the wall clock at every sale and every tick; owned by the meter.
#[derive(Debug)]
pub struct ClockGuard {
    path: PathBuf,
    boot_id: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    anchors: Anchors,
    /// The floor is waived while the last row is not later than this (set
    /// when a `clock` lock is cleared).
    waived_to: Option<i64>,
}

impl ClockGuard {
    /// A guard over `state_dir/clock.json` (read now; missing or unreadable
    /// means no anchors: the ledger floor alone until the first tick).
    pub fn new(state_dir: &Path) -> ClockGuard {
        let path = state_dir.join(FILE);
        let anchors = load(&path).unwrap_or_default();
        ClockGuard {
            path,
            boot_id: boot_id(),
            state: Mutex::new(State {
                anchors,
                ..State::default()
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain data; a panic elsewhere cannot leave it half-made.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The gate of every sale (no TPM command): the time to stamp, Unix ms,
    /// never earlier than `last_row_ms` (the ledger's last row time; 0 if
    /// none), or the fault. Call it only while no lock is in force; on a
    /// fault the caller locks the meter with reason `clock` and refuses.
    pub fn check_sale(&self, last_row_ms: i64) -> std::result::Result<i64, Judgement> {
        let now = Reading::now();
        let last = (last_row_ms > 0).then_some(last_row_ms);
        let st = self.state();
        match judge::judge_sale(now, &self.boot_id, &st.anchors, last, st.waived_to) {
            Judgement::Fine => Ok(judge::stamp(now, last)),
            bad => Err(bad),
        }
    }

    /// The watchdog's check, with the TPM clock just read: judges, and on
    /// `Fine` moves the anchors and writes them. While `clock_locked` nothing
    /// is judged or moved. The caller locks on anything but `Fine`.
    pub fn tick(
        &self,
        tpm: TpmClock,
        last_row_ms: Option<i64>,
        clock_locked: bool,
    ) -> Result<Judgement> {
        if clock_locked {
            return Ok(Judgement::Fine);
        }
        let now = Reading::now();
        let mut st = self.state();
        let verdict = judge::judge_tick(
            now,
            &self.boot_id,
            &tpm,
            &st.anchors,
            last_row_ms,
            st.waived_to,
        );
        if verdict.is_fine() {
            note_forward_step(&st.anchors, now, &self.boot_id);
            st.anchors = judge::advance(&st.anchors, now, &self.boot_id, &tpm);
            store(&self.path, &st.anchors)?;
        }
        Ok(verdict)
    }

    /// The authority clears a `clock` lock (called just before its Unlock
    /// row is committed; `last_row_ms` is the ledger's last row time): the
    /// current time
    /// becomes the new anchor, the TPM is read again at the next tick, and
    /// the ledger floor is waived up to `last_row_ms` (see the module doc).
    /// Written at the next tick.
    pub fn cleared(&self, last_row_ms: i64) {
        let now = Reading::now();
        let boot = BootMark::of(now, &self.boot_id);
        let mut st = self.state();
        st.anchors = Anchors {
            boot_origin: Some(boot.clone()),
            boot_last: Some(boot),
            tpm_origin: None,
            tpm_last: None,
        };
        st.waived_to = (last_row_ms > now.wall_ms).then_some(last_row_ms);
        tracing::info!(
            waived_to = ?st.waived_to,
            "clock lock cleared: the current time is accepted"
        );
    }

    /// The anchors in force (for tests and diagnostics).
    pub fn anchors(&self) -> Anchors {
        self.state().anchors.clone()
    }
}

fn note_forward_step(anchors: &Anchors, now: Reading, boot_id: &str) {
    if let Some(m) = anchors.boot_last.as_ref().filter(|m| m.boot_id == boot_id) {
        let drift = (now.wall_ms - now.boot_ms) - (m.wall_ms - m.boot_ms);
        if drift > judge::tolerance(now.boot_ms - m.boot_ms) {
            tracing::warn!(drift_ms = drift, "the wall clock stepped forward");
        }
    }
}

/// The kernel's boot id; if unreadable, an id of this process (marks of
/// another run are then never compared with the boot clock).
fn boot_id() -> String {
    match std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
        _ => format!(
            "process-{}-{}",
            std::process::id(),
            crate::clock::boot_millis()
        ),
    }
}

/// The first format of `clock.json`: one TPM reading.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyMark {
    system_ms: i64,
    tpm_ms: u64,
    reset_count: u32,
}

/// Reads the anchors; a missing or unreadable file is none (logged).
pub fn load(path: &Path) -> Option<Anchors> {
    let bytes = std::fs::read(path).ok()?;
    if let Ok(a) = serde_json::from_slice::<Anchors>(&bytes) {
        return Some(a);
    }
    match serde_json::from_slice::<LegacyMark>(&bytes) {
        Ok(m) => {
            let mark = TpmMark {
                wall_ms: m.system_ms,
                clock_ms: m.tpm_ms,
                reset_count: m.reset_count,
            };
            Some(Anchors {
                tpm_origin: Some(mark),
                tpm_last: Some(mark),
                ..Anchors::default()
            })
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "clock anchors unreadable; ignored");
            None
        }
    }
}

/// Writes the anchors atomically.
pub fn store(path: &Path, anchors: &Anchors) -> Result<()> {
    let json = serde_json::to_vec(anchors)
        .map_err(|e| ServiceError::Storage(format!("clock anchors encoding: {e}")))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| ServiceError::Storage(format!("{}: {e}", path.display())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn tpm(clock_ms: u64) -> TpmClock {
        TpmClock {
            clock_ms,
            reset_count: 1,
            restart_count: 0,
            safe: true,
        }
    }

    #[test]
    fn anchors_round_trip_and_the_first_format_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE);
        assert_eq!(load(&p), None);
        let g = ClockGuard::new(dir.path());
        assert!(g.tick(tpm(1_000), None, false).unwrap().is_fine());
        let a = load(&p).unwrap();
        assert_eq!(a, g.anchors());
        assert!(a.boot_origin.is_some() && a.tpm_origin.is_some());
        std::fs::write(&p, br#"{"system_ms":7,"tpm_ms":8,"reset_count":9}"#).unwrap();
        let legacy = load(&p).unwrap();
        assert_eq!(legacy.tpm_last.unwrap().clock_ms, 8);
        assert_eq!(legacy.boot_last, None);
        std::fs::write(&p, b"garbage").unwrap();
        assert_eq!(load(&p), None);
    }

    #[test]
    fn a_sale_is_stamped_no_earlier_than_the_last_row() {
        let dir = tempfile::tempdir().unwrap();
        let g = ClockGuard::new(dir.path());
        assert!(g.tick(tpm(1_000), None, false).unwrap().is_fine());
        let now = crate::clock::now_millis();
        let t = g.check_sale(now + 500).unwrap();
        assert!(t >= now + 500);
        assert!(matches!(
            g.check_sale(now + 60_000),
            Err(Judgement::Backwards { .. })
        ));
        assert!(g.check_sale(0).unwrap() >= now);
    }

    #[test]
    fn a_cleared_lock_accepts_the_time_and_waives_the_floor_to_the_last_row() {
        let dir = tempfile::tempdir().unwrap();
        let g = ClockGuard::new(dir.path());
        assert!(g.tick(tpm(1_000), None, false).unwrap().is_fine());
        // The last row is a day ahead of the wall clock (set back since).
        let ahead = crate::clock::now_millis() + 86_400_000;
        assert!(!g.tick(tpm(1_500), Some(ahead), false).unwrap().is_fine());
        assert!(g.check_sale(ahead).is_err());
        // Locked: nothing judged, nothing moved.
        let before = g.anchors();
        assert!(g.tick(tpm(2_000), Some(ahead), true).unwrap().is_fine());
        assert_eq!(g.anchors(), before);
        // Cleared, and a sale comes before the next tick: accepted, dated at
        // the last row.
        g.cleared(ahead);
        assert_eq!(g.check_sale(ahead).unwrap(), ahead);
        // Once a row is later than the waiver, the floor holds again.
        assert!(g.check_sale(ahead + 5_000).is_err());
        let t = g.tick(tpm(2_500), Some(ahead), false).unwrap();
        assert!(t.is_fine(), "{t:?}");
        assert!(g.anchors().tpm_origin.is_some());
    }
}
