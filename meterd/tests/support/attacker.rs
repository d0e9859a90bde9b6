//! The attacker's tools for the `attack_*` tests (issue 11): real uids that
//! are members of group `meter` (never `meteradmin`), calling the meter over
//! the sandbox's bus the way any local program could — `busctl` and
//! `meterctl` run under `setpriv` as that uid — next to the administrator
//! (root, as in CI) doing the operation the attack targets.
//!
//! Everything here speaks the D-Bus contract only (method names, signatures,
//! error names, `meterctl` and `meter-authority` command lines, the signed
//! payloads' JSON), never meterd's internals, so the attacks stay valid
//! across any rewrite of the daemon.
//!
//! The users are those of `e2e_admin` (`meterd-e2e-user`) plus a second
//! member of `meter` (`meterd-e2e-user2`), created with `useradd` when
//! missing, as `e2e_admin` and `torture/src/access.rs` do. Creating users
//! needs root: [`root_or_skip`] says so and the test returns.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use crate::sandbox::Sandbox;

/// The plain user of `e2e_admin`: member of `meter` only.
pub const USER_A: &str = "meterd-e2e-user";
/// A second plain user, member of `meter` only.
pub const USER_B: &str = "meterd-e2e-user2";

const DEST: &str = "org.meterd.Meter1";
const PATH: &str = "/org/meterd/Meter1";
const IFACE: &str = "org.meterd.Meter1";

/// True when running as root; otherwise says why the test does nothing.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("{test}: skipped: playing other uids needs root (CI runs as root)");
    }
    root
}

/// A real uid in group `meter`.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

fn id(args: &[&str]) -> Option<String> {
    let out = Command::new("id").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn lookup(name: &str) -> Option<User> {
    Some(User {
        name: name.to_owned(),
        uid: id(&["-u", name])?.parse().ok()?,
        gid: id(&["-g", name])?.parse().ok()?,
    })
}

/// The user `name`, a member of `meter` and not of `meteradmin`, created
/// when missing (tests run in parallel: a `useradd` that loses the race for
/// `/etc/passwd` is retried).
pub fn user(name: &str) -> User {
    let _ = Command::new("groupadd").args(["-f", "meter"]).output();
    let mut last = String::new();
    for _ in 0..50 {
        if let Some(u) = lookup(name) {
            let groups = id(&["-nG", name]).unwrap_or_default();
            let groups: Vec<&str> = groups.split_whitespace().collect();
            assert!(
                groups.contains(&"meter") && !groups.contains(&"meteradmin"),
                "user {name} must be in group meter and not meteradmin, has {groups:?}"
            );
            return u;
        }
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "-G", "meter", name])
            .output()
            .expect("run useradd");
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    panic!("could not create user {name}: {last}");
}

/// A directory under the sandbox every uid may write (tokens, reports).
pub fn drop_dir(sb: &Sandbox) -> PathBuf {
    let d = sb.path("drop");
    std::fs::create_dir_all(&d).expect("mkdir drop");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod drop");
    d
}

impl User {
    /// `program ARGS` as this uid (its groups from the user database), with
    /// the sandbox's environment (bus address).
    pub fn run(&self, sb: &Sandbox, program: &str, args: &[&str]) -> Output {
        Command::new("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program)
            .args(args)
            .envs(&sb.env)
            .env("HOME", "/")
            .output()
            .expect("run setpriv")
    }

    /// `busctl call` of `org.meterd.Meter1.METHOD SIG ARGS...` as this uid.
    pub fn busctl(&self, sb: &Sandbox, method: &str, sig: &str, args: &[&str]) -> Output {
        let address = format!("--address={}", sb.env["DBUS_SYSTEM_BUS_ADDRESS"]);
        let mut all = vec![
            address.as_str(),
            "--json=short",
            "call",
            DEST,
            PATH,
            IFACE,
            method,
            sig,
        ];
        all.extend_from_slice(args);
        self.run(sb, "busctl", &all)
    }

    /// `Report s ID` as this uid: the free call a member of `meter` may make.
    pub fn report(&self, sb: &Sandbox, request_id: &str) -> Output {
        self.busctl(sb, "Report", "s", &[request_id])
    }

    /// `Report s ID` as this uid, asserting the meter answered it.
    pub fn report_ok(&self, sb: &Sandbox, request_id: &str) {
        let out = self.report(sb, request_id);
        assert!(
            out.status.success(),
            "{}'s Report {request_id:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `meterctl --json ARGS` as this uid.
    pub fn meterctl(&self, sb: &Sandbox, args: &[&str]) -> Output {
        let bin = crate::sandbox::bin_dir().join("meterctl");
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.run(sb, &bin.to_string_lossy(), &all)
    }
}

/// The `error.kind` of a failed `meterctl --json` run, or "" on success.
pub fn error_kind(out: &Output) -> String {
    if out.status.success() {
        return String::new();
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["error"]["kind"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("(no JSON error; exit {:?})", out.status.code()))
}

/// One line saying how a command ended, for failure messages.
pub fn outcome(out: &Output) -> String {
    if out.status.success() {
        return "success".into();
    }
    format!(
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// The JSON content of a signed payload (PEM CMS) the authority wrote, read
/// as anyone who sees the file could (no verification).
pub fn payload(sb: &Sandbox, pem: &str) -> serde_json::Value {
    let out = sb.run(
        "openssl",
        &["cms", "-verify", "-noverify", "-inform", "PEM", "-in", pem],
    );
    assert!(
        out.status.success(),
        "openssl cms -verify -noverify {pem}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("payload JSON")
}

/// Hex SHA-384 of the DER of a PEM certificate (how the meter names an
/// installed anchor or agent CA), by stock openssl.
pub fn cert_sha384(sb: &Sandbox, pem: &str) -> String {
    let der = format!("{pem}.der");
    let out = sb.run(
        "openssl",
        &["x509", "-in", pem, "-outform", "DER", "-out", &der],
    );
    assert!(out.status.success(), "openssl x509: {out:?}");
    let out = sb.run("openssl", &["dgst", "-sha384", "-r", &der]);
    assert!(out.status.success(), "openssl dgst: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_owned()
}

/// Path under the sandbox as a string.
pub fn p(sb: &Sandbox, name: &str) -> String {
    sb.path(name).to_string_lossy().into_owned()
}

/// A voucher from the sandbox authority; returns (file, its sequence).
pub fn voucher(sb: &Sandbox, name: &str, amount: u64) -> (String, u64) {
    let v = p(sb, name);
    sb.authority(&[
        "voucher",
        "--meter",
        &sb.meter_id(),
        "--amount",
        &amount.to_string(),
        "--out",
        &v,
    ]);
    let seq = payload(sb, &v)["sequence"].as_u64().expect("sequence");
    (v, seq)
}
