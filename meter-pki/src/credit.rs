//! Credit payloads (patent Figs. 7A, 7B, 8, 9): the meter's credit request, the creditor's
//! line-of-credit certificate and the meter's payment certificate.
//!
//! All three are strict JSON in CMS SignedData like the other [`crate::payload`] types, so a
//! creditor or a merchant opens them with `openssl cms -verify` and reads them. The request
//! carries a postmark (RFC 3161 token of the meter) over [`CreditRequest::imprint`], the
//! SHA-384 of the JSON of its [`CreditAsk`], so the creditor knows when and from which meter
//! it was asked. A payment names the line by serial and by the SHA-384 of the line
//! certificate's DER, so a merchant can match it with the certificate the creditor issued.

use crate::payload::Payload;
use crate::{cms, util, PkiError, Result};
use der::asn1::ObjectIdentifier;
use serde::{Deserialize, Serialize};

/// Longest line serial.
pub const MAX_SERIAL: usize = 32;
/// Longest party name (creditor, issuer, payee, holder).
pub const MAX_NAME: usize = 64;
/// Longest "authorized use" text.
pub const MAX_USE: usize = 256;
/// Hex digits of a SHA-384 digest.
const DIGEST_HEX: usize = 96;
/// Hex digits of an uncompressed SEC1 P-384 point.
const KEY_HEX: usize = 194;
/// Longest hex postmark token (16 KiB of DER).
const MAX_TOKEN_HEX: usize = 32 * 1024;

/// What the meter asks for (the part the postmark covers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditAsk {
    /// Requesting meter.
    pub meter_id: String,
    /// Creditor asked.
    pub creditor: String,
    /// Line amount asked, minor units.
    pub amount: u64,
    /// Time of the request (unix s).
    pub requested_at: i64,
    /// The meter's request id (the idempotency key it was made under).
    pub request_id: String,
}

/// A signed credit request (`oid::CT_CREDIT_REQUEST`), signed by the meter's identity key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditRequest {
    /// What is asked.
    pub ask: CreditAsk,
    /// Hex DER of the meter's RFC 3161 token over [`CreditRequest::imprint`].
    pub postmark_hex: String,
}

impl CreditRequest {
    /// SHA-384 of the JSON of `ask`: the message imprint of the postmark.
    pub fn imprint(ask: &CreditAsk) -> Result<[u8; 48]> {
        Ok(util::sha384(&crate::payload::encode(ask)?))
    }

    /// The postmark token DER.
    pub fn postmark(&self) -> Result<Vec<u8>> {
        hex::decode(&self.postmark_hex).map_err(|e| PkiError::Malformed(format!("postmark: {e}")))
    }
}

/// A line-of-credit certificate (Fig. 7A; `oid::CT_CREDIT_LINE`), signed by the creditor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditLine {
    /// Unique identifier of the line (704/706).
    pub serial: String,
    /// Holder: the meter id.
    pub holder: String,
    /// Holder's public key (the meter identity key), hex SEC1 uncompressed (708).
    pub holder_key_hex: String,
    /// Credit issuer (710).
    pub issuer: String,
    /// Line amount, minor units (712).
    pub amount: u64,
    /// Valid from (unix s) (714).
    pub not_before: i64,
    /// Valid until (unix s) (714).
    pub not_after: i64,
    /// Authorized use (716).
    pub authorized_use: String,
    /// SHA-384 (hex) of the credit request DER it answers.
    pub request_digest_hex: String,
}

/// A payment certificate (Fig. 7B; `oid::CT_PAYMENT`), signed by the meter's identity key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payment {
    /// Certificate holder (the line's holder) (724).
    pub holder: String,
    /// Unique serial of this payment: `<credit_serial>-<sequence>` (726).
    pub serial: String,
    /// Meter that signed it (728).
    pub meter_id: String,
    /// Serial of the line of credit.
    pub credit_serial: String,
    /// SHA-384 (hex) of the line-of-credit certificate DER (730).
    pub credit_line_digest_hex: String,
    /// Amount authorized, minor units (731); 0 for the line's first certificate.
    pub amount: u64,
    /// Who is paid.
    pub payee: String,
    /// Credit remaining on the line after this payment (732).
    pub credit_remaining: u64,
    /// Position on the line: 0 for the certificate made when the line opened, then 1, 2, ...
    pub sequence: u64,
    /// Time of the payment (unix s).
    pub time: i64,
}

