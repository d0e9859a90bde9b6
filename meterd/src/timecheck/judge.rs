//! The arithmetic of the clock check: pure functions over readings and
//! marks, so that every case (steps, walks, slews, restarts, TPM clock
//! jumps) is a unit test.
//!
//! Three witnesses, each answering a different attack:
//!
//! * **CLOCK_BOOTTIME** (within one boot). Linux advances the wall clock and
//!   the boot clock at the same rate (NTP's frequency corrections apply to
//!   both); only a step (`date -s`, `clock_settime`, NTP's step mode) or a
//!   leap second moves one against the other. So `wall − boot` stays put
//!   within 1 s plus 500 ppm of the elapsed time (the most NTP ever corrects,
//!   [`tolerance`]). It is compared with the last accepted reading (a step
//!   is caught at the next sale) and with the boot's first accepted reading,
//!   the origin (a walk in small steps adds up and is caught once the sum
//!   passes the tolerance of the whole elapsed time).
//! * **The TPM clock** (across restarts and reboots). It counts milliseconds
//!   while the TPM is powered and never goes back (TPM2_ClockSet only moves
//!   it forward), so the wall clock must advance at least as much as the TPM
//!   clock, less [`TPM_DRIFT_DIVISOR`] (5 %) for the TPM's oscillator, since
//!   the last reading and since the origin.
//! * **The ledger's last row** (sealed). No time may be earlier than it,
//!   less [`BASE_TOLERANCE_MS`].
//!
//! A forward step is not a fault (NTP correcting a slow RTC at boot); only
//! what is earlier than a time already witnessed is.

use serde::{Deserialize, Serialize};

use crate::housing::TpmClock;

/// Fixed part of every tolerance: jitter between reading two clocks, a leap
/// second, and rounding.
pub const BASE_TOLERANCE_MS: i64 = 1_000;
/// Largest rate, in parts per million, at which the wall clock may move
/// against CLOCK_BOOTTIME (NTP's maximum slew).
pub const SLEW_PPM: i64 = 500;
/// The TPM clock may run fast by 1/20 (5 %) of the elapsed time.
pub const TPM_DRIFT_DIVISOR: i64 = 20;

/// `1 s + 500 ppm × elapsed`: how far the wall clock may move back against
/// CLOCK_BOOTTIME over `elapsed_ms`.
pub fn tolerance(elapsed_ms: i64) -> i64 {
    BASE_TOLERANCE_MS.saturating_add(elapsed_ms.max(0).saturating_mul(SLEW_PPM) / 1_000_000)
}

/// `1 s + 5 % × TPM elapsed`: how much less than the TPM clock the wall
/// clock may advance.
pub fn tpm_allowance(tpm_elapsed_ms: i64) -> i64 {
    BASE_TOLERANCE_MS.saturating_add(tpm_elapsed_ms.max(0) / TPM_DRIFT_DIVISOR)
}

/// The wall clock and CLOCK_BOOTTIME, read together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Wall clock, Unix ms.
    pub wall_ms: i64,
    /// CLOCK_BOOTTIME, ms.
    pub boot_ms: i64,
}

impl Reading {
    /// Reads both clocks now.
    pub fn now() -> Reading {
        Reading {
            wall_ms: crate::clock::now_millis(),
            boot_ms: crate::clock::boot_millis(),
        }
    }
}

/// An accepted reading of the wall clock against CLOCK_BOOTTIME.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootMark {
    /// Wall clock, Unix ms.
    pub wall_ms: i64,
    /// CLOCK_BOOTTIME, ms.
    pub boot_ms: i64,
    /// The kernel's boot id: boot clocks of two boots are not comparable.
    pub boot_id: String,
}

impl BootMark {
    /// The mark of `r` taken in boot `boot_id`.
    pub fn of(r: Reading, boot_id: &str) -> BootMark {
        BootMark {
            wall_ms: r.wall_ms,
            boot_ms: r.boot_ms,
            boot_id: boot_id.to_owned(),
        }
    }
}

