//! The schedule: deadlines from an acknowledgement's periods or the
//! configuration's, and the standing they give.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::config::Config;

fn configured() -> Periods {
    let c = Config::default();
    Periods {
        period_days: c.inspection_period_days,
        warn_days: c.inspection_warn_days,
    }
}

#[test]
fn defaults_warn_at_90_days_and_lock_at_120() {
    let p = Periods::resolve(None, configured());
    assert_eq!((p.warn_days, p.period_days), (90, 120));
    let s = Schedule::new(1_000, p, 0);
    assert_eq!(s.warn_at, 1_000 + 90 * DAY);
    assert_eq!(s.lock_at, 1_000 + 120 * DAY);
    assert_eq!(s.standing(1_000), Standing::Ok);
    assert_eq!(s.standing(s.warn_at), Standing::Ok);
    assert_eq!(s.standing(s.warn_at + 1), Standing::Due);
    assert_eq!(s.standing(s.lock_at), Standing::Due);
    assert_eq!(s.standing(s.lock_at + 1), Standing::Overdue);
    assert!(!s.overdue(s.lock_at));
    assert!(s.overdue(s.lock_at + 1));
    assert_eq!(s.days_left(s.warn_at + 1), 30);
    assert_eq!(s.days_left(s.lock_at - DAY), 1);
    assert_eq!(s.days_left(s.lock_at + 5), 0);
    let n = s.notice(s.warn_at + 1);
    assert_eq!(
        (n.standing, n.due, n.lock),
        (Standing::Due, s.warn_at, s.lock_at)
    );
}

#[test]
fn an_ack_with_both_periods_sets_both_deadlines() {
    let p = Periods::resolve(Some((Some(28), Some(21))), configured());
    assert_eq!((p.warn_days, p.period_days), (21, 28));
    let s = Schedule::new(0, p, 4);
    assert_eq!((s.warn_at, s.lock_at), (21 * DAY, 28 * DAY));
    assert_eq!(s.acknowledged_sequence, 4);
    assert_eq!(s.standing(22 * DAY), Standing::Due);
}

#[test]
fn an_old_ack_without_warn_days_keeps_its_period() {
    // A 200-day period from an older authority: the lock where it says, the
    // configured warning before it.
    let p = Periods::resolve(Some((Some(200), None)), configured());
    assert_eq!((p.warn_days, p.period_days), (90, 200));
    // A 30-day period: the configured warning (90) would come after the
    // lock, so it comes three quarters through.
    let p = Periods::resolve(Some((Some(30), None)), configured());
    assert_eq!((p.warn_days, p.period_days), (23, 30));
    // An ack setting nothing: the configuration's.
    let p = Periods::resolve(Some((None, None)), configured());
    assert_eq!((p.warn_days, p.period_days), (90, 120));
    // A warning only: the configured lock.
    let p = Periods::resolve(Some((None, Some(100))), configured());
    assert_eq!((p.warn_days, p.period_days), (100, 120));
    // A one-day period leaves no room for a warning: it locks unwarned.
    let p = Periods::resolve(Some((Some(1), None)), configured());
    assert_eq!((p.warn_days, p.period_days), (1, 1));
    let s = Schedule::new(0, p, 1);
    assert_eq!(s.standing(DAY), Standing::Ok);
    assert_eq!(s.standing(DAY + 1), Standing::Overdue);
}

#[test]
fn deadlines_saturate() {
    let s = Schedule::new(i64::MAX - 1, configured(), 0);
    assert_eq!((s.warn_at, s.lock_at), (i64::MAX, i64::MAX));
}

#[test]
fn times_print_as_rfc3339() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_803_859_200), "2027-03-01T00:00:00Z");
    assert_eq!(rfc3339(-5), "@-5");
}
