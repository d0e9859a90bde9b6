//! The judgement arithmetic, case by case.

use super::*;

const BOOT: &str = "boot-a";
const T0: i64 = 1_800_000_000_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

fn tpm(clock_ms: u64, reset_count: u32) -> TpmClock {
    TpmClock {
        clock_ms,
        reset_count,
        restart_count: 0,
        safe: true,
    }
}

fn at(wall_ms: i64, boot_ms: i64) -> Reading {
    Reading { wall_ms, boot_ms }
}

/// Anchors after one accepted tick at wall T0, boot 10 s, TPM 50 s.
fn started() -> Anchors {
    advance(&Anchors::default(), at(T0, 10_000), BOOT, &tpm(50_000, 3))
}

fn is_stepped(j: &Judgement) -> bool {
    matches!(j, Judgement::Stepped { .. })
}

#[test]
fn tolerance_is_one_second_plus_500_ppm() {
    assert_eq!(tolerance(0), 1_000);
    assert_eq!(tolerance(-5), 1_000);
    assert_eq!(tolerance(10_000), 1_005);
    assert_eq!(tolerance(DAY), 1_000 + 43_200);
    // 90 days: 1 h 4 min 48 s.
    assert_eq!(tolerance(90 * DAY), 1_000 + 3_888_000);
    assert_eq!(tpm_allowance(20_000), 2_000);
}

#[test]
fn time_going_forward_is_fine() {
    let a = started();
    // Ten seconds later, both clocks moved ten seconds.
    let now = at(T0 + 10_000, 20_000);
    assert!(judge_sale(now, BOOT, &a, Some(T0), None).is_fine());
    assert!(judge_tick(now, BOOT, &tpm(60_000, 3), &a, Some(T0), None).is_fine());
    // A forward step (NTP at boot, a test clock) is not a fault.
    let ahead = at(T0 + 2 * DAY, 20_000);
    assert!(judge_tick(ahead, BOOT, &tpm(60_000, 3), &a, Some(T0), None).is_fine());
}

#[test]
fn a_step_back_is_caught_at_the_next_sale() {
    let a = started();
    // 300 days back, one second after the last tick.
    let now = at(T0 + 1_000 - 300 * DAY, 11_000);
    assert!(matches!(
        judge_sale(now, BOOT, &a, None, None),
        Judgement::Stepped { drift_ms, allowed_ms: 1_000 } if drift_ms == -300 * DAY
    ));
    // Two seconds back is already a step.
    let now = at(T0 + 1_000 - 2_000, 11_000);
    assert!(is_stepped(&judge_sale(now, BOOT, &a, None, None)));
    // Within the second: jitter, fine.
    let now = at(T0 + 1_000 - 900, 11_000);
    assert!(judge_sale(now, BOOT, &a, None, None).is_fine());
}

#[test]
fn the_ledger_floor_holds_without_any_mark() {
    let none = Anchors::default();
    assert!(matches!(
        judge_sale(at(T0 - 5_000, 1), BOOT, &none, Some(T0), None),
        Judgement::Backwards { now_ms, floor_ms: T0 } if now_ms == T0 - 5_000
    ));
    assert!(judge_sale(at(T0 - 500, 1), BOOT, &none, Some(T0), None).is_fine());
    // Stamped never earlier than the last row.
    assert_eq!(stamp(at(T0 - 500, 1), Some(T0)), T0);
    assert_eq!(stamp(at(T0 + 7, 1), Some(T0)), T0 + 7);
    assert_eq!(stamp(at(T0 + 7, 1), None), T0 + 7);
}

