//! The user-certificate request of Fig. 5, meter → authority.
//!
//! The PKCS#10 request proves possession of the new TPM key (self-signature); the meter
//! wraps it, with the enrolment code the authority gave the user, in CMS SignedData
//! (eContentType [`oid::CT_CERT_REQUEST`]) signed by its identity key, so the authority
//! knows which of its meters asks. Strict JSON like every other payload.

use crate::payload::{Payload, MAX_ID};
use crate::{oid, PkiError, Result};
use der::asn1::ObjectIdentifier;
use serde::{Deserialize, Serialize};

/// Longest enrolment code.
pub const MAX_CODE: usize = 64;
/// Longest hex PKCS#10 request (8 KiB of hex).
pub const MAX_CSR_HEX: usize = 8 * 1024;

/// Request for a user certificate, signed by the meter's identity key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRequest {
    /// Meter asking (must be the CMS signer's common name).
    pub meter_id: String,
    /// Subject common name wanted (must be the PKCS#10 subject).
    pub subject_cn: String,
    /// One-time enrolment code the authority issued for this subject.
    pub enrolment_code: String,
    /// DER PKCS#10 request, hex.
    pub csr_hex: String,
    /// Request time (unix s).
    pub issued_at: i64,
    /// What the key is for: absent for a signing key (the PKCS#10 is self-signed), or
    /// [`PURPOSE_ENCRYPT`] for a key-agreement key, whose PKCS#10 is signed by the
    /// meter's identity key (it cannot sign) and whose certificate says keyAgreement.
    /// Left out of the JSON when absent, so signing requests read as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
}

/// [`CertRequest::purpose`] of a key-agreement (encryption) key.
pub const PURPOSE_ENCRYPT: &str = "encrypt";

impl CertRequest {
    /// The DER PKCS#10 request.
    pub fn csr_der(&self) -> Result<Vec<u8>> {
        hex::decode(&self.csr_hex).map_err(|_| PkiError::Malformed("csr_hex is not hex".into()))
    }
}

/// An enrolment code: 1..=64 printable ASCII characters, no spaces.
pub fn check_code(code: &str) -> Result<()> {
    if code.is_empty() || code.len() > MAX_CODE || !code.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(PkiError::Malformed(format!(
            "enrolment code must be 1..{MAX_CODE} printable ASCII characters"
        )));
    }
    Ok(())
}

impl Payload for CertRequest {
    const CONTENT_TYPE: ObjectIdentifier = oid::CT_CERT_REQUEST;

    fn validate(&self) -> Result<()> {
        if self.meter_id.is_empty() || self.meter_id.len() > MAX_ID {
            return Err(PkiError::Malformed("meter_id must be 1..64 bytes".into()));
        }
        crate::util::check_cn(&self.subject_cn)?;
        check_code(&self.enrolment_code)?;
        if self.csr_hex.is_empty() || self.csr_hex.len() > MAX_CSR_HEX {
            return Err(PkiError::Malformed(format!(
                "csr_hex must be 1..{MAX_CSR_HEX} hex digits"
            )));
        }
        if let Some(p) = &self.purpose {
            if p != PURPOSE_ENCRYPT {
                return Err(PkiError::Malformed(format!(
                    "purpose {p:?}: expected absent or {PURPOSE_ENCRYPT:?}"
                )));
            }
        }
        self.csr_der().map(|_| ())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::payload;

    #[test]
    fn strict_and_bounded() {
        let r = CertRequest {
            meter_id: "MTR-1".into(),
            subject_cn: "Alice".into(),
            enrolment_code: "ABCD-1234".into(),
            csr_hex: "3000".into(),
            issued_at: 1,
            purpose: None,
        };
        let b = payload::encode(&r).unwrap();
        assert_eq!(payload::decode::<CertRequest>(&b).unwrap(), r);
        let mut bad = r.clone();
        bad.enrolment_code = "has space".into();
        assert!(payload::decode::<CertRequest>(&payload::encode(&bad).unwrap()).is_err());
        bad = r.clone();
        bad.csr_hex = "zz".into();
        assert!(payload::decode::<CertRequest>(&payload::encode(&bad).unwrap()).is_err());
        bad = r.clone();
        bad.purpose = Some("other".into());
        assert!(payload::decode::<CertRequest>(&payload::encode(&bad).unwrap()).is_err());
        bad.purpose = Some(PURPOSE_ENCRYPT.into());
        assert!(payload::decode::<CertRequest>(&payload::encode(&bad).unwrap()).is_ok());
        assert!(!String::from_utf8(payload::encode(&r).unwrap())
            .unwrap()
            .contains("purpose"));
        let extra = br#"{"meter_id":"m","subject_cn":"a","enrolment_code":"c","csr_hex":"30","issued_at":0,"x":1}"#;
        assert!(payload::decode::<CertRequest>(extra).is_err());
    }
}
