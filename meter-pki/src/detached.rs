//! Detached CMS signatures checked against a message digest, step by step.
//!
//! `Sign` hands out detached SignedData (eContent absent, id-data) and `Validate` must check
//! them for a message it only streams through SHA-384, so the check here takes the digest,
//! not the content, and names the first step that failed in the order a relying party
//! reads them: structure, signer chain, signature over the signed attributes, and only
//! then the messageDigest attribute against the message.

use crate::{cert, cms, oid, sig, util, PkiError};
use der::asn1::{ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use x509_cert::time::Time;
use x509_cert::Certificate;

/// Why a detached signature was refused; one variant per reported step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetachedFailure {
    /// Not a well-formed detached SignedData with one P-384 signer.
    #[error("malformed signature: {0}")]
    Malformed(String),
    /// The signer's certificate does not chain to the anchors (or is out of validity).
    #[error("untrusted signer: {0}")]
    Chain(String),
    /// The signature over the signed attributes does not verify.
    #[error("signature invalid: {0}")]
    Signature(String),
    /// The signed message digest differs from the message's.
    #[error("digest mismatch: {0}")]
    Digest(String),
}

/// What a verified detached signature says.
#[derive(Debug, Clone)]
pub struct DetachedInfo {
    /// The signer's certificate.
    pub signer: Certificate,
    /// Its subject common name.
    pub signer_cn: Option<String>,
    /// signingTime attribute (unix s), if present.
    pub signing_time: Option<i64>,
}

/// eContentType of a SignedData, without verifying anything (`Malformed` if unparsable).
pub fn content_type(der_or_pem: &[u8]) -> crate::Result<ObjectIdentifier> {
    Ok(cms::parse(der_or_pem)?.content_type)
}

