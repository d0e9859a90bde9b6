//! The TPM housing's authorization on a real swtpm (issue 12 item 3, issue
//! 13's owner password): keys and the NV counter refuse a process without
//! the meter's secret, hierarchy passwords come from systemd credentials and
//! a refusal names its cause, the values are re-supplied after a TPM reset,
//! and a meter provisioned before all this (objects with an empty auth,
//! made here with tpm2-tools as the old meterd made them) keeps working.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::swtpm;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use meterd::housing::auth::AuthOptions;
use meterd::housing::tpm::{TpmHousing, TpmOptions};
use meterd::housing::{Housing, HousingError, RawSignature};
use p384::ecdsa::signature::hazmat::PrehashVerifier;
use p384::ecdsa::{Signature, VerifyingKey};
use sha2::{Digest, Sha384};
use swtpm::Swtpm;

const COUNTER: u32 = 0x0150_0002;
const OWNER_PW: &str = "owner-secret";

fn digest(msg: &[u8]) -> [u8; 48] {
    Sha384::digest(msg).into()
}

fn verifies(point: &[u8], digest: &[u8; 48], sig: &RawSignature) -> bool {
    let vk = VerifyingKey::from_sec1_bytes(point).expect("public key");
    let sig = Signature::from_slice(sig).expect("signature encoding");
    vk.verify_prehash(digest, &sig).is_ok()
}

/// A housing on `tpm` with key blobs in `keys` and credentials in `creds`.
fn open(tpm: &Swtpm, keys: &Path, creds: Option<&Path>) -> TpmHousing {
    TpmHousing::open_with(&options(tpm, keys, creds)).expect("open housing")
}

fn options(tpm: &Swtpm, keys: &Path, creds: Option<&Path>) -> TpmOptions {
    TpmOptions {
        tcti: tpm.tcti(),
        key_dir: keys.to_path_buf(),
        auth: AuthOptions {
            credentials_dir: creds.map(Path::to_path_buf),
            ..AuthOptions::default()
        },
    }
}

