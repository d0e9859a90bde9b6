//! End to end on swtpm with an EK certificate (issue 12, item 4): attested provisioning,
//! and what an operator tries instead, done the attacker's way (openssl, tpm2-tools, a
//! text editor on the evidence): requests with no evidence, a postmark key made outside
//! the TPM, evidence naming another TPM's EK. Each is refused by the authority, or yields
//! a credential that does not activate in this TPM, so no certificate reaches the meter.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;
use crate::swtpm;

use std::process::Output;

use sandbox::{bin_dir, ok, repo, Sandbox};

fn p(sb: &Sandbox, rel: &str) -> String {
    sb.path(rel).to_string_lossy().into_owned()
}

/// `meter-authority ARGS` with the sandbox environment, whatever its outcome.
fn authority_try(sb: &Sandbox, args: &[&str]) -> Output {
    sb.run(&bin_dir().join("meter-authority").to_string_lossy(), args)
}

fn certify(
    sb: &Sandbox,
    postmark_csr: &str,
    attestation: Option<&str>,
    cas: &[&str],
    out: &str,
) -> Output {
    let id_csr = p(sb, "csr/identity.csr.pem");
    let mut args = vec![
        "certify-meter",
        "--identity-csr",
        &id_csr,
        "--postmark-csr",
        postmark_csr,
        "--out-dir",
        out,
    ];
    if let Some(a) = attestation {
        args.extend(["--attestation", a]);
    }
    for ca in cas {
        args.extend(["--ek-ca", ca]);
    }
    authority_try(sb, &args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn state(sb: &Sandbox) -> String {
    sb.status()["state"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn attested_provisioning_succeeds_and_forgeries_are_refused() {
    let sb = Sandbox::up_with(&[("SANDBOX_PROVISION", "0")]);
    std::fs::create_dir_all(sb.authority_dir()).unwrap();
    sb.authority(&["init", "--name", "Attest Authority"]);
    let reply = sb.meterctl_json(&["provision", "--out-dir", &p(&sb, "csr")]);
    let meter_id = reply["meter_id"].as_str().unwrap().to_owned();
    let evidence = p(&sb, "csr/attestation.json");
    assert_eq!(reply["attestation"].as_str(), Some(evidence.as_str()));
    let ek_ca = p(&sb, "ekca/issuercert.pem");
    let pm_csr = p(&sb, "csr/postmark.csr.pem");

    // 1. No evidence and no --unattested: refused.
    let o = certify(&sb, &pm_csr, None, &[], &p(&sb, "out1"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--unattested"), "{}", stderr(&o));

    // 2. A postmark key made outside the TPM (openssl), with the meter's real evidence.
    let soft_key = p(&sb, "soft.key");
    let soft_csr = p(&sb, "soft.csr.pem");
    ok(
        &sb.run(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-out",
                &soft_key,
            ],
        ),
        "openssl genpkey",
    );
    let subj = format!("/CN={meter_id}");
    ok(
        &sb.run(
            "openssl",
            &[
                "req", "-new", "-sha384", "-key", &soft_key, "-subj", &subj, "-out", &soft_csr,
            ],
        ),
        "openssl req",
    );
    let o = certify(&sb, &soft_csr, Some(&evidence), &[&ek_ca], &p(&sb, "out2"));
    assert!(!o.status.success(), "a software key was certified");
    assert!(stderr(&o).contains("did not certify"), "{}", stderr(&o));
    assert!(!sb.path("out2").exists());

    // 3. The evidence edited to name another genuine TPM's EK (read with tpm2-tools from
    //    a second swtpm, whose CA the authority also trusts): the authority cannot tell,
    //    but its credential is made to that EK and never activates in this meter's TPM.
    let other = swtpm::Swtpm::start_with_ek();
    let other_ek = p(&sb, "other-ek.der");
    ok(
        &sb.run(
            "tpm2_nvread",
            &[
                "-T",
                &other.tcti(),
                "-C",
                "o",
                "-o",
                &other_ek,
                "0x01c00002",
            ],
        ),
        "tpm2_nvread of the other TPM's EK certificate",
    );
    let other_ca = other.ek_ca_dir().join("issuercert.pem");
    let other_ca = other_ca.to_string_lossy().into_owned();
    let mut ev: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&evidence).unwrap()).unwrap();
    ev["ek_cert"] = hex::encode(std::fs::read(&other_ek).unwrap()).into();
    let forged = p(&sb, "forged.json");
    std::fs::write(&forged, serde_json::to_vec(&ev).unwrap()).unwrap();
    let o = certify(
        &sb,
        &pm_csr,
        Some(&forged),
        &[&ek_ca, &other_ca],
        &p(&sb, "out3"),
    );
    ok(
        &o,
        "certify-meter of the forged evidence (the authority cannot see it)",
    );
    let o = sb.meterctl(&[
        "provision",
        "--install",
        "--credential",
        &p(&sb, "out3/credential.json"),
        "--root",
        &sb.root_pem().to_string_lossy(),
    ]);
    assert!(
        !o.status.success(),
        "a credential for another TPM activated"
    );
    assert_eq!(state(&sb), "unprovisioned");

    // 4. The real thing: certificates only inside the credential; this TPM opens them.
    let o = certify(&sb, &pm_csr, Some(&evidence), &[&ek_ca], &p(&sb, "certs"));
    assert_eq!(ok(&o, "attested certify-meter").trim(), meter_id);
    assert!(sb.path("certs/credential.json").exists());
    assert!(!sb.path("certs/meter.pem").exists() && !sb.path("certs/postmark.pem").exists());
    assert!(sb
        .authority_dir()
        .join("attested")
        .join(format!("{meter_id}.json"))
        .exists());
    ok(
        &sb.meterctl(&[
            "provision",
            "--install",
            "--credential",
            &p(&sb, "certs/credential.json"),
            "--root",
            &sb.root_pem().to_string_lossy(),
        ]),
        "meterctl provision --install --credential",
    );
    assert_ne!(state(&sb), "unprovisioned");
    assert_eq!(sb.meter_id(), meter_id);

    // And the meter sells with the certificates it received sealed.
    let rates = p(&sb, "rates.pem");
    let example = repo().join("meter-authority/rates.example.toml");
    sb.authority(&["rates", "--in", &example.to_string_lossy(), "--out", &rates]);
    ok(&sb.meterctl(&["rates", "install", &rates]), "rates install");
    let voucher = p(&sb, "voucher.pem");
    sb.authority(&[
        "voucher", "--meter", &meter_id, "--amount", "100000", "--out", &voucher,
    ]);
    ok(&sb.meterctl(&["recharge", &voucher]), "recharge");
    let (msg, token, out) = sb.postmark_id("attested");
    ok(&out, "postmark");
    ok(
        &sb.ts_verify(&msg, &token, &sb.root_pem().to_string_lossy()),
        "openssl ts -verify",
    );
}
