//! Issue 11, hole 6, tried the attacker's way: raw D-Bus (`busctl`,
//! `dbus-send`, `gdbus`) from processes whose credentials are set with
//! `setpriv`, against a whole sandbox.
//!
//! * Properties must not bypass the daemon's own group check: on a bus whose
//!   policy lets everyone through (as the torture `access-daemon` run does),
//!   a uid the daemon refuses `Status` must not read `Descending` either.
//! * The bus and the daemon must agree on who is in a group: both take the
//!   groups of the connection (what the kernel told the bus), not the user
//!   database. A process given group `meter` by `setpriv --groups` is a
//!   member for both; a user listed in `/etc/group` but running without the
//!   group is a member for neither.
//! * Signals (PropertiesChanged carries the registers) reach members only.
//!
//! They switch uid, so they need root (CI runs as root); otherwise they
//! print why and pass.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sandbox::Sandbox;

const DEST: &str = "org.meterd.Meter1";
const PATH: &str = "/org/meterd/Meter1";
/// uid and gid of `nobody`: a uid in no group of the meter.
const NOBODY: &str = "65534";
/// A user listed in /etc/group `meter`, created by the test.
const LISTED_USER: &str = "meterd-attack6";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("{test}: skipped: switching uid needs root (CI runs as root)");
    true
}

