//! Every artifact meter-pki builds must verify with stock OpenSSL 3, and what OpenSSL builds
//! must verify here. These tests run the `openssl` binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use common::*;
use meter_pki::cms::{self, SignOptions};
use meter_pki::issue::{self, Profile};
use meter_pki::tsp::{self, TokenFailure, TokenParams};
use meter_pki::{cert, csr, oid, pem, sig, PkiError};
use sha2::{Digest, Sha384};

fn token(pki: &Pki, msg: &[u8], serial: u64) -> Vec<u8> {
    let params = TokenParams {
        imprint: Sha384::digest(msg).into(),
        serial,
        gen_time: now(),
        policy: oid::POSTMARK_POLICY,
        accuracy_secs: 1,
        nonce: None,
    };
    let prepared = tsp::prepare(&params, &pki.tsa, &[]).unwrap();
    let raw = sig::sign_prehash_raw(&pki.tsa_key, &prepared.digest()).unwrap();
    prepared.finish(&raw).unwrap()
}

#[test]
fn postmark_token_verifies_with_openssl_ts() {
    let pki = Pki::new();
    let msg = b"Dear recipient, this mail was postmarked.\n";
    let data = pki.write("msg.txt", msg);
    let tok = pki.write("token.der", &token(&pki, msg, 0x8000_0000_0000_0001));
    let root = pki.path("root.pem");
    let (ok, out, err) = ts_verify(&data, &tok, &root);
    assert!(ok, "openssl ts -verify failed: {out}{err}");
    assert!(out.contains("Verification: OK"), "{out}");

    // Another message must fail the imprint check.
    let other = pki.write("other.txt", b"something else");
    let (ok, _, _) = ts_verify(&other, &tok, &root);
    assert!(!ok, "openssl accepted a token for another message");

    // Text dump shows our fields.
    let (ok, out, err) = openssl(&[&"ts", &"-reply", &"-in", &p(&tok), &"-token_in", &"-text"]);
    assert!(ok, "{err}");
    assert!(out.contains("Policy OID: 2.25.252996336.2.1"), "{out}");
    assert!(out.contains("Hash Algorithm: sha384"), "{out}");
    assert!(out.contains("Serial number: 0x8000000000000001"), "{out}");
    assert!(out.contains("CN=meter-0001"), "{out}");
    assert!(out.contains("Accuracy: 0x01 seconds"), "{out}");
}

#[test]
fn postmark_token_verifies_here_and_rejections_name_the_step() {
    let pki = Pki::new();
    let msg = b"hello";
    let der = token(&pki, msg, 7);
    let anchors = [pki.root.clone()];
    let info = tsp::verify(&der, &anchors, now()).unwrap();
    assert_eq!(info.imprint, Sha384::digest(msg).to_vec());
    assert_eq!(info.hash_oid, oid::SHA384);
    assert_eq!(info.serial, vec![7]);
    assert_eq!(info.signer_cn.as_deref(), Some("meter-0001"));
    assert!((info.gen_time - now()).abs() < 60);

    // Wrong anchor → Chain.
    let other_key = key();
    let other_root = issue::self_signed_root(&other_key, "Other", 1, now() - 10, 1).unwrap();
    let e = tsp::verify(&der, &[other_root], now()).unwrap_err();
    assert!(matches!(e, TokenFailure::Chain(_)), "{e:?}");

    // Flipped byte in the signature → Signature. The signature value is the DER
    // ECDSA-Sig-Value at the end of the SignerInfo; the token ends with it.
    let mut bad = der.clone();
    let n = bad.len();
    bad[n - 5] ^= 0x01;
    let e = tsp::verify(&bad, &anchors, now()).unwrap_err();
    assert!(matches!(e, TokenFailure::Signature(_)), "{e:?}");

    // Altered TSTInfo (serial 7 → 8) → Signature (messageDigest mismatch).
    let serial_at = der
        .windows(3)
        .position(|w| w == [0x02, 0x01, 0x07])
        .unwrap();
    let mut bad = der.clone();
    bad[serial_at + 2] = 8;
    let e = tsp::verify(&bad, &anchors, now()).unwrap_err();
    assert!(matches!(e, TokenFailure::Signature(_)), "{e:?}");

    // A token signed by a certificate without the timeStamping EKU → Chain.
    let k = key();
    let plain = issue::issue(
        "m",
        &sec1(&k),
        Profile::MeterIdentity,
        &pki.root_key,
        &pki.root,
        9,
        now() - 10,
        1,
    )
    .unwrap();
    assert!(tsp::prepare(
        &TokenParams {
            imprint: [0; 48],
            serial: 1,
            gen_time: now(),
            policy: oid::POSTMARK_POLICY,
            accuracy_secs: 1,
            nonce: None
        },
        &plain,
        &[]
    )
    .is_err());

    // Garbage → Malformed.
    assert!(matches!(
        tsp::verify(b"not a token", &anchors, now()),
        Err(TokenFailure::Malformed(_))
    ));
}

