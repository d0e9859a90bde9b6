//! Strict JSON payloads carried as CMS eContent: vouchers, rate tables, clear-lock orders,
//! trust-anchor updates.
//!
//! JSON because people read them (`openssl cms -verify` prints the content); strict because
//! they move money: unknown fields are refused, sizes are bounded, names are plain ASCII.
//! [`open`] verifies the CMS and decodes in one step with the right content type.

use crate::{cms, PkiError, Result};
use der::asn1::ObjectIdentifier;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use x509_cert::Certificate;

/// Longest meter id or nonce.
pub const MAX_ID: usize = 64;
/// Most rates in a table.
pub const MAX_RATES: usize = 64;
/// Most postage rows in a table.
pub const MAX_POSTAGE: usize = 256;
/// Most currency digits.
pub const MAX_DIGITS: u8 = 6;
/// Longest hex DER certificate in an anchor update (8 KiB of hex).
pub const MAX_ANCHOR_HEX: usize = 8 * 1024;
/// Anchor update mode: the new anchor joins after the current ones.
pub const ANCHOR_ADD: &str = "add";
/// Anchor update mode: the new anchor becomes the first (current) one; the old stay.
pub const ANCHOR_REPLACE: &str = "replace";

/// A signed payload type: its eContentType and its own validation.
pub trait Payload: Serialize + DeserializeOwned {
    /// The CMS eContentType this payload travels under.
    const CONTENT_TYPE: ObjectIdentifier;
    /// Semantic checks beyond the JSON shape.
    fn validate(&self) -> Result<()>;
}

/// Recharge voucher: adds `amount` (minor units) to meter `meter_id`; single use by `sequence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Voucher {
    /// Meter the voucher is for.
    pub meter_id: String,
    /// Minor units to credit.
    pub amount: u64,
    /// Per-meter sequence number, unique.
    pub sequence: u64,
    /// Issue time (unix s).
    pub issued_at: i64,
    /// Register the voucher funds (issue 17): `postage` or `services`.
    /// Absent (every voucher before issue 17): services, which is the one
    /// combined pool of a meter whose funds are not split. Not written when
    /// absent, so an old voucher's bytes are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register: Option<String>,
}

/// Register names a voucher may give.
pub const VOUCHER_REGISTERS: [&str; 2] = ["postage", "services"];

/// Table of service rates (claim 16).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateTable {
    /// Monotonic version; the meter refuses an older one.
    pub version: u32,
    /// Effective from (unix s).
    pub effective: i64,
    /// Currency code, e.g. `USD`.
    pub currency: String,
    /// Minor-unit digits (3 = tenths of cents).
    pub digits: u8,
    /// Service name → price in minor units.
    pub rates: BTreeMap<String, u64>,
    /// Postage by class and weight band.
    #[serde(default)]
    pub postage: Vec<PostageRate>,
}

/// One postage row: pieces of `class` up to `max_grams` cost `amount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostageRate {
    /// Mail class, e.g. `letter`.
    pub class: String,
    /// Upper weight bound of the band (inclusive).
    pub max_grams: u32,
    /// Price in minor units.
    pub amount: u64,
}

/// Authority order clearing a meter lock; `nonce` is the lock's nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClearLockOrder {
    /// Meter to unlock.
    pub meter_id: String,
    /// Nonce of the lock being cleared.
    pub nonce: String,
    /// Issue time (unix s).
    pub issued_at: i64,
}

/// Authority message adding or replacing a meter trust anchor; signed by a current anchor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorUpdate {
    /// Meter the update is for; `None` = any meter.
    pub meter_id: Option<String>,
    /// Hex DER of the new self-signed root certificate.
    pub new_anchor_der_hex: String,
    /// [`ANCHOR_ADD`] or [`ANCHOR_REPLACE`].
    pub mode: String,
    /// Issue time (unix s).
    pub issued_at: i64,
}