/// Runs a tpm2-tools command on `tpm` (nobody else connected), then flushes
/// the transient objects it leaves (no resource manager).
fn tpm2(tpm: &Swtpm, cwd: &Path, tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .current_dir(cwd)
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (package tpm2-tools)"));
    let _ = Command::new("tpm2_flushcontext")
        .arg("-t")
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .output();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `tpm2_createprimary` with meterd's storage primary template, as
/// `primary.ctx` in `cwd` (what anyone with the code's template can do).
fn primary(tpm: &Swtpm, cwd: &Path) {
    tpm2(
        tpm,
        cwd,
        "tpm2_createprimary",
        &[
            "-C",
            "o",
            "-g",
            "sha256",
            "-G",
            "ecc384:aes256cfb",
            "-a",
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt",
            "-c",
            "primary.ctx",
        ],
    );
}

fn tpm_message(e: HousingError) -> String {
    match e {
        HousingError::Tpm { command, message } => format!("{command}: {message}"),
        other => panic!("expected a TPM error, got {other:?}"),
    }
}

#[test]
fn objects_refuse_a_process_without_the_secret() {
    let tpm = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    let keys = state.path().join("keys");
    let d = digest(b"authorized");
    let point = {
        let mut h = open(&tpm, &keys, None);
        assert!(!h.legacy_auth());
        let point = h.create_key("postmark").unwrap();
        h.counter_define(COUNTER).unwrap();
        assert!(verifies(
            &point,
            &d,
            &h.sign_digest("postmark", &d).unwrap()
        ));
        point
    };
    // The secret: 32 bytes, 0600, not inside the blobs.
    let secret = std::fs::read(keys.join("auth")).unwrap();
    assert_eq!(secret.len(), 32);
    let mode = std::fs::metadata(keys.join("auth"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    for blob in ["postmark.pub", "postmark.priv"] {
        let bytes = std::fs::read(keys.join(blob)).unwrap();
        assert!(!bytes.windows(32).any(|w| w == secret.as_slice()), "{blob}");
    }

    // Another process with copies of the blobs and no secret: it can load
    // them (they are good) but not sign, read or increment.
    let other = tempfile::tempdir().unwrap();
    for blob in ["postmark.pub", "postmark.priv"] {
        std::fs::copy(keys.join(blob), other.path().join(blob)).unwrap();
    }
    {
        let mut thief = open(&tpm, other.path(), None);
        assert!(thief.legacy_auth(), "blobs without a secret read as legacy");
        assert_eq!(thief.public_key("postmark").unwrap(), point);
        let msg = tpm_message(thief.sign_digest("postmark", &d).unwrap_err());
        assert!(msg.starts_with("sign: BadAuth"), "{msg}");
        assert!(
            msg.contains("key \"postmark\"") && msg.contains("missing"),
            "{msg}"
        );
        let msg = tpm_message(thief.counter_increment(COUNTER).unwrap_err());
        assert!(
            msg.contains("BadAuth") && msg.contains("NV counter"),
            "{msg}"
        );
        assert!(thief.counter_read(COUNTER).is_err());
    }
    // With another secret: refused too, and the message says so.
    std::fs::write(other.path().join("auth"), [7u8; 32]).unwrap();
    std::fs::set_permissions(
        other.path().join("auth"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    {
        let mut thief = open(&tpm, other.path(), None);
        assert!(!thief.legacy_auth());
        let msg = tpm_message(thief.sign_digest("postmark", &d).unwrap_err());
        assert!(
            msg.contains("BadAuth") && msg.contains("not the one"),
            "{msg}"
        );
        // A re-provisioned meter meets the old meter's counter the same way.
        let msg = tpm_message(thief.counter_define(COUNTER).unwrap_err());
        assert!(
            msg.contains("BadAuth") && msg.contains("NV counter"),
            "{msg}"
        );
    }
    // tpm2-tools with an empty auth: refused as well.
    primary(&tpm, other.path());
    tpm2(
        &tpm,
        other.path(),
        "tpm2_load",
        &[
            "-C",
            "primary.ctx",
            "-u",
            "postmark.pub",
            "-r",
            "postmark.priv",
            "-c",
            "k.ctx",
        ],
    );
    std::fs::write(other.path().join("d.bin"), d).unwrap();
    let out = Command::new("tpm2_sign")
        .args(["-c", "k.ctx", "-g", "sha384", "-d", "-o", "s.bin", "d.bin"])
        .current_dir(other.path())
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .output()
        .unwrap();
    let _ = Command::new("tpm2_flushcontext")
        .arg("-t")
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .output();
    assert!(!out.status.success(), "tpm2_sign with an empty auth worked");
    let out = Command::new("tpm2_nvincrement")
        .arg(format!("{COUNTER:#010x}"))
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "tpm2_nvincrement with an empty auth worked"
    );

    // The meter itself still has it all.
    let mut h = open(&tpm, &keys, None);
    let v = h.counter_read(COUNTER).unwrap().unwrap();
    assert_eq!(h.counter_increment(COUNTER).unwrap(), v + 1);
    assert!(verifies(
        &point,
        &d,
        &h.sign_digest("postmark", &d).unwrap()
    ));
}

#[test]
fn owner_password_comes_from_a_credential() {
    // With an EK certificate: the AK (endorsement hierarchy) is made below.
    let mut tpm = Swtpm::start_with_ek();
    let state = tempfile::tempdir().unwrap();
    let keys = state.path().join("keys");
    tpm2(
        &tpm,
        state.path(),
        "tpm2_changeauth",
        &["-c", "owner", OWNER_PW],
    );

    // No credentials at all: the refusal says what to do.
    {
        let mut h = open(&tpm, &keys, None);
        let msg = tpm_message(h.create_key("identity").unwrap_err());
        assert!(msg.starts_with("create_primary: BadAuth"), "{msg}");
        assert!(
            msg.contains("owner-auth") && msg.contains("CREDENTIALS_DIRECTORY"),
            "{msg}"
        );
    }
    // A credentials directory without owner-auth.
    let creds = tempfile::tempdir().unwrap();
    {
        let mut h = open(&tpm, &keys, Some(creds.path()));
        let msg = tpm_message(h.create_key("identity").unwrap_err());
        assert!(
            msg.contains("BadAuth") && msg.contains("does not exist"),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("{}/owner-auth", creds.path().display())),
            "{msg}"
        );
    }
    // A wrong password.
    std::fs::write(creds.path().join("owner-auth"), "not-it\n").unwrap();
    {
        let mut h = open(&tpm, &keys, Some(creds.path()));
        let msg = tpm_message(h.create_key("identity").unwrap_err());
        assert!(
            msg.contains("BadAuth") && msg.contains("update the credential"),
            "{msg}"
        );
        let msg = tpm_message(h.counter_define(COUNTER).unwrap_err());
        assert!(msg.starts_with("nv_define_space: BadAuth"), "{msg}");
    }
    // The right one (with the newline `echo` leaves): everything works.
    std::fs::write(creds.path().join("owner-auth"), format!("{OWNER_PW}\n")).unwrap();
    let d = digest(b"owner password");
    let (point, value) = {
        let mut h = open(&tpm, &keys, Some(creds.path()));
        let point = h.create_key("identity").unwrap();
        let value = h.counter_define(COUNTER).unwrap();
        assert!(verifies(
            &point,
            &d,
            &h.sign_digest("identity", &d).unwrap()
        ));
        h.clock().unwrap();
        (point, value)
    };
    // An endorsement password: the clock does not need it (TPM2_ReadClock
    // names no hierarchy), the AK's primary does, and its refusal names the
    // credential (it named the owner's before).
    tpm2(
        &tpm,
        state.path(),
        "tpm2_changeauth",
        &["-c", "e", "hex:0badc0de"],
    );
    {
        let mut h = open(&tpm, &keys, Some(creds.path()));
        h.clock().unwrap();
        let msg = tpm_message(h.attest_identity().unwrap_err());
        assert!(
            msg.contains("BadAuth") && msg.contains("endorsement-auth"),
            "{msg}"
        );
    }
    std::fs::write(creds.path().join("endorsement-auth"), "hex:0badc0de").unwrap();

    // A TPM reset: the context, the key handles and the NV handle are new,
    // and every auth value must be supplied again.
    let mut h = open(&tpm, &keys, Some(creds.path()));
    h.clock().unwrap();
    assert!(verifies(
        &point,
        &d,
        &h.sign_digest("identity", &d).unwrap()
    ));
    tpm.restart();
    let d2 = digest(b"after the reset");
    assert!(verifies(
        &point,
        &d2,
        &h.sign_digest("identity", &d2).unwrap()
    ));
    assert_eq!(h.counter_increment(COUNTER).unwrap(), value + 1);
    h.clock().unwrap();
    let user = h.create_key("user-1").unwrap();
    assert!(verifies(&user, &d2, &h.sign_digest("user-1", &d2).unwrap()));
}

#[test]
fn secret_from_a_credential_is_not_written_to_the_state() {
    let tpm = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    let keys = state.path().join("keys");
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("meterd-auth"), [0x42u8; 32]).unwrap();
    let d = digest(b"credential");
    let point = {
        let mut h = open(&tpm, &keys, Some(creds.path()));
        let p = h.create_key("postmark").unwrap();
        h.counter_define(COUNTER).unwrap();
        p
    };
    assert!(!keys.join("auth").exists());
    // Without the credential, the same blobs are unusable.
    {
        let mut h = open(&tpm, &keys, None);
        assert!(h.sign_digest("postmark", &d).is_err());
    }
    let mut h = open(&tpm, &keys, Some(creds.path()));
    assert!(verifies(
        &point,
        &d,
        &h.sign_digest("postmark", &d).unwrap()
    ));
    h.counter_increment(COUNTER).unwrap();
}

#[test]
fn legacy_objects_keep_working() {
    // What meterd made before TPM authorization, made with tpm2-tools: a
    // key with an empty auth under the same primary, and an empty-auth counter.
    let tpm = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    let keys = state.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    primary(&tpm, &keys);
    tpm2(
        &tpm,
        &keys,
        "tpm2_create",
        &[
            "-C",
            "primary.ctx",
            "-g",
            "sha256",
            "-G",
            "ecc384:ecdsa-sha384",
            "-a",
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|sign",
            "-u",
            "identity.pub",
            "-r",
            "identity.priv",
        ],
    );
    std::fs::remove_file(keys.join("primary.ctx")).unwrap();
    tpm2(
        &tpm,
        &keys,
        "tpm2_nvdefine",
        &[
            "-C",
            "o",
            "-s",
            "8",
            "-a",
            "nt=counter|authread|authwrite|no_da",
            &format!("{COUNTER:#010x}"),
        ],
    );

    let d = digest(b"legacy");
    let mut h = open(&tpm, &keys, None);
    assert!(h.legacy_auth(), "blobs and no secret: a legacy meter");
    let point = h.public_key("identity").unwrap();
    assert!(verifies(
        &point,
        &d,
        &h.sign_digest("identity", &d).unwrap()
    ));
    let v = h.counter_define(COUNTER).unwrap();
    assert_eq!(h.counter_increment(COUNTER).unwrap(), v + 1);
    // New keys of a legacy meter match its old ones; no secret appears.
    let p2 = h.create_key("postmark").unwrap();
    assert!(verifies(&p2, &d, &h.sign_digest("postmark", &d).unwrap()));
    assert!(!keys.join("auth").exists());
}

#[test]
fn counter_writable_by_others_is_refused() {
    let tpm = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    tpm2(
        &tpm,
        state.path(),
        "tpm2_nvdefine",
        &[
            "-C",
            "o",
            "-s",
            "8",
            "-a",
            "nt=counter|authread|authwrite|ownerwrite|no_da",
            &format!("{COUNTER:#010x}"),
        ],
    );
    let mut h = open(&tpm, &state.path().join("keys"), None);
    let msg = tpm_message(h.counter_define(COUNTER).unwrap_err());
    assert!(msg.contains("OWNERWRITE"), "{msg}");
}
