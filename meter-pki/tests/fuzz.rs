//! Fuzzing without nightly: every parser of outside input (certificates,
//! certification requests, CMS signed payloads — vouchers, rate tables,
//! clear-lock orders, anchor updates —, RFC 3161 tokens given to Validate,
//! RFC 3161 requests (meter-tsa, TimeStamp) and responses,
//! strict JSON payloads) runs on random bytes and on valid samples with
//! stacked random mutations, in a bounded loop per target. The property:
//! an error, never a panic. Inputs that panic are written to
//! `target/fuzz-found/` and become regression tests by moving them to
//! `tests/fuzz-regressions/<target>-<anything>` (replayed on every run).
//!
//! `FUZZ_CASES` sets the executions per target (default 300 in debug, 3000
//! in release); `tests/fuzz --full` runs 10^6 per target. Every target prints
//! `fuzz: target=… execs=… secs=…`. To fuzz a new parser, add one line to
//! [`TARGETS`] (and a sample to [`Samples`] if it has a valid form).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use common::*;
use meter_pki::account::AccountOrder;
use meter_pki::certreq::CertRequest;
use meter_pki::cms::{self, SignOptions};
use meter_pki::credit::{CreditLine, Payment};
use meter_pki::payload::{self, AnchorUpdate, ClearLockOrder, RateTable, Voucher};
use meter_pki::report::{LockOrder, ReportAck};
use meter_pki::revoke::{RevokeOrder, RevokeRequest};
use meter_pki::tsp::{self, TokenParams};
use meter_pki::{cert, csr, indicium, oid, sig, tsq};
use proptest::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

struct Samples {
    pki: Pki,
    token: Vec<u8>,
    signed: Vec<u8>,
    req: Vec<u8>,
    cert: Vec<u8>,
    json: Vec<u8>,
    signed_rates: Vec<u8>,
    signed_order: Vec<u8>,
    signed_anchor: Vec<u8>,
    /// A valid indicium signed by the TSA key (the decoder needs no particular signer).
    indicium: Vec<u8>,
    /// Signed samples of the later authority → meter objects, one per type.
    signed_more: Vec<Vec<u8>>,
    /// Their JSON, one per type.
    json_more: Vec<Vec<u8>>,
    /// An RFC 3161 TimeStampReq (SHA-384, nonce, certReq) as clients send it.
    tsq: Vec<u8>,
    /// A granted TimeStampResp around the sample token.
    tsr: Vec<u8>,
}

