//! Tests of the verifier with a software "AK" (the TPM side is tested end to end on swtpm).

use super::*;
use p384::ecdsa::signature::hazmat::PrehashSigner;
use p384::ecdsa::{Signature, SigningKey};
use wire::{put_tpm2b, ALG_ECC, ALG_ECDSA, ALG_NULL, ALG_SHA256, ALG_SHA384, ECC_NIST_P384};

pub(crate) fn ecc_public(key: &SigningKey, attrs: u32, policy: &[u8]) -> Vec<u8> {
    let point = key.verifying_key().to_encoded_point(false);
    let mut v = Vec::new();
    v.extend_from_slice(&ALG_ECC.to_be_bytes());
    v.extend_from_slice(&ALG_SHA256.to_be_bytes());
    v.extend_from_slice(&attrs.to_be_bytes());
    put_tpm2b(&mut v, policy).unwrap();
    v.extend_from_slice(&ALG_NULL.to_be_bytes());
    v.extend_from_slice(&ALG_ECDSA.to_be_bytes());
    v.extend_from_slice(&ALG_SHA384.to_be_bytes());
    v.extend_from_slice(&ECC_NIST_P384.to_be_bytes());
    v.extend_from_slice(&ALG_NULL.to_be_bytes());
    put_tpm2b(&mut v, point.x().unwrap()).unwrap();
    put_tpm2b(&mut v, point.y().unwrap()).unwrap();
    v
}

fn sign(key: &SigningKey, data: &[u8]) -> Vec<u8> {
    let s: Signature = key.sign_prehash(&util::sha384(data)).unwrap();
    s.to_bytes().to_vec()
}

fn clock() -> ClockInfo {
    ClockInfo {
        clock: 1000,
        reset_count: 2,
        restart_count: 3,
        safe: true,
    }
}

fn attest(kind: u16, extra: &[u8], body: Attested) -> Vec<u8> {
    Attest {
        kind,
        qualified_signer: vec![0, 0xB, 1],
        extra_data: extra.to_vec(),
        clock: clock(),
        firmware_version: 7,
        attested: body,
    }
    .marshal()
    .unwrap()
}

fn ak() -> (SigningKey, Vec<u8>) {
    let k = SigningKey::random(&mut rand_core::OsRng);
    let p = ecc_public(&k, AK_ATTRIBUTES | attr::NO_DA, &[]);
    (k, p)
}

#[test]
fn time_and_counter_verify_with_the_ak() {
    let (k, ak_pub) = ak();
    let q = [5u8; 48];
    let t = attest(
        wire::ST_ATTEST_TIME,
        &q,
        Attested::Time {
            time: 99,
            clock: clock(),
            firmware_version: 7,
        },
    );
    let v = verify_time(&ak_pub, &t, &sign(&k, &t), &q).unwrap();
    assert_eq!(v.time, 99);
    assert_eq!(v.clock.reset_count, 2);
    // Other qualifying data, another signer, a changed byte, another type: refused.
    assert!(verify_time(&ak_pub, &t, &sign(&k, &t), &[6u8; 48]).is_err());
    let (k2, _) = ak();
    assert!(verify_time(&ak_pub, &t, &sign(&k2, &t), &q).is_err());
    let mut t2 = t.clone();
    *t2.last_mut().unwrap() ^= 1;
    assert!(verify_time(&ak_pub, &t2, &sign(&k, &t), &q).is_err());

    let n = attest(
        wire::ST_ATTEST_NV,
        &q,
        Attested::Nv {
            index_name: vec![0, 0xB, 9, 9],
            offset: 0,
            contents: 41u64.to_be_bytes().to_vec(),
        },
    );
    let c = verify_counter(&ak_pub, &n, &sign(&k, &n), &q).unwrap();
    assert_eq!(c.value, 41);
    assert_eq!(c.index_name, vec![0, 0xB, 9, 9]);
    assert!(verify_time(&ak_pub, &n, &sign(&k, &n), &q).is_err());
    assert!(verify_counter(&ak_pub, &t, &sign(&k, &t), &q).is_err());
}

#[test]
fn ak_template_is_strict() {
    let k = SigningKey::random(&mut rand_core::OsRng);
    assert!(check_ak(&ecc_public(&k, AK_ATTRIBUTES, &[])).is_ok());
    // Not restricted, with an admin policy, with an auth policy, or decrypt: refused.
    assert!(check_ak(&ecc_public(&k, AK_ATTRIBUTES & !attr::RESTRICTED, &[])).is_err());
    assert!(check_ak(&ecc_public(
        &k,
        AK_ATTRIBUTES | attr::ADMIN_WITH_POLICY,
        &[]
    ))
    .is_err());
    assert!(check_ak(&ecc_public(&k, AK_ATTRIBUTES, &[1u8; 32])).is_err());
    assert!(check_ak(&ecc_public(&k, AK_ATTRIBUTES | attr::DECRYPT, &[])).is_err());
}

fn certified(
    ak_key: &SigningKey,
    role: &str,
    meter: &str,
    public: &[u8],
    name: Vec<u8>,
) -> CertifiedKey {
    let c = attest(
        wire::ST_ATTEST_CERTIFY,
        &certify_qualifying(meter, role),
        Attested::Certify {
            name,
            qualified_name: vec![0, 0xB, 2],
        },
    );
    CertifiedKey {
        role: role.into(),
        public: hex::encode(public),
        certify: hex::encode(&c),
        signature: hex::encode(sign(ak_key, &c)),
    }
}

#[test]
fn certify_checks() {
    let (k, ak_pub) = ak();
    let ak = check_ak(&ak_pub).unwrap();
    let key = SigningKey::random(&mut rand_core::OsRng);
    let public = ecc_public(&key, KEY_ATTRIBUTES | attr::NO_DA, &[]);
    let name = wire::object_name(&public).unwrap();
    let ok = certified(&k, ROLE_POSTMARK, "m1", &public, name.clone());
    let v = verify_certify(&ak, &ok, "m1").unwrap();
    assert_eq!(
        v.point,
        key.verifying_key().to_encoded_point(false).as_bytes()
    );
    // Another meter or role (qualifying data), another name, an exportable key: refused.
    assert!(verify_certify(&ak, &ok, "m2").is_err());
    let mut other_role = ok.clone();
    other_role.role = ROLE_IDENTITY.into();
    assert!(verify_certify(&ak, &other_role, "m1").is_err());
    let wrong_name = certified(&k, ROLE_POSTMARK, "m1", &public, vec![0, 0xB, 0]);
    assert!(verify_certify(&ak, &wrong_name, "m1").is_err());
    let exportable = ecc_public(&key, KEY_ATTRIBUTES & !attr::FIXED_TPM, &[]);
    let n2 = wire::object_name(&exportable).unwrap();
    let bad = certified(&k, ROLE_POSTMARK, "m1", &exportable, n2);
    assert!(verify_certify(&ak, &bad, "m1").is_err());
    // A public area swapped after certification: the Name no longer matches.
    let mut swapped = ok.clone();
    swapped.public = hex::encode(ecc_public(
        &SigningKey::random(&mut rand_core::OsRng),
        KEY_ATTRIBUTES,
        &[],
    ));
    assert!(verify_certify(&ak, &swapped, "m1").is_err());
}