#[test]
fn a_floor_waived_by_a_clear_holds_again_once_a_row_is_later() {
    let none = Anchors::default();
    let wall = T0 - DAY;
    // The authority cleared the lock with the last row at T0.
    assert!(judge_sale(at(wall, 1), BOOT, &none, Some(T0), Some(T0)).is_fine());
    // Rows stamped at T0 (frozen) keep the waiver.
    assert!(judge_sale(at(wall + 10, 1), BOOT, &none, Some(T0), Some(T0)).is_fine());
    // A row later than the waiver: the floor is back.
    assert!(!judge_sale(at(wall, 1), BOOT, &none, Some(T0 + 1), Some(T0)).is_fine());
}

#[test]
fn a_walk_adds_up_against_the_origin() {
    // The watchdog accepts a reading every 10 s; each time the wall clock
    // went 0.6 s back: under the 1 s a single check allows.
    let mut a = started();
    let mut caught = None;
    for k in 1..=10 {
        let boot = 10_000 + k * 10_000;
        let now = at(T0 + k * 10_000 - k * 600, boot);
        let clock = tpm(50_000 + (k * 10_000) as u64, 3);
        // Against the last reading alone it passes.
        let last = a.boot_last.clone().unwrap();
        assert!(against_boot(now, BOOT, &last).is_fine());
        let j = judge_tick(now, BOOT, &clock, &a, None, None);
        if !j.is_fine() {
            caught = Some((k, j));
            break;
        }
        a = advance(&a, now, BOOT, &clock);
    }
    let (k, j) = caught.expect("the walk must be caught");
    // 1.2 s after two ticks > 1 s + 500 ppm × 20 s.
    assert_eq!(k, 2, "{j:?}");
    assert!(is_stepped(&j), "{j:?}");
}

#[test]
fn the_280_s_walk_is_caught_at_the_first_step() {
    let a = started();
    let now = at(T0 + 10_000 - 280_000, 20_000);
    // Earlier than the last row: caught by the floor first.
    assert!(matches!(
        judge_sale(now, BOOT, &a, Some(T0), None),
        Judgement::Backwards { .. }
    ));
    // With no row since, by the boot clock.
    assert!(is_stepped(&judge_sale(now, BOOT, &a, None, None)));
}

#[test]
fn slewing_within_500_ppm_is_accepted() {
    // NTP slews the wall clock 500 ppm slower than the boot clock for a
    // day, a tick every 10 s: every check passes.
    let mut a = started();
    for k in 1..=8_640_i64 {
        let boot = 10_000 + k * 10_000;
        let wall = T0 + k * 10_000 - k * 10_000 * SLEW_PPM / 1_000_000;
        let now = at(wall, boot);
        let clock = tpm(50_000 + (k * 10_000) as u64, 3);
        let j = judge_tick(now, BOOT, &clock, &a, None, None);
        assert!(j.is_fine(), "tick {k}: {j:?}");
        a = advance(&a, now, BOOT, &clock);
    }
    // The origin stayed: a day of 500 ppm is 43.2 s behind it, allowed.
    assert_eq!(a.boot_origin.as_ref().unwrap().boot_ms, 10_000);
    // At 600 ppm the same day is caught.
    let mut a = started();
    let mut caught = false;
    for k in 1..=8_640_i64 {
        let now = at(T0 + k * 10_000 - k * 6, 10_000 + k * 10_000);
        let clock = tpm(50_000 + (k * 10_000) as u64, 3);
        if !judge_tick(now, BOOT, &clock, &a, None, None).is_fine() {
            caught = true;
            break;
        }
        a = advance(&a, now, BOOT, &clock);
    }
    assert!(caught, "a walk at 600 ppm must add up past the tolerance");
}

#[test]
fn a_restart_in_the_same_boot_keeps_the_boot_clock() {
    // clock.json from the previous run, same boot id: the boot clock is
    // comparable, so a restart with the clock 2 s back is caught.
    let a = started();
    let now = at(T0 + 60_000 - 2_000, 70_000);
    assert!(is_stepped(&judge_tick(
        now,
        BOOT,
        &tpm(110_000, 3),
        &a,
        None,
        None
    )));
    // Same restart, clock right: fine, and the origin is kept.
    let now = at(T0 + 60_000, 70_000);
    assert!(judge_tick(now, BOOT, &tpm(110_000, 3), &a, None, None).is_fine());
    let b = advance(&a, now, BOOT, &tpm(110_000, 3));
    assert_eq!(b.boot_origin, a.boot_origin);
}