fn sign_payload(pki: &Pki, content_type: der::asn1::ObjectIdentifier, json: &[u8]) -> Vec<u8> {
    cms::sign_with_key(
        &SignOptions {
            content_type,
            content: json,
            signer: &pki.root,
            extra_certs: &[],
            signing_time: Some(now()),
            ess_cert_id_v2: true,
        },
        &pki.root_key,
    )
    .unwrap()
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
            register: None,
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
        let body = indicium::IndiciumBody {
            // The CN of the sample signer, so the sample verifies.
            meter_id: "meter-0001".into(),
            date: 1_700_000_000,
            seq: 7,
            amount: 730,
            ascending: 1_460,
            descending: 98_540,
            pieces: 2,
            rates_version: 2,
            currency: "EUR".into(),
            digits: 2,
            class: "letter".into(),
            grams: 20,
            origin: "10115".into(),
            destination: "75001".into(),
        }
        .encode()
        .unwrap();
        let isig = sig::sign_prehash_raw(&pki.tsa_key, &indicium::body_digest(&body)).unwrap();
        let indicium = indicium::assemble(&body, &isig);
        let json_more: Vec<Vec<u8>> = MORE_JSON.iter().map(|(_, j)| j.to_vec()).collect();
        let signed_more = MORE_JSON
            .iter()
            .map(|(ct, j)| sign_payload(&pki, *ct, j))
            .collect();
        let tsq = tsq::request(oid::SHA384, &[5; 48], Some(0x0102_0304_0506_0708), true).unwrap();
        let tsr = tsq::granted(&token).unwrap();
        Samples {
            tsq,
            tsr,
            indicium,
            signed_more,
            json_more,
            signed_rates: sign_payload(&pki, oid::CT_RATES, RATE_JSON),
            signed_order: sign_payload(&pki, oid::CT_CLEAR_LOCK, ORDER_JSON),
            signed_anchor: sign_payload(&pki, oid::CT_ANCHOR_UPDATE, ANCHOR_JSON),
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
    if v.is_empty() {
        return vec![byte];
    }
    let i = pos % v.len();
    match kind % 3 {
        0 => v[i] ^= byte | 1,
        1 => v.truncate(i),
        _ => v.insert(i, byte),
    }
    v
}

/// splitmix64: a small deterministic generator, seeded per target, so a
/// run is reproducible from `FUZZ_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One input: random bytes (1 in 8, half of them behind a DER SEQUENCE
/// header), else a seed with 1–4 stacked mutations, some of them aimed at
/// DER length bytes and JSON structure.
fn input(rng: &mut Rng, seeds: &[&[u8]]) -> Vec<u8> {
    if seeds.is_empty() || rng.below(8) == 0 {
        let len = rng.below(2048);
        let mut v: Vec<u8> = Vec::with_capacity(len + 4);
        if rng.below(2) == 0 {
            v.extend_from_slice(&[0x30, 0x82]);
        }
        v.extend((0..len).map(|_| rng.next() as u8));
        return v;
    }
    let mut v = seeds[rng.below(seeds.len())].to_vec();
    for _ in 0..=rng.below(4) {
        let pos = rng.next() as usize;
        let byte = rng.next() as u8;
        v = match rng.below(6) {
            0..=2 => mutate(&v, pos, byte, rng.below(3) as u8),
            // Length bytes and tags: set to a boundary value.
            3 => {
                let mut w = v.clone();
                let i = pos % w.len().max(1);
                if let Some(b) = w.get_mut(i) {
                    *b = [0x00, 0x7f, 0x80, 0x81, 0x82, 0x84, 0xff][rng.below(7)];
                }
                w
            }
            // Duplicate a slice (repeated fields, nested structures).
            4 => {
                let a = pos % v.len().max(1);
                let b = (a + rng.below(64)).min(v.len());
                let mut w = v[..b].to_vec();
                w.extend_from_slice(&v[a..]);
                w
            }
            // JSON-ish splices.
            _ => {
                let tokens: [&[u8]; 8] = [
                    b"{", b"}", b"\"", b",", b"null", b"-1", b"1e309", b"\\u0000",
                ];
                let mut w = v.clone();
                let i = pos % (w.len() + 1);
                let t = tokens[rng.below(tokens.len())];
                w.splice(i..i, t.iter().copied());
                w
            }
        };
    }
    v
}

/// A parser of outside input under fuzz.
struct Target {
    name: &'static str,
    /// Valid inputs to mutate.
    seeds: fn(&Samples) -> Vec<&[u8]>,
    /// Runs the parser; must return, whatever the bytes.
    run: fn(&Samples, &[u8]),
}

fn anchors(s: &Samples) -> &[meter_pki::cert::Certificate] {
    std::slice::from_ref(&s.pki.root)
}

/// Every fuzzed parser. Add new ones here.
const TARGETS: &[Target] = &[
    Target {
        name: "cert_parse",
        seeds: |s| vec![&s.cert],
        run: |_, b| {
            let _ = cert::parse(b);
            let _ = cert::parse_all(b);
        },
    },
    Target {
        name: "csr_verify",
        seeds: |s| vec![&s.req],
        run: |_, b| {
            let _ = csr::verify(b);
        },
    },
    Target {
        name: "token_verify",
        seeds: |s| vec![&s.token],
        run: |s, b| {
            let _ = tsp::verify(b, anchors(s), now());
        },
    },
    Target {
        name: "cms_verify",
        seeds: |s| vec![&s.signed, &s.token, &s.signed_rates],
        run: |s, b| {
            let _ = cms::verify(b, anchors(s), None, now());
            let _ = cms::verify_detached(b, b"x", anchors(s), None, now());
        },
    },
    Target {
        name: "signed_voucher",
        seeds: |s| vec![&s.signed],
        run: |s, b| {
            let _ = payload::open::<Voucher>(b, anchors(s), now());
        },
    },
    Target {
        name: "signed_rate_table",
        seeds: |s| vec![&s.signed_rates],
        run: |s, b| {
            let _ = payload::open::<RateTable>(b, anchors(s), now());
        },
    },
    Target {
        name: "signed_clear_lock_order",
        seeds: |s| vec![&s.signed_order],
        run: |s, b| {
            let _ = payload::open::<ClearLockOrder>(b, anchors(s), now());
        },
    },
    Target {
        name: "signed_anchor_update",
        seeds: |s| vec![&s.signed_anchor],
        run: |s, b| {
            let _ = payload::open::<AnchorUpdate>(b, anchors(s), now());
        },
    },
    Target {
        name: "payload_json",
        seeds: |s| vec![&s.json, RATE_JSON, ORDER_JSON, ANCHOR_JSON],
        run: |_, b| {
            let _ = payload::decode::<Voucher>(b);
            let _ = payload::decode::<RateTable>(b);
            let _ = payload::decode::<ClearLockOrder>(b);
            let _ = payload::decode::<AnchorUpdate>(b);
        },
    },
    Target {
        name: "indicium_decode",
        seeds: |s| vec![&s.indicium],
        run: |s, b| {
            let _ = indicium::decode(b);
            let _ = indicium::verify(b, &s.pki.tsa);
        },
    },
    Target {
        name: "signed_orders",
        seeds: |s| s.signed_more.iter().map(Vec::as_slice).collect(),
        run: |s, b| {
            let a = anchors(s);
            let _ = payload::open::<ReportAck>(b, a, now());
            let _ = payload::open::<LockOrder>(b, a, now());
            let _ = payload::open::<RevokeOrder>(b, a, now());
            let _ = payload::open::<AccountOrder>(b, a, now());
            let _ = payload::open::<CreditLine>(b, a, now());
            let _ = payload::open::<CertRequest>(b, a, now());
            let _ = payload::open::<RevokeRequest>(b, a, now());
            let _ = payload::open::<Payment>(b, a, now());
        },
    },
    Target {
        name: "orders_json",
        seeds: |s| s.json_more.iter().map(Vec::as_slice).collect(),
        run: |_, b| {
            let _ = payload::decode::<ReportAck>(b);
            let _ = payload::decode::<LockOrder>(b);
            let _ = payload::decode::<RevokeOrder>(b);
            let _ = payload::decode::<AccountOrder>(b);
            let _ = payload::decode::<CreditLine>(b);
            let _ = payload::decode::<CertRequest>(b);
            let _ = payload::decode::<RevokeRequest>(b);
            let _ = payload::decode::<Payment>(b);
        },
    },
    Target {
        // The bytes meter-tsa and TimeStamp take from any local client.
        name: "tsq_parse",
        seeds: |s| vec![&s.tsq],
        run: |_, b| {
            let _ = tsq::parse_request(b, oid::POSTMARK_POLICY);
        },
    },
    Target {
        name: "tsr_parse",
        seeds: |s| vec![&s.tsr],
        run: |_, b| {
            let _ = tsq::parse_response(b);
        },
    },
];

/// JSON samples of the later signed objects (authority orders, credit grants,
/// requests a meter sends the authority), with their content types.
const MORE_JSON: &[(der::asn1::ObjectIdentifier, &[u8])] = &[
    (
        oid::CT_REPORT_ACK,
        br#"{"meter_id":"MTR-0123456789ab","report_request_id":"r1","report_sequence":3,"report_time":1700000000,"report_digest":"000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000","period_days":30,"issued_at":1700000000}"#,
    ),
    (
        oid::CT_LOCK_ORDER,
        br#"{"meter_id":"MTR-0123456789ab","nonce":"00ff00ff00ff00ff","reason":"audit","issued_at":1700000000}"#,
    ),
    (
        oid::CT_REVOKE_ORDER,
        br#"{"meter_id":"MTR-0123456789ab","serial":"a","reason":"keyCompromise","order_id":"00112233445566778899aabbccddeeff","forced":false,"request_id":"r2","issued_at":1700000000}"#,
    ),
    (
        oid::CT_ACCOUNT_ORDER,
        br#"{"meter_id":"MTR-0123456789ab","credit_limit":100000,"period_days":30,"nonce":"00ff00ff00ff00ff","issued_at":1700000000}"#,
    ),
    (
        oid::CT_CREDIT_LINE,
        br#"{"serial":"CL1","holder":"MTR-0123456789ab","holder_key_hex":"04000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000","issuer":"Bank","amount":1000,"not_before":0,"not_after":1900000000,"authorized_use":"any purchase","request_digest_hex":"000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"}"#,
    ),
    (
        oid::CT_PAYMENT,
        br#"{"holder":"MTR-0123456789ab","serial":"CL1-1","meter_id":"MTR-0123456789ab","credit_serial":"CL1","credit_line_digest_hex":"000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000","amount":5,"payee":"shop","credit_remaining":995,"sequence":1,"time":1700000000}"#,
    ),
];

const RATE_JSON: &[u8] = br#"{"version":2,"effective":0,"currency":"EUR","digits":2,"rates":{"postmark":30},"postage":[]}"#;
const ORDER_JSON: &[u8] = br#"{"meter_id":"m","nonce":"00ff","issued_at":0}"#;
const ANCHOR_JSON: &[u8] =
    br#"{"meter_id":"m","new_anchor_der_hex":"3000","mode":"add","issued_at":0}"#;

fn cases() -> u64 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 300 } else { 3000 })
}

