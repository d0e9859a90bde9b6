//! End to end on swtpm: revocation of user certificates (Fig. 6) — request,
//! authority order, apply, confirmation of payment or of payment due, forced
//! revocation, the CRL checked by `openssl verify -crl_check`, a revoked key
//! that can no longer sign, settlement by the next recharge — with every step
//! checked for AR + DR = CT and its one ledger row (or none, when refused),
//! and the TPM's transient slots back at their baseline at the end. The
//! first certificate is requested through `busctl` with an `a{sv}` subject,
//! as mail software would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use std::process::{Command, Output};

use meter_proto::exit;
use sandbox::{ok, write, Sandbox};

fn authority_raw(sb: &Sandbox, args: &[&str]) -> Output {
    sb.run(
        &sandbox::bin_dir().join("meter-authority").to_string_lossy(),
        args,
    )
}

/// Request (meterctl), certify; returns (certificate file, serial).
fn certified(sb: &Sandbox, cn: &str) -> (String, String) {
    let req = sb.request_cert(cn, &["--request-id", &format!("req-{cn}")]);
    sb.certify(cn, &req)
}

/// Transient objects loaded in the TPM, read with tpm2_getcap (meterd must be stopped:
/// swtpm serves one connection).
fn transient_objects(sb: &Sandbox) -> usize {
    let out = Command::new("tpm2_getcap")
        .arg("handles-transient")
        .env("TPM2TOOLS_TCTI", &sb.env["METERD_TCTI"])
        .env("TSS2_LOG", "all+NONE")
        .output()
        .expect("tpm2_getcap");
    assert!(out.status.success(), "tpm2_getcap: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("- 0x"))
        .count()
}

fn crl_verify(sb: &Sandbox, crl: &str, cert: &str) -> Output {
    let root = sb.root_pem().to_string_lossy().into_owned();
    sb.run(
        "openssl",
        &[
            "verify",
            "-crl_check",
            "-CRLfile",
            crl,
            "-CAfile",
            &root,
            cert,
        ],
    )
}

/// `openssl cms -verify` of a PEM confirmation; returns its JSON content.
fn open_confirmation(sb: &Sandbox, file: &str) -> serde_json::Value {
    let root = sb.root_pem().to_string_lossy().into_owned();
    let content = format!("{file}.json");
    ok(
        &sb.run(
            "openssl",
            &[
                "cms", "-verify", "-inform", "PEM", "-in", file, "-CAfile", &root, "-purpose",
                "any", "-out", &content,
            ],
        ),
        "openssl cms -verify confirmation",
    );
    serde_json::from_slice(&std::fs::read(&content).unwrap()).expect("confirmation JSON")
}

fn cert_state(sb: &Sandbox, serial: &str) -> (String, String) {
    let list = sb.meterctl_json(&["certs"])["certificates"].clone();
    let c = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["serial"] == serial)
        .unwrap_or_else(|| panic!("no certificate {serial} in {list}"))
        .clone();
    (
        c["state"].as_str().unwrap().to_owned(),
        c["key"].as_str().unwrap().to_owned(),
    )
}

fn key_blob_exists(sb: &Sandbox, key: &str) -> bool {
    let dir = std::path::PathBuf::from(&sb.env["METERD_STATE_DIR"]).join("keys");
    dir.join(format!("{key}.priv")).exists() || dir.join(format!("{key}.pub")).exists()
}