#[test]
fn cms_verifies_with_openssl_and_here() {
    let pki = Pki::new();
    let content = br#"{"meter_id":"meter-0001","amount":1000,"sequence":1,"issued_at":0}"#;
    let der = cms::sign_with_key(
        &SignOptions {
            content_type: oid::CT_VOUCHER,
            content,
            signer: &pki.root,
            extra_certs: &[],
            signing_time: Some(now()),
            ess_cert_id_v2: true,
        },
        &pki.root_key,
    )
    .unwrap();
    let f = pki.write("v.der", &der);
    let out = pki.path("out.bin");
    let (ok, o, e) = pki.cms_verify(&f, &[&"-out", &p(&out)]);
    assert!(ok, "openssl cms -verify: {o}{e}");
    assert_eq!(std::fs::read(&out).unwrap(), content);

    let anchors = [pki.root.clone()];
    let v = cms::verify(&der, &anchors, Some(&oid::CT_VOUCHER), now()).unwrap();
    assert_eq!(v.content, content);
    assert_eq!(v.content_type, oid::CT_VOUCHER);
    assert!(v.signing_time.is_some());
    // PEM works too.
    let pem_text = pem::encode("CMS", &der);
    assert!(cms::verify(pem_text.as_bytes(), &anchors, None, now()).is_ok());

    // Wrong type, wrong anchor, altered content, flipped signature.
    assert!(matches!(
        cms::verify(&der, &anchors, Some(&oid::CT_RATES), now()),
        Err(PkiError::WrongType(_))
    ));
    let other = issue::self_signed_root(&key(), "Other", 1, now() - 10, 1).unwrap();
    assert!(matches!(
        cms::verify(&der, &[other], None, now()),
        Err(PkiError::Untrusted(_))
    ));
    let pos = der.windows(6).position(|w| w == b"1000,\"").unwrap();
    let mut bad = der.clone();
    bad[pos] = b'9';
    assert!(matches!(
        cms::verify(&bad, &anchors, None, now()),
        Err(PkiError::BadSignature(_))
    ));
    let mut bad = der.clone();
    let n = bad.len();
    bad[n - 3] ^= 0x40;
    assert!(matches!(
        cms::verify(&bad, &anchors, None, now()),
        Err(PkiError::BadSignature(_))
    ));
    // Expired anchor at a later time.
    assert!(matches!(
        cms::verify(&der, &anchors, None, now() + 400 * 86_400),
        Err(PkiError::Expired(_))
    ));
}

#[test]
fn cms_from_an_intermediate_signer_chains_through_embedded_certs() {
    let pki = Pki::new();
    let ak = key();
    let agent = issue::issue(
        "Agent",
        &sec1(&ak),
        Profile::AgentCa,
        &pki.root_key,
        &pki.root,
        5,
        now() - 10,
        10,
    )
    .unwrap();
    let uk = key();
    let user = issue::issue(
        "Alice",
        &sec1(&uk),
        Profile::User,
        &ak,
        &agent,
        6,
        now() - 10,
        10,
    )
    .unwrap();
    let der = cms::sign_with_key(
        &SignOptions {
            content_type: oid::ID_DATA,
            content: b"hi",
            signer: &user,
            extra_certs: std::slice::from_ref(&agent),
            signing_time: None,
            ess_cert_id_v2: false,
        },
        &uk,
    )
    .unwrap();
    let v = cms::verify(&der, std::slice::from_ref(&pki.root), None, now()).unwrap();
    assert_eq!(cert::subject_cn(&v.signer).as_deref(), Some("Alice"));
    let f = pki.write("u.der", &der);
    let (ok, o, e) = pki.cms_verify(&f, &[]);
    assert!(ok, "{o}{e}");
    // Certificates also pass `openssl verify`.
    let a = pki.write_cert("agent.pem", &agent);
    let u = pki.write_cert("user.pem", &user);
    let (ok, o, e) = openssl(&[
        &"verify",
        &"-CAfile",
        &p(&pki.path("root.pem")),
        &"-untrusted",
        &p(&a),
        &p(&u),
    ]);
    assert!(ok, "{o}{e}");
}

