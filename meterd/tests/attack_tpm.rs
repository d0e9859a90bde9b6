//! Issue 12, item 3 ("TPM objects only meterd can use"), tried the
//! attacker's way: `tpm2-tools` run by a process that can reach the TPM but
//! is not meterd, never project code.
//!
//! * **The attacker** is a real uid whose only group is `tss`: on a real
//!   machine that is exactly who may open `/dev/tpmrm0` (root:tss 0660). On
//!   the sandbox's swtpm, "reach the TPM" means its TCP port, so it runs
//!   `tpm2-tools` with `TPM2TOOLS_TCTI=swtpm:...` (the sandbox env's
//!   `METERD_TCTI`). swtpm serves one connection at a time and meterd holds
//!   it, so each attack runs while meterd is stopped (with a resource
//!   manager the attacker would not need to wait).
//! * **Sign as the meter**: the attacker holds copies of the postmark key's
//!   blobs (`keys/postmark.{pub,priv}`; the state directory is 0700, so say
//!   from a backup or a disk image: the case most favourable to the
//!   attacker), re-derives meterd's storage primary from its public
//!   template (`tpm2_createprimary`), loads the blobs (`tpm2_load`) and asks
//!   for a signature with an empty authorization (`tpm2_sign`). The load
//!   must work (the blobs are good, so the test is not fooled by a wrong
//!   template); the sign must be refused.
//! * **Lock anyone's meter**: `tpm2_nvincrement` of the meter's NV counter
//!   with an empty authorization (the index's own, and the owner's) must be
//!   refused, and meterd must start `ready` afterwards (an increment it did
//!   not make reads as a ledger rollback and locks the meter).
//! * **The operator (root)** can read the auth secret in the state
//!   directory (`keys/auth`, mode 0600) and so can still sign with the
//!   meter's keys: a TPM cannot stop root from using what the daemon itself
//!   uses. The test asserts exactly what `docs/SECURITY.md` says: root, with
//!   the secret, derives the key's auth value
//!   (`HMAC-SHA256(secret, "meterd-tpm-auth-v1:key:<name>")`) with openssl
//!   and `tpm2_sign` succeeds. Such a signature has no ledger row: it is for
//!   the authority's inspection and `lookup` to find, not for the TPM to
//!   prevent.
//!
//! On main before issue 12 (keys and counter with an empty auth) the first
//! two fail: the signature verifies under the postmark certificate and the
//! meter starts `locked (rollback)`.
//!
//! Creating users needs root: the tests skip with a message otherwise (CI
//! runs as root).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::root_tools;
use crate::sandbox;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sandbox::{ok, Sandbox};

/// The attacker: a uid whose only group is `tss`.
const TSS_USER: &str = "meterd-e2e-tss";
/// meterd's default NV index (`nv_index` in meterd.toml; the sandbox keeps it).
const NV_INDEX: &str = "0x01504d54";
/// meterd's storage primary, from its public template (owner hierarchy,
/// ECC P-384, AES-256-CFB, SHA-256 name, empty unique): anyone can derive it.
const PRIMARY_ATTRS: &str =
    "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// (uid, gid) of the `tss`-only attacker, created when missing.
