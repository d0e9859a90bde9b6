//! The TPM's own word on a report (issue 12, item 5): an AK-signed TPM2_GetTime and
//! TPM2_NV_Certify of the ledger counter over the report digest, delivered beside the
//! report (`REPORT.att`, `meterctl report`; it cannot be inside the CMS it attests).
//!
//! Binding: both attestations carry, as qualifying data, the SHA-384 of the report's JSON
//! (the digest the acknowledgement names). That JSON signs the segment reference, so one
//! attestation belongs to one report and its rows: an attestation of an earlier report
//! sent with a new one does not verify. The meter makes it after the report (same request
//! id), so the attested counter may be ahead of the report's, never behind.
//!
//! Checked against the book ([`TpmState`], the last accepted values): the counter is not
//! behind the NV counter the report states nor the last attested value, the NV index is
//! the same, reset and restart counts never decrease, and within one reset count the TPM
//! clock moves forward. A report no newer than the last attested one (inspected again)
//! is checked on its own and leaves the book's values. A meter certified with attestation
//! that sends a report without one is refused. Each failure is a named finding; a meter certified `--unattested`
//! sends none and none is checked.

use meter_pki::report::StatusReport;
use meter_pki::tpm::VerifiedReportAttestation;
use serde::{Deserialize, Serialize};

use crate::findings::Findings;

/// What the last accepted attestation showed (`Book::tpm`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmState {
    /// Report it came with.
    pub report_sequence: u64,
    /// Attested NV counter value.
    pub nv_counter: u64,
    /// Hex Name of the attested NV index.
    pub nv_index_name: String,
    /// TPM clock (ms since the last TPM2_Clear).
    pub clock: u64,
    /// TPM reset count.
    pub reset_count: u32,
    /// TPM restart count.
    pub restart_count: u32,
}

/// What the inspection learned of a report's attestation before reconciling.
#[derive(Debug, Clone)]
pub enum Attestation {
    /// The meter was certified `--unattested` and sent none.
    NotExpected,
    /// The meter was certified with attestation and sent none.
    Missing,
    /// One was sent but does not verify (the reason).
    Invalid(String),
    /// It verified over this report's digest.
    Verified(Box<VerifiedReportAttestation>),
}

/// Checks `a` against `last` (the book's) for `report`; returns the state to store when
/// it holds (`None` for a meter that does not attest).
pub fn check(
    report: &StatusReport,
    a: &Attestation,
    last: Option<&TpmState>,
    f: &mut Findings,
) -> Option<TpmState> {
    let v = match a {
        Attestation::NotExpected => return None,
        Attestation::Missing => {
            f.add(
                "TPM attestation missing: the meter was certified with attestation and sent its report without one"
                    .into(),
            );
            return None;
        }
        Attestation::Invalid(e) => {
            f.add(format!(
                "TPM attestation not valid for this report (an earlier report's, or another key's?): {e}"
            ));
            return None;
        }
        Attestation::Verified(v) => v,
    };
    let c = &v.time.clock;
    let now = TpmState {
        report_sequence: report.sequence,
        nv_counter: v.counter.value,
        nv_index_name: hex::encode(&v.counter.index_name),
        clock: c.clock,
        reset_count: c.reset_count,
        restart_count: c.restart_count,
    };
    // A report no newer than the last attested one (inspected again, e.g. an
    // older acknowledgement asked for anew) is checked on its own: its
    // attestation must verify over its digest, but the book's values belong
    // to a later report and stay.
    match last {
        Some(l) if report.sequence <= l.report_sequence => {
            compare(&now, report.nv_counter, None, f);
            None
        }
        _ => {
            compare(&now, report.nv_counter, last, f);
            Some(now)
        }
    }
}

/// The attested values `now` against the report's NV counter and the last accepted ones.
fn compare(now: &TpmState, report_nv: u64, last: Option<&TpmState>, f: &mut Findings) {
    if last == Some(now) {
        // The same report inspected again (a retry, or two inspections at once).
        return;
    }
    if now.nv_counter < report_nv {
        f.add(format!(
            "TPM attestation: the TPM counter is {}, behind the NV counter {} the report states",
            now.nv_counter, report_nv
        ));
    }
    if let Some(l) = last {
        if now.nv_index_name != l.nv_index_name {
            f.add(format!(
                "TPM attestation: NV index {} is not the counter attested with report {} ({})",
                now.nv_index_name, l.report_sequence, l.nv_index_name
            ));
        }
        if now.nv_counter < l.nv_counter {
            f.add(format!(
                "TPM attestation: the TPM counter went backwards ({} < {} attested with report {})",
                now.nv_counter, l.nv_counter, l.report_sequence
            ));
        }
        if now.reset_count < l.reset_count {
            f.add(format!(
                "TPM attestation: reset count {} decreased (report {} had {})",
                now.reset_count, l.report_sequence, l.reset_count
            ));
        } else if now.reset_count == l.reset_count {
            if now.restart_count < l.restart_count {
                f.add(format!(
                    "TPM attestation: restart count {} decreased (report {} had {})",
                    now.restart_count, l.report_sequence, l.restart_count
                ));
            }
            if now.clock <= l.clock {
                f.add(format!(
                    "TPM attestation: the TPM clock {} ms did not move forward from {} ms (report {}, same reset count {})",
                    now.clock, l.clock, l.report_sequence, now.reset_count
                ));
            }
        }
    }
}

