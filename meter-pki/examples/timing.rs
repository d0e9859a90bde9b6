//! Rough timing of the hot paths (postmark build + software sign, token verify, CMS verify).
//! `cargo run --release -p meter-pki --example timing`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use meter_pki::cms::{self, SignOptions};
use meter_pki::issue::{self, Profile};
use meter_pki::tsp::{self, TokenParams};
use meter_pki::{oid, sig};
use p384::ecdsa::SigningKey;
use std::time::Instant;

fn main() {
    let now = 1_767_225_600;
    let rk = SigningKey::random(&mut rand_core::OsRng);
    let root = issue::self_signed_root(&rk, "Root", 1, now, 365).unwrap();
    let tk = SigningKey::random(&mut rand_core::OsRng);
    let sec1 = tk.verifying_key().to_encoded_point(false);
    let tsa = issue::issue(
        "m",
        sec1.as_bytes(),
        Profile::Postmark,
        &rk,
        &root,
        2,
        now,
        30,
    )
    .unwrap();
    let n = 200;
    let t = Instant::now();
    let mut token = Vec::new();
    for i in 0..n {
        let p = TokenParams {
            imprint: [i as u8; 48],
            serial: i,
            gen_time: now,
            policy: oid::POSTMARK_POLICY,
            accuracy_secs: 1,
            nonce: None,
        };
        let prep = tsp::prepare(&p, &tsa, &[]).unwrap();
        let raw = sig::sign_prehash_raw(&tk, &prep.digest()).unwrap();
        token = prep.finish(&raw).unwrap();
    }
    println!(
        "token build+sign+finish: {:.2} ms",
        t.elapsed().as_secs_f64() * 1000.0 / n as f64
    );
    let anchors = [root.clone()];
    let cache = tsp::ChainCache::default();
    let t = Instant::now();
    for _ in 0..n {
        tsp::verify_cached(&token, &anchors, now, Some(&cache)).unwrap();
    }
    println!(
        "tsp::verify_cached (chain cached): {:.2} ms",
        t.elapsed().as_secs_f64() * 1000.0 / n as f64
    );
    let vk = *tk.verifying_key();
    let digest = [7u8; 48];
    let sig = sig::sign_prehash_raw(&tk, &digest).unwrap();
    let t = Instant::now();
    for _ in 0..n {
        sig::verify_prehash(vk.to_encoded_point(false).as_bytes(), &digest, &sig).unwrap();
    }
    println!(
        "bare p384 verify_prehash: {:.2} ms",
        t.elapsed().as_secs_f64() * 1000.0 / n as f64
    );
    let t = Instant::now();
    for _ in 0..n {
        tsp::verify(&token, &anchors, now).unwrap();
    }
    println!(
        "token verify: {:.2} ms",
        t.elapsed().as_secs_f64() * 1000.0 / n as f64
    );
    let der = cms::sign_with_key(
        &SignOptions {
            content_type: oid::CT_VOUCHER,
            content: b"{}",
            signer: &root,
            extra_certs: &[],
            signing_time: Some(now),
            ess_cert_id_v2: true,
        },
        &rk,
    )
    .unwrap();
    let t = Instant::now();
    for _ in 0..n {
        cms::verify(&der, &anchors, None, now).unwrap();
    }
    println!(
        "cms verify (root signer): {:.2} ms; token size {} bytes",
        t.elapsed().as_secs_f64() * 1000.0 / n as f64,
        token.len()
    );
}
