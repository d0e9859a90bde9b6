//! End to end on swtpm: user certificates (Fig. 5) — enrol, request, certify,
//! install, sign, validate — with `openssl cms` as the relying party, and
//! every refusal checked to charge and change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use std::process::Output;

use meter_proto::exit;
use sandbox::{ok, write, Sandbox};

fn enrol(sb: &Sandbox, cn: &str) -> String {
    let out = sb.authority(&["enrol", "--subject", &format!("CN={cn}")]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn authority_raw(sb: &Sandbox, args: &[&str]) -> Output {
    sb.run(
        &sandbox::bin_dir().join("meter-authority").to_string_lossy(),
        args,
    )
}

fn code_of(out: &Output) -> Option<i32> {
    out.status.code()
}

/// `meterctl cert request` → request file; asserts success.
fn request(sb: &Sandbox, cn: &str, code: &str, id: &str) -> String {
    let req = sb.arg(&format!("{id}.der"));
    sb.meterctl_json(&[
        "cert",
        "request",
        "--subject",
        &format!("CN={cn}"),
        "--code",
        code,
        "-o",
        &req,
        "--request-id",
        id,
    ]);
    req
}

fn cms_verify(sb: &Sandbox, msg: &str, sig: &str) -> Output {
    let root = sb.root_pem().to_string_lossy().into_owned();
    sb.run(
        "openssl",
        &[
            "cms",
            "-verify",
            "-binary",
            "-content",
            msg,
            "-inform",
            "DER",
            "-in",
            sig,
            "-CAfile",
            &root,
            "-purpose",
            "any",
            "-out",
            "/dev/null",
        ],
    )
}

#[test]
fn enrol_request_certify_install_sign_validate() {
    let sb = Sandbox::up(100_000);
    let rates = sb.status()["rates"].clone();
    let install_price = rates["certificate-install"].as_u64().expect("rate");
    let sign_price = rates["sign"].as_u64().expect("rate");

    // Request: funds checked, a key made, one Event row, nothing charged.
    let code = enrol(&sb, "Alice");
    let s0 = sb.snapshot();
    let req = request(&sb, "Alice", &code, "cr-1");
    let s1 = sb.snapshot();
    assert_eq!(
        (s1.0, s1.1, s1.2),
        (s0.0, s0.1, s0.2),
        "a request is not charged"
    );
    assert_eq!(s1.3, s0.3 + 1, "one ledger row for the request");
    let list = sb.meterctl_json(&["certs"])["certificates"].clone();
    assert_eq!(list[0]["state"], "pending", "{list}");
    assert_eq!(list[0]["subject"], "Alice");

    // A retry with the same id returns the same request and writes nothing.
    let again = request(&sb, "Alice", &code, "cr-1");
    assert_eq!(std::fs::read(&req).unwrap(), std::fs::read(&again).unwrap());
    assert_eq!(sb.snapshot(), s1);

    // The request is the meter's CMS: openssl opens it with the root alone.
    let root = sb.root_pem().to_string_lossy().into_owned();
    let content = sb.arg("req.json");
    ok(
        &sb.run(
            "openssl",
            &[
                "cms", "-verify", "-inform", "DER", "-in", &req, "-CAfile", &root, "-purpose",
                "any", "-out", &content,
            ],
        ),
        "openssl cms -verify of the request",
    );
    let body: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&content).unwrap()).expect("request JSON");
    assert_eq!(body["meter_id"], sb.meter_id().as_str());
    assert_eq!(body["subject_cn"], "Alice");

    // A wrong enrolment code, or the right code for another subject, is refused.
    let bad_req = request(&sb, "Alice", "WRONG-CODE", "cr-bad");
    let cert_bad = sb.arg("bad.pem");
    let out = authority_raw(&sb, &["certify", &bad_req, "--out", &cert_bad]);
    assert!(!out.status.success(), "wrong code must be refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("enrolment code"));
    let mallory = request(&sb, "Mallory", &code, "cr-mallory");
    assert!(
        !authority_raw(&sb, &["certify", &mallory, "--out", &cert_bad])
            .status
            .success()
    );

    // Certify (consumes the code) and install: one Debit row, charged once.
    let cert = sb.arg("alice.pem");
    let serial = String::from_utf8_lossy(&sb.authority(&["certify", &req, "--out", &cert]).stdout)
        .trim()
        .to_owned();
    assert!(
        !authority_raw(&sb, &["certify", &req, "--out", &cert_bad])
            .status
            .success(),
        "an enrolment code is single use"
    );
    let text = ok(
        &sb.run("openssl", &["x509", "-in", &cert, "-noout", "-text"]),
        "openssl x509",
    );
    assert!(text.contains("2.25.252996336.2.2"), "user policy: {text}");
    let s2 = sb.snapshot();
    let installed = sb.meterctl_json(&["cert", "install", &cert]);
    assert_eq!(installed["serial"], serial.as_str());
    serials_are_shown_as_openssl_shows_them(&sb, &cert, &serial);
    let s3 = sb.snapshot();
    assert_eq!(s3.0, s2.0 + install_price);
    assert_eq!(s3.1, s2.1 - install_price);
    assert_eq!(s3.3, s2.3 + 1, "one ledger row for the install");

    // Install twice: named error, nothing changed.
    let out = sb.meterctl(&["cert", "install", &cert]);
    assert_eq!(code_of(&out), Some(exit::INVALID), "{out:?}");
    assert_eq!(sb.snapshot(), s3);

    // Sign: openssl verifies it; charged once; a retry returns the same bytes.
    let msg = write(&sb, "contract.txt", b"I, Alice, agree.\n");
    let sig = sb.arg("contract.p7s");
    sb.meterctl_json(&[
        "sign",
        "--cert",
        &serial,
        &msg,
        "-o",
        &sig,
        "--request-id",
        "sign-1",
    ]);
    let v = cms_verify(&sb, &msg, &sig);
    assert!(
        v.status.success()
            && String::from_utf8_lossy(&v.stderr).contains("Verification successful"),
        "{v:?}"
    );
    let s4 = sb.snapshot();
    assert_eq!(s4.0, s3.0 + sign_price);
    assert_eq!(s4.3, s3.3 + 1, "one ledger row for the signature");
    let sig2 = sb.arg("contract2.p7s");
    sb.meterctl_json(&[
        "sign",
        "--cert",
        &serial,
        &msg,
        "-o",
        &sig2,
        "--request-id",
        "sign-1",
    ]);
    assert_eq!(std::fs::read(&sig).unwrap(), std::fs::read(&sig2).unwrap());
    assert_eq!(sb.snapshot(), s4);

    // Tampered file: openssl and Validate both refuse it, at the digest step.
    let tampered = write(&sb, "tampered.txt", b"I, Alice, agree to pay.\n");
    assert!(!cms_verify(&sb, &tampered, &sig).status.success());
    let r = sb.meterctl_json(&["validate", &msg, &sig]);
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(r["step"], "ok");
    assert_eq!(r["signer"], "Alice");
    let out = sb.meterctl(&["--json", "validate", &tampered, &sig]);
    assert_eq!(code_of(&out), Some(exit::NOT_VALID));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["step"], "digest", "{r}");

    // Unknown serial: named error, nothing charged.
    let s5 = sb.snapshot();
    let out = sb.meterctl(&["sign", "--cert", "abcdef", &msg, "-o", &sig2]);
    assert_eq!(code_of(&out), Some(exit::INVALID), "{out:?}");
    assert_eq!(sb.snapshot(), s5);

    // A certificate from another root for the meter's pending key: refused.
    let csr_der = hex::decode(body_of(&sb, &mallory)["csr_hex"].as_str().unwrap()).unwrap();
    let csr = write(&sb, "mallory.csr", &csr_der);
    let (ok_key, other) = (sb.arg("other.key"), sb.arg("other.pem"));
    ok(
        &sb.run(
            "openssl",
            &[
                "ecparam",
                "-name",
                "secp384r1",
                "-genkey",
                "-noout",
                "-out",
                &ok_key,
            ],
        ),
        "ecparam",
    );
    ok(
        &sb.run(
            "openssl",
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &ok_key,
                "-subj",
                "/CN=Other Root",
                "-days",
                "10",
                "-sha384",
                "-out",
                &other,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ],
        ),
        "other root",
    );
    let foreign = sb.arg("foreign.pem");
    ok(
        &sb.run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-inform",
                "DER",
                "-CA",
                &other,
                "-CAkey",
                &ok_key,
                "-sha384",
                "-days",
                "5",
                "-set_serial",
                "77",
                "-out",
                &foreign,
            ],
        ),
        "foreign certificate",
    );
    let out = sb.meterctl(&["cert", "install", &foreign]);
    assert_eq!(code_of(&out), Some(exit::REFUSED), "{out:?}");
    // A certificate from the right root for a key the meter does not hold.
    let (stray_key, stray_csr, stray) = (
        sb.arg("stray.key"),
        sb.arg("stray.csr"),
        sb.arg("stray.pem"),
    );
    ok(
        &sb.run(
            "openssl",
            &[
                "ecparam",
                "-name",
                "secp384r1",
                "-genkey",
                "-noout",
                "-out",
                &stray_key,
            ],
        ),
        "ecparam",
    );
    ok(
        &sb.run(
            "openssl",
            &[
                "req",
                "-new",
                "-key",
                &stray_key,
                "-subj",
                "/CN=Alice",
                "-out",
                &stray_csr,
            ],
        ),
        "stray csr",
    );
    let root_key = sb
        .authority_dir()
        .join("root.key")
        .to_string_lossy()
        .into_owned();
    ok(
        &sb.run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &stray_csr,
                "-CA",
                &root,
                "-CAkey",
                &root_key,
                "-sha384",
                "-days",
                "5",
                "-set_serial",
                "78",
                "-out",
                &stray,
            ],
        ),
        "stray certificate",
    );
    let out = sb.meterctl(&["cert", "install", &stray]);
    assert_eq!(code_of(&out), Some(exit::INVALID), "{out:?}");
    let junk = write(
        &sb,
        "junk.pem",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let out = sb.meterctl(&["cert", "install", &junk]);
    assert_eq!(code_of(&out), Some(exit::INVALID), "{out:?}");
    assert_eq!(sb.snapshot(), s5, "refusals change nothing");

    // ListCertificates through busctl, as mail software would call it.
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
                "ListCertificates",
            ],
        ),
        "busctl ListCertificates",
    );
    assert!(
        out.to_lowercase()
            .contains(&format!("\"{}\"", serial.to_lowercase())),
        "{out}"
    );
    assert!(out.contains("\"active\""), "{out}");

    // After a daemon restart the store is rebuilt from the ledger, the key reloads.
    sb.script("restart-meterd");
    let list = sb.meterctl_json(&["certs"])["certificates"].clone();
    let alice = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["serial"] == serial.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(alice["state"], "active");
    let sig3 = sb.arg("after-restart.p7s");
    // The serial typed lowercase without its leading zero is the same one.
    let bare = serial.trim_start_matches('0').to_lowercase();
    let signed = sb.meterctl_json(&["sign", "--cert", &bare, &msg, "-o", &sig3]);
    assert_eq!(signed["serial"], serial.as_str(), "{signed}");
    assert!(cms_verify(&sb, &msg, &sig3).status.success());

    // A TPM reset: the user key reloads from its blobs under the re-derived primary.
    sb.script("restart-tpm");
    let sig4 = sb.arg("after-reset.p7s");
    let mut done = false;
    for i in 0..5 {
        let id = format!("after-reset-{i}");
        let out = sb.meterctl(&[
            "sign",
            "--cert",
            &serial,
            &msg,
            "-o",
            &sig4,
            "--request-id",
            &id,
        ]);
        match code_of(&out) {
            Some(0) => {
                done = true;
                break;
            }
            c => assert_eq!(
                c,
                Some(exit::HOUSING),
                "only Housing errors while the TPM is back: {out:?}"
            ),
        }
    }
    assert!(done, "signing works again after a TPM reset");
    assert!(cms_verify(&sb, &msg, &sig4).status.success());
    assert_eq!(sb.meterctl_json(&["audit"])["ok"], true);
}

