//! Integration tests of the TPM housing against a real swtpm (one per test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::swtpm;

use std::path::Path;
use std::process::Command;

use meterd::housing::tpm::{TpmHousing, MAX_LOADED_KEYS};
use meterd::housing::{Housing, HousingError, HousingHandle, RawSignature};
use p384::ecdsa::signature::hazmat::PrehashVerifier;
use p384::ecdsa::{Signature, VerifyingKey};
use p384::pkcs8::EncodePublicKey;
use sha2::{Digest, Sha384};
use swtpm::Swtpm;

const COUNTER: u32 = 0x0150_0001;

fn digest(msg: &[u8]) -> [u8; 48] {
    Sha384::digest(msg).into()
}

fn verifies(point: &[u8], digest: &[u8; 48], sig: &RawSignature) -> bool {
    let vk = VerifyingKey::from_sec1_bytes(point).expect("public key");
    let sig = Signature::from_slice(sig).expect("signature encoding");
    vk.verify_prehash(digest, &sig).is_ok()
}

fn open(tpm: &Swtpm, keys: &Path) -> TpmHousing {
    TpmHousing::open(&tpm.tcti(), keys).expect("open housing")
}

/// Verifies with the `openssl` binary: PEM public key, DER signature.
fn openssl_verifies(dir: &Path, point: &[u8], digest: &[u8; 48], sig: &RawSignature) -> bool {
    let vk = VerifyingKey::from_sec1_bytes(point).unwrap();
    let pem = vk.to_public_key_pem(Default::default()).unwrap();
    let der = Signature::from_slice(sig).unwrap().to_der();
    std::fs::write(dir.join("pub.pem"), pem).unwrap();
    std::fs::write(dir.join("digest.bin"), digest).unwrap();
    std::fs::write(dir.join("sig.der"), der.as_bytes()).unwrap();
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(["pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem"])
        .args(["-in", "digest.bin", "-sigfile", "sig.der"])
        .output()
        .expect("run openssl");
    out.status.success()
}

#[test]
fn sign_verifies_and_flipped_digest_fails() {
    let tpm = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    let keys = state.path().join("keys");
    let mut h = open(&tpm, &keys);

    assert!(!h.has_key("postmark").unwrap());
    let point = h.create_key("postmark").unwrap();
    assert_eq!(point.len(), 97);
    assert_eq!(point[0], 0x04);
    assert!(h.has_key("postmark").unwrap());
    assert!(keys.join("postmark.pub").is_file() && keys.join("postmark.priv").is_file());
    assert_eq!(h.public_key("postmark").unwrap(), point);
    assert!(matches!(h.create_key("postmark"), Err(HousingError::Io(_))));
    assert!(matches!(h.create_key("Bad_Name"), Err(HousingError::Io(_))));
    assert!(matches!(
        h.public_key("absent"),
        Err(HousingError::NoSuchKey(_))
    ));

    let d = digest(b"a letter to post");
    let sig = h.sign_digest("postmark", &d).unwrap();
    assert!(verifies(&point, &d, &sig));
    assert!(openssl_verifies(state.path(), &point, &d, &sig));

    let mut flipped = d;
    flipped[0] ^= 1;
    assert!(!verifies(&point, &flipped, &sig));
    assert!(!openssl_verifies(state.path(), &point, &flipped, &sig));

    // Two signatures of one digest differ (random k) and both verify.
    let sig2 = h.sign_digest("postmark", &d).unwrap();
    assert_ne!(sig, sig2);
    assert!(verifies(&point, &d, &sig2));

    h.destroy_key("postmark").unwrap();
    assert!(!h.has_key("postmark").unwrap());
    assert!(matches!(
        h.sign_digest("postmark", &d),
        Err(HousingError::NoSuchKey(_))
    ));
}

#[test]
fn no_slot_or_session_leak() {
    let tpm = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    let mut h = open(&tpm, state.path());
    let base_objects = h.transient_objects().unwrap();
    let base_sessions = h.loaded_sessions().unwrap();

    let names = ["k-a", "k-b", "k-c"];
    let points: Vec<Vec<u8>> = names.iter().map(|n| h.create_key(n).unwrap()).collect();
    let mut counter = h.counter_define(COUNTER).unwrap();
    let mut last_clock = h.clock().unwrap().clock_ms;

    for i in 0..1000usize {
        // Change key every 7 ops: the LRU of 2 must evict, without every
        // sign paying a primary creation.
        let key = (i / 7) % names.len();
        match i % 5 {
            0..=2 => {
                let d = digest(&i.to_be_bytes());
                let sig = h.sign_digest(names[key], &d).unwrap();
                // Software P-384 verification is slow in debug builds:
                // check a sample (every key is covered).
                if i % 25 == 0 {
                    assert!(verifies(&points[key], &d, &sig), "op {i}");
                }
            }
            3 => {
                if i % 2 == 0 {
                    assert_eq!(h.public_key(names[key]).unwrap(), points[key]);
                } else {
                    let next = h.counter_increment(COUNTER).unwrap();
                    assert_eq!(next, counter + 1, "op {i}");
                    counter = next;
                }
            }
            _ => {
                let c = h.clock().unwrap();
                assert!(c.clock_ms >= last_clock, "clock went back at op {i}");
                last_clock = c.clock_ms;
            }
        }
        assert!(h.loaded_keys().len() <= MAX_LOADED_KEYS);
    }

    let objects = h.transient_objects().unwrap();
    assert!(
        objects <= base_objects + MAX_LOADED_KEYS,
        "{objects} transient objects, baseline {base_objects}"
    );
    assert_eq!(objects, base_objects + h.loaded_keys().len());
    assert_eq!(h.loaded_sessions().unwrap(), base_sessions);

    h.flush_all().unwrap();
    assert_eq!(h.transient_objects().unwrap(), base_objects);
    assert_eq!(h.loaded_sessions().unwrap(), base_sessions);
    assert_eq!(h.counter_read(COUNTER).unwrap(), Some(counter));
}

