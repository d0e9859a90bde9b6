//! meterd on a TPM it shares with other programs, as on a real workstation (issue 13:
//! "Nothing tests meterd sharing the TPM with other programs, which is normal on a
//! workstation"): the access broker and resource manager `tpm2-abrmd` (Debian package
//! `tpm2-abrmd`, TCTI `libtss2-tcti-tabrmd0`) owns the TPM — here the sandbox's swtpm —
//! and meterd reaches it with `tcti = "tabrmd:…"`, while another program creates
//! primaries and draws random numbers through the same broker at the same time.
//!
//! Every postmark sold during the contention verifies with `openssl ts -verify`, the
//! registers move by exactly one price per sale, the other program's commands all
//! succeed, and meterd restarts through the broker onto a clean ledger.
//!
//! The broker runs on a private session bus of its own (`--session`), so the test needs
//! no system-wide D-Bus policy for `com.intel.tss2.Tabrmd`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/sandbox.rs"]
mod sandbox;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sandbox::{ok, Sandbox};

const TABRMD_TCTI: &str = "tabrmd:bus_type=session";
const SALES: usize = 20;

/// The session bus and the broker; killed when the test ends (before the sandbox, which
/// is declared first and so dropped last).
struct Broker {
    bus_pid: u32,
    abrmd: Child,
    bus_address: String,
}

impl Broker {
    /// Starts a private session bus and `tpm2-abrmd` on it, in front of `tpm_tcti`
    /// (the sandbox's swtpm), and waits until a client gets an answer through it.
    fn start(sb: &Sandbox, tpm_tcti: &str) -> Broker {
        let out = Command::new("dbus-daemon")
            .args(["--session", "--fork", "--print-address=1", "--print-pid=1"])
            .stdin(Stdio::null())
            .output()
            .expect("dbus-daemon (package dbus)");
        let text = ok(&out, "dbus-daemon --session");
        let mut lines = text.lines();
        let bus_address = lines.next().expect("bus address").trim().to_owned();
        let bus_pid: u32 = lines.next().expect("bus pid").trim().parse().unwrap();
        let log = std::fs::File::create(sb.path("abrmd.log")).unwrap();
        let abrmd = Command::new("tpm2-abrmd")
            .args(["--session", "--allow-root", "--flush-all"])
            .arg(format!("--tcti={tpm_tcti}"))
            .env("DBUS_SESSION_BUS_ADDRESS", &bus_address)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("tpm2-abrmd (package tpm2-abrmd)");
        let broker = Broker {
            bus_pid,
            abrmd,
            bus_address,
        };
        // Ready when a client's command goes through: the broker registers its name
        // only once it has the TPM.
        let ready = (0..100).any(|_| {
            if broker.tpm2(sb, "tpm2_getrandom", &["8"]).status.success() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            false
        });
        assert!(
            ready,
            "tpm2-abrmd never answered; see {:?}",
            sb.path("abrmd.log")
        );
        broker
    }

    /// A tpm2-tools command through the broker, as any other program on the machine.
    fn tpm2(&self, sb: &Sandbox, tool: &str, args: &[&str]) -> std::process::Output {
        Command::new(tool)
            .args(args)
            .current_dir(sb.path(""))
            .env("TPM2TOOLS_TCTI", TABRMD_TCTI)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus_address)
            .stdin(Stdio::null())
            .output()
            .expect("tpm2-tools")
    }

    /// The environment meterd needs to reach the TPM through the broker.
    fn meterd_env(&self) -> [(&str, &str); 2] {
        [
            ("SANDBOX_METERD_TCTI", TABRMD_TCTI),
            ("DBUS_SESSION_BUS_ADDRESS", self.bus_address.as_str()),
        ]
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.abrmd.kill();
        let _ = self.abrmd.wait();
        let _ = Command::new("kill").arg(self.bus_pid.to_string()).status();
    }
}

#[test]
fn meterd_shares_the_tpm_through_tabrmd_with_another_program() {
    let sb = Sandbox::up(100_000);
    let swtpm = sb.env["METERD_TCTI"].clone();
    // swtpm serves one connection at a time: meterd lets go, the broker takes over.
    sb.script("stop-meterd");
    let broker = Broker::start(&sb, &swtpm);
    let env = broker.meterd_env();
    sb.script_env("start-meterd", &env);
    assert_eq!(sb.status()["state"], "ready", "{}", sb.status());

    // Another program on the same TPM, through the same broker, during the sales: a
    // storage primary (a slow command that takes an object slot) and random numbers.
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let stop = Arc::clone(&stop);
        let bus = broker.bus_address.clone();
        let dir = sb.path("");
        std::thread::spawn(move || {
            let (mut runs, mut failures) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) || runs < 4 {
                for args in [
                    &[
                        "tpm2_createprimary",
                        "-C",
                        "o",
                        "-G",
                        "ecc",
                        "-c",
                        "other.ctx",
                    ][..],
                    &["tpm2_getrandom", "--hex", "32"][..],
                ] {
                    let out = Command::new(args[0])
                        .args(&args[1..])
                        .current_dir(&dir)
                        .env("TPM2TOOLS_TCTI", TABRMD_TCTI)
                        .env("DBUS_SESSION_BUS_ADDRESS", &bus)
                        .output()
                        .expect("tpm2-tools");
                    if !out.status.success() {
                        failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
                    }
                }
                runs += 1;
            }
            (runs, failures)
        })
    };

    let before = sb.registers();
    let mut price = None;
    for i in 0..SALES {
        let at = sb.registers().0;
        let (msg, token, out) = sb.postmark_id(&format!("shared-{i}"));
        ok(&out, "meterctl postmark through tabrmd");
        let v = sb.ts_verify(&msg, &token, &sb.root_pem().to_string_lossy());
        ok(&v, "openssl ts -verify of a token signed through tabrmd");
        let charged = sb.registers().0 - at;
        assert!(charged > 0, "sale {i} charged nothing");
        assert_eq!(*price.get_or_insert(charged), charged, "sale {i}");
    }
    stop.store(true, Ordering::Relaxed);
    let (runs, failures) = other.join().unwrap();
    eprintln!("figures: {SALES} postmarks beside {runs} rounds of the other program");
    assert!(
        failures.is_empty(),
        "the other program's TPM commands failed beside meterd: {failures:?}"
    );
    let after = sb.registers();
    assert_eq!(after.0 - before.0, SALES as u64 * price.unwrap());
    assert_eq!(after.2, before.2, "control total unchanged by sales");

    // meterd comes back through the broker (a crash, then a start) onto a clean ledger,
    // and still sells.
    sb.script_env("restart-meterd", &env);
    let s = sb.status();
    assert_eq!(s["state"], "ready", "{s}");
    let (msg, token, out) = sb.postmark_id("shared-after-restart");
    ok(&out, "postmark after restart through tabrmd");
    ok(
        &sb.ts_verify(&msg, &token, &sb.root_pem().to_string_lossy()),
        "openssl ts -verify after restart",
    );
    drop(broker);
}
