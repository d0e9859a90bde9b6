//! The authority side of Fig. 5 through the library: enrolment codes are single use and
//! bound to a subject, and only requests signed by a meter identity it certified pass.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meter_authority::enrol::UserValidity;
use meter_authority::{now, Authority, AuthorityError};
use meter_pki::certreq::CertRequest;
use meter_pki::cms::{self, SignOptions};
use meter_pki::{cert, csr, oid, payload, sig};
use p384::ecdsa::SigningKey;

fn key() -> SigningKey {
    SigningKey::random(&mut rand_core::OsRng)
}

fn sec1(k: &SigningKey) -> Vec<u8> {
    k.verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec()
}

fn csr_for(cn: &str, k: &SigningKey) -> Vec<u8> {
    let p = csr::prepare(cn, &sec1(k)).unwrap();
    let raw = sig::sign_prehash_raw(k, &p.digest()).unwrap();
    p.finish(&raw).unwrap()
}

/// A meter request: the user's CSR and the code in CMS signed by `signer`.
fn request(
    meter_id: &str,
    cn: &str,
    code: &str,
    user: &SigningKey,
    signer: &cert::Certificate,
    signer_key: &SigningKey,
) -> Vec<u8> {
    let body = CertRequest {
        meter_id: meter_id.into(),
        subject_cn: cn.into(),
        enrolment_code: code.into(),
        csr_hex: hex::encode(csr_for(cn, user)),
        issued_at: now(),
        purpose: None,
    };
    signed(
        oid::CT_CERT_REQUEST,
        &payload::encode(&body).unwrap(),
        signer,
        signer_key,
    )
}

/// `content` in CMS signed by `signer`, as a meter sends it.
fn signed(
    content_type: meter_pki::ObjectIdentifier,
    content: &[u8],
    signer: &cert::Certificate,
    signer_key: &SigningKey,
) -> Vec<u8> {
    cms::sign_with_key(
        &SignOptions {
            content_type,
            content,
            signer,
            extra_certs: &[],
            signing_time: Some(now()),
            ess_cert_id_v2: true,
        },
        signer_key,
    )
    .unwrap()
}

#[test]
fn codes_are_single_use_and_signers_must_be_meters() {
    let dir = tempfile::tempdir().unwrap();
    let t = now();
    let mut a = Authority::init(dir.path(), "Test Root", t).unwrap();
    let (id_key, pm_key) = (key(), key());
    let meter = a
        .certify_meter(&csr_for("MTR-1", &id_key), &csr_for("MTR-1", &pm_key), t)
        .unwrap();
    let (_, code) = a.enrol("CN=Alice", t).unwrap();
    let user = key();

    // Signed by the postmark key (certified, but not an identity): refused.
    let by_postmark = request("MTR-1", "Alice", &code, &user, &meter.postmark, &pm_key);
    assert!(matches!(
        a.certify_user(&by_postmark, UserValidity::Days(30), t),
        Err(AuthorityError::Invalid(_))
    ));
    // Wrong code, and the right code for another subject: refused.
    let wrong = request("MTR-1", "Alice", "NOPE", &user, &meter.identity, &id_key);
    assert!(a.certify_user(&wrong, UserValidity::Days(30), t).is_err());
    let other = request("MTR-1", "Bob", &code, &user, &meter.identity, &id_key);
    assert!(a.certify_user(&other, UserValidity::Days(30), t).is_err());

    // The right request: a User certificate for the user's key, then the code is spent.
    let good = request("MTR-1", "Alice", &code, &user, &meter.identity, &id_key);
    let c = a.certify_user(&good, UserValidity::Days(30), t).unwrap();
    assert_eq!(cert::subject_cn(&c).as_deref(), Some("Alice"));
    assert_eq!(cert::public_key_sec1(&c).unwrap(), sec1(&user));
    assert!(!cert::is_ca(&c));
    cert::verify_chain(&c, &[], std::slice::from_ref(a.root()), t + 1).unwrap();
    assert!(a.certify_user(&good, UserValidity::Days(30), t).is_err());

    // Codes survive a reopen; a short validity ends when asked.
    let mut a = Authority::open(dir.path()).unwrap();
    let (_, code2) = a.enrol("Alice", t).unwrap();
    let short = request("MTR-1", "Alice", &code2, &key(), &meter.identity, &id_key);
    let c = a.certify_user(&short, UserValidity::Seconds(3), t).unwrap();
    assert_eq!(cert::not_after(&c), t + 3);
    // A request from another authority's meter is untrusted.
    let dir2 = tempfile::tempdir().unwrap();
    let mut b = Authority::init(dir2.path(), "Other Root", t).unwrap();
    let k2 = key();
    let m2 = b
        .certify_meter(&csr_for("MTR-2", &k2), &csr_for("MTR-2", &key()), t)
        .unwrap();
    let (_, code3) = a.enrol("Carol", t).unwrap();
    let foreign = request("MTR-2", "Carol", &code3, &key(), &m2.identity, &k2);
    assert!(matches!(
        a.certify_user(&foreign, UserValidity::Days(30), t),
        Err(AuthorityError::Pki(_))
    ));
}

