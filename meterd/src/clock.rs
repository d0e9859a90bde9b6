//! The meter's notion of time: the one place time comes from.
//!
//! Wall-clock time comes from the system clock; the housing's TPM clock is
//! the witness that it never runs backwards (see [`crate::timecheck`], which
//! locks the meter with reason `clock`).
//!
//! # Test clock
//!
//! The end-to-end tests must move time past an inspection period (90 days)
//! without waiting. `METERD_TEST_CLOCK_OFFSET` (signed seconds, read once at
//! start by [`init_from_env`]) is added to every reading, **only in debug
//! builds** (`cfg(debug_assertions)`, which the tests use). Why this is safe:
//!
//! * A release build (the packaged daemon) ignores the variable and logs
//!   that it did, so a production unit file cannot shift the meter's time.
//! * Even in a debug build an offset cannot be used to go back in time: a
//!   negative shift is exactly what the clock check catches (system time
//!   earlier than the last recorded time, or advancing slower than the TPM
//!   clock), and the meter locks with `clock` until the authority clears it.
//! * A forward shift only brings inspection deadlines closer (the meter
//!   locks sooner, never later) and post-dates postmarks, which the
//!   authority sees in the next status report (report time vs. its own).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable holding the test clock offset in seconds (debug builds only).
pub const TEST_OFFSET_ENV: &str = "METERD_TEST_CLOCK_OFFSET";

static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Reads [`TEST_OFFSET_ENV`] once at start. Returns the offset applied, in
/// seconds (0 in release builds, where the variable is ignored).
pub fn init_from_env() -> i64 {
    let Ok(text) = std::env::var(TEST_OFFSET_ENV) else {
        return 0;
    };
    if !cfg!(debug_assertions) {
        tracing::warn!(
            variable = TEST_OFFSET_ENV,
            "test clock offset ignored: release builds always use the system clock"
        );
        return 0;
    }
    match text.trim().parse::<i64>() {
        Ok(secs) => {
            OFFSET_MS.store(secs.saturating_mul(1000), Ordering::Relaxed);
            tracing::warn!(
                secs,
                "TEST CLOCK: the meter's time is shifted (debug build)"
            );
            secs
        }
        Err(e) => {
            tracing::error!(value = %text, error = %e, "test clock offset is not an integer; ignored");
            0
        }
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    now_millis().div_euclid(1000)
}

/// Unix milliseconds now (0 if the clock is before 1970).
pub fn now_millis() -> i64 {
    let system = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    system
        .saturating_add(OFFSET_MS.load(Ordering::Relaxed))
        .max(0)
}