/// An accepted reading of the wall clock against the TPM clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmMark {
    /// Wall clock, Unix ms.
    pub wall_ms: i64,
    /// TPM clock, ms.
    pub clock_ms: u64,
    /// TPM reset count.
    pub reset_count: u32,
}

impl TpmMark {
    /// The mark of wall time `wall_ms` read with `tpm`.
    pub fn of(wall_ms: i64, tpm: &TpmClock) -> TpmMark {
        TpmMark {
            wall_ms,
            clock_ms: tpm.clock_ms,
            reset_count: tpm.reset_count,
        }
    }
}

/// What the guard measures against (kept in `clock.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchors {
    /// First accepted reading of this boot (walks add up against it).
    pub boot_origin: Option<BootMark>,
    /// Last accepted reading (steps since it are caught at the next sale).
    pub boot_last: Option<BootMark>,
    /// First accepted TPM reading (kept across boots).
    pub tpm_origin: Option<TpmMark>,
    /// Last accepted TPM reading.
    pub tpm_last: Option<TpmMark>,
}

/// What a check concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Time moved forward, or stood within the tolerance.
    Fine,
    /// The wall clock is before a time already witnessed (the ledger's last
    /// row, or the last accepted reading).
    Backwards {
        /// Wall clock now, Unix ms.
        now_ms: i64,
        /// The time witnessed, Unix ms.
        floor_ms: i64,
    },
    /// The wall clock moved back against CLOCK_BOOTTIME (a step, or a walk
    /// adding up) by more than [`tolerance`].
    Stepped {
        /// How far it moved, ms (negative: back).
        drift_ms: i64,
        /// How far it was allowed to, ms.
        allowed_ms: i64,
    },
    /// The wall clock advanced much less than the TPM clock.
    Slow {
        /// Wall clock elapsed, ms.
        system_ms: i64,
        /// TPM clock elapsed, ms.
        tpm_ms: i64,
    },
}

impl Judgement {
    /// Whether the check passed.
    pub fn is_fine(&self) -> bool {
        matches!(self, Judgement::Fine)
    }
}

/// The wall clock against one boot mark (`Fine` if of another boot).
pub fn against_boot(now: Reading, boot_id: &str, mark: &BootMark) -> Judgement {
    if mark.boot_id.is_empty() || mark.boot_id != boot_id || now.boot_ms < mark.boot_ms {
        return Judgement::Fine;
    }
    let elapsed = now.boot_ms - mark.boot_ms;
    let drift = now
        .wall_ms
        .saturating_sub(now.boot_ms)
        .saturating_sub(mark.wall_ms.saturating_sub(mark.boot_ms));
    let allowed = tolerance(elapsed);
    if drift < -allowed {
        return Judgement::Stepped {
            drift_ms: drift,
            allowed_ms: allowed,
        };
    }
    Judgement::Fine
}

/// Whether the TPM clock can bound the time since `mark`: it only moves
/// forward, unless the TPM lost its last clock update (an unorderly
/// shutdown, next reset count) or its state was replaced (a software TPM's
/// file rolled back; the ledger's NV counter answers that).
pub fn tpm_comparable(tpm: &TpmClock, mark: &TpmMark) -> bool {
    tpm.reset_count >= mark.reset_count && tpm.clock_ms >= mark.clock_ms
}

/// The wall clock against one TPM mark.
pub fn against_tpm(wall_ms: i64, tpm: &TpmClock, mark: &TpmMark) -> Judgement {
    if !tpm_comparable(tpm, mark) {
        return Judgement::Fine;
    }
    let tpm_ms = i64::try_from(tpm.clock_ms - mark.clock_ms).unwrap_or(i64::MAX);
    let system_ms = wall_ms.saturating_sub(mark.wall_ms);
    if system_ms < tpm_ms.saturating_sub(tpm_allowance(tpm_ms)) {
        return Judgement::Slow { system_ms, tpm_ms };
    }
    Judgement::Fine
}