/// One serial form: what `openssl x509 -serial` prints is what the
/// authority, `meterctl cert install` and `meterctl certs` (text and JSON)
/// show (the meter takes it back in another case or without its leading
/// zero: see the signature after the restart).
fn serials_are_shown_as_openssl_shows_them(sb: &Sandbox, cert: &str, serial: &str) {
    let line = ok(
        &sb.run("openssl", &["x509", "-in", cert, "-serial", "-noout"]),
        "openssl x509 -serial",
    );
    let want = line
        .trim()
        .strip_prefix("serial=")
        .expect("serial=")
        .to_owned();
    assert_eq!(
        serial, want,
        "meter-authority certify prints openssl's form"
    );
    let list = sb.meterctl_json(&["certs"]);
    let shown: Vec<&str> = list["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["serial"].as_str())
        .collect();
    assert!(shown.contains(&want.as_str()), "{list}");
    let text = ok(&sb.meterctl(&["certs"]), "certs");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().next() == Some(want.as_str())),
        "{text}"
    );
}

fn body_of(sb: &Sandbox, req: &str) -> serde_json::Value {
    let out = sb.arg("body.json");
    let root = sb.root_pem().to_string_lossy().into_owned();
    ok(
        &sb.run(
            "openssl",
            &[
                "cms", "-verify", "-inform", "DER", "-in", req, "-CAfile", &root, "-purpose",
                "any", "-out", &out,
            ],
        ),
        "openssl cms -verify",
    );
    serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap()
}

