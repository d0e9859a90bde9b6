//! Envelopes made by the `openssl` binary (as a mail client would), opened here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::issue::{self, Profile};
use p384::ecdsa::SigningKey;
use std::path::Path;
use std::process::Command;

const T0: i64 = 1_767_225_600;

/// A root and a keyAgreement user certificate for the secret `b`.
fn recipient(b: u8, serial: u64) -> (Certificate, p384::SecretKey) {
    let rk = SigningKey::from_slice(&[1u8; 48]).unwrap();
    let root = issue::self_signed_root(&rk, "Root", 1, T0, 3650).unwrap();
    let key = p384::SecretKey::from_slice(&[b; 48]).unwrap();
    let sec1 = key.public_key().to_sec1_bytes().to_vec();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let c = issue::issue(
        "Alice",
        &sec1,
        Profile::UserEncryption,
        &rk,
        &root,
        serial,
        now - 60,
        30,
    )
    .unwrap();
    (c, key)
}

/// `openssl cms -encrypt` of `msg` to `cert` with extra arguments; DER unless told.
fn openssl_encrypt(dir: &Path, cert: &Certificate, msg: &[u8], args: &[&str]) -> Vec<u8> {
    let cp = dir.join("recip.pem");
    std::fs::write(&cp, crate::cert::to_pem(cert).unwrap()).unwrap();
    let mp = dir.join("msg");
    std::fs::write(&mp, msg).unwrap();
    let op = dir.join("env");
    let out = Command::new("openssl")
        .args(["cms", "-encrypt", "-binary", "-in"])
        .arg(&mp)
        .arg("-out")
        .arg(&op)
        .arg("-recip")
        .arg(&cp)
        .args(args)
        .output()
        .expect("the openssl binary (Debian package openssl) runs");
    assert!(
        out.status.success(),
        "openssl cms -encrypt {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&op).unwrap()
}

#[test]
fn openssl_envelopes_open_for_every_listed_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = recipient(7, 42);
    let msg = b"Dear Alice,\nthe meter reads this for you.\n".repeat(5);
    let cases: &[(&[&str], KdfHash)] = &[
        // What `openssl cms -encrypt -aes256 -recip cert.pem` writes: SHA-1 KDF.
        (&["-aes256", "-outform", "DER"], KdfHash::Sha1),
        (&["-aes256", "-outform", "PEM"], KdfHash::Sha1),
        (
            &[
                "-aes128",
                "-outform",
                "DER",
                "-keyid",
                "-keyopt",
                "ecdh_kdf_md:sha256",
            ],
            KdfHash::Sha256,
        ),
        (
            &[
                "-aes192",
                "-outform",
                "DER",
                "-keyopt",
                "ecdh_kdf_md:sha224",
            ],
            KdfHash::Sha224,
        ),
        (
            &[
                "-aes256",
                "-outform",
                "DER",
                "-keyopt",
                "ecdh_kdf_md:sha384",
            ],
            KdfHash::Sha384,
        ),
        (
            &[
                "-aes256",
                "-outform",
                "DER",
                "-keyopt",
                "ecdh_kdf_md:sha512",
            ],
            KdfHash::Sha512,
        ),
    ];
    for (args, kdf) in cases {
        let env = openssl_encrypt(dir.path(), &cert, &msg, args);
        let p = prepare(&env, &cert, 1 << 20).unwrap();
        assert_eq!(p.kdf, *kdf, "{args:?}");
        let plain = open_with_key(&env, &cert, &key, 1 << 20).unwrap();
        assert_eq!(plain.as_slice(), msg.as_slice(), "{args:?}");
    }
    // Our own agent envelope (SHA-384 KDF, rKeyId) opens too.
    let r =
        crate::envelope::parse_receiver(crate::cert::to_pem(&cert).unwrap().as_bytes()).unwrap();
    let env = crate::envelope::seal(b"x", &r, &mut rand_core::OsRng).unwrap();
    assert_eq!(
        open_with_key(&env, &cert, &key, 16).unwrap().as_slice(),
        b"x"
    );
}

#[test]
fn another_recipients_envelope_is_not_for_us() {
    let dir = tempfile::tempdir().unwrap();
    let (mine, _) = recipient(7, 42);
    let (theirs, their_key) = recipient(8, 43);
    let env = openssl_encrypt(
        dir.path(),
        &theirs,
        b"for Bob",
        &["-aes256", "-outform", "DER"],
    );
    assert!(matches!(
        prepare(&env, &mine, 1 << 20),
        Err(UnsealError::NotForUs(_))
    ));
    // With our name on it but made for another key: the unwrap check fails.
    assert!(matches!(
        open_with_key(
            &env,
            &theirs,
            &p384::SecretKey::from_slice(&[7u8; 48]).unwrap(),
            1 << 20
        ),
        Err(UnsealError::Undecryptable(_))
    ));
    assert!(open_with_key(&env, &theirs, &their_key, 1 << 20).is_ok());
}

#[test]
fn a_tampered_wrap_or_content_is_undecryptable_and_oversize_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = recipient(7, 42);
    let msg = vec![0x5a; 1000];
    let env = openssl_encrypt(dir.path(), &cert, &msg, &["-aes256", "-outform", "DER"]);
    let p = prepare(&env, &cert, 1 << 20).unwrap();
    let at = env
        .windows(p.wrapped.len())
        .position(|w| w == p.wrapped.as_slice())
        .unwrap();
    let mut bad = env.clone();
    bad[at + 3] ^= 1;
    assert!(matches!(
        open_with_key(&bad, &cert, &key, 1 << 20),
        Err(UnsealError::Undecryptable(_))
    ));
    // The last ciphertext block altered: the padding check fails (or, once in 256
    // times, the plaintext differs; with this fixed flip it fails).
    let mut bad = env.clone();
    let n = bad.len();
    bad[n - 1] ^= 0x80;
    let r = open_with_key(&bad, &cert, &key, 1 << 20);
    assert!(r.map(|p| p.as_slice() != msg.as_slice()).unwrap_or(true));
    assert!(matches!(
        prepare(&env, &cert, 100),
        Err(UnsealError::Pki(PkiError::TooLarge(_)))
    ));
    assert!(matches!(
        prepare(b"hello", &cert, 100),
        Err(UnsealError::Pki(PkiError::Malformed(_)))
    ));
    // A signed message is not an envelope.
    assert!(prepare(&crate::cert::to_der(&cert).unwrap(), &cert, 100).is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    #[test]
    fn mutated_envelopes_never_panic(pos in 0usize..2000, val in proptest::prelude::any::<u8>()) {
        let (cert, key) = recipient(7, 42);
        let r = crate::envelope::parse_receiver(&crate::cert::to_der(&cert).unwrap()).unwrap();
        let mut env = crate::envelope::seal(b"abc", &r, &mut rand_core::OsRng).unwrap();
        let i = pos % env.len();
        env[i] ^= val | 1;
        let _ = open_with_key(&env, &cert, &key, 1 << 10);
    }
}
