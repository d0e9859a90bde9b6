//! Revocation of a user certificate (Fig. 6): the three signed messages.
//!
//! * [`RevokeRequest`] (meter → authority, `CT_REVOKE_REQUEST`, signed by the
//!   meter's identity key): "please revoke serial S of mine, reason R" (602).
//! * [`RevokeOrder`] (authority → meter, `CT_REVOKE_ORDER`, signed by the
//!   root): bound to one meter id and one serial, single use by its
//!   `order_id` (608). A forced order (the authority's own decision) has
//!   `forced = true` and answers no request.
//! * [`RevokeConfirmation`] (meter → authority, `CT_REVOKE_CONFIRMATION`,
//!   identity key): the key is destroyed, the certificate is revoked, and the
//!   fee is paid — or, when the funds were short, it is due (616–620).
//!
//! Strict JSON like every payload ([`crate::payload`]): unknown fields refused,
//! sizes bounded; serials are lowercase hex without leading zeros so that one
//! certificate has exactly one spelling in every message and in the CRL.

use crate::payload::{Payload, MAX_ID};
use crate::{oid, PkiError, Result};
use der::asn1::ObjectIdentifier;
use serde::{Deserialize, Serialize};

/// Longest serial, in hex digits (RFC 5280: at most 20 octets).
pub const MAX_SERIAL_HEX: usize = 40;
/// Longest request id carried in a request (the meter's own limit).
pub const MAX_REQUEST_ID: usize = 128;
/// Length of an order id: 16 random bytes, hex.
pub const ORDER_ID_HEX: usize = 32;
/// Confirmation status: the fee was debited.
pub const PAID: &str = "paid";
/// Confirmation status: the funds were short; the fee is owed and the next
/// recharge settles it first.
pub const PAYMENT_DUE: &str = "payment-due";

/// Revocation reasons a meter or an authority may give, with their RFC 5280
/// CRLReason codes (the CA-only and hold reasons are not offered).
pub const REASONS: [(&str, u32); 6] = [
    ("unspecified", 0),
    ("keyCompromise", 1),
    ("affiliationChanged", 3),
    ("superseded", 4),
    ("cessationOfOperation", 5),
    ("privilegeWithdrawn", 9),
];

/// RFC 5280 CRLReason code of a reason name (see [`REASONS`]).
pub fn reason_code(reason: &str) -> Option<u32> {
    REASONS.iter().find(|(n, _)| *n == reason).map(|(_, c)| *c)
}

/// Checks a reason name against [`REASONS`].
pub fn check_reason(reason: &str) -> Result<()> {
    match reason_code(reason) {
        Some(_) => Ok(()),
        None => Err(PkiError::Malformed(format!(
            "reason {reason:?} is not one of {}",
            REASONS.map(|(n, _)| n).join(", ")
        ))),
    }
}

/// Canonical spelling of a serial: lowercase hex, no `0x`, no leading zeros
/// (`"0"` for zero). Refuses anything else than 1..=40 hex digits.
pub fn canonical_serial(s: &str) -> Result<String> {
    let t = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if t.is_empty() || t.len() > MAX_SERIAL_HEX || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PkiError::Malformed(format!(
            "serial must be 1..{MAX_SERIAL_HEX} hex digits"
        )));
    }
    let t = t.trim_start_matches('0').to_ascii_lowercase();
    Ok(if t.is_empty() { "0".into() } else { t })
}

/// The one form serials are shown in to people and in JSON: as
/// `openssl x509 -serial` prints them (uppercase hex of the value, padded to
/// an even length: `04`, `1F`, `0100`), so a serial can be compared with
/// OpenSSL's output by eye. Accepts every spelling [`canonical_serial`] does
/// (`4`, `04`, `0x04`, any case), so old scripts keep working.
pub fn display_serial(s: &str) -> Result<String> {
    let canon = canonical_serial(s)?.to_ascii_uppercase();
    Ok(if canon.len() % 2 == 1 {
        format!("0{canon}")
    } else {
        canon
    })
}

