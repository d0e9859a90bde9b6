//! End to end: provisioning state, recharge, rate tables, locks from
//! rollback and tamper, restarts, the shipped bus policy and introspection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use std::path::{Path, PathBuf};

use meter_proto::exit;
use sandbox::{ok, write, Sandbox};

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

fn state_dir(sb: &Sandbox) -> PathBuf {
    PathBuf::from(&sb.env["METERD_STATE_DIR"])
}

fn postmark_ok(sb: &Sandbox, id: &str) {
    ok(&sb.postmark_id(id).2, "postmark");
}

fn postmark_code(sb: &Sandbox, id: &str) -> Option<i32> {
    code(&sb.postmark_id(id).2)
}

/// Clears the lock in force with a fresh authority order.
fn clear_lock(sb: &Sandbox) {
    let order = sb.clear_lock_order();
    ok(&sb.meterctl(&["clear-lock", &order]), "clear-lock");
    // The same order again is refused: the lock it named is gone.
    let again = sb.meterctl(&["clear-lock", &order]);
    assert_ne!(code(&again), Some(0));
}

fn copy_db(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for suffix in ["", "-wal", "-shm"] {
        let name = format!("ledger.sqlite{suffix}");
        let src = from.join(&name);
        let dst = to.join(&name);
        let _ = std::fs::remove_file(&dst);
        if src.exists() {
            std::fs::copy(&src, &dst).expect("copy db");
        }
    }
}

#[test]
fn unprovisioned_meter_sells_nothing() {
    let sb = Sandbox::up_with(&[("SANDBOX_PROVISION", "0")]);
    let s = sb.status();
    assert_eq!(s["state"], "unprovisioned", "{s}");
    assert_eq!(postmark_code(&sb, "p"), Some(exit::NOT_PROVISIONED));
}

#[test]
fn recharge_is_single_use_and_checked() {
    let sb = Sandbox::up(1_000);
    let (_, dr0, ct0) = sb.registers();
    let v = sb.path("v.pem").to_string_lossy().into_owned();
    sb.authority(&[
        "voucher",
        "--meter",
        &sb.meter_id(),
        "--amount",
        "2500",
        "--out",
        &v,
    ]);
    let out = sb.meterctl_json(&["recharge", &v]);
    assert_eq!(out["descending"].as_u64(), Some(dr0 + 2500), "{out}");
    assert_eq!(sb.registers().2, ct0 + 2500);
    // Replay.
    let replay = sb.meterctl(&["recharge", &v]);
    assert_eq!(code(&replay), Some(exit::REFUSED), "{replay:?}");
    assert!(String::from_utf8_lossy(&replay.stderr).contains("Replay"));
    // Another meter's voucher.
    let foreign = sb.path("f.pem").to_string_lossy().into_owned();
    sb.authority(&[
        "voucher",
        "--meter",
        "MTR-000000000000",
        "--amount",
        "5",
        "--out",
        &foreign,
    ]);
    assert_eq!(
        code(&sb.meterctl(&["recharge", &foreign])),
        Some(exit::INVALID)
    );
    // Signed by another authority.
    let other = tempfile::tempdir().expect("tmp");
    let od = other.path().to_string_lossy().into_owned();
    sb.authority(&["--dir", &od, "init"]);
    let forged = sb.path("forged.pem").to_string_lossy().into_owned();
    sb.authority(&[
        "--dir",
        &od,
        "voucher",
        "--meter",
        &sb.meter_id(),
        "--amount",
        "9",
        "--out",
        &forged,
    ]);
    assert_eq!(
        code(&sb.meterctl(&["recharge", &forged])),
        Some(exit::REFUSED)
    );
    // Garbage.
    let junk = write(&sb, "junk.pem", b"not a voucher");
    assert_eq!(
        code(&sb.meterctl(&["recharge", &junk])),
        Some(exit::INVALID)
    );
    // Overflow: a voucher for u64::MAX cannot be credited.
    let huge = sb.path("huge.pem").to_string_lossy().into_owned();
    sb.authority(&[
        "voucher",
        "--meter",
        &sb.meter_id(),
        "--amount",
        &u64::MAX.to_string(),
        "--out",
        &huge,
    ]);
    assert_eq!(
        code(&sb.meterctl(&["recharge", &huge])),
        Some(exit::INVALID)
    );
    assert_eq!(sb.registers().2, ct0 + 2500, "refusals changed nothing");
}

