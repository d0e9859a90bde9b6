//! End to end through D-Bus on swtpm: the postal secret key (claim 21, issue 17 item 2).
//!
//! The meter asks for the key naming its TPM storage parent; the authority makes a random
//! HMAC-SHA-256 key, keeps it, and wraps it to that parent (software TPM2 duplication); the
//! meter imports the delivery into the TPM (once); every indicium bought afterwards is
//! layout version 2 and carries a TPM2_HMAC over its body, which `dmtxread` returns
//! exactly and which checks out with `openssl mac` and `meter-authority verify-indicium
//! --postal-key` using the authority's copy of the key, and fails for a flipped byte. The
//! key's bytes appear in no file of the state directory (ledger and WAL included). A
//! delivery for another meter, one with a broken signature, and a second import of the
//! same delivery are refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use std::path::Path;

use meter_proto::exit;
use sandbox::{ok, write, Sandbox};

fn buy(sb: &Sandbox, id: &str, png: Option<&str>) -> Vec<u8> {
    let mut args = sb.letter_args(id, "20");
    if let Some(p) = png {
        args.extend(["--png".to_owned(), p.to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&sb.meterctl(&args), "postage");
    std::fs::read(sb.path(&format!("{id}.ind"))).unwrap()
}

/// HMAC-SHA-256 of `body` (written to `name`) under `key_hex`, with stock `openssl mac`:
/// lowercase hex.
fn openssl_mac(sb: &Sandbox, key_hex: &str, name: &str, body: &[u8]) -> String {
    let file = write(sb, name, body);
    let key = format!("hexkey:{key_hex}");
    let args = [
        "mac", "-digest", "SHA256", "-macopt", &key, "-in", &file, "HMAC",
    ];
    let out = sb.run("openssl", &args);
    ok(&out, "openssl mac").trim().to_ascii_lowercase()
}

/// Every regular file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            files(&p, out);
        } else if m.is_file() {
            out.push(p);
        }
    }
}

/// The delivery's JSON content changed by `f`, signed again with the authority's root key.
fn resigned(sb: &Sandbox, delivery: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    use p384::pkcs8::DecodePrivateKey;
    let content = meter_pki::cms::peek(delivery).unwrap().content;
    let mut v: serde_json::Value = serde_json::from_slice(&content).unwrap();
    f(&mut v);
    let content = serde_json::to_vec(&v).unwrap();
    let dir = sb.authority_dir();
    let key_pem = std::fs::read_to_string(dir.join("root.key")).unwrap();
    let key = p384::ecdsa::SigningKey::from_pkcs8_pem(&key_pem).unwrap();
    let root = meter_pki::cert::parse(&std::fs::read(dir.join("root.pem")).unwrap()).unwrap();
    meter_pki::cms::sign_with_key(
        &meter_pki::cms::SignOptions {
            content_type: meter_pki::oid::CT_POSTAL_KEY,
            content: &content,
            signer: &root,
            extra_certs: &[],
            signing_time: Some(meter_authority::now()),
            ess_cert_id_v2: true,
        },
        &key,
    )
    .unwrap()
}

