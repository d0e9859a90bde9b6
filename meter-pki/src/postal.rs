//! The postal secret key (claim 21): the signed objects that carry it to one meter's TPM,
//! and the indicium MAC the post checks with it.
//!
//! Flow: the meter sends a [`PostalKeyRequest`] (CMS SignedData by its identity key) naming
//! its TPM storage parent (the marshalled `TPMT_PUBLIC` of its storage primary); the
//! authority checks the meter certificate chains to its root, makes a random HMAC-SHA-256
//! key, keeps it, and answers with a [`PostalKeyDelivery`] (CMS SignedData by the authority)
//! holding a TPM duplication blob for that parent ([`crate::tpm::duplicate`]). The secret
//! never exists in the clear on the meter's workstation: only that TPM can import it.
//! Every indicium made afterwards carries [`indicium_mac`] (see `indicium.rs`).
//!
//! Why the identity key vouches for the parent: the identity key is certified by the
//! authority as living in this meter's TPM (issue 12); a meter that lied about its parent
//! would get a blob no TPM of its own can import.

use der::asn1::ObjectIdentifier;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use x509_cert::Certificate;

use crate::payload::Payload;
use crate::tpm::duplicate;
use crate::{cert, cms, PkiError, Result};

/// Length of the MAC an indicium carries: HMAC-SHA-256 truncated to 128 bits.
pub const MAC_LEN: usize = 16;
/// Longest hex field (a `TPM2B_PUBLIC` or `TPM2B_PRIVATE` is a few hundred bytes).
const MAX_HEX: usize = 4096;

/// Meter → authority: "wrap my postal key to this storage parent".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostalKeyRequest {
    /// The meter asking (must be the signer's common name).
    pub meter_id: String,
    /// Hex of the marshalled `TPMT_PUBLIC` of the meter's storage primary.
    pub parent_public_hex: String,
    /// When the meter made the request (unix s).
    pub issued_at: i64,
}

/// Authority → meter: the postal secret key, wrapped to the meter's storage parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostalKeyDelivery {
    /// Meter the key is for.
    pub meter_id: String,
    /// Unique id of this delivery (the meter imports each at most once).
    pub delivery_id: String,
    /// Hex of the `TPM2B_PUBLIC` of the keyedHash HMAC object.
    pub public_hex: String,
    /// Hex of the contents of `TPM2B_PRIVATE` (outer HMAC ‖ encSensitive).
    pub duplicate_hex: String,
    /// Hex of the contents of `TPM2B_ENCRYPTED_SECRET` (the ephemeral ECC point).
    pub seed_hex: String,
    /// Hex of the storage parent's Name (what the blob was wrapped for).
    pub parent_name_hex: String,
    /// Issue time (unix s).
    pub issued_at: i64,
}

fn check_hex(what: &str, s: &str) -> Result<Vec<u8>> {
    if s.is_empty() || s.len() > MAX_HEX {
        return Err(PkiError::Malformed(format!(
            "{what} must be 1..{MAX_HEX} hex digits"
        )));
    }
    hex::decode(s).map_err(|e| PkiError::Malformed(format!("{what}: {e}")))
}

fn check_id(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= crate::payload::MAX_ID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(PkiError::Malformed(format!(
            "{what} must be 1..{} characters [A-Za-z0-9_-]",
            crate::payload::MAX_ID
        )))
    }
}

impl PostalKeyRequest {
    /// The storage parent's `TPMT_PUBLIC`.
    pub fn parent_public(&self) -> Result<Vec<u8>> {
        check_hex("parent_public_hex", &self.parent_public_hex)
    }
}

impl Payload for PostalKeyRequest {
    const CONTENT_TYPE: ObjectIdentifier = crate::oid::CT_POSTAL_KEY_REQUEST;
    fn validate(&self) -> Result<()> {
        check_id("meter_id", &self.meter_id)?;
        duplicate::check_parent(&self.parent_public()?)?;
        Ok(())
    }
}

