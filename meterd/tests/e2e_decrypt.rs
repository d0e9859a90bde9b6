//! End to end on swtpm: message confidentiality (issue 17, item 1). An
//! encryption certificate for a key-agreement key born in the TPM is
//! requested (`--purpose encrypt`), certified (keyAgreement) and installed;
//! `openssl cms -encrypt -aes256 -recip cert.pem` mail is opened by
//! `meterctl decrypt` (ECDH in the TPM); charged once, an idempotent retry is
//! free, a tampered or foreign envelope is `NotDecryptable` and charges
//! nothing, and with funds short a new decryption is refused, registers untouched.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use meter_proto::exit;
use sandbox::{ok, write, Sandbox};

const INSTALL: u64 = 5000; // certificate-install in rates.example.toml
const DECRYPT: u64 = 150; // decrypt in rates.example.toml

fn encrypt(sb: &Sandbox, cert: &str, msg: &str, out: &str, form: &str) {
    ok(
        &sb.run(
            "openssl",
            &[
                "cms", "-encrypt", "-aes256", "-binary", "-in", msg, "-outform", form, "-out", out,
                "-recip", cert,
            ],
        ),
        "openssl cms -encrypt",
    );
}

fn refused_kind(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn openssl_mail_is_decrypted_in_the_tpm_charged_once() {
    // Funds for the install, one decryption and less than a second one.
    let sb = Sandbox::up(INSTALL + DECRYPT + 100);
    assert_eq!(sb.status()["rates"]["decrypt"].as_u64(), Some(DECRYPT));

    // Request, certify (keyAgreement), install.
    let (cert, serial) =
        sb.enrol_and_install("Alice", &["--purpose", "encrypt", "--request-id", "er-1"]);
    let text = ok(
        &sb.run("openssl", &["x509", "-in", &cert, "-noout", "-text"]),
        "openssl x509",
    );
    assert!(text.contains("Key Agreement"), "{text}");
    assert!(!text.contains("Digital Signature"), "{text}");

    // An encryption key cannot sign.
    let msg = write(
        &sb,
        "mail.txt",
        b"Dear Alice,\nthe numbers are 4 8 15 16 23 42.\n",
    );
    let out = sb.meterctl(&["sign", "--cert", &serial, &msg, "-o", &sb.arg("x.p7s")]);
    assert_eq!(out.status.code(), Some(exit::INVALID), "{out:?}");

    let env = sb.arg("mail.der");
    encrypt(&sb, &cert, &msg, &env, "DER");

    // Tampered key wrap: NotDecryptable, nothing charged, no row.
    let mut bad = std::fs::read(&env).unwrap();
    let data_oid = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01,
    ];
    let eci = bad
        .windows(data_oid.len())
        .position(|w| w == data_oid)
        .expect("EncryptedContentInfo")
        - 2;
    bad[eci - 20] ^= 0x01; // inside the 40-byte wrapped AES-256 key just before it
    let tampered = write(&sb, "tampered.der", &bad);
    let s0 = sb.snapshot();
    let out = sb.meterctl(&["decrypt", &serial, "-i", &tampered, "-o", &sb.arg("t.out")]);
    assert_eq!(out.status.code(), Some(exit::REFUSED), "{out:?}");
    assert!(refused_kind(&out).contains("NotDecryptable"), "{out:?}");
    assert_eq!(sb.snapshot(), s0, "a tampered envelope charges nothing");
    assert!(!std::path::Path::new(&sb.arg("t.out")).exists());

    // Another recipient's envelope: NotDecryptable, nothing charged.
    ok(
        &sb.run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-nodes",
                "-keyout",
                &sb.arg("bob.key"),
                "-subj",
                "/CN=Bob",
                "-days",
                "2",
                "-out",
                &sb.arg("bob.pem"),
            ],
        ),
        "openssl req",
    );
    let bobs = sb.arg("bob.der");
    encrypt(&sb, &sb.arg("bob.pem"), &msg, &bobs, "DER");
    let out = sb.meterctl(&["decrypt", &serial, "-i", &bobs, "-o", &sb.arg("b.out")]);
    assert_eq!(out.status.code(), Some(exit::REFUSED), "{out:?}");
    assert!(refused_kind(&out).contains("NotDecryptable"), "{out:?}");
    assert_eq!(sb.snapshot(), s0, "a foreign envelope charges nothing");

    // Decrypt: the bytes match; charged once, one row.
    let plain = sb.arg("mail.out");
    let r = sb.meterctl_json(&[
        "decrypt",
        &serial,
        "-i",
        &env,
        "-o",
        &plain,
        "--request-id",
        "d-1",
    ]);
    assert_eq!(std::fs::read(&plain).unwrap(), std::fs::read(&msg).unwrap());
    assert_eq!(
        r["bytes"].as_u64(),
        Some(std::fs::read(&msg).unwrap().len() as u64)
    );
    let s1 = sb.snapshot();
    assert_eq!(s1.0, s0.0 + DECRYPT);
    assert_eq!(s1.1, s0.1 - DECRYPT);
    assert_eq!(s1.3, s0.3 + 1, "one ledger row");
    assert_eq!(sb.status()["service_counts"]["decrypt"].as_u64(), Some(1));

    // No file of the state directory (ledger, WAL, key blobs) holds the plaintext:
    // the row's product is digests only.
    let mut dirs = vec![sb.path("state")];
    let mut files = 0;
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                files += 1;
                assert!(
                    !bytes.windows(16).any(|w| w == b"the numbers are "),
                    "plaintext in {}",
                    p.display()
                );
            }
        }
    }
    assert!(files > 0, "the state directory was scanned");

    // Funds short now: a new decryption is refused, registers untouched.
    let out = sb.meterctl(&[
        "decrypt",
        &serial,
        "-i",
        &env,
        "-o",
        &sb.arg("m2.out"),
        "--request-id",
        "d-2",
    ]);
    assert_eq!(out.status.code(), Some(exit::FUNDS), "{out:?}");
    assert_eq!(sb.snapshot(), s1);

    // The retry of d-1 (same envelope) is free, even with funds short: same bytes,
    // to stdout this time.
    let out = sb.meterctl(&[
        "decrypt",
        &serial,
        "-i",
        &env,
        "-o",
        "-",
        "--request-id",
        "d-1",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, std::fs::read(&msg).unwrap());
    assert_eq!(sb.snapshot(), s1, "an idempotent retry is not charged");

    // The same id with another envelope is a conflict, not a free decryption.
    let pem = sb.arg("mail.pem");
    encrypt(&sb, &cert, &msg, &pem, "PEM");
    let out = sb.meterctl(&[
        "decrypt",
        &serial,
        "-i",
        &pem,
        "-o",
        &sb.arg("c.out"),
        "--request-id",
        "d-1",
    ]);
    assert_eq!(out.status.code(), Some(exit::INVALID), "{out:?}");
    assert_eq!(sb.snapshot(), s1);
}