/// Runs a command, retrying while /etc/passwd or /etc/group is locked by a
/// test running in parallel.
fn run_locked(program: &str, args: &[&str]) -> Output {
    for _ in 0..50 {
        let out = Command::new(program).args(args).output().expect(program);
        if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("lock") {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{program} {args:?}: /etc/passwd or /etc/group stayed locked");
}

/// gid of a group, created (as a package install would) when missing.
fn group_gid(name: &str) -> String {
    let out = Command::new("getent")
        .args(["group", name])
        .output()
        .unwrap();
    if !out.status.success() {
        run_locked("groupadd", &["-f", name]);
        return group_gid_existing(name);
    }
    group_gid_existing(name)
}

fn group_gid_existing(name: &str) -> String {
    let out = Command::new("getent")
        .args(["group", name])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    line.trim()
        .split(':')
        .nth(2)
        .unwrap_or_else(|| panic!("no gid for group {name}: {line:?}"))
        .to_owned()
}

/// A bus policy that lets everyone own and call the meter: every refusal
/// then comes from the daemon's own check (the torture `access-daemon` one).
fn permissive_policy() -> tempfile::TempPath {
    let mut f = tempfile::Builder::new()
        .prefix("meterd-permissive-")
        .suffix(".conf")
        .tempfile()
        .unwrap();
    f.write_all(
        br#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy context="default">
    <allow own="org.meterd.Meter1"/>
    <allow send_destination="org.meterd.Meter1"/>
  </policy>
</busconfig>
"#,
    )
    .unwrap();
    let path = f.into_temp_path();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

fn path_str(p: &tempfile::TempPath) -> String {
    p.to_string_lossy().into_owned()
}

/// A sandbox with the given bus policy (None: the shipped one); its socket
/// is reachable by other uids.
fn sandbox(policy: Option<&str>) -> Sandbox {
    let sb = match policy {
        Some(p) => Sandbox::up_with(&[("SANDBOX_FUNDS", "100000"), ("SANDBOX_POLICY", p)]),
        None => Sandbox::up(100_000),
    };
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    sb
}

/// Swaps the bus policy of a running sandbox: stops everything, starts it
/// again on the same state with `policy` (None: the shipped one).
fn restart_with_policy(sb: &Sandbox, policy: Option<&str>) {
    sb.script("down");
    let shipped = sandbox::repo().join("dbus/org.meterd.Meter1.conf");
    let shipped = shipped.to_string_lossy().into_owned();
    sb.script_env("start", &[("SANDBOX_POLICY", policy.unwrap_or(&shipped))]);
}

/// Who calls, as `setpriv` arguments.
#[derive(Clone, Copy, Debug)]
enum Who<'a> {
    /// uid/gid nobody, no supplementary group.
    Outsider,
    /// uid/gid nobody with this gid as supplementary group, set on the
    /// process only (nobody is in no group of /etc/group).
    NobodyWithGroup(&'a str),
    /// A user listed in /etc/group for a meter group, running with its
    /// primary group only (as after `usermod -aG` without a new login).
    ListedWithoutGroup(&'a str),
}

fn setpriv_args(who: Who<'_>) -> Vec<String> {
    let v: Vec<String> = match who {
        Who::Outsider => vec![
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".into(),
        ],
        Who::NobodyWithGroup(gid) => vec![
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            format!("--groups={gid}"),
        ],
        Who::ListedWithoutGroup(user) => vec![
            format!("--reuid={user}"),
            format!("--regid={}", primary_gid(user)),
            "--clear-groups".into(),
        ],
    };
    v
}

fn primary_gid(user: &str) -> String {
    let out = Command::new("id").args(["-g", user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs `program args` as `who` on the sandbox's bus.
fn as_caller(sb: &Sandbox, who: Who<'_>, program: &str, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(setpriv_args(who))
        .arg(program)
        .args(args)
        .env(
            "DBUS_SYSTEM_BUS_ADDRESS",
            &sb.env["DBUS_SYSTEM_BUS_ADDRESS"],
        )
        .current_dir("/")
        .output()
        .expect("setpriv")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_owned()
}

/// `dbus-send` of `iface.member` with `args` (dbus-send syntax) as `who`;
/// Ok(reply) or Err("ErrorName: message").
fn send(
    sb: &Sandbox,
    who: Who<'_>,
    iface: &str,
    member: &str,
    args: &[&str],
) -> Result<String, String> {
    let method = format!("{iface}.{member}");
    let mut a = vec![
        "--system",
        "--print-reply",
        "--reply-timeout=20000",
        "--dest=org.meterd.Meter1",
        PATH,
        method.as_str(),
    ];
    a.extend_from_slice(args);
    let out = as_caller(sb, who, "dbus-send", &a);
    let t = text(&out);
    if out.status.success() {
        Ok(t)
    } else {
        Err(t.strip_prefix("Error ").unwrap_or(&t).to_owned())
    }
}

/// What the daemon says to a refused caller: `org.meterd.Meter1.Error.AccessDenied`
/// for members, the standard AccessDenied for properties (zbus getters can
/// only return `org.freedesktop.DBus.Error.*`), always naming the group.
fn daemon_refusal(err: &str, group: &str) -> bool {
    err.contains("AccessDenied")
        && !err.contains("Rejected send message")
        && err.contains(&format!("group {group}"))
}

/// The bus policy's refusal (dbus-daemon's text).
fn bus_refusal(err: &str) -> bool {
    err.starts_with("org.freedesktop.DBus.Error.AccessDenied") && err.contains("Rejected send")
}

/// Property names of org.meterd.Meter1, from the shipped introspection XML.
fn properties() -> Vec<String> {
    let xml = std::fs::read_to_string(sandbox::repo().join("dbus/org.meterd.Meter1.xml")).unwrap();
    let names: Vec<String> = xml
        .split("<property name=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next().map(str::to_owned))
        .collect();
    assert!(names.len() >= 9, "properties in the XML: {names:?}");
    names
}

/// Hole 6, first half: `Descending` and the other registers were readable
/// through org.freedesktop.DBus.Properties by a uid the daemon refuses
/// `Status`, whenever the bus policy let the call through.
#[test]
fn hole6_properties_bypass_the_daemons_group_check() {
    if skip_unless_root("hole6_properties_bypass_the_daemons_group_check") {
        return;
    }
    let meter_gid = group_gid("meter");
    group_gid("meteradmin");
    let policy = permissive_policy();
    let sb = sandbox(Some(&path_str(&policy)));

    // The daemon refuses the outsider Status (this already held) ...
    let status = send(&sb, Who::Outsider, DEST, "Status", &[]);
    let err = status.expect_err("an outsider got Status");
    assert!(
        err.starts_with("org.meterd.Meter1.Error.AccessDenied"),
        "Status refused by the daemon: {err}"
    );

    // ... so it must refuse the registers too, the way an attacker reads them.
    let out = as_caller(
        &sb,
        Who::Outsider,
        "busctl",
        &[
            "--address",
            &sb.env["DBUS_SYSTEM_BUS_ADDRESS"],
            "get-property",
            DEST,
            PATH,
            DEST,
            "Descending",
        ],
    );
    assert!(
        !out.status.success(),
        "uid nobody (in no meter group) read Descending with busctl although the \
         daemon refuses it Status: {}",
        text(&out)
    );
    // (busctl prints sd-bus's errno text for standard error names; the
    // daemon's message, naming the group, is checked through dbus-send below.)
    assert!(
        text(&out).contains("Access denied"),
        "busctl's refusal: {}",
        text(&out)
    );
    let mut leaked = Vec::new();
    for p in properties() {
        match send(
            &sb,
            Who::Outsider,
            "org.freedesktop.DBus.Properties",
            "Get",
            &["string:org.meterd.Meter1", &format!("string:{p}")],
        ) {
            Ok(v) => leaked.push(format!("{p} = {}", v.lines().last().unwrap_or("").trim())),
            Err(e) => assert!(daemon_refusal(&e, "meter"), "Get {p}: {e}"),
        }
    }
    assert!(
        leaked.is_empty(),
        "an outsider read these properties through Properties.Get: {leaked:?}"
    );
    let all = send(
        &sb,
        Who::Outsider,
        "org.freedesktop.DBus.Properties",
        "GetAll",
        &["string:org.meterd.Meter1"],
    );
    match all {
        Ok(v) => panic!("an outsider read every property through Properties.GetAll:\n{v}"),
        Err(e) => assert!(daemon_refusal(&e, "meter"), "GetAll: {e}"),
    }

    // A member still reads them (through Get, GetAll and busctl).
    let member = Who::NobodyWithGroup(&meter_gid);
    let v = send(
        &sb,
        member,
        "org.freedesktop.DBus.Properties",
        "GetAll",
        &["string:org.meterd.Meter1"],
    )
    .expect("a member reads every property");
    assert!(v.contains("Descending"), "GetAll as a member: {v}");
    let out = as_caller(
        &sb,
        member,
        "busctl",
        &[
            "--address",
            &sb.env["DBUS_SYSTEM_BUS_ADDRESS"],
            "get-property",
            DEST,
            PATH,
            DEST,
            "Descending",
        ],
    );
    assert_eq!(text(&out), "t 100000", "Descending read by a member");
    // Set is an administrator's call for the bus policy; the daemon agrees.
    let set = send(
        &sb,
        member,
        "org.freedesktop.DBus.Properties",
        "Set",
        &[
            "string:org.meterd.Meter1",
            "string:Descending",
            "variant:uint64:1",
        ],
    );
    assert!(
        set.as_ref().is_err_and(|e| daemon_refusal(e, "meteradmin")),
        "Set by a member: {set:?}"
    );
}

/// Hole 6, second half: the bus judged groups by the connection's
/// credentials, the daemon by the user database, so the two fences gave
/// different verdicts. Each caller's `Status` is judged by the shipped
/// policy (the bus's verdict) and, on the same meter restarted behind a
/// permissive bus, by the daemon alone; the two verdicts must be the same.
#[test]
fn hole6_bus_and_daemon_disagree_about_groups() {
    if skip_unless_root("hole6_bus_and_daemon_disagree_about_groups") {
        return;
    }
    let meter_gid = group_gid("meter");
    group_gid("meteradmin");
    if !Command::new("id")
        .arg(LISTED_USER)
        .output()
        .unwrap()
        .status
        .success()
    {
        let out = run_locked(
            "useradd",
            &["--system", "--no-create-home", "-G", "meter", LISTED_USER],
        );
        assert!(
            out.status.success() || text(&out).contains("already exists"),
            "useradd: {}",
            text(&out)
        );
    }
    let groups = text(
        &Command::new("id")
            .args(["-nG", LISTED_USER])
            .output()
            .unwrap(),
    );
    assert!(
        groups.split_whitespace().any(|g| g == "meter"),
        "{LISTED_USER} is listed in group meter: {groups}"
    );

    let callers = [
        (
            "uid nobody given group meter by setpriv --groups (not in /etc/group)",
            Who::NobodyWithGroup(&meter_gid),
        ),
        (
            "user listed in /etc/group meter, running without that group",
            Who::ListedWithoutGroup(LISTED_USER),
        ),
    ];

    // The shipped policy: the bus decides first; a call it lets through is
    // then judged by the daemon.
    let sb = sandbox(None);
    let mut bus = Vec::new();
    let mut end_to_end = Vec::new();
    for (what, who) in callers {
        let r = send(&sb, who, DEST, "Status", &[]);
        bus.push(!r.as_ref().is_err_and(|e| bus_refusal(e)));
        end_to_end.push((what, r));
    }
    // The daemon alone: the same meter behind a permissive bus.
    let policy = permissive_policy();
    restart_with_policy(&sb, Some(&path_str(&policy)));
    let mut daemon = Vec::new();
    for (_, who) in callers {
        let r = send(&sb, who, DEST, "Status", &[]);
        daemon.push(!r.as_ref().is_err_and(|e| daemon_refusal(e, "meter")));
    }
    let verdict = |allowed: bool| if allowed { "allowed" } else { "denied" };
    let mut disagree = Vec::new();
    for (i, (what, _)) in callers.iter().enumerate() {
        if bus[i] != daemon[i] {
            disagree.push(format!(
                "{what}: bus {}, daemon {} (shipped policy, end to end: {:?})",
                verdict(bus[i]),
                verdict(daemon[i]),
                end_to_end[i].1
            ));
        }
    }
    assert!(
        disagree.is_empty(),
        "the bus policy and the daemon judge group membership differently:\n{}",
        disagree.join("\n")
    );
    // Both follow the connection's groups.
    assert_eq!(
        (bus.as_slice(), daemon.as_slice()),
        (&[true, false][..], &[true, false][..]),
        "member by connection: allowed; listed but without the group: denied"
    );
    assert!(
        end_to_end[0].1.is_ok(),
        "Status for a process in group meter, shipped policy: {:?}",
        end_to_end[0].1
    );
}

/// A signal monitor (`gdbus monitor`) run as `who`; its output goes to a file.
struct Listener {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl Listener {
    fn start(sb: &Sandbox, who: Who<'_>, name: &str) -> Listener {
        let out = sb.path(&format!("signals-{name}.txt"));
        let file = std::fs::File::create(&out).unwrap();
        let err = file.try_clone().unwrap();
        let child = Command::new("setpriv")
            .args(setpriv_args(who))
            .args([
                "gdbus",
                "monitor",
                "--address",
                &sb.env["DBUS_SYSTEM_BUS_ADDRESS"],
                "--dest",
                DEST,
            ])
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .expect("gdbus monitor");
        Listener { child, out }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits until the monitor says it watches the name.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.text().contains("is owned by") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PropertiesChanged carries the registers: the shipped policy delivers
/// the meter's signals to members only, and method replies still reach
/// every caller the policy lets call.
#[test]
fn signals_reach_members_only() {
    if skip_unless_root("signals_reach_members_only") {
        return;
    }
    let meter_gid = group_gid("meter");
    let admin_gid = group_gid("meteradmin");
    let sb = sandbox(None);
    let outsider = Listener::start(&sb, Who::Outsider, "outsider");
    let member = Listener::start(&sb, Who::NobodyWithGroup(&meter_gid), "member");
    let admin = Listener::start(&sb, Who::NobodyWithGroup(&admin_gid), "admin");
    for l in [&outsider, &member, &admin] {
        l.wait_ready();
    }
    // A sale moves the registers: PropertiesChanged for Descending & co.
    sandbox::ok(&sb.postmark_id("signals-1").2, "postmark");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(member.text().contains("PropertiesChanged")
        && admin.text().contains("PropertiesChanged"))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        member.text().contains("PropertiesChanged"),
        "a member of meter gets PropertiesChanged:\n{}",
        member.text()
    );
    assert!(
        admin.text().contains("PropertiesChanged"),
        "a member of meteradmin gets PropertiesChanged:\n{}",
        admin.text()
    );
    // Give the outsider's copy, if the bus sent one, time to arrive.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !outsider.text().contains("PropertiesChanged") && !outsider.text().contains("Descending"),
        "an outsider received the meter's signals:\n{}",
        outsider.text()
    );
    // Replies still reach members (method_return is not a signal).
    let r = send(&sb, Who::NobodyWithGroup(&meter_gid), DEST, "Status", &[]);
    assert!(r.is_ok(), "Status for a member: {r:?}");
}
