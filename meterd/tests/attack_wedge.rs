//! Issue 11, hole 3 ("A mail client can wedge the meter"), tried the
//! attacker's way: a plain member of group `meter` talks raw D-Bus to the
//! sandbox's bus and hands meterd file descriptors that never end — pipes
//! whose write end it keeps, `/dev/zero`, an eventfd — or an `h` argument
//! with no descriptor attached at all.
//!
//! The attacker is this very test binary, run again as another uid
//! (`setpriv --reuid`) with `ATTACK_MODE` set, so that it is a separate
//! client process whose uid, groups and exit are those of a real mail
//! client. It reports on stdout (`ATTACK ...` lines) and exits when its
//! stdin closes (or when it is killed). The observer (root) watches meterd
//! from outside: `/proc/PID/fd`, its CPU time, and other users' calls.
//!
//! Small limits come from `SANDBOX_METERD_CONFIG` (extra lines for meterd's
//! configuration, see `tests/sandbox`). Creating users needs root: the
//! tests skip with a message otherwise (CI runs as root).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::attack_client;
use crate::sandbox;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sandbox::{ok, Sandbox};

const ATTACKER: &str = "meterd-e2e-user";
const OTHER: &str = "meterd-e2e-user2";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Creates `user` (system account, member of `group`) unless it exists.
fn ensure_user(sb: &Sandbox, user: &str, group: &str) {
    let _ = sb.run("groupadd", &["-f", group]);
    if !sb.run("id", &[user]).status.success() {
        let out = sb.run(
            "useradd",
            &["--system", "--no-create-home", "-G", group, user],
        );
        // Another test running at the same time may have created it.
        if !sb.run("id", &[user]).status.success() {
            ok(&out, "useradd");
        }
    }
}

/// A sandbox whose bus other uids can reach, with the attacker and a second
/// user in group `meter`.
fn sandbox_with_users(funds: u64, config: &str) -> Sandbox {
    let funds = funds.to_string();
    let sb = Sandbox::up_with(&[
        ("SANDBOX_FUNDS", funds.as_str()),
        ("SANDBOX_METERD_CONFIG", config),
    ]);
    ensure_user(&sb, ATTACKER, "meter");
    ensure_user(&sb, OTHER, "meter");
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755));
    let out = sb.path("out");
    std::fs::create_dir_all(&out).expect("mkdir out");
    let _ = std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777));
    sb
}

fn meterd_pid(sb: &Sandbox) -> u32 {
    std::fs::read_to_string(sb.path("meterd.pid"))
        .expect("meterd.pid")
        .trim()
        .parse()
        .expect("pid")
}

/// Open files of meterd (`/proc/PID/fd` entries).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

