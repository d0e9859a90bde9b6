//! The meter's notion of time.
//!
//! Wall-clock time comes from the system clock; the housing's TPM clock is
//! the witness that it never runs backwards (see `lock` for the `clock` reason).

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds now.
pub fn now() -> i64 {
    now_millis() / 1000
}

/// Unix milliseconds now (0 if the clock is before 1970).
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
