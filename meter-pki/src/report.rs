//! Inspection payloads: the meter's signed status report, the authority's acknowledgement of
//! it, and the authority's lock order.
//!
//! The patent's "authenticated messages regarding the status and usage of the meter": the
//! meter signs a register snapshot plus the usage since its previous report with its identity
//! key ([`StatusReport`], `CT_STATUS_REPORT`); the authority inspects it and answers with a
//! [`ReportAck`] (`CT_REPORT_ACK`) bound to the meter, the report's request id and the SHA-384
//! of the report's JSON, which resets the meter's inspection watchdog and may set a new
//! inspection period. A [`LockOrder`] (`CT_LOCK_ORDER`) forces a lock; its nonce makes it
//! single use. All three are strict JSON like the other payloads (unknown fields refused,
//! names bounded, counts capped), so a forged or garbage object is a named error.

use crate::payload::{Payload, MAX_ID};
use crate::{PkiError, Result};
use der::asn1::ObjectIdentifier;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most services named in a report's counts or usage.
pub const MAX_SERVICES: usize = 64;
/// Longest inspection period an acknowledgement may set (10 years).
pub const MAX_PERIOD_DAYS: u32 = 3650;
/// Longest lock-order reason text.
pub const MAX_REASON: usize = 200;
/// Length of a SHA-384 in hex.
const SHA384_HEX: usize = 96;

/// Usage of one service over a span of ledger rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceUsage {
    /// Pieces sold.
    pub pieces: u64,
    /// Amount debited, minor units.
    pub amount: u64,
}

/// Signed status report (meter → authority), `CT_STATUS_REPORT`.
/// `Default` is an empty report (every field zero or empty), for tests
/// that state only the fields they are about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    /// Reporting meter.
    pub meter_id: String,
    /// The caller's request id of this report (the ledger row's id).
    pub request_id: String,
    /// Number of this report: the meter's status-report piece count including it.
    pub sequence: u64,
    /// Meter time of the report (unix s).
    pub time: i64,
    /// Currency code of the rate table in force (empty when none).
    pub currency: String,
    /// Minor-unit digits.
    pub digits: u8,
    /// Ascending register at row `ledger_rows`.
    pub ascending: u64,
    /// Descending register at row `ledger_rows`.
    pub descending: u64,
    /// Control total at row `ledger_rows` (= ascending + descending).
    pub control_total: u64,
    /// All pieces ever sold.
    pub pieces: u64,
    /// Pieces ever sold, per service name.
    pub counts: BTreeMap<String, u64>,
    /// Ledger rows the snapshot covers: registers, counts and head are as of row
    /// `ledger_rows`; this report's own row comes after it (and is in the next report).
    pub ledger_rows: u64,
    /// Ledger head (hex SHA-384 of row `ledger_rows`).
    pub ledger_head: String,
    /// TPM NV counter bound to that head.
    pub nv_counter: u64,
    /// Rate table version in force (0: none).
    pub rates_version: u32,
    /// Lock reason in force, empty when not locked.
    pub lock_reason: String,
    /// Nonce of the lock in force, empty when not locked.
    pub lock_nonce: String,
    /// Previous report's sequence (0: this is the first report).
    pub previous_sequence: u64,
    /// Previous report's time (0: none).
    pub previous_time: i64,
    /// Usage per service over the rows after the previous report's `ledger_rows`, up to
    /// this report's `ledger_rows` (so the previous report's own row is counted here).
    pub usage: BTreeMap<String, ServiceUsage>,
    /// Funds credited since the previous report, minor units.
    pub credited: u64,
    /// When the next acknowledged report is due (unix s), as of this report.
    pub inspection_due: i64,
    /// The ledger segment that comes with this report (`ReportSegment`):
    /// the rows after the last acknowledged report's `ledger_rows`, up to
    /// `ledger_rows`. Absent only in reports of meters older than segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<SegmentRef>,
    /// The postage register pair of a meter whose funds are split (issue
    /// 17); the registers above are then its services pair. Absent in
    /// combined mode, so reports of meters never split keep their bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postage: Option<RegisterPair>,
}