#[test]
fn detached_cms_verifies_with_openssl() {
    let pki = Pki::new();
    let opts = SignOptions {
        content_type: oid::ID_DATA,
        content: b"mail body",
        signer: &pki.tsa,
        extra_certs: &[],
        signing_time: Some(now()),
        ess_cert_id_v2: true,
    };
    let prepared = cms::prepare_detached(&opts).unwrap();
    let raw = sig::sign_prehash_raw(&pki.tsa_key, &prepared.digest()).unwrap();
    let der = prepared.finish(&raw).unwrap();
    let anchors = [pki.root.clone()];
    cms::verify_detached(&der, b"mail body", &anchors, None, now()).unwrap();
    assert!(cms::verify_detached(&der, b"mail bodx", &anchors, None, now()).is_err());
    assert!(cms::verify(&der, &anchors, None, now()).is_err());
    let f = pki.write("d.der", &der);
    let c = pki.write("body.txt", b"mail body");
    let (ok, o, e) = openssl(&[
        &"cms",
        &"-verify",
        &"-binary",
        &"-inform",
        &"DER",
        &"-in",
        &p(&f),
        &"-content",
        &p(&c),
        &"-CAfile",
        &p(&pki.path("root.pem")),
        &"-purpose",
        &"any",
    ]);
    assert!(ok, "{o}{e}");
}

#[test]
fn certificates_and_csr_pass_openssl() {
    let pki = Pki::new();
    let (ok, o, e) = openssl(&[
        &"verify",
        &"-CAfile",
        &p(&pki.path("root.pem")),
        &p(&pki.path("tsa.pem")),
    ]);
    assert!(ok, "{o}{e}");
    let (ok, o, e) = openssl(&[
        &"x509",
        &"-noout",
        &"-text",
        &"-in",
        &p(&pki.path("tsa.pem")),
    ]);
    assert!(ok, "{e}");
    assert!(o.contains("X509v3 Extended Key Usage: critical"), "{o}");
    assert!(o.contains("Time Stamping"), "{o}");
    assert!(o.contains("ecdsa-with-SHA384"), "{o}");
    assert!(o.contains("X509v3 Authority Key Identifier"), "{o}");
    let (ok, o, _) = openssl(&[
        &"x509",
        &"-noout",
        &"-text",
        &"-in",
        &p(&pki.path("root.pem")),
    ]);
    assert!(
        ok && o.contains("X509v3 Basic Constraints: critical") && o.contains("CA:TRUE"),
        "{o}"
    );

    // Our CSR passes `openssl req -verify`.
    let k = key();
    let prepared = csr::prepare("meter-0001", &sec1(&k)).unwrap();
    let raw = sig::sign_prehash_raw(&k, &prepared.digest()).unwrap();
    let der = prepared.finish(&raw).unwrap();
    let f = pki.write(
        "req.pem",
        pem::encode("CERTIFICATE REQUEST", &der).as_bytes(),
    );
    let (ok, o, e) = openssl(&[&"req", &"-verify", &"-noout", &"-in", &p(&f)]);
    assert!(ok, "{o}{e}");
    assert!(format!("{o}{e}").contains("verify OK"), "{o}{e}");
}

