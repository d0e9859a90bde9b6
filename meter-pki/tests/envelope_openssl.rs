//! The agent-key envelope (CMS EnvelopedData, ECDH P-384 + AES-256 key wrap + AES-256-CBC)
//! must open with stock `openssl cms -decrypt`, for every receiver form the meter accepts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use meter_pki::envelope;

fn openssl(args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new("openssl").args(args).output().unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `openssl cms -decrypt -inform DER -in ENVELOPE -inkey KEY`, then `more`.
fn decrypt(envelope: &Path, key: &Path, more: &[&str]) -> (bool, Vec<u8>, String) {
    let mut args = vec![
        "cms",
        "-decrypt",
        "-inform",
        "DER",
        "-in",
        s(envelope),
        "-inkey",
        s(key),
    ];
    args.extend_from_slice(more);
    openssl(&args)
}

#[test]
fn openssl_decrypts_for_cert_pubkey_and_sec1_receivers() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("receiver.key");
    let cert = dir.path().join("receiver.pem");
    let pubkey = dir.path().join("receiver.pub");
    assert!(
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            s(&key)
        ])
        .0
    );
    assert!(
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            s(&key),
            "-subj",
            "/CN=Receiver",
            "-days",
            "2",
            "-out",
            s(&cert)
        ])
        .0
    );
    assert!(openssl(&["pkey", "-in", s(&key), "-pubout", "-out", s(&pubkey)]).0);
    let (ok, spki_der, _) = openssl(&["pkey", "-in", s(&key), "-pubout", "-outform", "DER"]);
    assert!(ok);
    let sec1 = envelope::parse_receiver(&spki_der).unwrap().public_sec1;

    let content: Vec<u8> = (0..=255u8).cycle().take(185).collect();
    let forms: [(&str, Vec<u8>, bool); 4] = [
        ("cert-pem", std::fs::read(&cert).unwrap(), true),
        ("pub-pem", std::fs::read(&pubkey).unwrap(), false),
        ("spki-der", spki_der.clone(), false),
        ("sec1", sec1, false),
    ];
    for (name, input, is_cert) in forms {
        let r = envelope::parse_receiver(&input).unwrap();
        assert_eq!(r.certificate.is_some(), is_cert, "{name}");
        let env = envelope::seal(&content, &r, &mut rand_core::OsRng).unwrap();
        let f = dir.path().join(format!("{name}.cms"));
        std::fs::write(&f, &env).unwrap();
        let (ok, out, err) = decrypt(&f, &key, &[]);
        assert!(ok, "{name}: openssl cms -decrypt failed: {err}");
        assert_eq!(out, content, "{name}");
        // With -recip too: by issuer+serial for a cert receiver, by SKI (SHA-1 of the key,
        // OpenSSL's default) for a bare key.
        let (ok, out, err) = decrypt(&f, &key, &["-recip", s(&cert)]);
        assert!(ok, "{name}: openssl cms -decrypt -recip failed: {err}");
        assert_eq!(out, content, "{name}");
        // The structure is what RFC 5753 says: openssl names the algorithms.
        let (ok, out, _) = openssl(&["cms", "-cmsout", "-print", "-inform", "DER", "-in", s(&f)]);
        let text = String::from_utf8_lossy(&out);
        assert!(
            ok && text.contains("dhSinglePass-stdDH-sha384kdf-scheme"),
            "{text}"
        );
        assert!(
            text.contains("id-aes256-wrap") && text.contains("aes-256-cbc"),
            "{text}"
        );
    }

    // Another key cannot open it.
    let other = dir.path().join("other.key");
    assert!(
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            s(&other)
        ])
        .0
    );
    let r = envelope::parse_receiver(&std::fs::read(&pubkey).unwrap()).unwrap();
    let f = dir.path().join("x.cms");
    std::fs::write(
        &f,
        envelope::seal(&content, &r, &mut rand_core::OsRng).unwrap(),
    )
    .unwrap();
    let (ok, out, _) = openssl(&[
        "cms",
        "-decrypt",
        "-inform",
        "DER",
        "-in",
        s(&f),
        "-inkey",
        s(&other),
    ]);
    assert!(!ok || out != content);
}
