//! User certificates and detached signatures (Fig. 5, `Sign`): OpenSSL accepts what the
//! meter makes, and the new parsers (detached-over-digest verify, certificate-request
//! payload) return errors, never panic, on arbitrary and mutated input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use common::*;
use meter_pki::certreq::CertRequest;
use meter_pki::cms::{self, SignOptions};
use meter_pki::detached::{self, DetachedFailure};
use meter_pki::issue::{self, Profile};
use meter_pki::{cert, oid, payload, sig};
use proptest::prelude::*;
use sha2::{Digest, Sha384};
use std::sync::OnceLock;

const MSG: &[u8] = b"I, Alice, agree.\n";

struct Samples {
    pki: Pki,
    user: cert::Certificate,
    sig: Vec<u8>,
    request: Vec<u8>,
}

fn samples() -> &'static Samples {
    static S: OnceLock<Samples> = OnceLock::new();
    S.get_or_init(|| {
        let pki = Pki::new();
        let uk = key();
        let user = issue::issue(
            "Alice",
            &sec1(&uk),
            Profile::User,
            &pki.root_key,
            &pki.root,
            9,
            now() - 60,
            30,
        )
        .unwrap();
        let p = cms::prepare_detached_digest(
            &SignOptions {
                content_type: oid::ID_DATA,
                content: &[],
                signer: &user,
                extra_certs: &[],
                signing_time: Some(now()),
                ess_cert_id_v2: true,
            },
            Sha384::digest(MSG).into(),
        )
        .unwrap();
        let sig = p
            .clone()
            .finish_verified(&sig::sign_prehash_raw(&uk, &p.digest()).unwrap())
            .unwrap();
        let body = CertRequest {
            meter_id: "meter-0001".into(),
            subject_cn: "Alice".into(),
            enrolment_code: "AB12-CD34".into(),
            csr_hex: "3000".into(),
            issued_at: now(),
            purpose: None,
        };
        let request = cms::sign_with_key(
            &SignOptions {
                content_type: oid::CT_CERT_REQUEST,
                content: &payload::encode(&body).unwrap(),
                signer: &pki.tsa,
                extra_certs: &[],
                signing_time: Some(now()),
                ess_cert_id_v2: true,
            },
            &pki.tsa_key,
        )
        .unwrap();
        Samples {
            pki,
            user,
            sig,
            request,
        }
    })
}

#[test]
fn openssl_verifies_detached_signature_and_reads_user_policy() {
    let s = samples();
    let msg = s.pki.write("msg.txt", MSG);
    let sigf = s.pki.write("msg.p7s", &s.sig);
    let root = s.pki.path("root.pem");
    let (okv, _, err) = openssl(&[
        &"cms",
        &"-verify",
        &"-binary",
        &"-content",
        &p(&msg),
        &"-inform",
        &"DER",
        &"-in",
        &p(&sigf),
        &"-CAfile",
        &p(&root),
        &"-purpose",
        &"any",
        &"-out",
        &"/dev/null",
    ]);
    assert!(okv && err.contains("Verification successful"), "{err}");
    let other = s.pki.write("other.txt", b"I, Alice, refuse.\n");
    let (okv, _, _) = openssl(&[
        &"cms",
        &"-verify",
        &"-binary",
        &"-content",
        &p(&other),
        &"-inform",
        &"DER",
        &"-in",
        &p(&sigf),
        &"-CAfile",
        &p(&root),
        &"-purpose",
        &"any",
        &"-out",
        &"/dev/null",
    ]);
    assert!(!okv, "a signature must not verify over another message");
    let userf = s.pki.write_cert("user.pem", &s.user);
    let (_, text, _) = openssl(&[&"x509", &"-in", &p(&userf), &"-noout", &"-text"]);
    assert!(text.contains("2.25.252996336.2.2"), "{text}");
}

#[test]
fn valid_samples_verify() {
    let s = samples();
    let anchors = std::slice::from_ref(&s.pki.root);
    let d: [u8; 48] = Sha384::digest(MSG).into();
    let info = detached::verify_digest(&s.sig, &d, anchors, now()).unwrap();
    assert_eq!(info.signer_cn.as_deref(), Some("Alice"));
    let (body, v) = payload::open::<CertRequest>(&s.request, anchors, now()).unwrap();
    assert_eq!(body.subject_cn, "Alice");
    assert_eq!(cert::subject_cn(&v.signer).as_deref(), Some("meter-0001"));
    assert_eq!(
        detached::verify_digest(&s.sig, &[0; 48], anchors, now()).unwrap_err(),
        DetachedFailure::Digest("the message's SHA-384 differs from the signed one".into())
    );
}

fn mutate(base: &[u8], pos: usize, byte: u8, kind: u8) -> Vec<u8> {
    let mut v = base.to_vec();
    let i = pos % v.len().max(1);
    match kind % 3 {
        0 => v[i] ^= byte | 1,
        1 => v.truncate(i),
        _ => v.insert(i, byte),
    }
    v
}

fn all_parsers(bytes: &[u8]) {
    let s = samples();
    let anchors = std::slice::from_ref(&s.pki.root);
    let _ = detached::content_type(bytes);
    let _ = detached::verify_digest(bytes, &[7; 48], anchors, now());
    let _ = payload::decode::<CertRequest>(bytes);
    let _ = payload::open::<CertRequest>(bytes, anchors, now());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        all_parsers(&bytes);
        let mut der = vec![0x30, 0x82];
        der.extend_from_slice(&bytes);
        all_parsers(&der);
    }

    #[test]
    fn arbitrary_request_json_never_panics(
        meter in ".{0,80}", cn in ".{0,80}", code in ".{0,80}", csr in "[0-9a-fz]{0,64}", t in any::<i64>()
    ) {
        let json = serde_json::json!({
            "meter_id": meter, "subject_cn": cn, "enrolment_code": code, "csr_hex": csr, "issued_at": t
        });
        let _ = payload::decode::<CertRequest>(json.to_string().as_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn mutated_objects_never_panic(pos in any::<usize>(), byte in any::<u8>(), kind in any::<u8>()) {
        let s = samples();
        for base in [&s.sig, &s.request] {
            all_parsers(&mutate(base, pos, byte, kind));
        }
    }

    #[test]
    fn mutated_signature_never_verifies_another_message(
        pos in any::<usize>(), byte in any::<u8>(), kind in any::<u8>()
    ) {
        let s = samples();
        let m = mutate(&s.sig, pos, byte, kind);
        let other: [u8; 48] = Sha384::digest(b"another message").into();
        let r = detached::verify_digest(&m, &other, std::slice::from_ref(&s.pki.root), now());
        prop_assert!(r.is_err());
    }
}
