//! End-to-end tests of the `meter-authority` binary, checked with the `openssl` binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support;

use meter_pki::payload::{self, AnchorUpdate, ClearLockOrder, RateTable, Voucher};
use meter_pki::tsp::{self, TokenParams};
use meter_pki::{cert, cms, csr, oid, pem, sig};
use p384::ecdsa::SigningKey;
use sha2::{Digest, Sha384};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{authority, ok, BIN};

fn openssl(args: &[&str]) -> (bool, String) {
    let o = Command::new("openssl").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `certify-meter --unattested` of the identity and postmark CSR files into
/// `out_dir`, by the authority in `dir`.
fn certify_unattested(
    dir: &Path,
    identity: &Path,
    postmark: &Path,
    out_dir: &Path,
) -> std::process::Output {
    authority(
        dir,
        &[
            "certify-meter",
            "--unattested",
            "--identity-csr",
            s(identity),
            "--postmark-csr",
            s(postmark),
            "--out-dir",
            s(out_dir),
        ],
    )
}

fn now() -> i64 {
    meter_authority::now()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    work: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("authority");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    ok(&authority(&dir, &["init", "--name", "Test Root"]));
    Fixture {
        _tmp: tmp,
        dir,
        work,
    }
}

fn make_csr(cn: &str, key: &SigningKey) -> Vec<u8> {
    let sec1 = key.verifying_key().to_encoded_point(false);
    let p = csr::prepare(cn, sec1.as_bytes()).unwrap();
    let raw = sig::sign_prehash_raw(key, &p.digest()).unwrap();
    pem::encode("CERTIFICATE REQUEST", &p.finish(&raw).unwrap()).into_bytes()
}

fn anchors(f: &Fixture) -> Vec<cert::Certificate> {
    vec![cert::parse(&std::fs::read(f.dir.join("root.pem")).unwrap()).unwrap()]
}

fn cms_verify_openssl(f: &Fixture, file: &Path) -> String {
    let out = f.work.join("content.out");
    let (good, text) = openssl(&[
        "cms",
        "-verify",
        "-inform",
        "PEM",
        "-in",
        s(file),
        "-CAfile",
        s(&f.dir.join("root.pem")),
        "-purpose",
        "any",
        "-out",
        s(&out),
    ]);
    assert!(good, "openssl cms -verify: {text}");
    std::fs::read_to_string(out).unwrap()
}

#[test]
fn init_is_private_and_not_repeatable() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture();
    let mode = std::fs::metadata(f.dir.join("root.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = authority(&f.dir, &["init"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds an authority"));
    let (good, text) = openssl(&["x509", "-noout", "-text", "-in", s(&f.dir.join("root.pem"))]);
    assert!(
        good && text.contains("CN = Test Root") && text.contains("CA:TRUE"),
        "{text}"
    );
    // No directory at all: a clear error, not a default.
    let o = Command::new(BIN)
        .env_remove("METER_AUTHORITY_DIR")
        .arg("init")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("METER_AUTHORITY_DIR"));
}

