//! The whole daemon on a TPM whose owner hierarchy has a password (issue
//! 13: "with an owner password set, meterd dies with create_primary failed:
//! BadAuth … check that the TPM is reachable"), the password given as
//! systemd gives a `LoadCredential=owner-auth`: a file in
//! `$CREDENTIALS_DIRECTORY`. Without the credential provisioning is refused
//! with a message naming the owner password and the credential; with it
//! meterd provisions, sells, and restarts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use std::process::Command;

use sandbox::{ok, Sandbox};

const OWNER_PW: &str = "owner-e2e-secret";

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn owner_password_from_a_credential_provisions_sells_restarts() {
    let sb = Sandbox::up_with(&[("SANDBOX_PROVISION", "0")]);
    // The TPM gets an owner password while meterd is away (swtpm serves
    // one client at a time).
    sb.script("stop-meterd");
    let out = Command::new("tpm2_changeauth")
        .args(["-c", "owner", OWNER_PW])
        .env("TPM2TOOLS_TCTI", &sb.env["METERD_TCTI"])
        .output()
        .expect("tpm2_changeauth (package tpm2-tools)");
    ok(&out, "tpm2_changeauth -c owner");
    let creds = sb.path("credentials");
    std::fs::create_dir(&creds).unwrap();
    let creds_s = creds.to_string_lossy().into_owned();
    let with_creds = [("CREDENTIALS_DIRECTORY", creds_s.as_str())];

    // No owner-auth credential: refused, and the message says what to do.
    sb.script_env("start-meterd", &with_creds);
    let csr = sb.path("csr");
    std::fs::create_dir_all(&csr).unwrap();
    let csr_s = csr.to_string_lossy().into_owned();
    let out = sb.meterctl(&["provision", "--out-dir", &csr_s]);
    let said = text(&out);
    eprintln!("refusal without the credential: {said}");
    assert!(
        !out.status.success(),
        "provisioned without the owner password: {said}"
    );
    assert!(
        said.contains("owner") && said.contains("owner-auth") && said.contains("password"),
        "the refusal must name the owner password and the credential: {said}"
    );
    assert!(
        !said.contains("reachable"),
        "not a reachability problem: {said}"
    );

    // The credential as `echo pw > /etc/credstore/owner-auth` leaves it.
    std::fs::write(creds.join("owner-auth"), format!("{OWNER_PW}\n")).unwrap();
    sb.script("stop-meterd");
    sb.script_env("start-meterd", &with_creds);
    ok(
        &sb.meterctl(&["provision", "--out-dir", &csr_s]),
        "provision",
    );
    let a = sb.authority_dir().to_string_lossy().into_owned();
    let certs = sb.path("certs").to_string_lossy().into_owned();
    sb.authority(&["--dir", &a, "init", "--name", "Owner-auth Authority"]);
    sb.authority(&[
        "--dir",
        &a,
        "certify-meter",
        // Attestation is e2e_attest's subject; this test is about the owner password.
        "--unattested",
        "--identity-csr",
        &format!("{csr_s}/identity.csr.pem"),
        "--postmark-csr",
        &format!("{csr_s}/postmark.csr.pem"),
        "--out-dir",
        &certs,
    ]);
    ok(
        &sb.meterctl(&[
            "provision",
            "--install",
            "--meter-cert",
            &format!("{certs}/meter.pem"),
            "--postmark-cert",
            &format!("{certs}/postmark.pem"),
            "--root",
            &format!("{a}/root.pem"),
        ]),
        "provision --install",
    );
    let rates = sb.path("rates.pem").to_string_lossy().into_owned();
    let example = sandbox::repo().join("meter-authority/rates.example.toml");
    sb.authority(&[
        "--dir",
        &a,
        "rates",
        "--in",
        &example.to_string_lossy(),
        "--out",
        &rates,
    ]);
    ok(&sb.meterctl(&["rates", "install", &rates]), "rates install");
    let meter_id = sb.meter_id();
    let voucher = sb.path("voucher.pem").to_string_lossy().into_owned();
    sb.authority(&[
        "--dir", &a, "voucher", "--meter", &meter_id, "--amount", "100000", "--out", &voucher,
    ]);
    ok(&sb.meterctl(&["recharge", &voucher]), "recharge");
    let status = sb.status();
    assert_eq!(status["state"], "ready", "{status}");
    assert_eq!(status["tpm_legacy_auth"], false, "{status}");
    let (_, _, out) = sb.postmark_id("owner-1");
    ok(&out, "postmark");

    // A restart (kill -9) on the same TPM and credentials: still selling.
    sb.script_env("restart-meterd", &with_creds);
    assert_eq!(sb.status()["state"], "ready");
    let (_, _, out) = sb.postmark_id("owner-2");
    ok(&out, "postmark after restart");
    // The object secret is where SECURITY.md says: keys/auth, 0600.
    let secret = std::path::PathBuf::from(&sb.env["METERD_STATE_DIR"]).join("keys/auth");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&secret).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(std::fs::read(&secret).unwrap().len(), 32);
}
