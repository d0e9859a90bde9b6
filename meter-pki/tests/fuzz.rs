//! Fuzz-style property tests: the verifiers return errors, never panic, on arbitrary bytes
//! and on valid objects with random byte mutations, truncations and insertions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use meter_pki::cms::{self, SignOptions};
use meter_pki::payload::{self, RateTable, Voucher};
use meter_pki::tsp::{self, TokenParams};
use meter_pki::{cert, csr, oid, sig};
use proptest::prelude::*;
use std::sync::OnceLock;

struct Samples {
    pki: Pki,
    token: Vec<u8>,
    signed: Vec<u8>,
    req: Vec<u8>,
    cert: Vec<u8>,
    json: Vec<u8>,
}

fn samples() -> &'static Samples {
    static S: OnceLock<Samples> = OnceLock::new();
    S.get_or_init(|| {
        // Samples are shared across proptest threads; the temp dir lives in a static.
        let pki = Pki::new();
        let params = TokenParams {
            imprint: [3; 48],
            serial: 1,
            gen_time: now(),
            policy: oid::POSTMARK_POLICY,
            accuracy_secs: 1,
            nonce: Some(99),
        };
        let p = tsp::prepare(&params, &pki.tsa, &[]).unwrap();
        let token = p
            .clone()
            .finish(&sig::sign_prehash_raw(&pki.tsa_key, &p.digest()).unwrap())
            .unwrap();
        let json = payload::encode(&Voucher {
            meter_id: "m".into(),
            amount: 1,
            sequence: 1,
            issued_at: 0,
        })
        .unwrap();
        let signed = cms::sign_with_key(
            &SignOptions {
                content_type: oid::CT_VOUCHER,
                content: &json,
                signer: &pki.root,
                extra_certs: &[],
                signing_time: Some(now()),
                ess_cert_id_v2: true,
            },
            &pki.root_key,
        )
        .unwrap();
        let k = key();
        let rp = csr::prepare("meter", &sec1(&k)).unwrap();
        let req = rp
            .clone()
            .finish(&sig::sign_prehash_raw(&k, &rp.digest()).unwrap())
            .unwrap();
        let cert = cert::to_der(&pki.tsa).unwrap();
        Samples {
            pki,
            token,
            signed,
            req,
            cert,
            json,
        }
    })
}

/// A valid sample with a random mutation: flip, truncate or insert.
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

fn all_verifiers(bytes: &[u8]) {
    let s = samples();
    let anchors = std::slice::from_ref(&s.pki.root);
    let _ = cms::verify(bytes, anchors, None, now());
    let _ = cms::verify_detached(bytes, b"x", anchors, None, now());
    let _ = tsp::verify(bytes, anchors, now());
    let _ = csr::verify(bytes);
    let _ = cert::parse(bytes);
    let _ = cert::parse_all(bytes);
    let _ = payload::decode::<Voucher>(bytes);
    let _ = payload::decode::<RateTable>(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        all_verifiers(&bytes);
        let mut der = vec![0x30, 0x82];
        der.extend_from_slice(&bytes);
        all_verifiers(&der);
    }

}

// Mutated objects reach the ECDSA verification, which is slow in debug builds: fewer cases.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn mutated_objects_never_panic(pos in any::<usize>(), byte in any::<u8>(), kind in any::<u8>()) {
        let s = samples();
        for base in [&s.token, &s.signed, &s.req, &s.cert, &s.json] {
            all_verifiers(&mutate(base, pos, byte, kind));
        }
    }

    #[test]
    fn mutated_token_never_verifies(pos in any::<usize>(), byte in any::<u8>(), kind in any::<u8>()) {
        let s = samples();
        let m = mutate(&s.token, pos, byte, kind);
        if m != s.token {
            let r = tsp::verify(&m, std::slice::from_ref(&s.pki.root), now());
            // Strict DER leaves almost no room for a harmless change; should one verify,
            // the signed content must be unchanged.
            if let Ok(info) = r {
                prop_assert_eq!(info.imprint, vec![3u8; 48]);
            }
        }
    }
}

#[test]
fn valid_samples_verify() {
    let s = samples();
    let anchors = std::slice::from_ref(&s.pki.root);
    assert!(tsp::verify(&s.token, anchors, now()).is_ok());
    assert!(cms::verify(&s.signed, anchors, Some(&oid::CT_VOUCHER), now()).is_ok());
    assert!(csr::verify(&s.req).is_ok());
    assert!(cert::parse(&s.cert).is_ok());
    assert!(payload::decode::<Voucher>(&s.json).is_ok());
}
