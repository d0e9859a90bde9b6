//! Issue 12, item 6, end to end as root: a postmark token minted outside meterd with the
//! meter's own key is flagged by `meter-authority lookup` once the meter has reported.
//!
//! Root reads `keys/auth`, derives the postmark key's auth value with openssl
//! (`HMAC-SHA256(secret, "meterd-tpm-auth-v1:key:postmark")`, as in `attack_tpm`), and
//! `tests/forge_token.py` (python3 + tpm2-tools, no project code) turns a token the meter
//! sold into one over another file under the same serial, re-signed by the TPM: it
//! verifies with `openssl ts -verify`. No ledger row holds it: after report + inspect,
//! `lookup` answers "reported with another digest" for it (exit 3) and "reported" for
//! the token the meter sold.
//!
//! Needs root (CI runs as root); skips otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::root_tools;
use crate::sandbox;

use std::path::PathBuf;
use std::process::Command;

use sandbox::{ok, write, Sandbox};

fn path(sb: &Sandbox, name: &str) -> String {
    sb.path(name).to_string_lossy().into_owned()
}

#[test]
fn a_token_minted_outside_meterd_is_flagged_by_lookup() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let sb = Sandbox::up(100_000);
    let (msg, token, out) = sb.postmark_id("sold");
    ok(&out, "postmark sold");
    let state = PathBuf::from(&sb.env["METERD_STATE_DIR"]);
    let work = sb.path("loot");
    std::fs::create_dir_all(&work).unwrap();
    for ext in ["pub", "priv"] {
        std::fs::copy(
            state.join(format!("keys/postmark.{ext}")),
            work.join(format!("postmark.{ext}")),
        )
        .unwrap();
    }
    let auth = root_tools::derived_auth(&state.join("keys/auth"), "postmark");
    let other = write(&sb, "other.txt", b"a letter the meter never saw");
    let forged = path(&sb, "forged.tsr");
    // swtpm serves one connection: meterd steps aside while root uses the TPM.
    sb.script("stop-meterd");
    let script = sandbox::repo().join("meterd/tests/forge_token.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([&token, &msg, &other, &forged, &auth])
        .arg(&work)
        .env("TPM2TOOLS_TCTI", &sb.env["METERD_TCTI"])
        .output()
        .unwrap();
    ok(&out, "forge_token.py");
    sb.script("start-meterd");
    let root = sb.root_pem().to_string_lossy().into_owned();
    ok(
        &sb.ts_verify(&other, &forged, &root),
        "openssl ts -verify of the forged token",
    );

    let rep = path(&sb, "rep1.pem");
    sb.meterctl_json(&["report", "-o", &rep, "--request-id", "rep1"]);
    let mut args = vec!["inspect", rep.as_str(), "--out"];
    let ack = path(&sb, "ack1.pem");
    args.push(&ack);
    ok(&sb.authority(&args), "inspect");
    let lookup = |t: &str| {
        let o = sb.run(
            &sandbox::bin_dir().join("meter-authority").to_string_lossy(),
            &["lookup", t],
        );
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (code, said) = lookup(&token);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("reported: row"), "{said}");
    let (code, said) = lookup(&forged);
    assert_eq!(code, Some(3), "the forged token must be flagged: {said}");
    assert!(
        said.contains("REPORTED WITH ANOTHER DIGEST") || said.contains("UNREPORTED"),
        "{said}"
    );
}