/// Verifies a detached SignedData against the SHA-384 `digest` of the message.
pub fn verify_digest(
    der_or_pem: &[u8],
    digest: &[u8; 48],
    anchors: &[Certificate],
    now: i64,
) -> Result<DetachedInfo, DetachedFailure> {
    let malformed = |e: PkiError| DetachedFailure::Malformed(e.to_string());
    let p = cms::parse(der_or_pem).map_err(malformed)?;
    if p.content.is_some() {
        return Err(DetachedFailure::Malformed(
            "content is embedded, not detached".into(),
        ));
    }
    cms::check_chain(&p, anchors, now).map_err(|e| DetachedFailure::Chain(e.to_string()))?;
    let ct = p
        .attr(oid::ATTR_CONTENT_TYPE)
        .map_err(malformed)?
        .ok_or_else(|| DetachedFailure::Malformed("contentType attribute missing".into()))?
        .decode_as::<ObjectIdentifier>()
        .map_err(|e| DetachedFailure::Malformed(format!("contentType: {e}")))?;
    if ct != p.content_type {
        return Err(DetachedFailure::Signature(
            "contentType attribute differs from eContentType".into(),
        ));
    }
    let md = p
        .attr(oid::ATTR_MESSAGE_DIGEST)
        .map_err(malformed)?
        .ok_or_else(|| DetachedFailure::Malformed("messageDigest attribute missing".into()))?
        .decode_as::<OctetString>()
        .map_err(|e| DetachedFailure::Malformed(format!("messageDigest: {e}")))?;
    let attrs_der = p
        .signer_info
        .signed_attrs
        .as_ref()
        .ok_or_else(|| DetachedFailure::Malformed("signed attributes missing".into()))?
        .to_der()
        .map_err(|e| DetachedFailure::Malformed(format!("signed attributes: {e}")))?;
    let key = cert::public_key_sec1(&p.signer).map_err(malformed)?;
    sig::verify_prehash_der(
        &key,
        &util::sha384(&attrs_der),
        p.signer_info.signature.as_bytes(),
    )
    .map_err(|e| DetachedFailure::Signature(e.to_string()))?;
    if md.as_bytes() != digest.as_slice() {
        return Err(DetachedFailure::Digest(
            "the message's SHA-384 differs from the signed one".into(),
        ));
    }
    let signing_time = match p.attr(oid::ATTR_SIGNING_TIME).map_err(malformed)? {
        Some(v) => {
            let t = v
                .to_der()
                .and_then(|d| Time::from_der(&d))
                .map_err(|e| DetachedFailure::Malformed(format!("signingTime: {e}")))?;
            Some(util::unix_of(&t))
        }
        None => None,
    };
    Ok(DetachedInfo {
        signer_cn: cert::subject_cn(&p.signer),
        signer: p.signer,
        signing_time,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::cms::SignOptions;
    use crate::issue::{self, Profile};
    use crate::test_keys::{key, T0};
    use p384::ecdsa::SigningKey;

    fn setup() -> (Certificate, Certificate, SigningKey) {
        let rk = key(1);
        let root = issue::self_signed_root(&rk, "Root", 1, T0, 3650).unwrap();
        let uk = key(2);
        let sec1 = uk.verifying_key().to_encoded_point(false);
        let user = issue::issue(
            "Alice",
            sec1.as_bytes(),
            Profile::User,
            &rk,
            &root,
            2,
            T0,
            30,
        )
        .unwrap();
        (root, user, uk)
    }

    fn sign(user: &Certificate, uk: &SigningKey, msg: &[u8]) -> Vec<u8> {
        let opts = SignOptions {
            content_type: oid::ID_DATA,
            content: &[],
            signer: user,
            extra_certs: &[],
            signing_time: Some(T0 + 5),
            ess_cert_id_v2: true,
        };
        let p = cms::prepare_detached_digest(&opts, util::sha384(msg)).unwrap();
        let raw = sig::sign_prehash_raw(uk, &p.digest()).unwrap();
        p.finish_verified(&raw).unwrap()
    }

    #[test]
    fn each_step_is_named() {
        let (root, user, uk) = setup();
        let der = sign(&user, &uk, b"hello");
        let anchors = [root];
        let d = util::sha384(b"hello");
        let info = verify_digest(&der, &d, &anchors, T0 + 10).unwrap();
        assert_eq!(info.signer_cn.as_deref(), Some("Alice"));
        assert_eq!(info.signing_time, Some(T0 + 5));
        // The generic detached verifier agrees with the digest one.
        cms::verify_detached(&der, b"hello", &anchors, Some(&oid::ID_DATA), T0 + 10).unwrap();
        assert_eq!(content_type(&der).unwrap(), oid::ID_DATA);
        assert!(matches!(
            verify_digest(&der, &util::sha384(b"hellp"), &anchors, T0 + 10),
            Err(DetachedFailure::Digest(_))
        ));
        assert!(matches!(
            verify_digest(&der, &d, &anchors, T0 + 31 * 86_400),
            Err(DetachedFailure::Chain(_))
        ));
        let other = issue::self_signed_root(&key(9), "Other", 1, T0, 3650).unwrap();
        assert!(matches!(
            verify_digest(&der, &d, &[other], T0 + 10),
            Err(DetachedFailure::Chain(_))
        ));
        let mut bad = der.clone();
        let n = bad.len();
        bad[n - 3] ^= 1;
        assert!(matches!(
            verify_digest(&bad, &d, &anchors, T0 + 10),
            Err(DetachedFailure::Signature(_) | DetachedFailure::Malformed(_))
        ));
        assert!(matches!(
            verify_digest(b"\x30\x03\x02\x01\x01", &d, &anchors, T0 + 10),
            Err(DetachedFailure::Malformed(_))
        ));
        // Content passed to the digest form is refused.
        let opts = SignOptions {
            content_type: oid::ID_DATA,
            content: b"x",
            signer: &user,
            extra_certs: &[],
            signing_time: None,
            ess_cert_id_v2: false,
        };
        assert!(cms::prepare_detached_digest(&opts, d).is_err());
    }
}