#[test]
fn certify_meter_then_postmark_verifies() {
    let f = fixture();
    let id_key = SigningKey::random(&mut rand_core::OsRng);
    let pm_key = SigningKey::random(&mut rand_core::OsRng);
    let id_csr = f.work.join("id.csr");
    let pm_csr = f.work.join("pm.csr");
    std::fs::write(&id_csr, make_csr("meter-0042", &id_key)).unwrap();
    std::fs::write(&pm_csr, make_csr("meter-0042", &pm_key)).unwrap();
    let out_dir = f.work.join("certs");
    let stdout = ok(&certify_unattested(&f.dir, &id_csr, &pm_csr, &out_dir));
    assert_eq!(stdout.trim(), "meter-0042");
    // Without --unattested, requests with no TPM evidence are refused.
    let o = authority(
        &f.dir,
        &[
            "certify-meter",
            "--identity-csr",
            s(&id_csr),
            "--postmark-csr",
            s(&pm_csr),
            "--out-dir",
            s(&f.work.join("refused")),
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--unattested"));
    assert!(!f.work.join("refused").exists());
    let meter = out_dir.join("meter.pem");
    let postmark = out_dir.join("postmark.pem");
    let (good, text) = openssl(&[
        "verify",
        "-CAfile",
        s(&f.dir.join("root.pem")),
        s(&meter),
        s(&postmark),
    ]);
    assert!(good, "{text}");
    let (good, text) = openssl(&["x509", "-noout", "-text", "-in", s(&postmark)]);
    assert!(good, "{text}");
    assert!(
        text.contains("X509v3 Extended Key Usage: critical\n                Time Stamping\n"),
        "{text}"
    );
    assert!(text.contains("CN = meter-0042"), "{text}");
    let (_, text) = openssl(&["x509", "-noout", "-text", "-in", s(&meter)]);
    assert!(
        !text.contains("Time Stamping") && text.contains("Digital Signature"),
        "{text}"
    );
    // Serials are distinct and recorded.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["issued"].as_array().unwrap().len(), 2);
    assert_eq!(state["next_serial"], 4);

    // A postmark made with the certified key verifies with `verify-token` and openssl.
    let pm_cert = cert::parse(&std::fs::read(&postmark).unwrap()).unwrap();
    let msg = f.work.join("mail.eml");
    std::fs::write(&msg, b"Subject: hi\n\nbody\n").unwrap();
    let prepared = tsp::prepare(
        &TokenParams {
            imprint: Sha384::digest(b"Subject: hi\n\nbody\n").into(),
            serial: 1,
            gen_time: now(),
            policy: oid::POSTMARK_POLICY,
            accuracy_secs: 1,
            nonce: None,
        },
        &pm_cert,
        &[],
    )
    .unwrap();
    let raw = sig::sign_prehash_raw(&pm_key, &prepared.digest()).unwrap();
    let token = f.work.join("token.tsr");
    std::fs::write(&token, prepared.finish(&raw).unwrap()).unwrap();
    let out = ok(&authority(
        &f.dir,
        &["verify-token", "--token", s(&token), "--data", s(&msg)],
    ));
    assert!(out.contains("meter: meter-0042"), "{out}");
    let (good, text) = openssl(&[
        "ts",
        "-verify",
        "-data",
        s(&msg),
        "-in",
        s(&token),
        "-token_in",
        "-CAfile",
        s(&f.dir.join("root.pem")),
    ]);
    assert!(good, "{text}");
    std::fs::write(&msg, b"Subject: hi\n\nbodY\n").unwrap();
    let o = authority(
        &f.dir,
        &["verify-token", "--token", s(&token), "--data", s(&msg)],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("step digest"));
}

#[test]
fn certify_meter_refuses_mismatched_or_bad_requests() {
    let f = fixture();
    let k1 = SigningKey::random(&mut rand_core::OsRng);
    let k2 = SigningKey::random(&mut rand_core::OsRng);
    let out_dir = f.work.join("certs");
    let cases: [(&str, &str, &SigningKey, &SigningKey); 3] = [
        ("meter-1", "meter-2", &k1, &k2),
        ("bad id!", "bad id!", &k1, &k2),
        ("meter-1", "meter-1", &k1, &k1),
    ];
    for (a, b, ka, kb) in cases {
        std::fs::write(f.work.join("a.csr"), make_csr(a, ka)).unwrap();
        std::fs::write(f.work.join("b.csr"), make_csr(b, kb)).unwrap();
        let o = certify_unattested(
            &f.dir,
            &f.work.join("a.csr"),
            &f.work.join("b.csr"),
            &out_dir,
        );
        assert!(!o.status.success(), "{a} {b} accepted");
        assert!(!out_dir.join("meter.pem").exists());
    }
    // A tampered CSR (CN edited after signing) is refused.
    let mut der = pem::decode_any(&make_csr("meter-7", &k1), "CERTIFICATE REQUEST").unwrap();
    let pos = der.windows(7).position(|w| w == b"meter-7").unwrap();
    der[pos + 6] = b'8';
    std::fs::write(f.work.join("t.csr"), &der).unwrap();
    std::fs::write(f.work.join("b.csr"), make_csr("meter-8", &k2)).unwrap();
    let o = certify_unattested(
        &f.dir,
        &f.work.join("t.csr"),
        &f.work.join("b.csr"),
        &out_dir,
    );
    assert!(!o.status.success());
}

#[test]
fn rates_voucher_and_order_open_with_openssl() {
    let f = fixture();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("rates.example.toml");
    let table = f.work.join("table.pem");
    ok(&authority(
        &f.dir,
        &["rates", "--in", s(&example), "--out", s(&table)],
    ));
    let json = cms_verify_openssl(&f, &table);
    let t: RateTable = payload::decode(json.as_bytes()).unwrap();
    assert_eq!(t.version, 1);
    assert_eq!(t.effective, 1_767_225_600);
    assert_eq!(t.rates["postmark"], 500);
    let (t2, v) =
        payload::open::<RateTable>(&std::fs::read(&table).unwrap(), &anchors(&f), now()).unwrap();
    assert_eq!(t2, t);
    assert_eq!(v.content_type, oid::CT_RATES);

    // Unknown service refused, no output written.
    let bad = f.work.join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&example)
            .unwrap()
            .replace("validate =", "validat ="),
    )
    .unwrap();
    let o = authority(
        &f.dir,
        &[
            "rates",
            "--in",
            s(&bad),
            "--out",
            s(&f.work.join("bad.pem")),
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown service"));
    assert!(!f.work.join("bad.pem").exists());

    // Vouchers: sequences 1, 2 for one meter, 1 for another.
    let mut seqs = Vec::new();
    for (i, m) in ["meter-a", "meter-a", "meter-b"].iter().enumerate() {
        let out = f.work.join(format!("v{i}.pem"));
        ok(&authority(
            &f.dir,
            &[
                "voucher",
                "--meter",
                m,
                "--amount",
                "25000",
                "--out",
                s(&out),
            ],
        ));
        let v: Voucher = payload::decode(cms_verify_openssl(&f, &out).as_bytes()).unwrap();
        assert_eq!(v.meter_id, *m);
        assert_eq!(v.amount, 25000);
        let (again, _) =
            payload::open::<Voucher>(&std::fs::read(&out).unwrap(), &anchors(&f), now()).unwrap();
        assert_eq!(again, v);
        seqs.push(v.sequence);
    }
    assert_eq!(seqs, vec![1, 2, 1]);
    // A voucher is not a rate table.
    let v0 = std::fs::read(f.work.join("v0.pem")).unwrap();
    assert!(cms::verify(&v0, &anchors(&f), Some(&oid::CT_RATES), now()).is_err());

    let order = f.work.join("order.pem");
    ok(&authority(
        &f.dir,
        &[
            "clear-lock",
            "--meter",
            "meter-a",
            "--nonce",
            "n-123",
            "--out",
            s(&order),
        ],
    ));
    let o: ClearLockOrder = payload::decode(cms_verify_openssl(&f, &order).as_bytes()).unwrap();
    assert_eq!(
        (o.meter_id.as_str(), o.nonce.as_str()),
        ("meter-a", "n-123")
    );

    let o = authority(
        &f.dir,
        &[
            "voucher",
            "--meter",
            "no spaces",
            "--amount",
            "1",
            "--out",
            s(&f.work.join("x.pem")),
        ],
    );
    assert!(!o.status.success());
}

#[test]
fn rollover_is_signed_by_the_old_root_and_switches_roots() {
    let f = fixture();
    let old = anchors(&f);
    let old_pem = std::fs::read(f.dir.join("root.pem")).unwrap();
    let msg = f.work.join("roll.pem");
    ok(&authority(
        &f.dir,
        &["rollover", "--out", s(&msg), "--name", "Test Root 2"],
    ));
    // The old root is kept; the current root is new.
    assert_eq!(std::fs::read(f.dir.join("root.1.pem")).unwrap(), old_pem);
    assert!(f.dir.join("root.1.key").exists());
    let new = anchors(&f);
    assert_ne!(new, old);
    assert_eq!(cert::subject_cn(&new[0]).as_deref(), Some("Test Root 2"));
    // The message opens under the OLD root (stock openssl too) and carries the new root.
    let (good, text) = openssl(&[
        "cms",
        "-verify",
        "-inform",
        "PEM",
        "-in",
        s(&msg),
        "-CAfile",
        s(&f.dir.join("root.1.pem")),
        "-purpose",
        "any",
        "-out",
        "/dev/null",
    ]);
    assert!(good, "openssl cms -verify under the old root: {text}");
    let (u, _) = payload::open::<AnchorUpdate>(&std::fs::read(&msg).unwrap(), &old, now()).unwrap();
    assert_eq!(u.mode, "replace");
    assert_eq!(u.meter_id, None);
    assert_eq!(u.new_anchor_der().unwrap(), cert::to_der(&new[0]).unwrap());
    assert!(payload::open::<AnchorUpdate>(&std::fs::read(&msg).unwrap(), &new, now()).is_err());
    // Later vouchers are signed by the new root only.
    let v = f.work.join("v.pem");
    ok(&authority(
        &f.dir,
        &[
            "voucher",
            "--meter",
            "MTR-1",
            "--amount",
            "5",
            "--out",
            s(&v),
        ],
    ));
    let vb = std::fs::read(&v).unwrap();
    assert!(payload::open::<Voucher>(&vb, &new, now()).is_ok());
    assert!(payload::open::<Voucher>(&vb, &old, now()).is_err());
    // A second rollover (add mode, one meter) keeps the second root as root.2.
    let msg2 = f.work.join("roll2.pem");
    ok(&authority(
        &f.dir,
        &[
            "rollover",
            "--out",
            s(&msg2),
            "--mode",
            "add",
            "--meter",
            "MTR-1",
        ],
    ));
    assert!(f.dir.join("root.2.pem").exists());
    let (u2, _) =
        payload::open::<AnchorUpdate>(&std::fs::read(&msg2).unwrap(), &new, now()).unwrap();
    assert_eq!(
        (u2.mode.as_str(), u2.meter_id.as_deref()),
        ("add", Some("MTR-1"))
    );
    assert!(
        !authority(&f.dir, &["rollover", "--out", s(&msg2), "--mode", "swap"])
            .status
            .success()
    );
}