impl PostalKeyDelivery {
    /// The decoded blobs: (`TPM2B_PUBLIC`, duplicate, seed).
    pub fn blobs(&self) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        Ok((
            check_hex("public_hex", &self.public_hex)?,
            check_hex("duplicate_hex", &self.duplicate_hex)?,
            check_hex("seed_hex", &self.seed_hex)?,
        ))
    }
}

impl Payload for PostalKeyDelivery {
    const CONTENT_TYPE: ObjectIdentifier = crate::oid::CT_POSTAL_KEY;
    fn validate(&self) -> Result<()> {
        check_id("meter_id", &self.meter_id)?;
        check_id("delivery_id", &self.delivery_id)?;
        let (public, _, _) = self.blobs()?;
        check_hex("parent_name_hex", &self.parent_name_hex)?;
        // Only an HMAC-SHA-256 keyedHash object of our template is delivered.
        let area = public
            .get(2..)
            .filter(|a| {
                public.len() >= 2
                    && usize::from(u16::from_be_bytes([public[0], public[1]])) == a.len()
            })
            .ok_or_else(|| PkiError::Malformed("public_hex is not one TPM2B_PUBLIC".into()))?;
        let unique: [u8; 32] = area
            .get(area.len().saturating_sub(32)..)
            .and_then(|u| u.try_into().ok())
            .ok_or_else(|| PkiError::Malformed("public area too short".into()))?;
        if duplicate::hmac_public(&unique)? != area {
            return Err(PkiError::Malformed(
                "the delivered object is not an HMAC-SHA-256 keyedHash key of the postal template"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Verifies a meter's postal-key request against the authority's `anchors`: the signer
/// chains to them and its common name is the meter id the request names.
pub fn verify_request(
    der_or_pem: &[u8],
    anchors: &[Certificate],
    now: i64,
) -> Result<PostalKeyRequest> {
    let v = cms::verify(
        der_or_pem,
        anchors,
        Some(&crate::oid::CT_POSTAL_KEY_REQUEST),
        now,
    )?;
    let req: PostalKeyRequest = crate::payload::decode(&v.content)?;
    let signer = cert::subject_cn(&v.signer)
        .ok_or_else(|| PkiError::Malformed("request signer has no common name".into()))?;
    if signer != req.meter_id {
        return Err(PkiError::WrongType(format!(
            "the request names meter {} but is signed by {signer}",
            req.meter_id
        )));
    }
    Ok(req)
}

/// The full HMAC-SHA-256 of an indicium body under the postal key.
pub fn hmac_sha256(key: &[u8], body: &[u8]) -> Result<[u8; 32]> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .map_err(|_| PkiError::Malformed("postal key".into()))?;
    mac.update(body);
    Ok(mac.finalize().into_bytes().into())
}

/// The indicium MAC: the first [`MAC_LEN`] bytes of HMAC-SHA-256(key, body).
pub fn indicium_mac(key: &[u8], body: &[u8]) -> Result<[u8; MAC_LEN]> {
    let full = hmac_sha256(key, body)?;
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    Ok(out)
}

/// Checks an indicium MAC in constant time.
pub fn verify_indicium_mac(key: &[u8], body: &[u8], mac: &[u8]) -> Result<()> {
    let want = indicium_mac(key, body)?;
    let same =
        want.len() == mac.len() && want.iter().zip(mac).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0;
    if same {
        Ok(())
    } else {
        Err(PkiError::BadSignature(
            "the indicium MAC does not match the postal key".into(),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn mac_known_answer() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let full = hmac_sha256(b"Jefe", b"what do ya want for nothing?").unwrap();
        assert_eq!(
            hex::encode(full),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let m = indicium_mac(b"Jefe", b"what do ya want for nothing?").unwrap();
        assert_eq!(hex::encode(m), "5bdcc146bf60754e6a042426089575c7");
        assert!(verify_indicium_mac(b"Jefe", b"what do ya want for nothing?", &m).is_ok());
        assert!(verify_indicium_mac(b"Jefx", b"what do ya want for nothing?", &m).is_err());
    }
}