fn check_serial(s: &str) -> Result<()> {
    if canonical_serial(s)? != s {
        return Err(PkiError::Malformed(
            "serial must be lowercase hex without leading zeros".into(),
        ));
    }
    Ok(())
}

fn check_id(what: &str, s: &str, max: usize) -> Result<()> {
    if s.is_empty() || s.len() > max || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(PkiError::Malformed(format!(
            "{what} must be 1..{max} printable ASCII characters"
        )));
    }
    Ok(())
}

fn check_order_id(s: &str) -> Result<()> {
    if s.len() != ORDER_ID_HEX
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(PkiError::Malformed(format!(
            "order_id must be {ORDER_ID_HEX} lowercase hex digits"
        )));
    }
    Ok(())
}

/// A meter asks its authority to revoke one of its user certificates (602).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Meter asking (must be the CMS signer's common name).
    pub meter_id: String,
    /// Serial of the certificate ([`canonical_serial`] spelling).
    pub serial: String,
    /// Reason, one of [`REASONS`].
    pub reason: String,
    /// The meter's request id (to match the order to the request).
    pub request_id: String,
    /// Request time (unix s).
    pub issued_at: i64,
}

impl Payload for RevokeRequest {
    const CONTENT_TYPE: ObjectIdentifier = oid::CT_REVOKE_REQUEST;
    fn validate(&self) -> Result<()> {
        check_id("meter_id", &self.meter_id, MAX_ID)?;
        check_serial(&self.serial)?;
        check_reason(&self.reason)?;
        check_id("request_id", &self.request_id, MAX_REQUEST_ID)
    }
}

/// The authority orders a meter to revoke a certificate (608); single use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeOrder {
    /// Meter that must apply it.
    pub meter_id: String,
    /// Serial of the certificate ([`canonical_serial`] spelling).
    pub serial: String,
    /// Reason, one of [`REASONS`].
    pub reason: String,
    /// Fresh random id ([`ORDER_ID_HEX`] hex digits): the meter applies an order once.
    pub order_id: String,
    /// True when the authority revokes on its own (no meter request).
    pub forced: bool,
    /// The meter's request id this answers; empty when forced.
    pub request_id: String,
    /// Issue time (unix s), also the revocation time in the CRL.
    pub issued_at: i64,
}

impl Payload for RevokeOrder {
    const CONTENT_TYPE: ObjectIdentifier = oid::CT_REVOKE_ORDER;
    fn validate(&self) -> Result<()> {
        check_id("meter_id", &self.meter_id, MAX_ID)?;
        check_serial(&self.serial)?;
        check_reason(&self.reason)?;
        check_order_id(&self.order_id)?;
        match (self.forced, self.request_id.is_empty()) {
            (true, true) => Ok(()),
            (false, false) => check_id("request_id", &self.request_id, MAX_REQUEST_ID),
            _ => Err(PkiError::Malformed(
                "request_id must be empty exactly when the order is forced".into(),
            )),
        }
    }
}

/// The meter confirms a revocation and its payment, or the payment due (620).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeConfirmation {
    /// Meter that revoked.
    pub meter_id: String,
    /// Serial revoked.
    pub serial: String,
    /// Reason of the order.
    pub reason: String,
    /// The order applied.
    pub order_id: String,
    /// Whether the order was forced.
    pub forced: bool,
    /// Time of revocation (unix s, the meter's clock).
    pub revoked_at: i64,
    /// Fee for the revocation (minor units, the `revoke` rate).
    pub fee: u64,
    /// [`PAID`] or [`PAYMENT_DUE`].
    pub payment: String,
    /// Amount owed: 0 when paid, else the fee.
    pub amount_due: u64,
    /// The user key was destroyed in the housing.
    pub key_destroyed: bool,
}

