//! The meter's notion of time: the one place time comes from.
//!
//! Wall-clock time ([`now_millis`]) comes from the system clock, through the
//! C library, so that a test can move it the way an operator would (with
//! libfaketime). [`boot_millis`] is CLOCK_BOOTTIME, read by a raw system call
//! that no `LD_PRELOAD` library intercepts and that root cannot step: it
//! counts from boot, suspend included. The two, and the housing's TPM clock,
//! are the witnesses that the wall clock never runs backwards (see
//! [`crate::timecheck`]; the meter locks with reason `clock`).
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

/// CLOCK_BOOTTIME in milliseconds: time since boot, suspend included.
///
/// Read by `syscall(SYS_clock_gettime)` rather than the C library's
/// `clock_gettime`, which an `LD_PRELOAD` library (libfaketime, or an
/// attacker's) may replace. No one can set this clock (`clock_settime`
/// refuses it); only the rate at which all kernel clocks advance can be
/// adjusted (`adjtimex`), which the TPM clock check answers. Returns 0 if
/// the call fails (it cannot on Linux ≥ 2.6.39).
pub fn boot_millis() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one `struct timespec` through the
    // pointer, which points at a live, properly aligned local.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clock_gettime,
            libc::CLOCK_BOOTTIME,
            std::ptr::addr_of_mut!(ts),
        )
    };
    if rc != 0 {
        return 0;
    }
    // `time_t` and `c_long` are i32 on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let (secs, nanos) = (i64::from(ts.tv_sec), i64::from(ts.tv_nsec));
    secs.saturating_mul(1000).saturating_add(nanos / 1_000_000)
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

    #[test]
    fn boot_clock_counts_from_boot_and_moves_with_real_time() {
        let a = boot_millis();
        assert!(a > 0);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let b = boot_millis();
        assert!((45..5_000).contains(&(b - a)), "{a} → {b}");
        // Since boot, not since 1970.
        assert!(a < now_millis() / 2);
    }
}