#[test]
fn postal_key_is_imported_wrapped_and_macs_every_indicium() {
    let sb = Sandbox::up(100_000);
    sb.install_rates("rates2", sandbox::POSTAGE_RATES);
    let meter_id = sb.meter_id();

    // Before the key: version 1, 221 bytes.
    let v1 = buy(&sb, "pk-before", None);
    assert_eq!(v1.len(), meter_pki::indicium::LEN);
    assert_eq!(v1[2], 1);

    // Request (signed by the meter, naming its storage parent) → delivery.
    let req = sb.arg("pk-req.pem");
    ok(
        &sb.meterctl(&["postal-key", "request", "-o", &req]),
        "postal-key request",
    );
    let delivery = sb.arg("pk-delivery.pem");
    sb.authority(&["postal-key", &req, "--out", &delivery]);
    let key_dir = sb.authority_dir().join("postal-keys").join(&meter_id);
    let key_file = std::fs::read_dir(&key_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let key_hex = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    let key = hex::decode(&key_hex).unwrap();
    assert_eq!(key.len(), 32);
    let delivery_bytes = std::fs::read(&delivery).unwrap();

    // A delivery for another meter, and one whose signature is broken, are refused.
    let other = resigned(&sb, &delivery_bytes, |v| {
        v["meter_id"] = "MTR-000000000000".into();
    });
    let other = write(&sb, "pk-other.der", &other);
    let o = sb.meterctl(&["postal-key", "import", &other]);
    assert_eq!(o.status.code(), Some(exit::INVALID), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("MTR-000000000000"),
        "{o:?}"
    );
    let mut bad = meter_pki::pem::decode_any(&delivery_bytes, "CMS").unwrap();
    let n = bad.len();
    bad[n - 3] ^= 0x01; // inside the signature value
    let bad = write(&sb, "pk-bad.der", &bad);
    let o = sb.meterctl(&["postal-key", "import", &bad]);
    assert!(!o.status.success(), "a broken signature was accepted");

    // Import, once.
    let j = sb.meterctl_json(&["postal-key", "import", &delivery]);
    assert_eq!(j["imported"], true);
    let o = sb.meterctl(&["postal-key", "import", &delivery]);
    assert!(!o.status.success(), "second import accepted");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already imported"),
        "{o:?}"
    );

    // After: version 2, 237 bytes, one DataMatrix symbol read back exactly.
    let png = sb.arg("pk.png");
    let v2 = buy(&sb, "pk-after", Some(&png));
    assert_eq!(v2.len(), meter_pki::indicium::LEN_MAC);
    assert_eq!(v2[2], 2);
    let scan = sb.run("dmtxread", &["-N1", &png]);
    assert!(scan.status.success(), "{scan:?}");
    assert_eq!(scan.stdout, v2, "dmtxread output differs from the indicium");
    let scanned = write(&sb, "pk-scanned.bin", &scan.stdout);

    // The MAC with stock openssl: HMAC-SHA-256 of bytes 0..125, first 16 bytes.
    let mac = openssl_mac(&sb, &key_hex, "pk-body.bin", &v2[..125]);
    assert_eq!(&mac[..32], hex::encode(&v2[221..]));
    // And with the authority.
    let o = sb.authority(&["verify-indicium", "--postal-key", &scanned]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("postal MAC valid"));
    // The ECDSA signature still verifies with the meter certificate.
    let cert = sb.arg("certs/meter.pem");
    let v = sb.meterctl_json(&["verify-indicium", &scanned, "--cert", &cert]);
    assert_eq!(v["valid"], true);

    // A flipped body byte fails the MAC, with openssl and with the authority.
    let mut flipped = v2.clone();
    flipped[40] ^= 0x01; // the ascending register
    let fmac = openssl_mac(&sb, &key_hex, "pk-fbody.bin", &flipped[..125]);
    assert_ne!(&fmac[..32], hex::encode(&flipped[221..]));
    let fpath = write(&sb, "pk-flipped.bin", &flipped);
    let o = sb.run(
        &sandbox::bin_dir().join("meter-authority").to_string_lossy(),
        &["verify-indicium", "--postal-key", &fpath],
    );
    assert!(!o.status.success(), "flipped indicium accepted: {o:?}");

    // The key is in no file of the state directory (blobs, ledger, WAL, auth secret...).
    let state = Path::new(&sb.env["METERD_STATE_DIR"]);
    let mut all = Vec::new();
    files(state, &mut all);
    assert!(
        all.iter()
            .any(|p| p.to_string_lossy().ends_with("postal.priv")),
        "no postal key blob in {all:?}"
    );
    assert!(
        all.iter().any(|p| p.to_string_lossy().ends_with("-wal")),
        "no WAL to search in {all:?}"
    );
    let hex_upper = key_hex.to_ascii_uppercase();
    for p in &all {
        let bytes = std::fs::read(p).unwrap();
        for needle in [&key[..], key_hex.as_bytes(), hex_upper.as_bytes()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "the postal key is readable in {}",
                p.display()
            );
        }
    }

    // The audit re-verifies the recorded delivery and finds the ledger sound.
    let a = sb.meterctl_json(&["audit"]);
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(sb.status()["state"], "ready");
}
