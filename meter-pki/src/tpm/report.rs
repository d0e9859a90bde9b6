//! The AK's attestation of a report (issue 12, item 5): TPM2_GetTime and TPM2_NV_Certify
//! of the ledger's NV counter, both over the report digest, in one serializable object
//! that meterd makes (`meterd::attest::report_attestation`) and the authority checks
//! ([`ReportAttestation::verify`]) with the AK it kept when it certified the meter.

use serde::{Deserialize, Serialize};

use super::{unhex, verify_counter, verify_time, CounterAttestation, TimeAttestation, VERSION};
use crate::{PkiError, Result};

/// What the AK signed for one report (hex fields; JSON with [`Self::to_json`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportAttestation {
    /// [`VERSION`].
    pub version: u32,
    /// Marshalled `TPMT_PUBLIC` of the AK that signed.
    pub ak_public: String,
    /// Marshalled `TPMS_ATTEST` of the TPM2_GetTime.
    pub time_attest: String,
    /// Its AK signature, raw P-384 `r || s`.
    pub time_signature: String,
    /// Marshalled `TPMS_ATTEST` of the TPM2_NV_Certify of the counter.
    pub counter_attest: String,
    /// Its AK signature, raw P-384 `r || s`.
    pub counter_signature: String,
}

/// A [`ReportAttestation`] that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReportAttestation {
    /// TPM clock, reset and restart counts, time since reset.
    pub time: TimeAttestation,
    /// The counter's index Name and value, and the TPM clock when it was read.
    pub counter: CounterAttestation,
}

impl ReportAttestation {
    /// From the raw parts (what the housing returns).
    pub fn new(
        ak_public: &[u8],
        time: (&[u8], &[u8]),
        counter: (&[u8], &[u8]),
    ) -> ReportAttestation {
        ReportAttestation {
            version: VERSION,
            ak_public: hex::encode(ak_public),
            time_attest: hex::encode(time.0),
            time_signature: hex::encode(time.1),
            counter_attest: hex::encode(counter.0),
            counter_signature: hex::encode(counter.1),
        }
    }

    /// JSON bytes.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| PkiError::Malformed(format!("attestation: {e}")))
    }

    /// Parses JSON bytes (bounded).
    pub fn from_json(bytes: &[u8]) -> Result<ReportAttestation> {
        crate::util::check_size(bytes.len())?;
        serde_json::from_slice(bytes)
            .map_err(|e| PkiError::Malformed(format!("report attestation: {e}")))
    }

    /// Checks both attestations: signed by `expected_ak` (the AK public area the authority
    /// kept at certification), over `digest`, of the right kinds, and the counter read
    /// no earlier than the time attestation's reset and restart (same TPM boot cycle).
    pub fn verify(&self, expected_ak: &[u8], digest: &[u8]) -> Result<VerifiedReportAttestation> {
        if self.version != VERSION {
            return Err(PkiError::Malformed(format!(
                "report attestation version {} (expected {VERSION})",
                self.version
            )));
        }
        let ak = unhex("AK public area", &self.ak_public)?;
        if ak != expected_ak {
            return Err(PkiError::Untrusted(
                "the report is attested by another key than the meter's certified AK".into(),
            ));
        }
        let time = verify_time(
            &ak,
            &unhex("time attestation", &self.time_attest)?,
            &unhex("time signature", &self.time_signature)?,
            digest,
        )?;
        let counter = verify_counter(
            &ak,
            &unhex("counter attestation", &self.counter_attest)?,
            &unhex("counter signature", &self.counter_signature)?,
            digest,
        )?;
        let (t, c) = (&time.clock, &counter.clock);
        if (t.reset_count, t.restart_count) != (c.reset_count, c.restart_count) {
            return Err(PkiError::Untrusted(
                "the time and counter attestations are from different TPM boot cycles".into(),
            ));
        }
        Ok(VerifiedReportAttestation { time, counter })
    }
}