#[test]
fn expired_certificate_is_not_used_and_funds_are_checked_first() {
    // Funds for one install (5000) and one signature (200).
    let sb = Sandbox::up(5_200);
    let code = enrol(&sb, "Bob");
    let req = request(&sb, "Bob", &code, "bob-1");
    let cert = sb.arg("bob.pem");
    let serial = String::from_utf8_lossy(
        &sb.authority(&["certify", &req, "--out", &cert, "--valid-seconds", "3"])
            .stdout,
    )
    .trim()
    .to_owned();
    sb.meterctl_json(&["cert", "install", &cert]);
    std::thread::sleep(std::time::Duration::from_secs(5));
    let list = sb.meterctl_json(&["certs"])["certificates"].clone();
    assert_eq!(list[0]["state"], "expired", "{list}");
    let before = sb.snapshot();
    let msg = write(&sb, "late.txt", b"too late");
    let out = sb.meterctl(&["sign", "--cert", &serial, &msg, "-o", &sb.arg("late.p7s")]);
    assert_eq!(code_of(&out), Some(exit::REFUSED), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{out:?}"
    );
    assert_eq!(sb.snapshot(), before, "nothing charged");

    // 200 left: a new request (install costs 5000) is refused before any key is made.
    let code = enrol(&sb, "Carol");
    let out = sb.meterctl(&[
        "cert",
        "request",
        "--subject",
        "CN=Carol",
        "--code",
        &code,
        "-o",
        &sb.arg("c.der"),
    ]);
    assert_eq!(code_of(&out), Some(exit::FUNDS), "{out:?}");
    assert_eq!(sb.snapshot(), before);
    assert_eq!(
        sb.meterctl_json(&["certs"])["certificates"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
