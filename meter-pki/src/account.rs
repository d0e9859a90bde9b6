//! Current-account order (authority → meter), `CT_ACCOUNT_ORDER`.
//!
//! The claims' European meters: instead of prepaid funds the meter keeps an
//! ascending register only, may sell up to a credit limit per billing period,
//! and must have its report acknowledged by the end of each period or lock.
//! The authority sets (or later changes) the limit and the period with an
//! [`AccountOrder`] for one meter, single use by its nonce; the meter refuses
//! an order issued before the one in force. Strict JSON like every payload.

use crate::payload::{Payload, MAX_ID};
use crate::{PkiError, Result};
use der::asn1::ObjectIdentifier;
use serde::{Deserialize, Serialize};

/// Longest billing period an order may set (10 years).
pub const MAX_PERIOD_DAYS: u32 = 3650;

/// Puts a meter in current-account mode with a credit limit and a billing period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountOrder {
    /// Meter the order is for.
    pub meter_id: String,
    /// Most the meter may charge per billing period, minor units.
    pub credit_limit: u64,
    /// Billing period, days (1..=3650).
    pub period_days: u32,
    /// Fresh random nonce: the meter applies an order once.
    pub nonce: String,
    /// Issue time (unix s); an order older than the one in force is refused.
    pub issued_at: i64,
}

impl Payload for AccountOrder {
    const CONTENT_TYPE: ObjectIdentifier = crate::oid::CT_ACCOUNT_ORDER;
    fn validate(&self) -> Result<()> {
        for (what, s) in [("meter_id", &self.meter_id), ("nonce", &self.nonce)] {
            if s.is_empty() || s.len() > MAX_ID || !s.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(PkiError::Malformed(format!(
                    "{what} must be 1..{MAX_ID} printable ASCII characters"
                )));
            }
        }
        if self.period_days == 0 || self.period_days > MAX_PERIOD_DAYS {
            return Err(PkiError::Malformed(format!(
                "period_days must be 1..{MAX_PERIOD_DAYS}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::payload::{decode, encode};

    fn order() -> AccountOrder {
        AccountOrder {
            meter_id: "MTR-1".into(),
            credit_limit: 10_000,
            period_days: 30,
            nonce: "00ff".into(),
            issued_at: 1_767_225_600,
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let o = order();
        assert_eq!(decode::<AccountOrder>(&encode(&o).unwrap()).unwrap(), o);
        let mut bad = o.clone();
        bad.period_days = 0;
        assert!(decode::<AccountOrder>(&encode(&bad).unwrap()).is_err());
        bad.period_days = MAX_PERIOD_DAYS + 1;
        assert!(decode::<AccountOrder>(&encode(&bad).unwrap()).is_err());
        let mut bad = o.clone();
        bad.nonce = "a b".into();
        assert!(decode::<AccountOrder>(&encode(&bad).unwrap()).is_err());
        let mut bad = o;
        bad.meter_id = String::new();
        assert!(decode::<AccountOrder>(&encode(&bad).unwrap()).is_err());
        let extra =
            br#"{"meter_id":"M","credit_limit":1,"period_days":1,"nonce":"n","issued_at":0,"x":1}"#;
        assert!(decode::<AccountOrder>(extra).is_err());
        let negative =
            br#"{"meter_id":"M","credit_limit":-1,"period_days":1,"nonce":"n","issued_at":0}"#;
        assert!(decode::<AccountOrder>(negative).is_err());
    }
}
