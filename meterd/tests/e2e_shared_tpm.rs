//! meterd on a TPM it shares with other programs, as on a real workstation (issue 13:
//! "Nothing tests meterd sharing the TPM with other programs, which is normal on a
//! workstation"): the access broker and resource manager `tpm2-abrmd` (Debian package
//! `tpm2-abrmd`, TCTI `libtss2-tcti-tabrmd0`) owns the TPM — here the sandbox's swtpm —
//! and meterd reaches it with `tcti = "tabrmd:…"`, while 32 meter users buy postmarks
//! at once and another program, through the same broker, signs with a key of its own
//! and reads an NV index of its own in a loop.
//!
//! Every postmark sold during the contention verifies with `openssl ts -verify`, the
//! registers move by exactly one price per sale, the other program's commands all
//! succeed (and its NV reads give back what it wrote), meterd logs no TPM memory or
//! slot error, and meterd restarts through the broker onto a clean ledger. The figures
//! (sales/s under contention, the other program's rounds) are printed.
//!
//! The broker runs on a private session bus of its own (`--session`), so the test needs
//! no system-wide D-Bus policy for `com.intel.tss2.Tabrmd`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sandbox::{ok, Sandbox};

const TABRMD_TCTI: &str = "tabrmd:bus_type=session";
/// Meter users at once, and postmarks each buys (meterctl, one process per sale).
const CLIENTS: usize = 32;
const SALES: usize = 8;
/// The other program's NV index (owner class, outside meterd's range).
const OTHER_NV: &str = "0x01500016";

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
    let sb = Sandbox::up(1_000_000);
    let swtpm = sb.env["METERD_TCTI"].clone();
    // swtpm serves one connection at a time: meterd lets go, the broker takes over.
    sb.script("stop-meterd");
    let broker = Broker::start(&sb, &swtpm);
    let env = broker.meterd_env();
    sb.script_env("start-meterd", &env);
    assert_eq!(sb.status()["state"], "ready", "{}", sb.status());

    // Another program on the same TPM, through the same broker, during the sales, as
    // a workstation's other TPM users do: its own signing key under its own primary,
    // and an NV index of its own, set up once and then used in a loop (sign, NV read).
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
        &[
            "tpm2_create",
            "-C",
            "other.ctx",
            "-G",
            "ecc",
            "-u",
            "other.pub",
            "-r",
            "other.priv",
        ][..],
        &[
            "tpm2_load",
            "-C",
            "other.ctx",
            "-u",
            "other.pub",
            "-r",
            "other.priv",
            "-c",
            "key.ctx",
        ][..],
        &[
            "tpm2_nvdefine",
            OTHER_NV,
            "-C",
            "o",
            "-s",
            "32",
            "-a",
            "ownerread|ownerwrite",
        ][..],
    ] {
        ok(&broker.tpm2(&sb, args[0], &args[1..]), args[0]);
    }
    std::fs::write(sb.path("other.msg"), b"the other program's data").unwrap();
    std::fs::write(sb.path("other.nv"), [0x5a; 32]).unwrap();
    ok(
        &broker.tpm2(
            &sb,
            "tpm2_nvwrite",
            &[OTHER_NV, "-C", "o", "-i", "other.nv"],
        ),
        "tpm2_nvwrite",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let stop = Arc::clone(&stop);
        let bus = broker.bus_address.clone();
        let dir = sb.path("");
        std::thread::spawn(move || {
            let (mut runs, mut failures) = (0u32, Vec::new());
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) || runs < 4 {
                for args in [
                    &[
                        "tpm2_sign",
                        "-c",
                        "key.ctx",
                        "-g",
                        "sha256",
                        "-o",
                        "other.sig",
                        "other.msg",
                    ][..],
                    &[
                        "tpm2_nvread",
                        OTHER_NV,
                        "-C",
                        "o",
                        "-s",
                        "32",
                        "-o",
                        "other.read",
                    ][..],
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
                match std::fs::read(dir.join("other.read")) {
                    Ok(b) if b == [0x5a; 32] => {}
                    other => failures.push(format!("NV read gave {other:?}")),
                }
                runs += 1;
            }
            (runs, failures, started.elapsed())
        })
    };

    // One sale alone gives the price; then CLIENTS meter users at once, each buying
    // SALES postmarks back to back.
    let at = sb.registers().0;
    let (msg, token, out) = sb.postmark_id("shared-first");
    ok(&out, "meterctl postmark through tabrmd");
    ok(
        &sb.ts_verify(&msg, &token, &sb.root_pem().to_string_lossy()),
        "openssl ts -verify",
    );
    let price = sb.registers().0 - at;
    assert!(price > 0, "a postmark charged nothing");
    let before = sb.registers();
    let started = Instant::now();
    let sold: Vec<(String, String)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let sb = &sb;
                scope.spawn(move || {
                    (0..SALES)
                        .map(|i| {
                            let (msg, token, out) = sb.postmark_id(&format!("shared-{c}-{i}"));
                            ok(&out, "meterctl postmark through tabrmd");
                            (msg, token)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let load = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (runs, failures, other_time) = other.join().unwrap();
    assert!(
        failures.is_empty(),
        "the other program's TPM commands failed beside meterd: {failures:?}"
    );
    // Nothing lost: every token verifies, and the registers moved by one price each.
    let root = sb.root_pem().to_string_lossy().into_owned();
    for (msg, token) in &sold {
        ok(
            &sb.ts_verify(msg, token, &root),
            "openssl ts -verify of a token signed through tabrmd",
        );
    }
    let after = sb.registers();
    assert_eq!(sold.len(), CLIENTS * SALES);
    assert_eq!(after.0 - before.0, (CLIENTS * SALES) as u64 * price);
    assert_eq!(after.2, before.2, "control total unchanged by sales");
    let log = std::fs::read_to_string(sb.path("meterd.log")).unwrap_or_default();
    // No slot or memory errors from the TPM, no ERROR at all, in meterd's log.
    for bad in [" ERROR ", "ObjectMemory", "SessionMemory", "Memory"] {
        assert!(
            !log.contains(bad),
            "meterd logged {bad:?} beside the other program:\n{log}"
        );
    }
    eprintln!(
        "figures: {} postmarks from {CLIENTS} clients in {:.2} s ({:.1}/s, meterctl per sale), \
         beside {runs} rounds of the other program (tpm2_sign + tpm2_nvread) in {:.2} s",
        sold.len(),
        load.as_secs_f64(),
        sold.len() as f64 / load.as_secs_f64(),
        other_time.as_secs_f64()
    );

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