#[test]
fn openssl_made_objects_verify_here() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let key_path = dir.join("os.key");
    let (ok, _, e) = openssl(&[
        &"ecparam",
        &"-name",
        &"secp384r1",
        &"-genkey",
        &"-noout",
        &"-out",
        &p(&key_path),
    ]);
    assert!(ok, "{e}");
    let req = dir.join("os.csr");
    let (ok, _, e) = openssl(&[
        &"req",
        &"-new",
        &"-sha384",
        &"-key",
        &p(&key_path),
        &"-subj",
        &"/CN=from-openssl",
        &"-out",
        &p(&req),
    ]);
    assert!(ok, "{e}");
    let v = csr::verify(&std::fs::read(&req).unwrap()).unwrap();
    assert_eq!(v.subject_cn, "from-openssl");

    // Certify it, then let OpenSSL sign a CMS with it and verify that here.
    let c = issue::issue(
        &v.subject_cn,
        &v.public_sec1,
        Profile::User,
        &pki.root_key,
        &pki.root,
        3,
        now() - 10,
        5,
    )
    .unwrap();
    let cp = pki.write_cert("os.pem", &c);
    let data = pki.write("data.txt", b"signed by openssl");
    let out = dir.join("os.p7");
    let (ok, _, e) = openssl(&[
        &"cms",
        &"-sign",
        &"-binary",
        &"-nodetach",
        &"-md",
        &"sha384",
        &"-in",
        &p(&data),
        &"-signer",
        &p(&cp),
        &"-inkey",
        &p(&key_path),
        &"-outform",
        &"DER",
        &"-out",
        &p(&out),
    ]);
    assert!(ok, "{e}");
    let verified = cms::verify(
        &std::fs::read(&out).unwrap(),
        std::slice::from_ref(&pki.root),
        Some(&oid::ID_DATA),
        now(),
    )
    .unwrap();
    assert_eq!(verified.content, b"signed by openssl");
}

/// A token and a CMS carrying the ledger seal attribute still pass stock
/// OpenSSL and our verifiers, and the seal reads back and verifies.
#[test]
fn sealed_token_and_cms_verify_with_openssl() {
    use meter_pki::ledger_format::{self, LedgerSeal};
    let pki = Pki::new();
    let seal = LedgerSeal {
        epoch: 7,
        seq: 4242,
        link: [0x5c; 48],
    };
    let msg = b"sealed postmark\n";
    let params = TokenParams {
        imprint: Sha384::digest(msg).into(),
        serial: seal.seq,
        gen_time: now(),
        policy: oid::POSTMARK_POLICY,
        accuracy_secs: 1,
        nonce: None,
    };
    let prepared = tsp::prepare_sealed(&params, &pki.tsa, &[], &seal).unwrap();
    let raw = sig::sign_prehash_raw(&pki.tsa_key, &prepared.digest()).unwrap();
    let tok = prepared.finish(&raw).unwrap();
    let data = pki.write("sealed.txt", msg);
    let tok_path = pki.write("sealed.tsr", &tok);
    let (ok, out, err) = ts_verify(&data, &tok_path, &pki.path("root.pem"));
    assert!(ok && out.contains("Verification: OK"), "{out}{err}");
    let anchors = [pki.root.clone()];
    let info = tsp::verify(&tok, &anchors, now()).unwrap();
    assert_eq!(info.serial, vec![0x10, 0x92]);
    let parts = cms::signed_parts(&tok).unwrap();
    assert_eq!(parts.seal, Some(seal));
    assert_eq!(parts.content_type, oid::ID_CT_TSTINFO);
    let tsa_pub = cert::public_key_sec1(&pki.tsa).unwrap();
    assert!(ledger_format::verify_product_seal(
        &tsa_pub,
        &seal,
        &parts.signed_attrs,
        &parts.signature
    ));
    let other = LedgerSeal { seq: 4243, ..seal };
    assert!(!ledger_format::verify_product_seal(
        &tsa_pub,
        &other,
        &parts.signed_attrs,
        &parts.signature
    ));

    let content = br#"{"report":1}"#;
    let opts = SignOptions {
        content_type: oid::CT_STATUS_REPORT,
        content,
        signer: &pki.root,
        extra_certs: &[],
        signing_time: Some(now()),
        ess_cert_id_v2: true,
    };
    let prepared = cms::prepare_sealed(&opts, &seal).unwrap();
    let raw = sig::sign_prehash_raw(&pki.root_key, &prepared.digest()).unwrap();
    let der = prepared.finish(&raw).unwrap();
    let f = pki.write("sealed.cms", &der);
    let (ok, o, e) = pki.cms_verify(&f, &[&"-out", &p(&pki.path("sealed.out"))]);
    assert!(ok, "openssl cms -verify: {o}{e}");
    assert!(cms::verify(&der, &anchors, None, now()).is_ok());
    assert_eq!(cms::signed_parts(&der).unwrap().seal, Some(seal));
    // An unsealed product has no seal.
    assert_eq!(cms::signed_parts(&token(&pki, msg, 1)).unwrap().seal, None);
}