#[test]
fn rate_tables_must_be_newer_and_signed() {
    let sb = Sandbox::up(10_000);
    let v1 = sb.status()["rates_version"].as_u64().expect("version");
    let repo = sandbox::repo();
    let example = std::fs::read_to_string(repo.join("meter-authority/rates.example.toml"))
        .expect("example rates");
    // Same version again: stale.
    let same = sb.path("same.pem").to_string_lossy().into_owned();
    let src = write(&sb, "same.toml", example.as_bytes());
    sb.authority(&["rates", "--in", &src, "--out", &same]);
    assert_eq!(
        code(&sb.meterctl(&["rates", "install", &same])),
        Some(exit::REFUSED)
    );
    // Newer version with a new postmark price: accepted and used.
    let newer = example
        .replace(&format!("version = {v1}"), &format!("version = {}", v1 + 1))
        .replace("postmark = 500", "postmark = 700");
    let src2 = write(&sb, "v2.toml", newer.as_bytes());
    let t2 = sb.path("v2.pem").to_string_lossy().into_owned();
    sb.authority(&["rates", "--in", &src2, "--out", &t2]);
    ok(
        &sb.meterctl(&["rates", "install", &t2]),
        "install newer table",
    );
    let s = sb.status();
    assert_eq!(s["rates_version"].as_u64(), Some(v1 + 1));
    assert_eq!(s["rates"]["postmark"].as_u64(), Some(700));
    let (ar0, ..) = sb.registers();
    postmark_ok(&sb, "priced");
    assert_eq!(sb.registers().0, ar0 + 700);
    // Signed by another key: refused.
    let other = tempfile::tempdir().expect("tmp");
    let od = other.path().to_string_lossy().into_owned();
    sb.authority(&["--dir", &od, "init"]);
    let newest = example.replace(&format!("version = {v1}"), &format!("version = {}", v1 + 5));
    let src3 = write(&sb, "v3.toml", newest.as_bytes());
    let t3 = sb.path("v3.pem").to_string_lossy().into_owned();
    sb.authority(&["--dir", &od, "rates", "--in", &src3, "--out", &t3]);
    assert_eq!(
        code(&sb.meterctl(&["rates", "install", &t3])),
        Some(exit::REFUSED)
    );
    // Unsigned garbage.
    let junk = write(&sb, "junk.der", &[0x30, 0x80, 0x00]);
    assert_eq!(
        code(&sb.meterctl(&["rates", "install", &junk])),
        Some(exit::INVALID)
    );
    assert_eq!(sb.status()["rates_version"].as_u64(), Some(v1 + 1));
}

#[test]
fn restored_older_database_locks_until_authority_clears() {
    let sb = Sandbox::up(100_000);
    postmark_ok(&sb, "before");
    sb.script("stop-meterd");
    let backup = sb.path("backup");
    copy_db(&state_dir(&sb), &backup);
    sb.script("start-meterd");
    postmark_ok(&sb, "after");
    let spent = sb.registers();
    sb.script("stop-meterd");
    copy_db(&backup, &state_dir(&sb));
    sb.script("start-meterd");

    let s = sb.status();
    assert_eq!(s["state"], "locked", "{s}");
    assert_eq!(s["lock_reason"], "rollback");
    assert_eq!(postmark_code(&sb, "refused"), Some(exit::LOCKED));
    // Still locked after a restart: the lock is in the sealed ledger.
    sb.script("restart-meterd");
    assert_eq!(sb.status()["state"], "locked");
    clear_lock(&sb);
    assert_eq!(sb.status()["state"], "ready");
    postmark_ok(&sb, "cleared");
    let now = sb.registers();
    assert!(
        now.0 < spent.0 + 1_000,
        "the restored copy's registers are in force"
    );
    assert_eq!(sb.meterctl_json(&["audit"])["ok"], true);
}

#[test]
fn edited_row_locks_as_tamper_until_reanchored() {
    let sb = Sandbox::up(100_000);
    postmark_ok(&sb, "one");
    postmark_ok(&sb, "two");
    sb.script("stop-meterd");
    let db = state_dir(&sb).join("ledger.sqlite");
    let db = db.to_string_lossy().into_owned();
    let triggers = ok(
        &sb.run(
            "sqlite3",
            &[&db, "SELECT name FROM sqlite_master WHERE type='trigger'"],
        ),
        "list triggers",
    );
    let mut sql = String::new();
    for t in triggers.lines().filter(|l| !l.is_empty()) {
        sql.push_str(&format!("DROP TRIGGER \"{t}\";"));
    }
    sql.push_str("UPDATE journal SET descending = descending + 100000 WHERE seq = (SELECT max(seq) FROM journal);");
    ok(&sb.run("sqlite3", &[&db, &sql]), "edit a row");
    sb.script("start-meterd");
    let s = sb.status();
    assert_eq!(s["state"], "locked", "{s}");
    assert_eq!(s["lock_reason"], "tamper");
    assert_eq!(postmark_code(&sb, "refused"), Some(exit::LOCKED));
    let audit = sb.meterctl(&["--json", "audit"]);
    assert_eq!(code(&audit), Some(exit::NOT_VALID));
    clear_lock(&sb);
    assert_eq!(sb.status()["state"], "ready");
    // The reanchor restored AR + DR = CT: the edited-up descending register was not kept.
    let (ar, dr, ct) = sb.registers();
    assert_eq!(dr, ct - ar);
    assert!(dr < 100_000, "the forged 100000 must not survive: {dr}");
    assert_eq!(sb.meterctl_json(&["audit"])["ok"], true);
    postmark_ok(&sb, "three");
    sb.script("restart-meterd");
    assert_eq!(sb.status()["state"], "ready");
}