fn seed_of(name: &str) -> u64 {
    let base: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6d65_7465_7264);
    name.bytes().fold(base, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Runs `target` on `cases()` inputs; panicking inputs are saved and fail the test.
fn fuzz(name: &str) {
    let t = TARGETS.iter().find(|t| t.name == name).expect("target");
    let s = samples();
    let seeds = (t.seeds)(s);
    let mut rng = Rng(seed_of(t.name));
    let n = cases();
    let started = std::time::Instant::now();
    let found_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-found");
    let mut found = Vec::new();
    for i in 0..n {
        let bytes = input(&mut rng, &seeds);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (t.run)(s, &bytes)));
        if r.is_err() {
            std::fs::create_dir_all(&found_dir).unwrap();
            let p = found_dir.join(format!("{}-{i}.bin", t.name));
            std::fs::write(&p, &bytes).unwrap();
            found.push(p);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fuzz: target={} execs={n} secs={secs:.1} execs_per_sec={:.0}",
        t.name,
        n as f64 / secs.max(1e-9)
    );
    assert!(
        found.is_empty(),
        "{}: panicking inputs saved: {found:?}",
        t.name
    );
}

macro_rules! fuzz_tests {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { fuzz(stringify!($name)); } )*
        /// Every target has a test (a target without one would never run).
        #[test]
        fn every_target_has_a_test() {
            let tested = [$(stringify!($name)),*];
            for t in TARGETS {
                assert!(tested.contains(&t.name), "no test for fuzz target {}", t.name);
            }
        }
    };
}

