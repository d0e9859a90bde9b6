//! `meterctl verify-indicium` offline, against a key and certificate made by
//! the `openssl` binary (an independent signer): an indicium whose body
//! OpenSSL signed verifies; a changed byte, a wrong certificate, a wrong
//! meter id and garbage are each a negative result (exit 12), never a crash.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use meter_pki::indicium::{self, IndiciumBody, BODY_LEN};

fn meterctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meterctl"))
        .args(args)
        .output()
        .expect("run meterctl")
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl must be installed");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A P-384 key and a self-signed certificate with CN = `cn`, in `dir`.
fn key_and_cert(dir: &Path, name: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            &format!("/CN={cn}"),
            "-days",
            "2",
        ],
    );
}

fn body() -> IndiciumBody {
    IndiciumBody {
        meter_id: "MTR-00112233aabb".into(),
        date: 1_790_000_000,
        seq: 7,
        amount: 950,
        ascending: 2_450,
        descending: 97_550,
        pieces: 2,
        rates_version: 2,
        currency: "EUR".into(),
        digits: 3,
        class: "letter".into(),
        grams: 20,
        origin: "10115".into(),
        destination: "75001".into(),
    }
}

/// Signs `b` with OpenSSL and returns the indicium bytes.
fn openssl_indicium(dir: &Path, b: &IndiciumBody, key: &str) -> Vec<u8> {
    let bytes = b.encode().unwrap();
    std::fs::write(dir.join("body.bin"), bytes).unwrap();
    openssl(
        dir,
        &[
            "dgst", "-sha384", "-sign", key, "-out", "sig.der", "body.bin",
        ],
    );
    let der = std::fs::read(dir.join("sig.der")).unwrap();
    let raw = meter_pki::sig::der_to_raw(&der).unwrap();
    indicium::assemble(&bytes, &raw)
}

fn verify(dir: &Path, ind: &[u8], cert: &str) -> (Option<i32>, serde_json::Value) {
    let f = dir.join("ind.bin");
    std::fs::write(&f, ind).unwrap();
    let out = meterctl(&[
        "--json",
        "verify-indicium",
        f.to_str().unwrap(),
        "--cert",
        dir.join(cert).to_str().unwrap(),
    ]);
    let j = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), j)
}

#[test]
fn openssl_signed_indicium_verifies_and_forgeries_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    key_and_cert(d, "meter", "MTR-00112233aabb");
    key_and_cert(d, "other", "MTR-00112233aabb");
    key_and_cert(d, "stranger", "MTR-ffffffffffff");
    let good = openssl_indicium(d, &body(), "meter.key");

    let (code, j) = verify(d, &good, "meter.pem");
    assert_eq!(code, Some(0), "{j}");
    assert_eq!(j["valid"], true);
    assert_eq!(j["descending"].as_u64(), Some(97_550));
    assert_eq!(j["destination"].as_str(), Some("75001"));

    for i in [0, 20, 48, BODY_LEN - 1, BODY_LEN, good.len() - 1] {
        let mut bad = good.clone();
        bad[i] ^= 0x04;
        let (code, j) = verify(d, &bad, "meter.pem");
        assert_eq!(code, Some(12), "byte {i}: {j}");
        assert_eq!(j["valid"], false);
    }
    let (code, j) = verify(d, &good, "other.pem");
    assert_eq!((code, j["step"].as_str()), (Some(12), Some("signature")));
    let (code, j) = verify(d, &good, "stranger.pem");
    assert_eq!((code, j["step"].as_str()), (Some(12), Some("meter")));
    let (code, j) = verify(d, b"not an indicium", "meter.pem");
    assert_eq!((code, j["step"].as_str()), (Some(12), Some("format")));
    let (code, _) = verify(d, &good[..good.len() - 1], "meter.pem");
    assert_eq!(code, Some(12));
}
