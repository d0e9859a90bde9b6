//! PKCS#10 certification requests, two-phase so the TPM can sign them.
//!
//! The meter asks the authority for its identity and postmark certificates (and users'
//! certificates) with a CSR whose self-signature proves possession of the TPM key.

use crate::{oid, sig, util, PkiError, Result};
use der::asn1::{BitString, SetOfVec};
use der::{Decode, Encode};
use x509_cert::request::{CertReq, CertReqInfo, Version};

/// A request waiting for its self-signature.
#[derive(Debug, Clone)]
pub struct PreparedCsr {
    info: CertReqInfo,
    digest: [u8; 48],
    public_sec1: Vec<u8>,
}

impl PreparedCsr {
    /// SHA-384 of the DER CertificationRequestInfo: what the key must sign.
    pub fn digest(&self) -> [u8; 48] {
        self.digest
    }

    /// The DER request; `BadSignature` if `raw_sig` was not made by the request's key.
    pub fn finish(self, raw_sig: &[u8; 96]) -> Result<Vec<u8>> {
        let signer = self.public_sec1.clone();
        self.finish_signed_by(&signer, raw_sig)
    }

    /// The DER request signed by another key than the one it names (`signer_sec1`):
    /// for a key-agreement key, which cannot sign, the meter's identity key signs
    /// (see [`verify_signed_by`]). `BadSignature` if `raw_sig` was not made by `signer_sec1`.
    pub fn finish_signed_by(self, signer_sec1: &[u8], raw_sig: &[u8; 96]) -> Result<Vec<u8>> {
        sig::verify_prehash(signer_sec1, &self.digest, raw_sig)?;
        let req = CertReq {
            info: self.info,
            algorithm: util::alg(oid::ECDSA_SHA384),
            signature: BitString::from_bytes(&sig::raw_to_der(raw_sig)?)?,
        };
        Ok(req.to_der()?)
    }
}

/// Prepares a request for subject `CN=<subject_cn>` and a SEC1 P-384 public key.
pub fn prepare(subject_cn: &str, public_sec1: &[u8]) -> Result<PreparedCsr> {
    let public_key = util::spki_from_sec1(public_sec1)?;
    let info = CertReqInfo {
        version: Version::V1,
        subject: util::name_cn(subject_cn)?,
        public_key,
        attributes: SetOfVec::new(),
    };
    let digest = util::sha384(&info.to_der()?);
    Ok(PreparedCsr {
        info,
        digest,
        public_sec1: util::sec1_from_spki(&util::spki_from_sec1(public_sec1)?)?,
    })
}

/// A request whose self-signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCsr {
    /// Subject common name.
    pub subject_cn: String,
    /// Uncompressed SEC1 P-384 public key.
    pub public_sec1: Vec<u8>,
}

/// Parses a DER or PEM request and checks its ECDSA P-384/SHA-384 self-signature.
pub fn verify(der_or_pem: &[u8]) -> Result<VerifiedCsr> {
    verify_by(der_or_pem, None)
}

/// Parses a DER or PEM request for a key that cannot sign (a key-agreement key) and
/// checks its ECDSA P-384/SHA-384 signature by `signer_sec1` (the meter's identity key,
/// whose certificate the authority issued): possession of the new key is vouched for by
/// the meter that holds it in its TPM, as RFC 6955's alternatives are not widely read.
pub fn verify_signed_by(der_or_pem: &[u8], signer_sec1: &[u8]) -> Result<VerifiedCsr> {
    verify_by(der_or_pem, Some(signer_sec1))
}

fn verify_by(der_or_pem: &[u8], signer_sec1: Option<&[u8]>) -> Result<VerifiedCsr> {
    let der = crate::pem::decode_any(der_or_pem, "CERTIFICATE REQUEST")?;
    let req = CertReq::from_der(&der)?;
    if !util::is_ecdsa_sha384(&req.algorithm) {
        return Err(PkiError::Malformed(
            "request not signed with ecdsa-with-SHA384".into(),
        ));
    }
    let public_sec1 = util::sec1_from_spki(&req.info.public_key)?;
    let sig = req
        .signature
        .as_bytes()
        .ok_or_else(|| PkiError::Malformed("signature bit string has unused bits".into()))?;
    let signer = signer_sec1.unwrap_or(&public_sec1);
    sig::verify_prehash_der(signer, &util::sha384(&req.info.to_der()?), sig)?;
    let subject_cn = util::cn_of(&req.info.subject)
        .ok_or_else(|| PkiError::Malformed("request subject has no common name".into()))?;
    util::check_cn(&subject_cn)?;
    Ok(VerifiedCsr {
        subject_cn,
        public_sec1,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn prepare_finish_verify() {
        let key = p384::ecdsa::SigningKey::from_slice(&[5u8; 48]).unwrap();
        let sec1 = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let p = prepare("meter-42", &sec1).unwrap();
        let raw = sig::sign_prehash_raw(&key, &p.digest()).unwrap();
        let der = p.clone().finish(&raw).unwrap();
        let v = verify(&der).unwrap();
        assert_eq!(v.subject_cn, "meter-42");
        assert_eq!(v.public_sec1, sec1);
        let pem = crate::pem::encode("CERTIFICATE REQUEST", &der);
        assert_eq!(verify(pem.as_bytes()).unwrap(), v);
        // A signature by another key is refused at finish.
        let other = p384::ecdsa::SigningKey::from_slice(&[6u8; 48]).unwrap();
        let bad = sig::sign_prehash_raw(&other, &p.digest()).unwrap();
        assert!(matches!(p.finish(&bad), Err(PkiError::BadSignature(_))));
        // A tampered request (subject changed) fails verification.
        let pos = der.windows(8).position(|w| w == b"meter-42").unwrap();
        let mut t = der.clone();
        t[pos + 7] = b'3';
        assert!(matches!(verify(&t), Err(PkiError::BadSignature(_))));
    }

    #[test]
    fn a_request_signed_by_another_key_verifies_only_against_it() {
        let key = p384::SecretKey::from_slice(&[7u8; 48]).unwrap();
        let sec1 = key.public_key().to_sec1_bytes().to_vec();
        let signer = p384::ecdsa::SigningKey::from_slice(&[8u8; 48]).unwrap();
        let signer_sec1 = signer
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let p = prepare("Alice", &sec1).unwrap();
        let raw = sig::sign_prehash_raw(&signer, &p.digest()).unwrap();
        assert!(p.clone().finish(&raw).is_err());
        let der = p.finish_signed_by(&signer_sec1, &raw).unwrap();
        let v = verify_signed_by(&der, &signer_sec1).unwrap();
        assert_eq!(v.public_sec1, sec1);
        assert!(verify(&der).is_err());
        assert!(verify_signed_by(&der, &sec1).is_err());
    }
}