fuzz_tests!(
    cert_parse,
    csr_verify,
    token_verify,
    cms_verify,
    signed_voucher,
    signed_rate_table,
    signed_clear_lock_order,
    signed_anchor_update,
    payload_json,
    indicium_decode,
    signed_orders,
    orders_json,
    tsq_parse,
    tsr_parse,
);

/// Inputs found by earlier runs: `tests/fuzz-regressions/<target>-*`.
#[test]
fn regressions_replay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let s = samples();
    let mut replayed = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let Some(t) = TARGETS
            .iter()
            .find(|t| name.starts_with(&format!("{}-", t.name)))
        else {
            continue;
        };
        (t.run)(s, &std::fs::read(&p).unwrap());
        replayed += 1;
    }
    assert!(replayed > 0, "no regression inputs in {}", dir.display());
}

// Mutated tokens reach the ECDSA verification: few cases in debug builds.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

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
    // The seeds of the signed-payload targets are valid, so mutations start
    // from objects that reach the signature check.
    assert!(payload::open::<RateTable>(&s.signed_rates, anchors, now()).is_ok());
    assert!(payload::open::<ClearLockOrder>(&s.signed_order, anchors, now()).is_ok());
    assert!(payload::open::<AnchorUpdate>(&s.signed_anchor, anchors, now()).is_ok());
    assert!(tsq::parse_request(&s.tsq, oid::POSTMARK_POLICY).is_ok());
    assert!(tsq::parse_response(&s.tsr).is_ok_and(|r| r.token.is_some()));
    assert!(payload::decode::<RateTable>(RATE_JSON).is_ok());
    assert!(indicium::verify(&s.indicium, &s.pki.tsa).is_ok());
    // Every later sample decodes as its own type (so mutations start from valid objects).
    let errors: Vec<String> = [
        payload::decode::<ReportAck>(&s.json_more[0]).err(),
        payload::decode::<LockOrder>(&s.json_more[1]).err(),
        payload::decode::<RevokeOrder>(&s.json_more[2]).err(),
        payload::decode::<AccountOrder>(&s.json_more[3]).err(),
        payload::decode::<CreditLine>(&s.json_more[4]).err(),
        payload::decode::<Payment>(&s.json_more[5]).err(),
    ]
    .into_iter()
    .flatten()
    .map(|e| e.to_string())
    .collect();
    assert!(errors.is_empty(), "{errors:?}");
}