/// A meter's revoke request for `serial`, in CMS signed by `signer`.
fn revoke_request(
    meter_id: &str,
    serial: &str,
    signer: &cert::Certificate,
    signer_key: &SigningKey,
) -> Vec<u8> {
    let body = meter_pki::revoke::RevokeRequest {
        meter_id: meter_id.into(),
        serial: meter_pki::revoke::canonical_serial(serial).unwrap(),
        reason: "keyCompromise".into(),
        request_id: format!("rv-{meter_id}"),
        issued_at: now(),
    };
    signed(
        oid::CT_REVOKE_REQUEST,
        &payload::encode(&body).unwrap(),
        signer,
        signer_key,
    )
}

/// An operator holds their meter's identity key (the operator is root on
/// the workstation): a revoke request it signs must not reach another
/// meter's users. Meter 1 asks to revoke the certificate meter 2's user
/// got: refused, nothing recorded; meter 2's own request passes.
#[test]
fn a_meter_revokes_only_its_own_users_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let t = now();
    let mut a = Authority::init(dir.path(), "Test Root", t).unwrap();
    let (k1, k2) = (key(), key());
    let m1 = a
        .certify_meter(&csr_for("MTR-1", &k1), &csr_for("MTR-1", &key()), t)
        .unwrap();
    let m2 = a
        .certify_meter(&csr_for("MTR-2", &k2), &csr_for("MTR-2", &key()), t)
        .unwrap();
    let (_, code) = a.enrol("CN=Bob", t).unwrap();
    let bob = request("MTR-2", "Bob", &code, &key(), &m2.identity, &k2);
    let bob = a.certify_user(&bob, UserValidity::Days(30), t).unwrap();
    let serial = cert::serial_hex(&bob);

    let hostile = revoke_request("MTR-1", &serial, &m1.identity, &k1);
    match a.revoke(&hostile, t) {
        Err(AuthorityError::Invalid(m)) => assert!(m.contains("MTR-1"), "{m}"),
        other => panic!("another meter's user revoked: {other:?}"),
    }
    let crl = meter_pki::pem::decode_any(a.crl(t).unwrap().0.as_bytes(), "X509 CRL").unwrap();
    assert!(meter_pki::crl::serials(&crl).unwrap().is_empty());

    let own = revoke_request("MTR-2", &serial, &m2.identity, &k2);
    let (order, _) = a.revoke(&own, t).unwrap();
    assert_eq!((order.meter_id.as_str(), order.forced), ("MTR-2", false));
    // The record survives a reopen: the authority still knows whose it is.
    let state = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(
        state.contains("\"meter\": \"MTR-2\"") || state.contains("\"meter\":\"MTR-2\""),
        "{state}"
    );
}