#[test]
fn a_reboot_is_bounded_by_the_tpm_clock() {
    let a = started();
    // Rebooted: new boot id, later reset count; the TPM ran 5 min more.
    let clock = tpm(50_000 + 300_000, 4);
    let boot = "boot-b";
    // The wall clock says only 1 min passed: set back 4 min.
    let now = at(T0 + 60_000, 20_000);
    assert!(matches!(
        judge_tick(now, boot, &clock, &a, None, None),
        Judgement::Slow {
            system_ms: 60_000,
            tpm_ms: 300_000
        }
    ));
    // The wall clock says a day passed (powered off in between): fine, and
    // the boot origin starts again in the new boot; the TPM origin stays.
    let now = at(T0 + DAY, 20_000);
    assert!(judge_tick(now, boot, &clock, &a, None, None).is_fine());
    let b = advance(&a, now, boot, &clock);
    assert_eq!(b.boot_origin.as_ref().unwrap().boot_id, boot);
    assert_eq!(b.tpm_origin, a.tpm_origin);
    // Same reset count after a restart of the daemon alone: compared too.
    let now = at(T0 + 60_000, 20_000);
    assert!(!judge_tick(now, boot, &tpm(350_000, 3), &a, None, None).is_fine());
}

#[test]
fn the_tpm_clock_running_5_percent_fast_is_tolerated() {
    let a = started();
    // An hour of TPM clock, 57 min of wall clock, another boot.
    let clock = tpm(50_000 + HOUR as u64, 3);
    let now = at(T0 + HOUR * 57 / 60, 5);
    assert!(judge_tick(now, "boot-b", &clock, &a, None, None).is_fine());
    // 50 min: set back.
    let now = at(T0 + HOUR * 50 / 60, 5);
    assert!(!judge_tick(now, "boot-b", &clock, &a, None, None).is_fine());
}

#[test]
fn tpm_clock_jumps() {
    let a = started();
    // Forward (TPM2_ClockSet by the owner): the wall clock did not follow,
    // a lock; the owner can only lock the meter this way, not unlock it.
    let jumped = tpm(50_000 + 10 * DAY as u64, 3);
    let now = at(T0 + 10_000, 20_000);
    assert!(matches!(
        judge_tick(now, BOOT, &jumped, &a, None, None),
        Judgement::Slow { .. }
    ));
    // Backwards with a later reset count (an unorderly shutdown lost the
    // last clock update): not comparable, no verdict from the TPM, and the
    // TPM marks start again.
    let lost = tpm(40_000, 4);
    let now = at(T0 + 10_000, 20_000);
    assert!(judge_tick(now, BOOT, &lost, &a, None, None).is_fine());
    let b = advance(&a, now, BOOT, &lost);
    assert_eq!(b.tpm_origin, Some(TpmMark::of(T0 + 10_000, &lost)));
    // A lower reset count (TPM cleared, state rolled back): not comparable.
    assert!(!tpm_comparable(&tpm(60_000, 2), &a.tpm_origin.unwrap()));
    // ... but the boot clock still catches a step.
    let now = at(T0 + 10_000 - HOUR, 20_000);
    assert!(is_stepped(&judge_tick(now, BOOT, &lost, &a, None, None)));
}

#[test]
fn marks_of_an_unknown_boot_are_not_compared() {
    let mut a = started();
    if let Some(m) = a.boot_last.as_mut() {
        m.boot_id.clear();
    }
    if let Some(m) = a.boot_origin.as_mut() {
        m.boot_id.clear();
    }
    let now = at(T0 - DAY, 20_000);
    assert!(judge_sale(now, "", &a, None, None).is_fine());
}
