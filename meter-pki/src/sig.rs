//! ECDSA P-384 signature conversions and prehash verification.
//!
//! The TPM returns a signature as two 48-byte integers `r || s`; X.509, PKCS#10 and CMS
//! carry the DER `ECDSA-Sig-Value`. This module converts and verifies, so that every
//! two-phase `finish` can check the external signer actually used the expected key.

use crate::{PkiError, Result};
#[cfg(not(feature = "openssl"))]
use p384::ecdsa::signature::hazmat::PrehashVerifier;
use p384::ecdsa::Signature;
#[cfg(not(feature = "openssl"))]
use p384::ecdsa::VerifyingKey;

/// DER `ECDSA-Sig-Value` of a raw `r || s` signature; zero `r`/`s` are `Malformed`.
pub fn raw_to_der(raw: &[u8; 96]) -> Result<Vec<u8>> {
    let s = Signature::from_slice(raw)
        .map_err(|_| PkiError::Malformed("raw signature has r or s out of range".into()))?;
    Ok(s.to_der().as_bytes().to_vec())
}

/// Raw `r || s` of a DER `ECDSA-Sig-Value`.
pub fn der_to_raw(der: &[u8]) -> Result<[u8; 96]> {
    let s = Signature::from_der(der)
        .map_err(|_| PkiError::Malformed("not a DER ECDSA P-384 signature".into()))?;
    let mut out = [0u8; 96];
    out.copy_from_slice(&s.to_bytes());
    Ok(out)
}

/// Verifies raw `r || s` over a SHA-384 `digest` with a SEC1 P-384 public key.
///
/// With the `openssl` feature (the daemon's choice) the check runs in
/// OpenSSL (which also refuses points off the curve and out-of-range
/// scalars), markedly faster than the pure-Rust field code — what matters
/// for a meter that sells validations.
pub fn verify_prehash(public_sec1: &[u8], digest: &[u8; 48], raw: &[u8; 96]) -> Result<()> {
    #[cfg(feature = "openssl")]
    {
        ossl::verify(public_sec1, digest, raw)
    }
    #[cfg(not(feature = "openssl"))]
    {
        let key = VerifyingKey::from_sec1_bytes(public_sec1)
            .map_err(|_| PkiError::Malformed("not a P-384 public key".into()))?;
        let s = Signature::from_slice(raw)
            .map_err(|_| PkiError::BadSignature("r or s out of range".into()))?;
        key.verify_prehash(digest, &s)
            .map_err(|_| PkiError::BadSignature("ECDSA verification failed".into()))
    }
}

#[cfg(feature = "openssl")]
mod ossl {
    use openssl::bn::{BigNum, BigNumContext};
    use openssl::ec::{EcGroup, EcKey, EcPoint};
    use openssl::ecdsa::EcdsaSig;
    use openssl::nid::Nid;

    use crate::{PkiError, Result};

    fn malformed(e: openssl::error::ErrorStack) -> PkiError {
        PkiError::Malformed(format!("P-384 key rejected by OpenSSL: {e}"))
    }

    /// The P-384 group, built once (it carries precomputed tables).
    fn group() -> Result<&'static EcGroup> {
        static GROUP: std::sync::OnceLock<Option<EcGroup>> = std::sync::OnceLock::new();
        GROUP
            .get_or_init(|| EcGroup::from_curve_name(Nid::SECP384R1).ok())
            .as_ref()
            .ok_or_else(|| PkiError::Malformed("OpenSSL lacks P-384".into()))
    }

    /// ECDSA P-384 verification of a prehashed digest in OpenSSL.
    pub(super) fn verify(public_sec1: &[u8], digest: &[u8; 48], raw: &[u8; 96]) -> Result<()> {
        let group = group()?;
        let mut ctx = BigNumContext::new().map_err(malformed)?;
        let point = EcPoint::from_bytes(group, public_sec1, &mut ctx).map_err(malformed)?;
        let key = EcKey::from_public_key(group, &point).map_err(malformed)?;
        let r = BigNum::from_slice(&raw[..48]).map_err(malformed)?;
        let s = BigNum::from_slice(&raw[48..]).map_err(malformed)?;
        let sig = EcdsaSig::from_private_components(r, s).map_err(malformed)?;
        match sig.verify(digest, &key) {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => Err(PkiError::BadSignature("ECDSA verification failed".into())),
        }
    }
}

/// Verifies a DER signature over a SHA-384 `digest`.
pub(crate) fn verify_prehash_der(public_sec1: &[u8], digest: &[u8; 48], der: &[u8]) -> Result<()> {
    let raw = der_to_raw(der).map_err(|_| PkiError::BadSignature("signature is not DER".into()))?;
    verify_prehash(public_sec1, digest, &raw)
}

/// Signs a SHA-384 digest with a software key and returns raw `r || s` (authority and tests).
pub fn sign_prehash_raw(key: &p384::ecdsa::SigningKey, digest: &[u8; 48]) -> Result<[u8; 96]> {
    use p384::ecdsa::signature::hazmat::PrehashSigner;
    let s: Signature = key
        .sign_prehash(digest)
        .map_err(|e| PkiError::Malformed(format!("signing failed: {e}")))?;
    let mut out = [0u8; 96];
    out.copy_from_slice(&s.to_bytes());
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn raw_der_roundtrip_and_verify() {
        let key = p384::ecdsa::SigningKey::from_slice(&[7u8; 48]).unwrap();
        let pubk = key.verifying_key().to_encoded_point(false);
        let digest = crate::util::sha384(b"hello");
        let raw = sign_prehash_raw(&key, &digest).unwrap();
        let der = raw_to_der(&raw).unwrap();
        assert_eq!(der_to_raw(&der).unwrap(), raw);
        verify_prehash(pubk.as_bytes(), &digest, &raw).unwrap();
        let other = crate::util::sha384(b"hellp");
        assert!(matches!(
            verify_prehash(pubk.as_bytes(), &other, &raw),
            Err(PkiError::BadSignature(_))
        ));
        assert!(raw_to_der(&[0u8; 96]).is_err());
    }

    /// A TPM does not normalize s; both (r, s) and (r, n - s) must verify.
    #[test]
    fn high_s_signatures_verify() {
        let key = p384::ecdsa::SigningKey::from_slice(&[9u8; 48]).unwrap();
        let pubk = key.verifying_key().to_encoded_point(false);
        let digest = crate::util::sha384(b"tpm");
        let raw = sign_prehash_raw(&key, &digest).unwrap();
        let s = Signature::from_slice(&raw).unwrap();
        let (r, sv) = s.split_scalars();
        let flipped = Signature::from_scalars(r, -*sv).unwrap();
        let mut raw2 = [0u8; 96];
        raw2.copy_from_slice(&flipped.to_bytes());
        assert_ne!(raw, raw2);
        verify_prehash(pubk.as_bytes(), &digest, &raw).unwrap();
        verify_prehash(pubk.as_bytes(), &digest, &raw2).unwrap();
        verify_prehash_der(pubk.as_bytes(), &digest, &raw_to_der(&raw2).unwrap()).unwrap();
    }
}