impl AnchorUpdate {
    /// The new anchor's DER (the hex checked by `validate`).
    pub fn new_anchor_der(&self) -> Result<Vec<u8>> {
        hex::decode(&self.new_anchor_der_hex)
            .map_err(|e| PkiError::Malformed(format!("new_anchor_der_hex: {e}")))
    }
}

fn check_name(what: &str, s: &str, max: usize) -> Result<()> {
    let ok = !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(PkiError::Malformed(format!(
            "{what} must be 1..{max} printable ASCII characters"
        )))
    }
}

impl Payload for Voucher {
    const CONTENT_TYPE: ObjectIdentifier = crate::oid::CT_VOUCHER;
    fn validate(&self) -> Result<()> {
        check_name("meter_id", &self.meter_id, MAX_ID)?;
        match &self.register {
            Some(r) if !VOUCHER_REGISTERS.contains(&r.as_str()) => Err(PkiError::Malformed(
                format!("voucher register {r:?} is not postage or services"),
            )),
            _ => Ok(()),
        }
    }
}

impl Payload for ClearLockOrder {
    const CONTENT_TYPE: ObjectIdentifier = crate::oid::CT_CLEAR_LOCK;
    fn validate(&self) -> Result<()> {
        check_name("meter_id", &self.meter_id, MAX_ID)?;
        check_name("nonce", &self.nonce, MAX_ID)
    }
}

impl Payload for AnchorUpdate {
    const CONTENT_TYPE: ObjectIdentifier = crate::oid::CT_ANCHOR_UPDATE;
    fn validate(&self) -> Result<()> {
        if let Some(id) = &self.meter_id {
            check_name("meter_id", id, MAX_ID)?;
        }
        if self.new_anchor_der_hex.is_empty() || self.new_anchor_der_hex.len() > MAX_ANCHOR_HEX {
            return Err(PkiError::Malformed(format!(
                "new_anchor_der_hex must be 1..{MAX_ANCHOR_HEX} hex digits"
            )));
        }
        self.new_anchor_der()?;
        if self.mode != ANCHOR_ADD && self.mode != ANCHOR_REPLACE {
            return Err(PkiError::Malformed(format!(
                "mode must be {ANCHOR_ADD:?} or {ANCHOR_REPLACE:?}, not {:?}",
                self.mode
            )));
        }
        Ok(())
    }
}

impl Payload for RateTable {
    const CONTENT_TYPE: ObjectIdentifier = crate::oid::CT_RATES;
    fn validate(&self) -> Result<()> {
        if self.digits > MAX_DIGITS {
            return Err(PkiError::Malformed(format!(
                "digits must be <= {MAX_DIGITS}"
            )));
        }
        check_name("currency", &self.currency, 8)?;
        if self.rates.len() > MAX_RATES || self.postage.len() > MAX_POSTAGE {
            return Err(PkiError::Malformed(format!(
                "at most {MAX_RATES} rates and {MAX_POSTAGE} postage rows"
            )));
        }
        for name in self.rates.keys() {
            check_name("service name", name, MAX_ID)?;
        }
        for row in &self.postage {
            check_name("postage class", &row.class, MAX_ID)?;
        }
        Ok(())
    }
}

/// Serializes a payload to compact JSON.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| PkiError::Malformed(format!("JSON encoding: {e}")))
}

/// Parses strict JSON (unknown fields refused, size-bounded) and validates it.
pub fn decode<T: Payload>(bytes: &[u8]) -> Result<T> {
    crate::util::check_size(bytes.len())?;
    let v: T = serde_json::from_slice(bytes)
        .map_err(|e| PkiError::Malformed(format!("payload JSON: {e}")))?;
    v.validate()?;
    Ok(v)
}