impl Payment {
    /// The serial a payment at `sequence` on line `credit_serial` carries.
    pub fn serial_for(credit_serial: &str, sequence: u64) -> String {
        format!("{credit_serial}-{sequence}")
    }
}

fn check_text(what: &str, s: &str, max: usize, spaces: bool) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_graphic() || (spaces && b == b' '));
    if ok {
        Ok(())
    } else {
        Err(PkiError::Malformed(format!(
            "{what} must be 1..{max} printable ASCII characters"
        )))
    }
}

/// Checks a line serial: 1..32 characters of `[A-Za-z0-9]`.
pub fn check_serial(s: &str) -> Result<()> {
    if !s.is_empty() && s.len() <= MAX_SERIAL && s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(PkiError::Malformed(format!(
            "credit serial must be 1..{MAX_SERIAL} characters of A-Z a-z 0-9"
        )))
    }
}

fn check_hex(what: &str, s: &str, len: usize) -> Result<()> {
    if s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(PkiError::Malformed(format!(
            "{what} must be {len} hex digits"
        )))
    }
}

impl Payload for CreditRequest {
    const CONTENT_TYPE: ObjectIdentifier = crate::oid::CT_CREDIT_REQUEST;
    fn validate(&self) -> Result<()> {
        check_text("meter_id", &self.ask.meter_id, MAX_NAME, false)?;
        check_text("creditor", &self.ask.creditor, MAX_NAME, false)?;
        check_text("request_id", &self.ask.request_id, 128, false)?;
        if self.ask.amount == 0 {
            return Err(PkiError::Malformed("amount must be positive".into()));
        }
        if self.postmark_hex.is_empty() || self.postmark_hex.len() > MAX_TOKEN_HEX {
            return Err(PkiError::Malformed(format!(
                "postmark_hex must be 1..{MAX_TOKEN_HEX} hex digits"
            )));
        }
        self.postmark().map(|_| ())
    }
}

impl Payload for CreditLine {
    const CONTENT_TYPE: ObjectIdentifier = crate::oid::CT_CREDIT_LINE;
    fn validate(&self) -> Result<()> {
        check_serial(&self.serial)?;
        check_text("holder", &self.holder, MAX_NAME, false)?;
        check_text("issuer", &self.issuer, MAX_NAME, false)?;
        check_text("authorized_use", &self.authorized_use, MAX_USE, true)?;
        check_hex("holder_key_hex", &self.holder_key_hex, KEY_HEX)?;
        check_hex("request_digest_hex", &self.request_digest_hex, DIGEST_HEX)?;
        if self.amount == 0 {
            return Err(PkiError::Malformed("amount must be positive".into()));
        }
        if self.not_after <= self.not_before {
            return Err(PkiError::Malformed(
                "not_after must be later than not_before".into(),
            ));
        }
        Ok(())
    }
}

impl Payload for Payment {
    const CONTENT_TYPE: ObjectIdentifier = crate::oid::CT_PAYMENT;
    fn validate(&self) -> Result<()> {
        check_text("holder", &self.holder, MAX_NAME, false)?;
        check_text("meter_id", &self.meter_id, MAX_NAME, false)?;
        check_text("payee", &self.payee, MAX_NAME, false)?;
        check_serial(&self.credit_serial)?;
        check_hex(
            "credit_line_digest_hex",
            &self.credit_line_digest_hex,
            DIGEST_HEX,
        )?;
        if self.serial != Payment::serial_for(&self.credit_serial, self.sequence) {
            return Err(PkiError::Malformed(
                "serial must be <credit_serial>-<sequence>".into(),
            ));
        }
        Ok(())
    }
}

/// Reads the payload of a SignedData of type `T` WITHOUT verifying its signature: for
/// objects the caller made itself and kept in a tamper-evident store (the meter's ledger,
/// whose hash chain covers them). Anything from outside goes through
/// [`crate::payload::open`].
pub fn read_unverified<T: Payload>(der: &[u8]) -> Result<T> {
    let p = cms::parse(der)?;
    if p.content_type != T::CONTENT_TYPE {
        return Err(PkiError::WrongType(format!(
            "expected content type {}, found {}",
            T::CONTENT_TYPE,
            p.content_type
        )));
    }
    let content = p
        .content
        .ok_or_else(|| PkiError::Malformed("content is detached".into()))?;
    crate::payload::decode(&content)
}