/// CPU time meterd used so far (user + system).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at state.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Waits up to `limit` for `cond`; returns whether it held and how long it took.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> (bool, Duration) {
    let t = Instant::now();
    loop {
        if cond() {
            return (true, t.elapsed());
        }
        if t.elapsed() > limit {
            return (false, t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs meterctl as `user` with a hard time limit; (exit code, stdout, stderr, time).
fn meterctl_as(
    sb: &Sandbox,
    user: &str,
    limit_secs: u32,
    args: &[&str],
) -> (Option<i32>, String, String, Duration) {
    let bin = sandbox::bin_dir().join("meterctl");
    let mut a: Vec<String> = vec![
        "--kill-after=2".into(),
        limit_secs.to_string(),
        "setpriv".into(),
        "--reuid".into(),
        user.into(),
        "--regid".into(),
        user.into(),
        "--init-groups".into(),
        bin.to_string_lossy().into_owned(),
    ];
    a.extend(args.iter().map(|s| (*s).to_owned()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let t = Instant::now();
    let out = sb.run("timeout", &a);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t.elapsed(),
    )
}

/// The attacker process: this test binary as `ATTACKER`, in `mode`.
struct Attacker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Attacker {
    fn start(sb: &Sandbox, mode: &str) -> Attacker {
        let exe = std::env::current_exe().expect("test binary");
        let mut child = Command::new("setpriv")
            .args(["--reuid", ATTACKER, "--regid", ATTACKER, "--init-groups"])
            .arg(exe)
            .args([
                "--exact",
                "attack_wedge::attacker_client",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ATTACK_MODE", mode)
            .env("ATTACK_BUS", &sb.env["DBUS_SYSTEM_BUS_ADDRESS"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the attacker");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may print "test attacker_client ... " before it.
                if let Some(at) = line.find("ATTACK ") {
                    if tx.send(line[at + 7..].to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        Attacker {
            child,
            stdin,
            lines,
        }
    }

    /// The next report line, within `limit`.
    fn line(&self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }

    /// Closes the attacker's stdin: it exits, closing its connection and
    /// every descriptor it kept.
    fn exit(&mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One reply seen by the attacker: (call index, error kind or "ok", ms).
fn parse_reply(line: &str) -> Option<(usize, String, u64)> {
    let mut f = line.split_whitespace();
    (f.next()? == "reply").then_some(())?;
    Some((
        f.next()?.parse().ok()?,
        f.next()?.to_owned(),
        f.next()?.parse().ok()?,
    ))
}

/// Hole 3: 300 Postmark calls on pipes that never close, from one client.
/// While they hang, Status and another user's PostmarkDigest answer and the
/// funds are untouched; the calls end (refused at once, or at the read
/// deadline); meterd's open files return to baseline.
#[test]
fn mail_client_cannot_wedge_the_meter_with_stuck_pipes() {
    if !is_root() {
        eprintln!("skipped: creating test users needs root (CI runs as root)");
        return;
    }
    let deadline = 10u64;
    // Funds for every stuck call, so that none is refused for funds (on
    // the meter of the issue, each held a reservation and a slot).
    let sb = sandbox_with_users(
        1_000_000,
        &format!("message_read_timeout_seconds = {deadline}\n"),
    );
    let pid = meterd_pid(&sb);
    // Warm up (first calls open what meterd keeps open), then the baseline.
    let digest = "ab".repeat(48);
    let warm = meterctl_as(
        &sb,
        OTHER,
        30,
        &[
            "postmark",
            "--digest",
            &digest,
            "-o",
            &sb.path("out/warm.tsr").to_string_lossy(),
            "--request-id",
            "warm",
        ],
    );
    assert_eq!(warm.0, Some(0), "warm-up postmark: {}", warm.2);
    let baseline = open_fds(pid);
    let regs = sb.registers();

    let mut attacker = Attacker::start(&sb, "stuck 300");
    let sent = attacker.line(Duration::from_secs(60));
    assert_eq!(
        sent.as_deref(),
        Some("sent 300"),
        "the attacker could not send its calls"
    );
    let t_sent = Instant::now();
    // Let meterd take them all in.
    std::thread::sleep(Duration::from_secs(1));
    let stuck_fds = open_fds(pid);

    // Status, by another user, still answers, and promptly.
    let status = meterctl_as(&sb, OTHER, 10, &["--json", "status"]);
    assert_eq!(
        status.0,
        Some(0),
        "Status did not answer while 300 Postmark calls hung (took {:?}): {}{}",
        status.3,
        status.1,
        status.2
    );
    assert!(
        status.3 < Duration::from_secs(5),
        "Status took {:?}",
        status.3
    );
    // The funds are untouched while they hang.
    let s: serde_json::Value = serde_json::from_str(&status.1).expect("status JSON");
    assert_eq!(
        (s["ascending"].as_u64(), s["descending"].as_u64()),
        (Some(regs.0), Some(regs.1)),
        "the registers moved while the calls hung: {s}"
    );
    // Another user's PostmarkDigest still answers.
    let other = meterctl_as(
        &sb,
        OTHER,
        10,
        &[
            "postmark",
            "--digest",
            &digest,
            "-o",
            &sb.path("out/other.tsr").to_string_lossy(),
            "--request-id",
            "other-1",
        ],
    );
    assert_eq!(
        other.0,
        Some(0),
        "another user's PostmarkDigest failed while 300 Postmark calls hung (took {:?}): {}",
        other.3,
        other.2
    );
    eprintln!(
        "figures: while they hung, Status answered in {:?}, the other user's PostmarkDigest in {:?} \
         (meterctl as another uid, process start included)",
        status.3, other.3
    );
    let after_other = sb.registers();
    assert_eq!(
        after_other.1,
        regs.1 - 500,
        "only the other user's postmark (500) was debited"
    );

    // Every stuck call ends while the attacker still holds its pipes:
    // refused at once (Busy) or at the read deadline (InvalidInput).
    let mut replies = Vec::new();
    while replies.len() < 300 {
        let left = Duration::from_secs(deadline + 20).saturating_sub(t_sent.elapsed());
        match attacker.line(left) {
            Some(l) => replies.extend(parse_reply(&l)),
            None => break,
        }
    }
    let ended = t_sent.elapsed();
    let busy = replies.iter().filter(|r| r.1 == "Busy").count();
    let timed_out = replies.iter().filter(|r| r.1 == "InvalidInput").count();
    let max_busy_ms = replies
        .iter()
        .filter(|r| r.1 == "Busy")
        .map(|r| r.2)
        .max()
        .unwrap_or(0);
    eprintln!(
        "figures: baseline fds {baseline}, with 300 stuck calls {stuck_fds}; \
         {} replies in {ended:?}: {busy} Busy (slowest {max_busy_ms} ms), {timed_out} timed out",
        replies.len()
    );
    assert_eq!(
        replies.len(),
        300,
        "only {} of 300 stuck calls were answered within {:?} while the client held its pipes \
         (read deadline {deadline} s)",
        replies.len(),
        ended
    );
    assert_eq!(
        busy + timed_out,
        300,
        "unexpected replies: {:?}",
        replies
            .iter()
            .filter(|r| r.1 != "Busy" && r.1 != "InvalidInput")
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(busy > 0, "the per-caller cap refused nothing");
    let (back, t) = wait_for(Duration::from_secs(5), || open_fds(pid) <= baseline);
    assert!(
        back,
        "meterd's open files stayed at {} (baseline {baseline}) after the calls ended",
        open_fds(pid)
    );
    eprintln!("figures: fds back to baseline {t:?} after the last reply");

    // The client leaves: nothing is left behind.
    attacker.exit();
    let (back, _) = wait_for(Duration::from_secs(5), || open_fds(pid) <= baseline);
    assert!(
        back,
        "meterd's open files stayed at {} (baseline {baseline}) after the client exited",
        open_fds(pid)
    );
    assert_eq!(sb.registers(), after_other, "no stuck call was charged");
}

/// Hole 3: a stuck Postmark holds no funds. With funds for two postmarks,
/// four calls on pipes that never close must leave both to other users.
#[test]
fn stuck_postmark_reserves_no_funds() {
    if !is_root() {
        eprintln!("skipped: creating test users needs root (CI runs as root)");
        return;
    }
    let sb = sandbox_with_users(1000, "message_read_timeout_seconds = 30\n");
    let regs = sb.registers();
    let mut attacker = Attacker::start(&sb, "stuck 4");
    assert_eq!(
        attacker.line(Duration::from_secs(30)).as_deref(),
        Some("sent 4")
    );
    std::thread::sleep(Duration::from_secs(1));
    let digest = "cd".repeat(48);
    for i in 0..2 {
        let out = sb
            .path(&format!("out/f{i}.tsr"))
            .to_string_lossy()
            .into_owned();
        let id = format!("funds-{i}");
        let r = meterctl_as(
            &sb,
            OTHER,
            10,
            &[
                "postmark",
                "--digest",
                &digest,
                "-o",
                &out,
                "--request-id",
                &id,
            ],
        );
        assert_eq!(
            r.0,
            Some(0),
            "postmark {i} of the other user refused while 4 stuck calls hung \
             (funds for 2 postmarks): {}",
            r.2
        );
    }
    assert_eq!(sb.registers().1, regs.1 - 1000);
    attacker.kill();
}

/// Hole 3: `/dev/zero` as the message is refused at the configured size or time
/// limit, with a named error, and nothing is charged.
#[test]
fn dev_zero_message_is_refused_within_the_limits() {
    if !is_root() {
        eprintln!("skipped: creating test users needs root (CI runs as root)");
        return;
    }
    let sb = sandbox_with_users(
        100_000,
        "max_message_bytes = 16777216\nmessage_read_timeout_seconds = 3\n",
    );
    let pid = meterd_pid(&sb);
    let regs = sb.registers();
    let cpu0 = cpu_time(pid);
    let t = Instant::now();
    let attacker = Attacker::start(&sb, "devzero");
    assert_eq!(
        attacker.line(Duration::from_secs(30)).as_deref(),
        Some("sent 1")
    );
    let reply = attacker.line(Duration::from_secs(60));
    let took = t.elapsed();
    let cpu = cpu_time(pid).saturating_sub(cpu0);
    eprintln!("figures: /dev/zero answered {reply:?} after {took:?}, meterd CPU {cpu:?}");
    let (_, kind, ms) = reply
        .as_deref()
        .and_then(parse_reply)
        .expect("a reply to the /dev/zero Postmark");
    // The named error is the proof that a limit ended the read (16 MiB or 3 s, whichever
    // comes first on this machine); how long that took and the CPU it cost are figures,
    // not thresholds (machines here are noisy).
    assert_eq!(kind, "InvalidInput", "named error for /dev/zero");
    eprintln!("figures: refused after {ms} ms (limits: 16 MiB, 3 s), meterd CPU {cpu:?}");
    assert_eq!(sb.registers(), regs, "nothing was charged");
}

/// Hole 3: an eventfd as the message never becomes readable; the call must
/// end — and meterd close the descriptor — when the client exits, long
/// before the read deadline.
#[test]
fn eventfd_call_ends_when_the_client_exits() {
    if !is_root() {
        eprintln!("skipped: creating test users needs root (CI runs as root)");
        return;
    }
    let sb = sandbox_with_users(100_000, "message_read_timeout_seconds = 300\n");
    let pid = meterd_pid(&sb);
    let warm = sb.postmark_id("warm");
    ok(&warm.2, "warm-up postmark");
    let baseline = open_fds(pid);
    let mut attacker = Attacker::start(&sb, "eventfd");
    assert_eq!(
        attacker.line(Duration::from_secs(30)).as_deref(),
        Some("sent 1")
    );
    let (held, _) = wait_for(Duration::from_secs(5), || open_fds(pid) > baseline);
    assert!(held, "meterd never received the eventfd");
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    attacker.kill();
    let (back, took) = wait_for(Duration::from_secs(10), || open_fds(pid) <= baseline);
    eprintln!("figures: eventfd closed {took:?} after the client died");
    assert!(
        back,
        "meterd still holds the eventfd {:?} after its client died ({} open files, baseline {baseline})",
        t.elapsed(),
        open_fds(pid)
    );
    // And the meter still serves.
    ok(&sb.postmark_id("after").2, "postmark after the eventfd");
}

/// Hole 7 (the fd part): an `h` argument whose index has no descriptor
/// attached gets a named meterd error, not `org.freedesktop.zbus.Error`.
#[test]
fn postmark_without_an_attached_fd_gets_a_named_error() {
    if !is_root() {
        eprintln!("skipped: creating test users needs root (CI runs as root)");
        return;
    }
    let sb = sandbox_with_users(100_000, "");
    let attacker = Attacker::start(&sb, "nofd");
    assert_eq!(
        attacker.line(Duration::from_secs(30)).as_deref(),
        Some("sent 1")
    );
    let reply = attacker.line(Duration::from_secs(30));
    let (_, kind, _) = reply
        .as_deref()
        .and_then(parse_reply)
        .expect("a reply to the Postmark without fd");
    assert_eq!(kind, "InvalidInput", "reply: {reply:?}");
}

/// Not a test: the attacker process started by the tests above.
#[test]
#[ignore = "run by the attack tests as another uid"]
fn attacker_client() {
    let (Ok(mode), Ok(bus)) = (std::env::var("ATTACK_MODE"), std::env::var("ATTACK_BUS")) else {
        return;
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(attack_client::attack(&mode, &bus));
}