/// Verifies a signed payload (CMS with `T::CONTENT_TYPE`, chaining to `anchors`) and
/// decodes it; returns the payload and the verified message.
pub fn open<T: Payload>(
    der_or_pem: &[u8],
    anchors: &[Certificate],
    now: i64,
) -> Result<(T, cms::Verified)> {
    let v = cms::verify(der_or_pem, anchors, Some(&T::CONTENT_TYPE), now)?;
    Ok((decode(&v.content)?, v))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn strict_decoding() {
        let v = Voucher {
            meter_id: "m-1".into(),
            amount: 5000,
            sequence: 1,
            issued_at: 1_767_225_600,
            register: None,
        };
        let b = encode(&v).unwrap();
        assert_eq!(decode::<Voucher>(&b).unwrap(), v);
        assert!(!String::from_utf8_lossy(&b).contains("register"));
        let p = Voucher {
            register: Some("postage".into()),
            ..v.clone()
        };
        assert_eq!(decode::<Voucher>(&encode(&p).unwrap()).unwrap(), p);
        let bad = br#"{"meter_id":"m","amount":1,"sequence":1,"issued_at":0,"register":"x"}"#;
        assert!(decode::<Voucher>(bad).is_err());
        let extra = br#"{"meter_id":"m","amount":1,"sequence":1,"issued_at":0,"x":1}"#;
        assert!(decode::<Voucher>(extra).is_err());
        let neg = br#"{"meter_id":"m","amount":-1,"sequence":1,"issued_at":0}"#;
        assert!(decode::<Voucher>(neg).is_err());
        let empty = br#"{"meter_id":"","amount":1,"sequence":1,"issued_at":0}"#;
        assert!(decode::<Voucher>(empty).is_err());
        let trailing = br#"{"meter_id":"m","amount":1,"sequence":1,"issued_at":0} x"#;
        assert!(decode::<Voucher>(trailing).is_err());
    }

    #[test]
    fn anchor_update_checks() {
        let mut u = AnchorUpdate {
            meter_id: None,
            new_anchor_der_hex: "3082".into(),
            mode: ANCHOR_ADD.into(),
            issued_at: 0,
        };
        assert_eq!(decode::<AnchorUpdate>(&encode(&u).unwrap()).unwrap(), u);
        assert_eq!(u.new_anchor_der().unwrap(), vec![0x30, 0x82]);
        u.meter_id = Some("MTR-1".into());
        u.mode = ANCHOR_REPLACE.into();
        assert!(decode::<AnchorUpdate>(&encode(&u).unwrap()).is_ok());
        u.mode = "swap".into();
        assert!(decode::<AnchorUpdate>(&encode(&u).unwrap()).is_err());
        u.mode = ANCHOR_ADD.into();
        u.new_anchor_der_hex = "zz".into();
        assert!(decode::<AnchorUpdate>(&encode(&u).unwrap()).is_err());
        u.new_anchor_der_hex = "ab".repeat(MAX_ANCHOR_HEX / 2 + 1);
        assert!(decode::<AnchorUpdate>(&encode(&u).unwrap()).is_err());
        u.new_anchor_der_hex = String::new();
        assert!(decode::<AnchorUpdate>(&encode(&u).unwrap()).is_err());
        u.new_anchor_der_hex = "3082".into();
        u.meter_id = Some(String::new());
        assert!(decode::<AnchorUpdate>(&encode(&u).unwrap()).is_err());
    }

    #[test]
    fn rate_table_limits() {
        let mut t = RateTable {
            version: 1,
            effective: 0,
            currency: "USD".into(),
            digits: 3,
            rates: [("postmark".to_string(), 500u64)].into_iter().collect(),
            postage: vec![],
        };
        assert!(decode::<RateTable>(&encode(&t).unwrap()).is_ok());
        t.digits = 7;
        assert!(decode::<RateTable>(&encode(&t).unwrap()).is_err());
        t.digits = 3;
        t.rates.insert("bad name".into(), 1);
        assert!(decode::<RateTable>(&encode(&t).unwrap()).is_err());
        t.rates.remove("bad name");
        t.rates.extend((0..64).map(|i| (format!("s{i}"), 1)));
        assert!(decode::<RateTable>(&encode(&t).unwrap()).is_err());
    }
}