/// Slack allowed between the rows' wall-clock span and the TPM clock's
/// progress: fixed (the lag between a report's last row and its
/// attestation, clock steps) plus a rate (TPM clocks drift and may be
/// adjusted by up to a few percent).
const CLOCK_SLACK_MS: u64 = 120_000;
const CLOCK_SLACK_PERCENT: u64 = 5;

/// Rows against the attested TPM clock: between the last attested report
/// and this one, with the same reset and restart counts (the TPM clock ran
/// all along), the rows acknowledged then (last row at `from_ms`) and now
/// (last row at `to_ms`) cannot span more wall-clock time than the TPM
/// clock advanced, give or take the slack. A meter clock moved forward
/// (rows dated later than they were written) shows here.
pub fn rows_within_clock(
    last: &TpmState,
    now: &TpmState,
    from_ms: i64,
    to_ms: i64,
    f: &mut Findings,
) {
    if now.reset_count != last.reset_count
        || now.restart_count != last.restart_count
        || now.clock <= last.clock
    {
        return;
    }
    let elapsed = now.clock - last.clock;
    let span = u64::try_from(to_ms.saturating_sub(from_ms)).unwrap_or(0);
    let slack = CLOCK_SLACK_MS + elapsed / 100 * CLOCK_SLACK_PERCENT;
    if span > elapsed.saturating_add(slack) {
        f.add(format!(
            "TPM clock: the rows since report {} span {} s of wall-clock time, the TPM clock advanced {} s (same reset and restart counts; slack {} s): the meter's clock ran ahead",
            last.report_sequence,
            span / 1000,
            elapsed / 1000,
            slack / 1000
        ));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn state(nv: u64, clock: u64, reset: u32, restart: u32) -> TpmState {
        TpmState {
            report_sequence: 1,
            nv_counter: nv,
            nv_index_name: "aa".into(),
            clock,
            reset_count: reset,
            restart_count: restart,
        }
    }

    #[test]
    fn only_forward() {
        let last = state(5, 1_000, 2, 1);
        let mut f = Findings::default();
        compare(&state(6, 2_000, 2, 1), 6, Some(&last), &mut f);
        compare(&state(5, 500, 3, 0), 5, Some(&last), &mut f);
        assert!(f.0.is_empty(), "{:?}", f.0);
        compare(&state(4, 2_000, 2, 1), 5, Some(&last), &mut f);
        assert_eq!(f.0.len(), 2, "{:?}", f.0);
        assert!(f.0[0].contains("behind the NV counter"));
        assert!(f.0[1].contains("went backwards"));
        let mut f = Findings::default();
        compare(&state(5, 1_000, 2, 0), 5, Some(&last), &mut f);
        assert!(f.0[0].contains("restart count 0 decreased"));
        assert!(f.0[1].contains("did not move forward"));
        let mut f = Findings::default();
        compare(&state(5, 9_000, 1, 9), 5, Some(&last), &mut f);
        assert!(f.0[0].contains("reset count 1 decreased"));
    }

    #[test]
    fn rows_cannot_outrun_the_tpm_clock() {
        let hour: i64 = 3_600_000;
        let last = state(5, 1_000, 2, 1);
        let now = state(6, 1_000 + hour as u64, 2, 1);
        let mut f = Findings::default();
        rows_within_clock(&last, &now, 0, hour, &mut f);
        rows_within_clock(&last, &now, 0, hour + 60_000, &mut f);
        // Another restart: the clock may have stopped meanwhile; not judged.
        rows_within_clock(&last, &state(6, 2_000, 2, 2), 0, 24 * hour, &mut f);
        assert!(f.0.is_empty(), "{:?}", f.0);
        rows_within_clock(&last, &now, 0, 24 * hour, &mut f);
        assert_eq!(f.0.len(), 1, "{:?}", f.0);
        assert!(f.0[0].contains("span 86400 s"), "{:?}", f.0);
        assert!(f.0[0].contains("advanced 3600 s"), "{:?}", f.0);
    }
}