fn tss_user() -> (u32, u32) {
    let run = |cmd: &str, args: &[&str]| Command::new(cmd).args(args).output().expect(cmd);
    let _ = run("groupadd", &["-f", "--system", "tss"]);
    if !run("id", &[TSS_USER]).status.success() {
        let out = run(
            "useradd",
            &[
                "--system",
                "--no-create-home",
                "--no-user-group",
                "--gid",
                "tss",
                TSS_USER,
            ],
        );
        // Another test may have created it meanwhile.
        if !run("id", &[TSS_USER]).status.success() {
            ok(&out, "useradd");
        }
    }
    let groups = String::from_utf8_lossy(&run("id", &["-nG", TSS_USER]).stdout).into_owned();
    assert_eq!(groups.trim(), "tss", "{TSS_USER} must be in group tss only");
    let num = |flag: &str| -> u32 {
        String::from_utf8_lossy(&run("id", &[flag, TSS_USER]).stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (num("-u"), num("-g"))
}

/// The `tss`-only attacker's (uid, gid), or `None` (with a note) when this
/// test cannot play another uid.
fn tss_attacker_ids() -> Option<(u32, u32)> {
    if !is_root() {
        eprintln!("skipped: playing a tss-only uid needs root (CI runs as root)");
        return None;
    }
    Some(tss_user())
}

/// Runs tpm2-tools (or any program) as the attacker, in `cwd`, on the sandbox's TPM.
struct Attacker {
    uid: u32,
    gid: u32,
    tcti: String,
    cwd: PathBuf,
}

impl Attacker {
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let out = Command::new("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program)
            .args(args)
            .current_dir(&self.cwd)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", "/")
            .env("TPM2TOOLS_TCTI", &self.tcti)
            .output()
            .expect("run setpriv");
        // Without a resource manager tpm2-tools leave their objects loaded,
        // and swtpm has three transient slots.
        if program.starts_with("tpm2_") {
            let _ = Command::new("setpriv")
                .arg(format!("--reuid={}", self.uid))
                .arg(format!("--regid={}", self.gid))
                .arg("--init-groups")
                .args(["--", "tpm2_flushcontext", "-t"])
                .env("TPM2TOOLS_TCTI", &self.tcti)
                .output();
        }
        out
    }
}

fn outcome(out: &Output) -> String {
    format!(
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// A directory the attacker may write, holding copies of the postmark blobs.
fn loot(sb: &Sandbox) -> PathBuf {
    let dir = sb.path("loot");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let keys = PathBuf::from(&sb.env["METERD_STATE_DIR"]).join("keys");
    for ext in ["pub", "priv"] {
        let to = dir.join(format!("postmark.{ext}"));
        std::fs::copy(keys.join(format!("postmark.{ext}")), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::write(dir.join("digest.bin"), [0x5au8; 48]).unwrap();
    std::fs::set_permissions(
        dir.join("digest.bin"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    dir
}

/// The postmark certificate's public key (PEM), extracted by openssl.
fn postmark_pubkey(sb: &Sandbox, dir: &Path) -> PathBuf {
    let pem = dir.join("postmark-pub.pem");
    let cert = sb.path("certs/postmark.pem");
    let out = Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    ok(&out, "openssl x509 -pubkey");
    std::fs::write(&pem, &out.stdout).unwrap();
    pem
}

/// `openssl pkeyutl -verify` of a DER ECDSA signature over `digest.bin`.
fn signature_verifies(dir: &Path, pubkey: &Path, sig: &Path) -> bool {
    Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
        .arg(pubkey)
        .arg("-in")
        .arg(dir.join("digest.bin"))
        .arg("-sigfile")
        .arg(sig)
        .output()
        .unwrap()
        .status
        .success()
}

/// tpm2_createprimary with meterd's template + tpm2_load of the blobs, as
/// `who`; asserts both work (returns the loaded key's context file name).
fn load_postmark(who: &Attacker) -> &'static str {
    let out = who.run(
        "tpm2_createprimary",
        &[
            "-C",
            "o",
            "-g",
            "sha256",
            "-G",
            "ecc384:aes256cfb",
            "-a",
            PRIMARY_ATTRS,
            "-c",
            "primary.ctx",
        ],
    );
    assert!(
        out.status.success(),
        "tpm2_createprimary as {TSS_USER}: {}",
        outcome(&out)
    );
    let out = who.run(
        "tpm2_load",
        &[
            "-C",
            "primary.ctx",
            "-u",
            "postmark.pub",
            "-r",
            "postmark.priv",
            "-c",
            "postmark.ctx",
        ],
    );
    assert!(
        out.status.success(),
        "tpm2_load of the copied blobs under the re-derived primary must work \
         (else this test checks nothing): {}",
        outcome(&out)
    );
    "postmark.ctx"
}

fn tpm2_sign(who: &Attacker, key: &str, auth: Option<&str>) -> Output {
    let _ = std::fs::remove_file(who.cwd.join("sig.der"));
    let mut args = vec!["-c", key, "-g", "sha384", "-s", "ecdsa", "-d"];
    args.extend(["-f", "plain", "-o", "sig.der"]);
    if let Some(a) = auth {
        args.extend(["-p", a]);
    }
    args.push("digest.bin");
    who.run("tpm2_sign", &args)
}

#[test]
fn tss_member_with_the_blobs_cannot_sign_as_the_meter() {
    let Some((uid, gid)) = tss_attacker_ids() else {
        return;
    };
    let sb = Sandbox::up(0);
    let dir = loot(&sb);
    let pubkey = postmark_pubkey(&sb, &dir);
    sb.script("stop-meterd");
    let attacker = Attacker {
        uid,
        gid,
        tcti: sb.env["METERD_TCTI"].clone(),
        cwd: dir.clone(),
    };

    // The secret is not the attacker's to read.
    let secret = PathBuf::from(&sb.env["METERD_STATE_DIR"]).join("keys/auth");
    let read = attacker.run("cat", &[&secret.to_string_lossy()]);
    assert!(
        !read.status.success(),
        "{TSS_USER} read {}: {}",
        secret.display(),
        outcome(&read)
    );

    let key = load_postmark(&attacker);
    let out = tpm2_sign(&attacker, key, None);
    let forged = out.status.success() && signature_verifies(&dir, &pubkey, &dir.join("sig.der"));
    assert!(
        !out.status.success(),
        "ATTACK SUCCEEDED: {TSS_USER} signed with the meter's postmark key \
         (signature verifies under certs/postmark.pem: {forged})"
    );
    // Refused for its authorization (TPM_RC_BAD_AUTH / AUTH_FAIL), nothing else.
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("authorization") || err.contains("0x9a2") || err.contains("0x98e"),
        "tpm2_sign failed, but not for its authorization: {}",
        outcome(&out)
    );

    // The meter itself still signs: a postmark after the attempt.
    sb.script("start-meterd");
    assert_eq!(sb.status()["state"], "ready");
    let (_, _, out) = sb.postmark_id("after-attack");
    // No funds: refused for funds, not for the housing.
    let text = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        !text.contains("housing"),
        "meterd cannot sign any more: {text}"
    );
}

#[test]
fn tss_member_cannot_move_the_meters_counter() {
    let Some((uid, gid)) = tss_attacker_ids() else {
        return;
    };
    let sb = Sandbox::up(0);
    let nv_before = sb.status()["nv_counter"].as_u64().unwrap();
    sb.script("stop-meterd");
    let attacker = Attacker {
        uid,
        gid,
        tcti: sb.env["METERD_TCTI"].clone(),
        cwd: sb.dir.path().to_path_buf(),
    };

    let own = attacker.run("tpm2_nvincrement", &[NV_INDEX]);
    let owner = attacker.run("tpm2_nvincrement", &["-C", "o", NV_INDEX]);
    // Whatever happened, meterd tells the story at its next start.
    sb.script("start-meterd");
    let status = sb.status();
    assert!(
        !own.status.success(),
        "ATTACK SUCCEEDED: {TSS_USER} incremented the meter's counter with an empty \
         index auth; meterd now starts {} ({})",
        status["state"],
        status["lock_reason"]
    );
    assert!(
        !owner.status.success(),
        "ATTACK SUCCEEDED: {TSS_USER} incremented the meter's counter with the owner's \
         (empty) auth; meterd now starts {} ({})",
        status["state"],
        status["lock_reason"]
    );
    assert_eq!(
        status["state"], "ready",
        "after refused increments meterd must start ready: {status}"
    );
    assert!(status["nv_counter"].as_u64().unwrap() >= nv_before);
    // Nor can it read the counter (AUTHREAD only).
    sb.script("stop-meterd");
    let read = attacker.run("tpm2_nvread", &["-s", "8", NV_INDEX]);
    assert!(
        !read.status.success(),
        "{TSS_USER} read the counter: {}",
        outcome(&read)
    );
    sb.script("start-meterd");
}

/// What SECURITY.md says of the operator: root reads the secret and signs.
/// Not prevented (the TPM cannot tell root from meterd); such a signature has
/// no ledger row, which the authority's inspection and `lookup` detect.
#[test]
fn operator_root_with_the_secret_can_still_sign() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let sb = Sandbox::up(0);
    let dir = loot(&sb);
    let pubkey = postmark_pubkey(&sb, &dir);
    let state = PathBuf::from(&sb.env["METERD_STATE_DIR"]);
    let secret = state.join("keys/auth");
    let meta = std::fs::metadata(&secret)
        .unwrap_or_else(|e| panic!("no auth secret at {}: {e}", secret.display()));
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "keys/auth must be mode 0600"
    );
    assert!(
        !std::fs::read(dir.join("postmark.priv"))
            .unwrap()
            .windows(32)
            .any(|w| w == std::fs::read(&secret).unwrap().as_slice()),
        "the secret must not be inside the blobs"
    );
    sb.script("stop-meterd");
    // root derives the key's auth value with openssl, from the documented label.
    let auth = root_tools::derived_auth(&secret, "postmark");
    let root = Attacker {
        uid: 0,
        gid: 0,
        tcti: sb.env["METERD_TCTI"].clone(),
        cwd: dir.clone(),
    };
    let key = load_postmark(&root);
    // Without the auth: refused, even for root.
    let out = tpm2_sign(&root, key, None);
    assert!(!out.status.success(), "root signed with an empty auth");
    let out = tpm2_sign(&root, key, Some(&auth));
    assert!(
        out.status.success(),
        "root with keys/auth must be able to sign (SECURITY.md says so): {}",
        outcome(&out)
    );
    assert!(signature_verifies(&dir, &pubkey, &dir.join("sig.der")));
    sb.script("start-meterd");
}

/// Issue 13: meterd started by a uid outside group `tss` on a TPM device
/// node `root:tss 0660` (as udev makes /dev/tpmrm0) says so, naming the
/// group, instead of "response code not recognized". The node is a file
/// with the device's ownership: the open fails before any TPM I/O.
#[test]
fn meterd_outside_group_tss_names_the_group() {
    if !is_root() {
        eprintln!("skipped: playing another uid needs root (CI runs as root)");
        return;
    }
    let _ = tss_user(); // makes sure group tss exists
    let dir = tempfile::Builder::new()
        .prefix("meterd-tss-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let node = dir.path().join("tpmrm0");
    std::fs::write(&node, b"").unwrap();
    ok(
        &Command::new("chown")
            .arg("root:tss")
            .arg(&node)
            .output()
            .unwrap(),
        "chown root:tss",
    );
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o660)).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    ok(
        &Command::new("chown")
            .arg("65534:65534")
            .arg(&state)
            .output()
            .unwrap(),
        "chown nobody",
    );
    let config = dir.path().join("meterd.toml");
    std::fs::write(&config, b"").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_meterd"))
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .arg("--tcti")
        .arg(format!("device:{}", node.display()))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("METERD_LOG", "info")
        .output()
        .unwrap();
    let text = outcome(&out);
    assert!(!out.status.success(), "meterd started: {text}");
    assert!(
        text.contains("permission denied") && text.contains("group `tss`"),
        "the refusal must name the tss group: {text}"
    );
    assert!(text.contains("uid 65534"), "and who meterd runs as: {text}");
}

/// `tpm_last` of meterd's clock anchors (`clock.json`): the last time its
/// clock check read the TPM clock; `None` before any.
fn tpm_last(sb: &Sandbox) -> Option<serde_json::Value> {
    let path = PathBuf::from(&sb.env["METERD_STATE_DIR"]).join("clock.json");
    let text = std::fs::read_to_string(&path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.get("tpm_last").filter(|t| !t.is_null()).cloned()
}

/// A sandbox whose meter has read the TPM clock at a start and is stopped,
/// that reading, and a `tss`-only attacker working in the sandbox's `dir`
/// (None when the tests do not run as root).
fn stopped_meter_and_tss_attacker(dir: &str) -> Option<(Sandbox, serde_json::Value, Attacker)> {
    let (uid, gid) = tss_attacker_ids()?;
    let sb = Sandbox::up(1_000_000);
    // The sandbox provisions after the first start; the second start's
    // check is the first to read the TPM clock.
    sb.script("stop-meterd");
    sb.script("start-meterd");
    sb.script("stop-meterd");
    let before = tpm_last(&sb).expect("meterd read the TPM clock at its start");
    let dir = sb.path(dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let attacker = Attacker {
        uid,
        gid,
        tcti: sb.env["METERD_TCTI"].clone(),
        cwd: dir,
    };
    Some((sb, before, attacker))
}

/// A dictionary-attack lockout must not blind the clock check. Any `tss`
/// member can cause one (a primary of its own in the null hierarchy, with
/// an auth value, sent wrong values until the TPM locks out), and
/// unorderly TPM resets cause one by themselves (`tests/torture`'s TPM
/// resets did). In lockout the TPM refuses every DA-protected
/// authorization: meterd's keys and counter are noDA, but the short-lived
/// key that de-obfuscates TPM2_GetTime's counts was not, so each watchdog
/// tick failed and the wall clock was no longer judged against the TPM
/// clock (`clock.json` kept its old TPM reading). After the attack, the
/// next start must read the TPM clock and sell.
#[test]
fn a_dictionary_attack_lockout_does_not_blind_the_clock_check() {
    let Some((sb, before, attacker)) = stopped_meter_and_tss_attacker("da") else {
        return;
    };
    let out = attacker.run(
        "tpm2_createprimary",
        &["-C", "n", "-G", "ecc", "-p", "right", "-c", "da.ctx"],
    );
    assert!(
        out.status.success(),
        "tpm2_createprimary -C n: {}",
        outcome(&out)
    );
    // Wrong values until the TPM says lockout (TPM_RC_LOCKOUT, 0x921).
    let mut locked = None;
    for attempt in 1..=64 {
        let out = attacker.run(
            "tpm2_create",
            &[
                "-C", "da.ctx", "-P", "wrong", "-G", "ecc", "-u", "k.pub", "-r", "k.priv",
            ],
        );
        assert!(!out.status.success(), "a wrong auth value was taken");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        if err.contains("0x921") || err.contains("lockout") {
            locked = Some(attempt);
            break;
        }
    }
    let attempts = locked.expect("the TPM never locked out (64 wrong values)");
    eprintln!("the TPM locked out after {attempts} wrong values");

    sb.script("start-meterd");
    assert_eq!(sb.status()["state"], "ready");
    let after = tpm_last(&sb).expect("clock anchors after the start");
    assert!(
        after["wall_ms"].as_i64() > before["wall_ms"].as_i64(),
        "ATTACK SUCCEEDED: in DA lockout meterd's clock check no longer reads the TPM \
         clock (clock.json's TPM reading is still {before}); meterd.log: {}",
        std::fs::read_to_string(sb.path("meterd.log"))
            .unwrap_or_default()
            .lines()
            .rfind(|l| l.contains("clock check failed"))
            .unwrap_or("(no clock warning)")
    );
    let (_, _, out) = sb.postmark_id("after-lockout");
    ok(&out, "postmark with the TPM in lockout");
}

/// A disabled endorsement hierarchy must not blind the clock check either.
/// Whoever holds the endorsement password (empty unless the owner set one:
/// any `tss` member on a default machine) can disable that hierarchy until
/// the next TPM reset (`tpm2_hierarchycontrol -C e ehEnable clear`).
/// TPM2_GetTime, through which meterd read the TPM clock, names the
/// endorsement hierarchy as its privacy admin, so from then on every
/// watchdog tick failed and the wall clock went unjudged against the TPM
/// clock, while the meter kept selling. TPM2_ReadClock needs no hierarchy:
/// the start after the attack must read the TPM clock and sell.
#[test]
fn a_disabled_endorsement_hierarchy_does_not_blind_the_clock_check() {
    let Some((sb, before, attacker)) = stopped_meter_and_tss_attacker("eh") else {
        return;
    };
    let out = attacker.run("tpm2_hierarchycontrol", &["-C", "e", "ehEnable", "clear"]);
    assert!(
        out.status.success(),
        "tpm2_hierarchycontrol -C e ehEnable clear: {}",
        outcome(&out)
    );
    let out = attacker.run("tpm2_getcap", &["properties-variable"]);
    let caps = String::from_utf8_lossy(&out.stdout);
    assert!(
        caps.lines()
            .any(|l| l.trim_start().starts_with("ehEnable:") && l.trim_end().ends_with(" 0")),
        "the endorsement hierarchy is still enabled: {caps}"
    );

    sb.script("start-meterd");
    assert_eq!(sb.status()["state"], "ready");
    let after = tpm_last(&sb).expect("clock anchors after the start");
    assert!(
        after["wall_ms"].as_i64() > before["wall_ms"].as_i64(),
        "ATTACK SUCCEEDED: with the endorsement hierarchy disabled meterd's clock check no \
         longer reads the TPM clock (clock.json's TPM reading is still {before}); \
         meterd.log: {}",
        std::fs::read_to_string(sb.path("meterd.log"))
            .unwrap_or_default()
            .lines()
            .rfind(|l| l.contains("clock check failed"))
            .unwrap_or("(no clock warning)")
    );
    assert_eq!(
        after["reset_count"], before["reset_count"],
        "the TPM's reset count moved without a TPM reset"
    );
    let (_, _, out) = sb.postmark_id("after-eh-disabled");
    ok(&out, "postmark with the endorsement hierarchy disabled");
}
