//! Endorsement-key certificates: does this EK belong to a genuine TPM?
//!
//! A TPM vendor (or, in the tests, swtpm's local CA, `swtpm_localca`) certifies each TPM's
//! EK; the authority trusts a list of such EK CAs. Vendor CAs sign with RSA (PKCS#1 v1.5,
//! SHA-256/384) or ECDSA, not with the project's P-384-only profile, so this is a small
//! validator of its own: the EK certificate must be signed by one of the trusted EK CA
//! certificates (an intermediate the authority trusts is listed like a root), be valid now,
//! not be a CA, carry no critical extension beyond those EK certificates use, and hold an
//! RSA 2048 key (the TCG "L-1" EK the meter activates with).

use der::{Decode, Encode};
use rsa::pkcs1v15::Pkcs1v15Sign;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::RsaPublicKey;
use sha2::{Digest, Sha256, Sha384};
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::Certificate;

use crate::{cert, oid, sig, util, PkiError, Result};

const SHA256_WITH_RSA: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const EXT_SAN: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("2.5.29.17");

/// The EK an EK certificate vouches for.
#[derive(Debug, Clone)]
pub struct VerifiedEk {
    /// The EK's RSA public key.
    pub key: RsaPublicKey,
    /// Subject CN of the CA that signed it.
    pub issuer_cn: String,
}

fn untrusted(msg: impl Into<String>) -> PkiError {
    PkiError::Untrusted(msg.into())
}

/// Verifies `child`'s signature with `issuer`'s key (RSA PKCS#1 v1.5 or ECDSA P-384).
fn signed_by(child: &Certificate, issuer: &Certificate) -> Result<()> {
    if child.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return Err(untrusted("issuer name does not match"));
    }
    if child.signature_algorithm != child.tbs_certificate.signature {
        return Err(untrusted("signature algorithms disagree"));
    }
    let tbs = child.tbs_certificate.to_der()?;
    let sig_bytes = child
        .signature
        .as_bytes()
        .ok_or_else(|| PkiError::Malformed("signature bit string has unused bits".into()))?;
    let alg = &child.signature_algorithm.oid;
    let spki = &issuer.tbs_certificate.subject_public_key_info;
    if *alg == SHA256_WITH_RSA || *alg == SHA384_WITH_RSA {
        let key = RsaPublicKey::from_public_key_der(&spki.to_der()?)
            .map_err(|e| untrusted(format!("EK CA key is not RSA: {e}")))?;
        let (scheme, digest) = if *alg == SHA256_WITH_RSA {
            (Pkcs1v15Sign::new::<Sha256>(), Sha256::digest(&tbs).to_vec())
        } else {
            (Pkcs1v15Sign::new::<Sha384>(), Sha384::digest(&tbs).to_vec())
        };
        key.verify(scheme, &digest, sig_bytes)
            .map_err(|_| untrusted("EK certificate signature does not verify"))
    } else if *alg == oid::ECDSA_SHA384 {
        let key = cert::public_key_sec1(issuer)?;
        sig::verify_prehash_der(&key, &util::sha384(&tbs), sig_bytes)
            .map_err(|_| untrusted("EK certificate signature does not verify"))
    } else {
        Err(untrusted(format!(
            "EK certificate signature algorithm {alg} is not supported"
        )))
    }
}

fn is_ca(c: &Certificate) -> Result<bool> {
    for e in c.tbs_certificate.extensions.as_deref().unwrap_or(&[]) {
        if e.extn_id == oid::EXT_BASIC_CONSTRAINTS {
            return Ok(BasicConstraints::from_der(e.extn_value.as_bytes())?.ca);
        }
    }
    Ok(false)
}

/// Checks `ek_cert` (DER or PEM) against the trusted EK CAs at `now`; returns its key.
pub fn verify(ek_cert: &[u8], trusted: &[Certificate], now: i64) -> Result<VerifiedEk> {
    let ek = cert::parse(ek_cert)?;
    let (nb, na) = (cert::not_before(&ek), cert::not_after(&ek));
    if now < nb || now > na {
        return Err(PkiError::Expired(format!(
            "EK certificate valid {nb}..{na}, now {now}"
        )));
    }
    if is_ca(&ek)? {
        return Err(untrusted("the EK certificate is a CA certificate"));
    }
    const KNOWN: [der::asn1::ObjectIdentifier; 5] = [
        oid::EXT_BASIC_CONSTRAINTS,
        oid::EXT_KEY_USAGE,
        oid::EXT_CERT_POLICIES,
        oid::EXT_AKI,
        EXT_SAN,
    ];
    for e in ek.tbs_certificate.extensions.as_deref().unwrap_or(&[]) {
        if e.critical && !KNOWN.contains(&e.extn_id) {
            return Err(untrusted(format!(
                "EK certificate has an unsupported critical extension {}",
                e.extn_id
            )));
        }
    }
    let mut last = untrusted("the EK certificate is not issued by a trusted EK CA");
    let mut issuer_cn = None;
    for ca in trusted {
        if ca.tbs_certificate.subject != ek.tbs_certificate.issuer {
            continue;
        }
        let in_time = now >= cert::not_before(ca) && now <= cert::not_after(ca);
        match signed_by(&ek, ca) {
            Ok(()) if in_time && is_ca(ca)? => {
                issuer_cn = Some(cert::subject_cn(ca).unwrap_or_default());
                break;
            }
            Ok(()) => last = untrusted("the EK CA certificate is expired or not a CA"),
            Err(e) => last = e,
        }
    }
    let issuer_cn = issuer_cn.ok_or(last)?;
    let spki = ek.tbs_certificate.subject_public_key_info.to_der()?;
    let key = RsaPublicKey::from_public_key_der(&spki)
        .map_err(|_| untrusted("the EK is not an RSA key (only RSA 2048 EKs are supported)"))?;
    if key.size() != 256 {
        return Err(untrusted(format!(
            "the EK is RSA {} bits; only RSA 2048 EKs are supported",
            key.size() * 8
        )));
    }
    Ok(VerifiedEk { key, issuer_cn })
}