/// The wall clock against the ledger's last row, unless the authority
/// accepted the time below it (`waived_to`: the last row's time when a
/// `clock` lock was cleared; the floor applies again once a row is later).
pub fn against_floor(wall_ms: i64, last_row_ms: Option<i64>, waived_to: Option<i64>) -> Judgement {
    match last_row_ms {
        Some(floor) if waived_to.is_some_and(|w| floor <= w) => Judgement::Fine,
        Some(floor_ms) if wall_ms < floor_ms.saturating_sub(BASE_TOLERANCE_MS) => {
            Judgement::Backwards {
                now_ms: wall_ms,
                floor_ms,
            }
        }
        _ => Judgement::Fine,
    }
}

/// Everything a sale can check without the TPM: the ledger floor, then the
/// last accepted reading and the boot's origin.
pub fn judge_sale(
    now: Reading,
    boot_id: &str,
    anchors: &Anchors,
    last_row_ms: Option<i64>,
    waived_to: Option<i64>,
) -> Judgement {
    let checks = [
        Some(against_floor(now.wall_ms, last_row_ms, waived_to)),
        anchors
            .boot_last
            .as_ref()
            .map(|m| against_boot(now, boot_id, m)),
        anchors
            .boot_origin
            .as_ref()
            .map(|m| against_boot(now, boot_id, m)),
    ];
    first_fault(checks)
}

/// The watchdog's check: [`judge_sale`], then the wall clock against the
/// TPM clock since the last TPM reading and since the TPM origin.
pub fn judge_tick(
    now: Reading,
    boot_id: &str,
    tpm: &TpmClock,
    anchors: &Anchors,
    last_row_ms: Option<i64>,
    waived_to: Option<i64>,
) -> Judgement {
    let sale = judge_sale(now, boot_id, anchors, last_row_ms, waived_to);
    if !sale.is_fine() {
        return sale;
    }
    let checks = [
        anchors
            .tpm_last
            .as_ref()
            .map(|m| against_tpm(now.wall_ms, tpm, m)),
        anchors
            .tpm_origin
            .as_ref()
            .map(|m| against_tpm(now.wall_ms, tpm, m)),
    ];
    first_fault(checks)
}

fn first_fault<const N: usize>(checks: [Option<Judgement>; N]) -> Judgement {
    checks
        .into_iter()
        .flatten()
        .find(|j| !j.is_fine())
        .unwrap_or(Judgement::Fine)
}

/// The anchors after an accepted tick: the last marks move to now; the
/// origins stay, unless they are of another boot or the TPM cannot be
/// compared with them any more.
pub fn advance(anchors: &Anchors, now: Reading, boot_id: &str, tpm: &TpmClock) -> Anchors {
    let boot_mark = BootMark::of(now, boot_id);
    let tpm_mark = TpmMark::of(now.wall_ms, tpm);
    let boot_origin = match &anchors.boot_origin {
        Some(o) if !o.boot_id.is_empty() && o.boot_id == boot_id && o.boot_ms <= now.boot_ms => {
            o.clone()
        }
        _ => boot_mark.clone(),
    };
    let tpm_origin = match &anchors.tpm_origin {
        Some(o) if tpm_comparable(tpm, o) => *o,
        _ => tpm_mark,
    };
    Anchors {
        boot_origin: Some(boot_origin),
        boot_last: Some(boot_mark),
        tpm_origin: Some(tpm_origin),
        tpm_last: Some(tpm_mark),
    }
}

/// The time to stamp on a sale that passed: never earlier than the last row.
pub fn stamp(now: Reading, last_row_ms: Option<i64>) -> i64 {
    last_row_ms.map_or(now.wall_ms, |f| now.wall_ms.max(f))
}

#[cfg(test)]
#[path = "judge_tests.rs"]
mod tests;
