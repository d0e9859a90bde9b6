//! Funds order (authority → meter), `CT_FUNDS_ORDER` (issue 17 item 3).
//!
//! A meter keeps one combined pool until the authority orders its postage
//! funds kept apart: postage money belongs to the post, service money to the
//! provider, and neither can reconcile a pool that mixes them. The order is
//! one-way (a split meter never recombines) and per meter; the meter records
//! it once, whatever the order's nonce, so a second order is refused.

use crate::payload::{Payload, MAX_ID};
use crate::{PkiError, Result};
use der::asn1::ObjectIdentifier;
use serde::{Deserialize, Serialize};

/// The only mode an order may set today: postage funds apart.
pub const FUNDS_SPLIT: &str = "split";

/// Orders a meter to keep its postage funds apart from its services funds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FundsOrder {
    /// Meter the order is for.
    pub meter_id: String,
    /// [`FUNDS_SPLIT`].
    pub funds: String,
    /// Fresh random nonce (two orders are never the same bytes).
    pub nonce: String,
    /// Issue time (unix s).
    pub issued_at: i64,
}

impl Payload for FundsOrder {
    const CONTENT_TYPE: ObjectIdentifier = crate::oid::CT_FUNDS_ORDER;
    fn validate(&self) -> Result<()> {
        for (what, s) in [("meter_id", &self.meter_id), ("nonce", &self.nonce)] {
            if s.is_empty() || s.len() > MAX_ID || !s.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(PkiError::Malformed(format!(
                    "{what} must be 1..{MAX_ID} printable ASCII characters"
                )));
            }
        }
        if self.funds != FUNDS_SPLIT {
            return Err(PkiError::Malformed(format!(
                "funds must be {FUNDS_SPLIT:?}, not {:?}",
                self.funds
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

    #[test]
    fn round_trip_and_checks() {
        let o = FundsOrder {
            meter_id: "MTR-1".into(),
            funds: FUNDS_SPLIT.into(),
            nonce: "00ff".into(),
            issued_at: 1_767_225_600,
        };
        assert_eq!(decode::<FundsOrder>(&encode(&o).unwrap()).unwrap(), o);
        let mut bad = o.clone();
        bad.funds = "combined".into();
        assert!(decode::<FundsOrder>(&encode(&bad).unwrap()).is_err());
        let mut bad = o;
        bad.meter_id = String::new();
        assert!(decode::<FundsOrder>(&encode(&bad).unwrap()).is_err());
        let extra = br#"{"meter_id":"M","funds":"split","nonce":"n","issued_at":0,"x":1}"#;
        assert!(decode::<FundsOrder>(extra).is_err());
    }
}