/// One register pair as a report states it (the postage pair, issue 17).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterPair {
    /// Ascending register.
    pub ascending: u64,
    /// Descending register.
    pub descending: u64,
    /// Control total (= ascending + descending).
    pub control_total: u64,
    /// Pieces paid from it.
    pub pieces: u64,
}

/// What a report says of its segment ([`crate::segment`]), so that the
/// authority takes exactly the rows the meter signed for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentRef {
    /// First row (the row after the last acknowledged report's snapshot).
    pub first_seq: u64,
    /// Last row (= the report's `ledger_rows`).
    pub last_seq: u64,
    /// Hex hash of row `first_seq - 1`: the head the segment extends.
    pub prev_head: String,
    /// Hex SHA-384 of the whole segment.
    pub digest: String,
    /// Its length in bytes.
    pub bytes: u64,
}

/// Authority acknowledgement of a report (authority → meter), `CT_REPORT_ACK`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportAck {
    /// Meter the report came from.
    pub meter_id: String,
    /// Request id of the acknowledged report.
    pub report_request_id: String,
    /// Its sequence.
    pub report_sequence: u64,
    /// Its meter time (unix s): the next inspection is due a period after it.
    pub report_time: i64,
    /// Hex SHA-384 of the report's JSON (the CMS eContent).
    pub report_digest: String,
    /// New inspection period in days, if the authority changes it: the
    /// meter locks this long after `report_time` without a newer ack.
    #[serde(default)]
    pub period_days: Option<u32>,
    /// New warning period in days, if the authority changes it: the
    /// inspection falls due (the meter warns) this long after
    /// `report_time`. Absent from older acknowledgements (and left out when
    /// unset, so that an ack without it is what an older authority signs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_days: Option<u32>,
    /// Issue time (unix s).
    pub issued_at: i64,
}

/// Authority order locking a meter (reason `forced`), `CT_LOCK_ORDER`; single use by nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockOrder {
    /// Meter to lock.
    pub meter_id: String,
    /// Fresh random nonce of this order (the meter applies an order once).
    pub nonce: String,
    /// Why, for the operator (printable text).
    pub reason: String,
    /// Issue time (unix s).
    pub issued_at: i64,
}

fn check_name(what: &str, s: &str, max: usize) -> Result<()> {
    if !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(PkiError::Malformed(format!(
            "{what} must be 1..{max} printable ASCII characters"
        )))
    }
}

fn check_hex384(what: &str, s: &str) -> Result<()> {
    if s.len() == SHA384_HEX && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(PkiError::Malformed(format!(
            "{what} must be {SHA384_HEX} hex digits"
        )))
    }
}

impl Payload for StatusReport {
    const CONTENT_TYPE: ObjectIdentifier = crate::oid::CT_STATUS_REPORT;
    fn validate(&self) -> Result<()> {
        check_name("meter_id", &self.meter_id, MAX_ID)?;
        check_name("request_id", &self.request_id, 128)?;
        check_hex384("ledger_head", &self.ledger_head)?;
        if self.counts.len() > MAX_SERVICES || self.usage.len() > MAX_SERVICES {
            return Err(PkiError::Malformed(format!(
                "at most {MAX_SERVICES} services in counts and usage"
            )));
        }
        for name in self.counts.keys().chain(self.usage.keys()) {
            check_name("service name", name, MAX_ID)?;
        }
        if self.ascending.checked_add(self.descending) != Some(self.control_total) {
            return Err(PkiError::Malformed(
                "ascending + descending differs from the control total".into(),
            ));
        }
        if self
            .postage
            .is_some_and(|p| p.ascending.checked_add(p.descending) != Some(p.control_total))
        {
            return Err(PkiError::Malformed(
                "postage ascending + descending differs from its control total".into(),
            ));
        }
        if self.sequence == 0 || self.previous_sequence >= self.sequence {
            return Err(PkiError::Malformed(
                "report sequence must be positive and above the previous one".into(),
            ));
        }
        if self.lock_reason.is_empty() != self.lock_nonce.is_empty() {
            return Err(PkiError::Malformed(
                "lock reason and lock nonce go together".into(),
            ));
        }
        if let Some(s) = &self.segment {
            check_hex384("segment prev_head", &s.prev_head)?;
            check_hex384("segment digest", &s.digest)?;
            if s.first_seq == 0 || s.last_seq.saturating_add(1) < s.first_seq {
                return Err(PkiError::Malformed("segment row range".into()));
            }
            if s.last_seq != self.ledger_rows {
                return Err(PkiError::Malformed(
                    "the segment must end at the report's ledger_rows".into(),
                ));
            }
        }
        Ok(())
    }
}