impl Payload for RevokeConfirmation {
    const CONTENT_TYPE: ObjectIdentifier = oid::CT_REVOKE_CONFIRMATION;
    fn validate(&self) -> Result<()> {
        check_id("meter_id", &self.meter_id, MAX_ID)?;
        check_serial(&self.serial)?;
        check_reason(&self.reason)?;
        check_order_id(&self.order_id)?;
        let consistent = match self.payment.as_str() {
            PAID => self.amount_due == 0,
            PAYMENT_DUE => self.amount_due == self.fee && self.fee > 0,
            _ => false,
        };
        if !consistent {
            return Err(PkiError::Malformed(format!(
                "payment must be {PAID:?} (nothing due) or {PAYMENT_DUE:?} (the fee due)"
            )));
        }
        Ok(())
    }
}

/// Decodes a confirmation the meter signed and kept in its own ledger
/// (where the chain makes it tamper-evident; a revoke row keeps the order
/// after it, see [`crate::ledger_format::split_revoke_product`]): structure, content type and
/// signature are checked, the signer's chain and validity are not (the
/// meter's certificate may have expired since).
pub fn stored_confirmation(der: &[u8]) -> Result<RevokeConfirmation> {
    let (der, _order) = crate::ledger_format::split_revoke_product(der)?;
    let p = crate::cms::parse(der)?;
    if p.content_type != oid::CT_REVOKE_CONFIRMATION {
        return Err(PkiError::WrongType(format!(
            "{} is not a revoke confirmation",
            p.content_type
        )));
    }
    let content = p
        .content
        .clone()
        .ok_or_else(|| PkiError::Malformed("content is detached".into()))?;
    crate::cms::check_signature(&p, &content)?;
    crate::payload::decode(&content)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::payload::{decode, encode};

    fn order() -> RevokeOrder {
        RevokeOrder {
            meter_id: "MTR-1".into(),
            serial: "1f".into(),
            reason: "keyCompromise".into(),
            order_id: "0123456789abcdef0123456789abcdef".into(),
            forced: false,
            request_id: "r1".into(),
            issued_at: 1,
        }
    }

    #[test]
    fn serials_are_shown_as_openssl_prints_them() {
        for (typed, shown) in [
            ("4", "04"),
            ("04", "04"),
            ("0x04", "04"),
            ("1f", "1F"),
            ("0X001F", "1F"),
            ("100", "0100"),
            ("00", "00"),
            ("a1b2c", "0A1B2C"),
        ] {
            assert_eq!(display_serial(typed).unwrap(), shown, "{typed}");
            assert_eq!(display_serial(shown).unwrap(), shown, "{shown}");
        }
        assert!(display_serial("").is_err());
        assert!(display_serial("g1").is_err());
    }

    #[test]
    fn serials_have_one_spelling() {
        assert_eq!(canonical_serial("0x001F").unwrap(), "1f");
        assert_eq!(canonical_serial("00").unwrap(), "0");
        assert!(canonical_serial("").is_err());
        assert!(canonical_serial("0x").is_err());
        assert!(canonical_serial("g1").is_err());
        assert!(canonical_serial(&"1".repeat(41)).is_err());
        let mut o = order();
        o.serial = "01f".into();
        assert!(decode::<RevokeOrder>(&encode(&o).unwrap()).is_err());
        o.serial = "1F".into();
        assert!(decode::<RevokeOrder>(&encode(&o).unwrap()).is_err());
    }

    #[test]
    fn orders_are_strict() {
        let o = order();
        assert_eq!(decode::<RevokeOrder>(&encode(&o).unwrap()).unwrap(), o);
        let mut bad = o.clone();
        bad.reason = "certificateHold".into();
        assert!(decode::<RevokeOrder>(&encode(&bad).unwrap()).is_err());
        bad = o.clone();
        bad.order_id = "ABCDEF".into();
        assert!(decode::<RevokeOrder>(&encode(&bad).unwrap()).is_err());
        bad = o.clone();
        bad.forced = true;
        assert!(decode::<RevokeOrder>(&encode(&bad).unwrap()).is_err());
        bad.request_id.clear();
        assert!(decode::<RevokeOrder>(&encode(&bad).unwrap()).is_ok());
        bad.forced = false;
        assert!(decode::<RevokeOrder>(&encode(&bad).unwrap()).is_err());
        let mut json = String::from_utf8(encode(&o).unwrap()).unwrap();
        json.insert_str(1, "\"x\":1,");
        assert!(decode::<RevokeOrder>(json.as_bytes()).is_err());
    }

    #[test]
    fn confirmations_say_paid_or_due_consistently() {
        let mut c = RevokeConfirmation {
            meter_id: "MTR-1".into(),
            serial: "1f".into(),
            reason: "superseded".into(),
            order_id: "0123456789abcdef0123456789abcdef".into(),
            forced: false,
            revoked_at: 1,
            fee: 500,
            payment: PAID.into(),
            amount_due: 0,
            key_destroyed: true,
        };
        assert!(decode::<RevokeConfirmation>(&encode(&c).unwrap()).is_ok());
        c.amount_due = 500;
        assert!(decode::<RevokeConfirmation>(&encode(&c).unwrap()).is_err());
        c.payment = PAYMENT_DUE.into();
        assert!(decode::<RevokeConfirmation>(&encode(&c).unwrap()).is_ok());
        c.amount_due = 499;
        assert!(decode::<RevokeConfirmation>(&encode(&c).unwrap()).is_err());
        c.payment = "later".into();
        assert!(decode::<RevokeConfirmation>(&encode(&c).unwrap()).is_err());
    }

    #[test]
    fn requests_check_reason_and_ids() {
        let r = RevokeRequest {
            meter_id: "MTR-1".into(),
            serial: "a".into(),
            reason: "unspecified".into(),
            request_id: "rev-1".into(),
            issued_at: 0,
        };
        assert!(decode::<RevokeRequest>(&encode(&r).unwrap()).is_ok());
        let mut bad = r.clone();
        bad.request_id = "has space".into();
        assert!(decode::<RevokeRequest>(&encode(&bad).unwrap()).is_err());
        bad = r;
        bad.reason = "because".into();
        assert!(decode::<RevokeRequest>(&encode(&bad).unwrap()).is_err());
        assert_eq!(reason_code("privilegeWithdrawn"), Some(9));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = decode::<RevokeRequest>(&bytes);
            let _ = decode::<RevokeOrder>(&bytes);
            let _ = decode::<RevokeConfirmation>(&bytes);
            let _ = canonical_serial(&String::from_utf8_lossy(&bytes));
            let _ = stored_confirmation(&bytes);
            let _ = crate::crl::serials(&bytes);
        }

        #[test]
        fn json_shaped_orders_never_panic(serial in "[0-9a-fA-Fx]{0,44}", reason in "[a-zA-Z]{0,24}", id in "[0-9a-f]{0,34}", forced in proptest::prelude::any::<bool>()) {
            let json = format!(
                r#"{{"meter_id":"M","serial":"{serial}","reason":"{reason}","order_id":"{id}","forced":{forced},"request_id":"","issued_at":0}}"#
            );
            if let Ok(o) = decode::<RevokeOrder>(json.as_bytes()) {
                proptest::prop_assert_eq!(canonical_serial(&o.serial).unwrap(), o.serial);
                proptest::prop_assert!(reason_code(&o.reason).is_some());
            }
        }

        #[test]
        fn canonical_serial_is_idempotent(s in "(0x)?[0-9a-fA-F]{1,40}") {
            let c = canonical_serial(&s).unwrap();
            proptest::prop_assert_eq!(canonical_serial(&c).unwrap(), c);
        }
    }
}