/// SHA-384 of `bytes` (the digest a payment names its line by).
pub fn sha384(bytes: &[u8]) -> [u8; 48] {
    util::sha384(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::payload::{decode, encode};

    fn line() -> CreditLine {
        CreditLine {
            serial: "CL0001".into(),
            holder: "MTR-ABCDEF012345".into(),
            holder_key_hex: "04".repeat(97),
            issuer: "Bank".into(),
            amount: 10_000,
            not_before: 0,
            not_after: 100,
            authorized_use: "office supplies".into(),
            request_digest_hex: "ab".repeat(48),
        }
    }

    fn payment() -> Payment {
        Payment {
            holder: "MTR-ABCDEF012345".into(),
            serial: "CL0001-3".into(),
            meter_id: "MTR-ABCDEF012345".into(),
            credit_serial: "CL0001".into(),
            credit_line_digest_hex: "cd".repeat(48),
            amount: 5,
            payee: "shop".into(),
            credit_remaining: 9_000,
            sequence: 3,
            time: 1,
        }
    }

    #[test]
    fn line_checks() {
        let l = line();
        assert_eq!(decode::<CreditLine>(&encode(&l).unwrap()).unwrap(), l);
        let mut bad = line();
        bad.serial = "CL-1".into();
        assert!(decode::<CreditLine>(&encode(&bad).unwrap()).is_err());
        let mut bad = line();
        bad.not_after = 0;
        assert!(decode::<CreditLine>(&encode(&bad).unwrap()).is_err());
        let mut bad = line();
        bad.amount = 0;
        assert!(decode::<CreditLine>(&encode(&bad).unwrap()).is_err());
        let mut bad = line();
        bad.holder_key_hex.pop();
        assert!(decode::<CreditLine>(&encode(&bad).unwrap()).is_err());
        let extra = String::from_utf8(encode(&l).unwrap())
            .unwrap()
            .replacen('{', "{\"x\":1,", 1);
        assert!(decode::<CreditLine>(extra.as_bytes()).is_err());
    }

    #[test]
    fn payment_serial_is_bound_to_sequence() {
        let p = payment();
        assert_eq!(decode::<Payment>(&encode(&p).unwrap()).unwrap(), p);
        let mut bad = payment();
        bad.sequence = 4;
        assert!(decode::<Payment>(&encode(&bad).unwrap()).is_err());
        let mut bad = payment();
        bad.payee = "a shop".into();
        assert!(decode::<Payment>(&encode(&bad).unwrap()).is_err());
    }

    #[test]
    fn request_imprint_covers_the_ask() {
        let ask = CreditAsk {
            meter_id: "MTR-1".into(),
            creditor: "Bank".into(),
            amount: 7,
            requested_at: 5,
            request_id: "r1".into(),
        };
        let a = CreditRequest::imprint(&ask).unwrap();
        let mut other = ask.clone();
        other.amount = 8;
        assert_ne!(a, CreditRequest::imprint(&other).unwrap());
        let r = CreditRequest {
            ask,
            postmark_hex: "zz".into(),
        };
        assert!(decode::<CreditRequest>(&encode(&r).unwrap()).is_err());
    }

    #[test]
    fn unverified_read_checks_the_type() {
        let key = p384::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let root = crate::issue::self_signed_root(&key, "R", 1, 0, 10).unwrap();
        let content = encode(&payment()).unwrap();
        let der = cms::sign_with_key(
            &cms::SignOptions {
                content_type: crate::oid::CT_PAYMENT,
                content: &content,
                signer: &root,
                extra_certs: &[],
                signing_time: None,
                ess_cert_id_v2: false,
            },
            &key,
        )
        .unwrap();
        assert_eq!(read_unverified::<Payment>(&der).unwrap(), payment());
        assert!(matches!(
            read_unverified::<CreditLine>(&der),
            Err(PkiError::WrongType(_))
        ));
    }
}
