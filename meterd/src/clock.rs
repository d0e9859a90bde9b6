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
//! start by [`init_from_env`]) is added to every reading, **only when the
//! housing is a software TPM** (TCTI `swtpm:` or `mssim:`), as in the sandbox
//! and the tests (debug and release builds alike). Why this is safe:
//!
//! * A meter on a real TPM (`device:/dev/tpmrm0`, the packaged default)
//!   ignores the variable and logs that it did: no environment can shift the
//!   time of a production meter.
//! * A software TPM's state is a file its host owner can rewrite, clock and
//!   counters included, so a meter on one has no secure housing to protect;
//!   the offset gives such an owner nothing he does not already have.
//! * Even there an offset cannot be used to go back in time unnoticed: a
//!   negative shift is exactly what the clock check catches (system time
//!   earlier than the last recorded time, or advancing slower than the TPM
//!   clock), and the meter locks with `clock` until the authority clears it.
//! * A forward shift only brings inspection deadlines closer (the meter
//!   locks sooner, never later) and post-dates postmarks, which the
//!   authority sees in the next status report (report time vs. its own).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable holding the test clock offset in seconds (software TPM only).
pub const TEST_OFFSET_ENV: &str = "METERD_TEST_CLOCK_OFFSET";

static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Whether a TCTI names a software TPM (the only housing the test clock applies to).
pub fn is_software_tpm(tcti: &str) -> bool {
    tcti.starts_with("swtpm") || tcti.starts_with("mssim")
}

/// Reads [`TEST_OFFSET_ENV`] once at start. Returns the offset applied, in
/// seconds (0 unless `tcti` is a software TPM, see the module doc).
pub fn init_from_env(tcti: &str) -> i64 {
    let Ok(text) = std::env::var(TEST_OFFSET_ENV) else {
        return 0;
    };
    if !is_software_tpm(tcti) {
        tracing::warn!(
            variable = TEST_OFFSET_ENV,
            tcti,
            "test clock offset ignored: a meter on a hardware TPM always uses the system clock"
        );
        return 0;
    }
    match text.trim().parse::<i64>() {
        Ok(secs) => {
            OFFSET_MS.store(secs.saturating_mul(1000), Ordering::Relaxed);
            tracing::warn!(
                secs,
                "TEST CLOCK: the meter's time is shifted (software TPM)"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_software_tpms_take_a_test_clock() {
        assert!(is_software_tpm("swtpm:host=127.0.0.1,port=2321"));
        assert!(is_software_tpm("mssim:port=2321"));
        assert!(!is_software_tpm("device:/dev/tpmrm0"));
        assert!(!is_software_tpm("tabrmd:"));
        // Without the variable nothing is shifted, whatever the TPM.
        if std::env::var_os(TEST_OFFSET_ENV).is_none() {
            assert_eq!(init_from_env("swtpm:port=1"), 0);
        }
        assert_eq!(init_from_env("device:/dev/tpmrm0"), 0);
    }
}
