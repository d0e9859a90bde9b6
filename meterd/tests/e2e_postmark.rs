//! End to end through D-Bus on swtpm: postmark, retries, funds, validate,
//! verified by the `openssl` binary as a relying party would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use meter_proto::exit;
use sandbox::{ok, write, Sandbox};

fn postmark(sb: &Sandbox, file: &str, token: &str, request_id: &str) -> std::process::Output {
    sb.meterctl(&["postmark", file, "-o", token, "--request-id", request_id])
}

fn openssl_ts_verify(sb: &Sandbox, data: &str, token: &str) -> std::process::Output {
    sb.ts_verify(data, token, &sb.root_pem().to_string_lossy())
}

#[test]
fn postmark_verifies_with_openssl_and_is_charged_once() {
    let sb = Sandbox::up(100_000);
    let (ar0, dr0, ct0) = sb.registers();
    let price = sb.status()["rates"]["postmark"]
        .as_u64()
        .expect("postmark rate");
    assert!(price > 0);

    let msg = write(
        &sb,
        "mail.eml",
        b"From: a@example.org\r\n\r\nHello meter\r\n",
    );
    let token = sb.path("mail.tsr").to_string_lossy().into_owned();
    ok(&postmark(&sb, &msg, &token, "req-1"), "postmark");
    let v = ok(&openssl_ts_verify(&sb, &msg, &token), "openssl ts -verify");
    assert!(v.contains("Verification: OK"), "{v}");

    let (ar1, dr1, ct1) = sb.registers();
    assert_eq!((ar1, dr1, ct1), (ar0 + price, dr0 - price, ct0));
    assert_eq!(sb.status()["service_counts"]["postmark"].as_u64(), Some(1));

    // A retry with the same request id returns the same token, charges nothing.
    let again = sb.path("again.tsr").to_string_lossy().into_owned();
    ok(&postmark(&sb, &msg, &again, "req-1"), "retry");
    assert_eq!(std::fs::read(&token).ok(), std::fs::read(&again).ok());
    assert_eq!(sb.registers(), (ar1, dr1, ct1));

    // The same id with other input is refused and changes nothing.
    let other = write(&sb, "other.eml", b"another message");
    let out = postmark(&sb, &other, &again, "req-1");
    assert_eq!(out.status.code(), Some(exit::INVALID), "{out:?}");
    assert_eq!(sb.registers(), (ar1, dr1, ct1));

    // A token does not verify against another message.
    let bad = openssl_ts_verify(&sb, &other, &token);
    assert!(!bad.status.success());

    // The token names the meter and carries the policy and a serial.
    let text = ok(
        &sb.run(
            "openssl",
            &["ts", "-reply", "-in", &token, "-token_in", "-text"],
        ),
        "openssl ts -reply -text",
    );
    assert!(text.contains(&sb.meter_id()), "{text}");
    assert!(text.contains("SHA384") || text.contains("sha384"), "{text}");
}

#[test]
fn insufficient_funds_refused_before_any_work() {
    // Funds for exactly two postmarks (rates.example.toml: postmark = 500).
    let sb = Sandbox::up(1_000);
    let price = sb.status()["rates"]["postmark"].as_u64().expect("rate");
    assert_eq!(price, 500, "test assumes the example rate table");
    let msg = write(&sb, "m.txt", b"m");
    for i in 0..2 {
        let t = sb.path(&format!("t{i}.tsr")).to_string_lossy().into_owned();
        ok(
            &postmark(&sb, &msg, &t, &format!("r{i}")),
            "postmark within funds",
        );
    }
    let before = sb.registers();
    assert_eq!(before.1, 0);
    let t = sb.path("t3.tsr").to_string_lossy().into_owned();
    let out = postmark(&sb, &msg, &t, "r3");
    assert_eq!(out.status.code(), Some(exit::FUNDS), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("InsufficientFunds"));
    assert!(
        !std::path::Path::new(&t).exists(),
        "no token may be written"
    );
    assert_eq!(sb.registers(), before);
    // A retry of an already-paid request still returns its product.
    let t0 = sb.path("t0-again.tsr").to_string_lossy().into_owned();
    ok(
        &postmark(&sb, &msg, &t0, "r0"),
        "retry of a paid request with no funds left",
    );
}