impl Payload for ReportAck {
    const CONTENT_TYPE: ObjectIdentifier = crate::oid::CT_REPORT_ACK;
    fn validate(&self) -> Result<()> {
        check_name("meter_id", &self.meter_id, MAX_ID)?;
        check_name("report_request_id", &self.report_request_id, 128)?;
        check_hex384("report_digest", &self.report_digest)?;
        if self.report_sequence == 0 {
            return Err(PkiError::Malformed(
                "report_sequence must be positive".into(),
            ));
        }
        if let Some(d) = self.period_days {
            if d == 0 || d > MAX_PERIOD_DAYS {
                return Err(PkiError::Malformed(format!(
                    "period_days must be 1..{MAX_PERIOD_DAYS}"
                )));
            }
        }
        if let Some(w) = self.warn_days {
            if w == 0 || w > MAX_PERIOD_DAYS {
                return Err(PkiError::Malformed(format!(
                    "warn_days must be 1..{MAX_PERIOD_DAYS}"
                )));
            }
            if self.period_days.is_some_and(|p| w >= p) {
                return Err(PkiError::Malformed(
                    "warn_days must be less than period_days (the warning comes before the lock)"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}

impl Payload for LockOrder {
    const CONTENT_TYPE: ObjectIdentifier = crate::oid::CT_LOCK_ORDER;
    fn validate(&self) -> Result<()> {
        check_name("meter_id", &self.meter_id, MAX_ID)?;
        check_name("nonce", &self.nonce, MAX_ID)?;
        let r = &self.reason;
        if r.is_empty() || r.len() > MAX_REASON || r.chars().any(char::is_control) {
            return Err(PkiError::Malformed(format!(
                "reason must be 1..{MAX_REASON} bytes of printable text"
            )));
        }
        Ok(())
    }
}

/// Hex SHA-384 of a report's JSON, as an acknowledgement carries it.
pub fn report_digest(report_json: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha384::digest(report_json))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::payload::{decode, encode};

    fn report() -> StatusReport {
        StatusReport {
            meter_id: "MTR-1".into(),
            request_id: "r1".into(),
            sequence: 2,
            time: 1_767_225_600,
            currency: "USD".into(),
            digits: 3,
            ascending: 500,
            descending: 9_500,
            control_total: 10_000,
            pieces: 2,
            counts: [("postmark".to_string(), 1u64)].into_iter().collect(),
            ledger_rows: 9,
            ledger_head: "ab".repeat(48),
            nv_counter: 7,
            rates_version: 1,
            lock_reason: String::new(),
            lock_nonce: String::new(),
            previous_sequence: 1,
            previous_time: 1_767_000_000,
            usage: BTreeMap::new(),
            credited: 0,
            inspection_due: 1_775_000_000,
            postage: None,
            segment: Some(SegmentRef {
                first_seq: 4,
                last_seq: 9,
                prev_head: "cd".repeat(48),
                digest: "ef".repeat(48),
                bytes: 1234,
            }),
        }
    }

    #[test]
    fn report_round_trip_and_checks() {
        let r = report();
        assert_eq!(decode::<StatusReport>(&encode(&r).unwrap()).unwrap(), r);
        let mut bad = r.clone();
        bad.control_total += 1;
        assert!(decode::<StatusReport>(&encode(&bad).unwrap()).is_err());
        let mut bad = r.clone();
        bad.previous_sequence = 2;
        assert!(decode::<StatusReport>(&encode(&bad).unwrap()).is_err());
        let mut bad = r.clone();
        bad.ledger_head = "xyz".into();
        assert!(decode::<StatusReport>(&encode(&bad).unwrap()).is_err());
        let mut bad = r.clone();
        bad.lock_reason = "forced".into();
        assert!(decode::<StatusReport>(&encode(&bad).unwrap()).is_err());
        let mut bad = r.clone();
        if let Some(s) = bad.segment.as_mut() {
            s.last_seq = 8;
        }
        assert!(decode::<StatusReport>(&encode(&bad).unwrap()).is_err());
        // A report without a segment (an older meter's) still parses, and
        // says nothing of one.
        let mut old = r;
        old.segment = None;
        let json = encode(&old).unwrap();
        assert!(!String::from_utf8_lossy(&json).contains("segment"));
        assert_eq!(decode::<StatusReport>(&json).unwrap(), old);
    }

    #[test]
    fn ack_checks() {
        let a = ReportAck {
            meter_id: "MTR-1".into(),
            report_request_id: "r1".into(),
            report_sequence: 2,
            report_time: 5,
            report_digest: report_digest(b"{}"),
            period_days: Some(30),
            warn_days: None,
            issued_at: 6,
        };
        assert_eq!(decode::<ReportAck>(&encode(&a).unwrap()).unwrap(), a);
        // Without warn_days the encoding is an older authority's: no member.
        assert!(!String::from_utf8_lossy(&encode(&a).unwrap()).contains("warn_days"));
        let without = br#"{"meter_id":"M","report_request_id":"r","report_sequence":1,"report_time":0,"report_digest":"00"}"#;
        assert!(decode::<ReportAck>(without).is_err());
        let mut bad = a.clone();
        bad.period_days = Some(0);
        assert!(decode::<ReportAck>(&encode(&bad).unwrap()).is_err());
        let mut bad = a.clone();
        bad.period_days = Some(MAX_PERIOD_DAYS + 1);
        assert!(decode::<ReportAck>(&encode(&bad).unwrap()).is_err());
        let mut bad = a.clone();
        bad.report_digest.pop();
        assert!(decode::<ReportAck>(&encode(&bad).unwrap()).is_err());
        // A warning period: before the lock, within the bounds.
        let mut warned = a.clone();
        warned.warn_days = Some(20);
        let json = encode(&warned).unwrap();
        assert!(String::from_utf8_lossy(&json).contains("\"warn_days\":20"));
        assert_eq!(decode::<ReportAck>(&json).unwrap(), warned);
        for w in [0, 30, 31, MAX_PERIOD_DAYS + 1] {
            let mut bad = a.clone();
            bad.warn_days = Some(w);
            assert!(decode::<ReportAck>(&encode(&bad).unwrap()).is_err(), "{w}");
        }
        // Without a period of its own, the meter's configured one applies.
        let mut only_warn = a;
        only_warn.period_days = None;
        only_warn.warn_days = Some(100);
        assert!(decode::<ReportAck>(&encode(&only_warn).unwrap()).is_ok());
    }

    #[test]
    fn an_ack_signed_before_warn_days_still_decodes() {
        // Byte for byte what an authority without the warning period signed.
        let digest = "0".repeat(SHA384_HEX);
        let old = format!(
            r#"{{"meter_id":"MTR-1","report_request_id":"r1","report_sequence":2,"report_time":5,"report_digest":"{digest}","period_days":null,"issued_at":6}}"#
        );
        let ack = decode::<ReportAck>(old.as_bytes()).unwrap();
        assert_eq!((ack.period_days, ack.warn_days), (None, None));
        let old = old.replace("null", "30");
        let ack = decode::<ReportAck>(old.as_bytes()).unwrap();
        assert_eq!((ack.period_days, ack.warn_days), (Some(30), None));
    }

    #[test]
    fn lock_order_checks() {
        let o = LockOrder {
            meter_id: "MTR-1".into(),
            nonce: "00ff".into(),
            reason: "audit of the postal service".into(),
            issued_at: 1,
        };
        assert_eq!(decode::<LockOrder>(&encode(&o).unwrap()).unwrap(), o);
        let mut bad = o.clone();
        bad.reason = "a\nb".into();
        assert!(decode::<LockOrder>(&encode(&bad).unwrap()).is_err());
        let mut bad = o;
        bad.nonce = String::new();
        assert!(decode::<LockOrder>(&encode(&bad).unwrap()).is_err());
        assert!(decode::<LockOrder>(b"garbage").is_err());
    }
}