#[test]
fn registers_survive_daemon_and_tpm_restarts() {
    let sb = Sandbox::up(100_000);
    postmark_ok(&sb, "a");
    let regs = sb.registers();
    sb.script("restart-meterd");
    assert_eq!(sb.registers(), regs);
    assert_eq!(sb.status()["state"], "ready");
    // A TPM reset: swtpm restarted on its state; keys reload from blobs.
    sb.script("restart-tpm");
    let mut done = false;
    for i in 0..5 {
        match postmark_code(&sb, &format!("after-reset-{i}")) {
            Some(0) => {
                done = true;
                break;
            }
            Some(c) => assert_eq!(
                c,
                exit::HOUSING,
                "only Housing errors while the TPM is back"
            ),
            None => panic!("meterctl killed"),
        }
    }
    assert!(done, "postmarks work again after a TPM reset");
    assert_eq!(sb.meterctl_json(&["audit"])["ok"], true);
}

#[test]
fn introspection_matches_shipped_xml() {
    let sb = Sandbox::up(1_000);
    sb.assert_interface_is_shipped("org.meterd.Meter1", "/org/meterd/Meter1");
}

#[test]
fn bus_policy_and_daemon_enforce_roles() {
    if unsafe_is_not_root() {
        eprintln!("skipped: creating test users needs root (CI runs as root)");
        return;
    }
    let sb = Sandbox::up(10_000);
    for g in ["meter", "meteradmin"] {
        let _ = sb.run("groupadd", &["-f", g]);
    }
    for (user, group) in [
        ("meterd-e2e-user", "meter"),
        ("meterd-e2e-admin", "meteradmin"),
    ] {
        if !sb.run("id", &[user]).status.success() {
            ok(
                &sb.run(
                    "useradd",
                    &["--system", "--no-create-home", "-G", group, user],
                ),
                "useradd",
            );
        }
    }
    // Let other uids reach the private bus socket.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755));
    let bin = sandbox::bin_dir().join("meterctl");
    let bin = bin.to_string_lossy().into_owned();
    let as_user = |user: &str, args: &[&str]| {
        let mut a = vec!["-u", user, "--", bin.as_str()];
        a.extend_from_slice(args);
        sb.run("runuser", &a)
    };
    let regs = sb.registers();
    let v = sb.path("v.pem").to_string_lossy().into_owned();
    sb.authority(&[
        "voucher",
        "--meter",
        &sb.meter_id(),
        "--amount",
        "10",
        "--out",
        &v,
    ]);
    let _ = std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o644));
    let msg = write(&sb, "u.txt", b"user mail");
    let _ = std::fs::set_permissions(&msg, std::fs::Permissions::from_mode(0o644));
    let tok = sb.dir.path().join("tok");
    std::fs::create_dir_all(&tok).expect("mkdir");
    let _ = std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o777));
    let t = tok.join("u.tsr").to_string_lossy().into_owned();

    // nobody: nothing.
    let denied = as_user("nobody", &["status"]);
    assert_eq!(code(&denied), Some(exit::ACCESS));
    // The bus's own AccessDenied reaches the user with what to do.
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("ask an administrator to add you"), "{err}");
    assert!(err.contains("group meter"), "{err}");
    assert_eq!(
        code(&as_user("nobody", &["recharge", &v])),
        Some(exit::ACCESS)
    );
    // meter group: sales and reads, no administration.
    ok(&as_user("meterd-e2e-user", &["status"]), "user status");
    ok(
        &as_user(
            "meterd-e2e-user",
            &["postmark", &msg, "-o", &t, "--request-id", "u1"],
        ),
        "user postmark",
    );
    assert_eq!(
        code(&as_user("meterd-e2e-user", &["recharge", &v])),
        Some(exit::ACCESS)
    );
    // meteradmin group: administration.
    ok(
        &as_user("meterd-e2e-admin", &["recharge", &v]),
        "admin recharge",
    );
    let after = sb.registers();
    assert_eq!(
        after.2,
        regs.2 + 10,
        "only the admin's recharge moved the registers"
    );
}

fn unsafe_is_not_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() != 0 }
}