#[test]
fn survives_tpm_reset_and_reports_outage() {
    let mut tpm = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    let mut h = open(&tpm, state.path());
    let point = h.create_key("identity").unwrap();
    let d = digest(b"before reset");
    assert!(verifies(
        &point,
        &d,
        &h.sign_digest("identity", &d).unwrap()
    ));
    assert_eq!(h.counter_read(COUNTER).unwrap(), None);
    h.counter_define(COUNTER).unwrap();
    let value = h.counter_increment(COUNTER).unwrap();
    let before = h.clock().unwrap();

    tpm.restart();

    let d = digest(b"after reset");
    let sig = h.sign_digest("identity", &d).unwrap();
    assert!(verifies(&point, &d, &sig));
    assert_eq!(h.public_key("identity").unwrap(), point);
    assert_eq!(h.counter_read(COUNTER).unwrap(), Some(value));
    // Idempotent define keeps the value.
    assert_eq!(h.counter_define(COUNTER).unwrap(), value);
    let after = h.clock().unwrap();
    assert_eq!(
        after.reset_count,
        before.reset_count + 1,
        "{before:?} -> {after:?}"
    );
    // After an unorderly reset the clock restarts from its last NV save
    // and may be behind; the TPM must then say it is not safe.
    assert!(
        after.clock_ms >= before.clock_ms || !after.safe,
        "{before:?} -> {after:?}"
    );
    assert!(!after.safe, "kill -9 is an unorderly reset: {after:?}");

    tpm.stop();
    assert!(matches!(
        h.sign_digest("identity", &d),
        Err(HousingError::Unavailable(_))
    ));
    assert!(matches!(
        h.counter_increment(COUNTER),
        Err(HousingError::Unavailable(_))
    ));
    assert!(matches!(h.clock(), Err(HousingError::Unavailable(_))));
    assert!(matches!(
        TpmHousing::open(&tpm.tcti(), state.path()),
        Err(HousingError::Unavailable(_))
    ));

    tpm.resume();
    let sig = h.sign_digest("identity", &d).unwrap();
    assert!(verifies(&point, &d, &sig));
    assert_eq!(h.counter_increment(COUNTER).unwrap(), value + 1);
}

/// After a reset the TPM hands out the same handle numbers again: a key
/// loaded after the reset must not be mistaken for one cached before it.
#[test]
fn reset_does_not_confuse_reused_handles() {
    let mut tpm = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    let mut h = open(&tpm, state.path());
    let a = h.create_key("alpha").unwrap();
    let b = h.create_key("beta").unwrap();
    h.flush_all().unwrap();
    let d = digest(b"handle reuse");
    // Only alpha is loaded now.
    assert!(verifies(&a, &d, &h.sign_digest("alpha", &d).unwrap()));
    tpm.restart();
    // beta loads first after the reset and may get alpha's old handle.
    assert!(verifies(&b, &d, &h.sign_digest("beta", &d).unwrap()));
    let sig = h.sign_digest("alpha", &d).unwrap();
    assert!(
        verifies(&a, &d, &sig),
        "alpha's signature must come from alpha"
    );
}

#[test]
fn keys_survive_daemon_restart() {
    let tpm = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    let (point, value) = {
        let mut h = open(&tpm, state.path());
        let p = h.create_key("postmark").unwrap();
        let v = h.counter_define(COUNTER).unwrap();
        h.shutdown().unwrap();
        (p, v)
    };
    let mut h = open(&tpm, state.path());
    assert!(h.has_key("postmark").unwrap());
    let d = digest(b"after daemon restart");
    let sig = h.sign_digest("postmark", &d).unwrap();
    assert!(verifies(&point, &d, &sig));
    assert_eq!(h.public_key("postmark").unwrap(), point);
    assert_eq!(h.counter_read(COUNTER).unwrap(), Some(value));
    assert_eq!(h.counter_define(COUNTER).unwrap(), value);
}

#[test]
fn concurrent_signs_through_handle() {
    let tpm = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    let mut h = open(&tpm, state.path());
    let points: Vec<Vec<u8>> = ["one", "two", "three"]
        .iter()
        .map(|n| h.create_key(n).unwrap())
        .collect();
    let handle = HousingHandle::spawn(h).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..8usize {
            let handle = handle.clone();
            let points = points.clone();
            tasks.push(tokio::spawn(async move {
                let names = ["one", "two", "three"];
                for i in 0..10usize {
                    let k = (t + i) % 3;
                    let d = digest(format!("{t}/{i}").as_bytes());
                    let sig = handle.sign_digest(names[k], d).await.unwrap();
                    assert!(verifies(&points[k], &d, &sig), "task {t} sign {i}");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let objects = handle.call(|h| h.transient_objects()).await.unwrap();
        assert!(objects <= MAX_LOADED_KEYS);
    });
    handle.close();
}