#[test]
fn revoke_paid_due_forced_crl_and_settlement() {
    let install = 5_000;
    let fee = 1_000;
    // Three installs and one paid revocation, then 600 left: less than a fee.
    let sb = Sandbox::up(3 * install + fee + 600);
    let rates = sb.status()["rates"].clone();
    assert_eq!(rates["certificate-install"].as_u64(), Some(install));
    assert_eq!(rates["revoke"].as_u64(), Some(fee));
    let meter_id = sb.meter_id();

    // Baseline of the TPM's transient slots, meterd stopped gracefully.
    sb.script("stop-meterd");
    let baseline = transient_objects(&sb);
    sb.script("start-meterd");

    // Alice's request through busctl, with the a{sv} subject mail software sends.
    let out = sb.authority(&["enrol", "--subject", "CN=Alice"]);
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let address = format!("--address={}", sb.env["DBUS_SYSTEM_BUS_ADDRESS"]);
    let out = ok(
        &sb.run(
            "busctl",
            &[
                &address,
                "--json=short",
                "call",
                "org.meterd.Meter1",
                "/org/meterd/Meter1",
                "org.meterd.Meter1",
                "RequestCertificate",
                "a{sv}s",
                "2",
                "cn",
                "s",
                "Alice",
                "enrolment_code",
                "s",
                &code,
                "busctl-req-1",
            ],
        ),
        "busctl RequestCertificate",
    );
    let reply: serde_json::Value = serde_json::from_str(&out).expect("busctl JSON");
    let bytes: Vec<u8> = reply["data"][0]
        .as_array()
        .expect("ay")
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect();
    let alice_req = write(&sb, "alice.req", &bytes);
    let (alice, alice_serial) = sb.certify("Alice", &alice_req);
    let (bob, bob_serial) = certified(&sb, "Bob");
    let (carol, carol_serial) = certified(&sb, "Carol");
    // Dave is certified but never installed here: his serial makes a wrong-meter order.
    let (_, dave_serial) = certified(&sb, "Dave");
    for c in [&alice, &bob, &carol] {
        sb.meterctl_json(&["cert", "install", c]);
    }
    let (alice_state, alice_key) = cert_state(&sb, &alice_serial);
    assert_eq!(alice_state, "active");
    assert!(key_blob_exists(&sb, &alice_key));

    // 1. Request: signed, one Event row, nothing charged; a retry returns the same bytes.
    let s0 = sb.snapshot();
    assert_eq!(s0.1, fee + 600);
    let req = sb.arg("revoke-alice.pem");
    let r = sb.meterctl_json(&[
        "cert",
        "revoke",
        &alice_serial,
        "--reason",
        "keyCompromise",
        "-o",
        &req,
        "--request-id",
        "rv-alice",
    ]);
    assert_eq!(r["request_id"], "rv-alice");
    let s1 = sb.snapshot();
    assert_eq!((s1.0, s1.1, s1.2, s1.3), (s0.0, s0.1, s0.2, s0.3 + 1));
    let again = sb.arg("revoke-alice-2.pem");
    sb.meterctl_json(&[
        "cert",
        "revoke",
        &alice_serial,
        "--reason",
        "keyCompromise",
        "-o",
        &again,
        "--request-id",
        "rv-alice",
    ]);
    assert_eq!(std::fs::read(&req).unwrap(), std::fs::read(&again).unwrap());
    assert_eq!(sb.snapshot(), s1, "a retry writes nothing");

    // Refusals: unknown serial, bad reason, garbage order — nothing changed.
    let out = sb.meterctl(&["cert", "revoke", "7fffffff", "--reason", "superseded"]);
    assert_eq!(out.status.code(), Some(exit::INVALID), "{out:?}");
    let out = sb.meterctl(&["cert", "revoke", &alice_serial, "--reason", "bored"]);
    assert!(!out.status.success());
    let junk = write(
        &sb,
        "junk.pem",
        b"-----BEGIN CMS-----\nAAAA\n-----END CMS-----\n",
    );
    let out = sb.meterctl(&["cert", "apply-revoke", &junk]);
    assert_eq!(out.status.code(), Some(exit::INVALID), "{out:?}");
    assert_eq!(sb.snapshot(), s1);

    // 2. The authority answers with an order; a tampered copy is refused.
    let order = sb.arg("order-alice.pem");
    sb.authority(&["revoke", &req, "--out", &order]);
    let der = sb.arg("order-alice.der");
    ok(
        &sb.run(
            "openssl",
            &[
                "cms", "-cmsout", "-in", &order, "-inform", "PEM", "-outform", "DER", "-out", &der,
            ],
        ),
        "openssl cms -cmsout",
    );
    let mut forged = std::fs::read(&der).unwrap();
    let at = forged.len() - 10;
    forged[at] ^= 0x01;
    let forged = write(&sb, "forged.der", &forged);
    let out = sb.meterctl(&["cert", "apply-revoke", &forged]);
    assert!(
        matches!(out.status.code(), Some(exit::REFUSED) | Some(exit::INVALID)),
        "{out:?}"
    );
    // An order for another meter (signed by the right root).
    let other = sb.arg("order-other.pem");
    sb.authority(&[
        "revoke",
        "--forced",
        "--meter",
        "MTR-OTHER-1",
        "--serial",
        &dave_serial,
        "--out",
        &other,
    ]);
    let out = sb.meterctl(&["cert", "apply-revoke", &other]);
    assert_eq!(out.status.code(), Some(exit::INVALID), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("MTR-OTHER-1"),
        "{out:?}"
    );
    assert_eq!(sb.snapshot(), s1, "refused orders change nothing");

    // Keep a copy of Alice's key blobs, to play a crash between the row and the deletion.
    let keys = std::path::PathBuf::from(&sb.env["METERD_STATE_DIR"]).join("keys");
    let saved: Vec<(std::path::PathBuf, Vec<u8>)> = ["pub", "priv"]
        .iter()
        .map(|ext| {
            let f = keys.join(format!("{alice_key}.{ext}"));
            let b = std::fs::read(&f).unwrap();
            (f, b)
        })
        .collect();

    // 3. Apply: revoked, key destroyed, fee paid, one Debit row; confirmation opens with openssl.
    let conf = sb.arg("conf-alice.pem");
    let a = sb.meterctl_json(&["cert", "apply-revoke", &order, "-o", &conf]);
    assert_eq!(a["payment"], "paid", "{a}");
    // The confirmation's serial in the one form the authority printed.
    assert_eq!(a["serial"], alice_serial.as_str(), "{a}");
    let s2 = sb.snapshot();
    assert_eq!(
        (s2.0, s2.1, s2.2, s2.3),
        (s1.0 + fee, s1.1 - fee, s1.2, s1.3 + 1)
    );
    let c = open_confirmation(&sb, &conf);
    assert_eq!(c["meter_id"], meter_id.as_str());
    assert_eq!(c["payment"], "paid");
    assert_eq!(c["fee"].as_u64(), Some(fee));
    assert_eq!(c["reason"], "keyCompromise");
    assert_eq!(cert_state(&sb, &alice_serial).0, "revoked");
    assert!(
        !key_blob_exists(&sb, &alice_key),
        "the key blob is destroyed"
    );

    // Crash order: the row is durable before the blob goes; leftovers of a
    // revoked certificate are destroyed at start.
    for (f, b) in &saved {
        std::fs::write(f, b).unwrap();
    }
    assert!(key_blob_exists(&sb, &alice_key));
    sb.script("restart-meterd");
    assert!(
        !key_blob_exists(&sb, &alice_key),
        "leftover blob destroyed at start"
    );
    assert_eq!(
        cert_state(&sb, &alice_serial).0,
        "revoked",
        "revocation rebuilt from the ledger"
    );
    // Registers unmoved; the start after the crash adds its epoch row only.
    let s2 = (s2.0, s2.1, s2.2, s2.3 + 1);
    assert_eq!(sb.snapshot(), s2);

    // Replay and double revocation: named errors, nothing charged.
    let out = sb.meterctl(&["cert", "apply-revoke", &order]);
    assert_eq!(out.status.code(), Some(exit::REFUSED), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Replay"),
        "{out:?}"
    );
    let out = sb.meterctl(&["cert", "revoke", &alice_serial, "--reason", "superseded"]);
    assert_eq!(out.status.code(), Some(exit::INVALID), "{out:?}");
    let out = authority_raw(
        &sb,
        &[
            "revoke",
            "--forced",
            "--meter",
            &meter_id,
            "--serial",
            &alice_serial,
            "--out",
            &sb.arg("twice.pem"),
        ],
    );
    assert!(
        !out.status.success(),
        "the authority orders a serial revoked once"
    );
    // A second valid order for Alice (an authority that lost its record): the
    // meter refuses a double revocation itself.
    let record = sb.authority_dir().join("revocations.json");
    let kept = std::fs::read(&record).unwrap();
    std::fs::remove_file(&record).unwrap();
    let second = sb.arg("order-alice-2.pem");
    sb.authority(&[
        "revoke",
        "--forced",
        "--meter",
        &meter_id,
        "--serial",
        &alice_serial,
        "--out",
        &second,
    ]);
    std::fs::write(&record, kept).unwrap();
    let out = sb.meterctl(&["cert", "apply-revoke", &second]);
    assert_eq!(out.status.code(), Some(exit::INVALID), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already revoked"),
        "{out:?}"
    );
    // A revoked certificate can no longer sign.
    let msg = write(&sb, "msg.txt", b"signed by a revoked key?\n");
    let out = sb.meterctl(&[
        "sign",
        "--cert",
        &alice_serial,
        &msg,
        "-o",
        &sb.arg("x.p7s"),
    ]);
    assert_eq!(out.status.code(), Some(exit::INVALID), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("revoked"),
        "{out:?}"
    );
    assert_eq!(sb.snapshot(), s2);

    // 4. Forced revocation of Bob with funds short: revoked anyway, payment due.
    let forced = sb.arg("order-bob.pem");
    sb.authority(&[
        "revoke",
        "--forced",
        "--meter",
        &meter_id,
        "--serial",
        &bob_serial,
        "--reason",
        "affiliationChanged",
        "--out",
        &forced,
    ]);
    let conf_bob = sb.arg("conf-bob.pem");
    let out = sb.meterctl(&["--json", "cert", "apply-revoke", &forced, "-o", &conf_bob]);
    assert!(out.status.success(), "{out:?}");
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["payment"], "payment-due", "{b}");
    assert_eq!(b["forced"], true);
    let s3 = sb.snapshot();
    assert_eq!(
        (s3.0, s3.1, s3.2, s3.3),
        (s2.0, s2.1, s2.2, s2.3 + 2),
        "due: nothing debited, the revoke row and the forced lock row"
    );
    // A forced revocation locks the meter (SPEC, Locks) until the authority clears it.
    let st = sb.status();
    assert_eq!(st["state"], "locked", "{st}");
    assert_eq!(st["lock_reason"], "forced", "{st}");
    let (_, _, out) = sb.postmark_id("pm-forced-locked");
    assert_eq!(out.status.code(), Some(exit::LOCKED), "{out:?}");
    assert_eq!(sb.snapshot(), s3);
    let order = sb.clear_lock_order();
    assert!(sb.meterctl(&["clear-lock", &order]).status.success());
    let s3 = sb.snapshot();
    assert_eq!(s3.3, s2.3 + 3, "plus the unlock row");
    assert_eq!((s3.0, s3.1, s3.2), (s2.0, s2.1, s2.2));
    let c = open_confirmation(&sb, &conf_bob);
    assert_eq!(c["payment"], "payment-due");
    assert_eq!(c["amount_due"].as_u64(), Some(fee));
    assert_eq!(cert_state(&sb, &bob_serial).0, "revoked");
    assert_eq!(sb.status()["payment_due"].as_u64(), Some(fee));

    // A sale must not consume funds owed: 600 left, a 500 postmark is refused.
    assert!(s3.1 >= rates["postmark"].as_u64().unwrap());
    let (_, _, out) = sb.postmark_id("pm-owed");
    assert_eq!(out.status.code(), Some(exit::FUNDS), "{out:?}");
    assert_eq!(sb.snapshot(), s3);

    // The debt survives a crash of the daemon (rebuilt from the ledger).
    sb.script("restart-meterd");
    assert_eq!(sb.status()["payment_due"].as_u64(), Some(fee));
    let s3 = (s3.0, s3.1, s3.2, s3.3 + 1); // the start's epoch row
    assert_eq!(sb.snapshot(), s3);

    // 5. The next recharge settles the debt first: DR = DR before + voucher − due.
    let voucher = 5_000;
    let v = sb.arg("v.pem");
    sb.authority(&[
        "voucher",
        "--meter",
        &meter_id,
        "--amount",
        &voucher.to_string(),
        "--out",
        &v,
    ]);
    let r = sb.meterctl_json(&["recharge", &v]);
    let s4 = sb.snapshot();
    assert_eq!(r["descending"].as_u64(), Some(s4.1), "{r}");
    assert_eq!(s4.1, s3.1 + voucher - fee);
    assert_eq!(s4.0, s3.0 + fee);
    assert_eq!(s4.2, s3.2 + voucher);
    assert_eq!(s4.3, s3.3 + 2, "the credit row and the settlement row");
    assert_eq!(sb.status()["payment_due"].as_u64(), Some(0));
    // Settled once: a restart settles nothing more.
    sb.script("restart-meterd");
    let s4 = (s4.0, s4.1, s4.2, s4.3 + 1); // the start's epoch row
    assert_eq!(sb.snapshot(), s4);

    // Carol still signs, and is charged.
    sb.meterctl_json(&[
        "sign",
        "--cert",
        &carol_serial,
        &msg,
        "-o",
        &sb.arg("carol.p7s"),
        "--request-id",
        "sign-carol",
    ]);
    let s5 = sb.snapshot();
    assert_eq!(s5.0, s4.0 + rates["sign"].as_u64().unwrap());
    assert_eq!(s5.3, s4.3 + 1);

    // 6. The CRL: revoked certificates fail openssl's CRL check, others pass.
    let crl = sb.arg("crl.pem");
    sb.authority(&["crl", "--out", &crl]);
    for (cert, name) in [(&alice, "Alice"), (&bob, "Bob")] {
        let out = crl_verify(&sb, &crl, cert);
        assert!(!out.status.success(), "{name} must fail: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("certificate revoked"), "{name}: {text}");
    }
    let out = crl_verify(&sb, &crl, &carol);
    assert!(out.status.success(), "Carol passes: {out:?}");
    let text = ok(
        &sb.run("openssl", &["crl", "-in", &crl, "-noout", "-text"]),
        "openssl crl",
    );
    assert!(
        text.contains("Key Compromise") && text.contains("Affiliation Changed"),
        "{text}"
    );

    // 7. The TPM's transient slots are back at their baseline.
    sb.script("stop-meterd");
    assert_eq!(
        transient_objects(&sb),
        baseline,
        "no transient object leaked"
    );
}
