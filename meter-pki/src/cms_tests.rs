//! Unit tests of CMS SignedData building and verification (kept apart so that cms.rs
//! stays one reading).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::issue;
use p384::ecdsa::SigningKey;

const T0: i64 = 1_767_225_600;

#[test]
fn finish_refuses_wrong_key_and_fields_roundtrip() {
    let k = SigningKey::from_slice(&[1u8; 48]).unwrap();
    let root = issue::self_signed_root(&k, "R", 1, T0, 10).unwrap();
    let opts = SignOptions {
        content_type: oid::CT_RATES,
        content: b"{}",
        signer: &root,
        extra_certs: std::slice::from_ref(&root),
        signing_time: Some(T0 + 5),
        ess_cert_id_v2: true,
    };
    let p = prepare(&opts).unwrap();
    assert_eq!(p.digest(), prepare(&opts).unwrap().digest());
    let other = SigningKey::from_slice(&[2u8; 48]).unwrap();
    let bad = sig::sign_prehash_raw(&other, &p.digest()).unwrap();
    assert!(matches!(
        p.clone().finish_verified(&bad),
        Err(PkiError::BadSignature(_))
    ));
    let good = sig::sign_prehash_raw(&k, &p.digest()).unwrap();
    let der = p.clone().finish(&good).unwrap();
    let v = verify(&der, std::slice::from_ref(&root), None, T0 + 6).unwrap();
    assert_eq!(v.signing_time, Some(T0 + 5));
    assert_eq!(v.certificates.len(), 1, "duplicate certificate embedded");
    assert_eq!(v.content, b"{}");
    // peek reads the same without verifying, even under a key nobody trusts.
    let u = peek(&der).unwrap();
    assert_eq!(u.content, b"{}");
    assert_eq!(u.content_type, oid::CT_RATES);
    assert_eq!(u.signing_time, Some(T0 + 5));
    assert_eq!(u.signer, root);
    let forged = p.finish(&bad).unwrap();
    assert!(verify(&forged, std::slice::from_ref(&root), None, T0 + 6).is_err());
    assert_eq!(peek(&forged).unwrap().content, b"{}");
    assert!(peek(b"not cms").is_err());
}

/// `finish` writes the SignedData from pre-encoded parts (issue 14): the
/// bytes must be exactly what the der crate writes for the same structure,
/// with several certificates (DER's SET OF order), detached content, no
/// certificates, and a second signer certificate on the same thread.
#[test]
fn finished_bytes_are_the_der_crates_own() {
    let k = SigningKey::from_slice(&[1u8; 48]).unwrap();
    let root = issue::self_signed_root(&k, "Root", 1, T0, 10).unwrap();
    let k2 = SigningKey::from_slice(&[3u8; 48]).unwrap();
    let other = issue::self_signed_root(&k2, "Another root, longer name", 77, T0, 20).unwrap();
    let reencoded = |der: &[u8]| {
        let ci = ::cms::content_info::ContentInfo::from_der(der).unwrap();
        let sd: SignedData = ci.content.decode_as().unwrap();
        let again = ::cms::content_info::ContentInfo {
            content_type: ci.content_type,
            content: Any::encode_from(&sd).unwrap(),
        };
        (sd, again.to_der().unwrap())
    };
    for (signer, key, extra, detached, certs) in [
        (&root, &k, vec![other.clone()], false, true),
        (&other, &k2, vec![root.clone(), other.clone()], true, true),
        (&root, &k, vec![], false, false),
    ] {
        let opts = SignOptions {
            content_type: oid::CT_RATES,
            content: b"{\"a\":1}",
            signer,
            extra_certs: &extra,
            signing_time: Some(T0 + 5),
            ess_cert_id_v2: true,
        };
        let p = if detached {
            prepare_detached(&opts)
        } else {
            prepare(&opts)
        }
        .unwrap();
        let p = if certs { p } else { p.without_certs() };
        let raw = sig::sign_prehash_raw(key, &p.digest()).unwrap();
        let der = p.finish(&raw).unwrap();
        let (sd, again) = reencoded(&der);
        assert_eq!(der, again, "bytes differ from the der crate's encoding");
        let n = sd.certificates.as_ref().map_or(0, |c| c.0.len());
        assert_eq!(n, if certs { 2 } else { 0 });
        if certs && !detached {
            let anchors = [root.clone(), other.clone()];
            let v = verify(&der, &anchors, None, T0 + 6).unwrap();
            assert_eq!(v.content, b"{\"a\":1}");
        }
    }
}