#[test]
fn busctl_postmark_digest_verifies() {
    use sha2::{Digest, Sha384};
    let sb = Sandbox::up(100_000);
    let data = b"busctl message";
    let msg = write(&sb, "b.txt", data);
    let digest = Sha384::digest(data);
    let mut args = vec![
        "--json=short".to_string(),
        "call".into(),
        "org.meterd.Meter1".into(),
        "/org/meterd/Meter1".into(),
        "org.meterd.Meter1".into(),
        "PostmarkDigest".into(),
        "ays".into(),
        "48".into(),
    ];
    args.extend(digest.iter().map(|b| b.to_string()));
    args.push("busctl-1".into());
    let address = sb.env["DBUS_SYSTEM_BUS_ADDRESS"].clone();
    let mut full = vec![format!("--address={address}")];
    full.extend(args);
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    let out = ok(&sb.run("busctl", &refs), "busctl call PostmarkDigest");
    let v: serde_json::Value = serde_json::from_str(&out).expect("busctl json");
    let bytes: Vec<u8> = v["data"][0]
        .as_array()
        .expect("ay")
        .iter()
        .map(|b| b.as_u64().unwrap_or(0) as u8)
        .collect();
    let token = write(&sb, "b.tsr", &bytes);
    let v = ok(&openssl_ts_verify(&sb, &msg, &token), "openssl ts -verify");
    assert!(v.contains("Verification: OK"));
}

#[test]
fn validate_reports_each_step() {
    let sb = Sandbox::up(100_000);
    let msg = write(&sb, "v.txt", b"validate me");
    let token = sb.path("v.tsr").to_string_lossy().into_owned();
    ok(&postmark(&sb, &msg, &token, "v-1"), "postmark");
    let before = sb.registers();
    let price = sb.status()["rates"]["validate"]
        .as_u64()
        .expect("validate rate");

    let r = sb.meterctl_json(&["validate", &msg, &token]);
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(r["step"], "ok");
    assert_eq!(r["meter_id"], sb.meter_id().as_str());
    let after = sb.registers();
    assert_eq!(after.0, before.0 + price, "validate is charged");

    // Other message: digest step.
    let other = write(&sb, "o.txt", b"not the message");
    let out = sb.meterctl(&["--json", "validate", &other, &token]);
    assert_eq!(out.status.code(), Some(exit::NOT_VALID));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["step"], "digest", "{r}");

    // Garbage token: malformed.
    let junk = write(&sb, "junk.tsr", b"\x30\x03\x02\x01\x01");
    let out = sb.meterctl(&["--json", "validate", &msg, &junk]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["step"], "malformed", "{r}");

    // Flipped byte in the signature (last bytes of the DER): signature step.
    let mut bytes = std::fs::read(&token).expect("token");
    let n = bytes.len();
    bytes[n - 3] ^= 0x01;
    let flipped = write(&sb, "flipped.tsr", &bytes);
    let out = sb.meterctl(&["--json", "validate", &msg, &flipped]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(r["step"] == "signature" || r["step"] == "malformed", "{r}");
    assert_eq!(r["valid"], false);

    // A token from another meter/authority: chain step.
    let sb2 = Sandbox::up(100_000);
    let token2 = sb2.path("x.tsr").to_string_lossy().into_owned();
    let msg2 = write(&sb2, "x.txt", b"validate me");
    ok(
        &postmark(&sb2, &msg2, &token2, "x-1"),
        "postmark on the second meter",
    );
    let out = sb.meterctl(&["--json", "validate", &msg, &token2]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["step"], "chain", "{r}");
    sb.registers();
}

#[test]
fn concurrent_postmarks_all_verify_and_balance() {
    let sb = Sandbox::up(1_000_000);
    let (_, dr0, _) = sb.registers();
    let msg = write(&sb, "c.txt", b"concurrent");
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let t = sb.path(&format!("c{i}.tsr")).to_string_lossy().into_owned();
            let mut cmd = std::process::Command::new(sandbox::bin_dir().join("meterctl"));
            cmd.envs(&sb.env).args([
                "postmark",
                &msg,
                "-o",
                &t,
                "--request-id",
                &format!("c-{i}"),
            ]);
            (t, cmd.spawn().expect("spawn meterctl"))
        })
        .collect();
    let mut tokens = Vec::new();
    for (t, mut child) in handles {
        assert!(child.wait().expect("wait").success());
        tokens.push(t);
    }
    for t in &tokens {
        let v = ok(&openssl_ts_verify(&sb, &msg, t), "verify");
        assert!(v.contains("Verification: OK"));
    }
    let (_, dr1, _) = sb.registers();
    assert_eq!(dr0 - dr1, 16 * 500);
    let audit = sb.meterctl_json(&["audit"]);
    assert_eq!(audit["ok"], true, "{audit}");
}
