//! End to end: status reports and their acknowledgement, the inspection
//! watchdog, authority lock orders and the clock check.
//!
//! Time is moved with `METERD_TEST_CLOCK_OFFSET` (honoured on a software
//! TPM only, see `meterd/src/clock.rs`) by restarting meterd; offsets only grow
//! within a test except where going backwards is the point.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use std::time::{Duration, Instant};

use meter_proto::exit;
use sandbox::{ok, write, Sandbox};
use serde_json::Value;

const DAY: i64 = 86_400;

/// Runs `meterctl --json ARGS` expecting failure; returns (exit code, error kind).
fn refused(sb: &Sandbox, args: &[&str]) -> (i32, String) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = sb.meterctl(&all);
    assert!(!out.status.success(), "meterctl {args:?} should fail");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON error on stdout");
    (
        out.status.code().unwrap_or(-1),
        v["error"]["kind"].as_str().unwrap_or_default().to_owned(),
    )
}

fn path(sb: &Sandbox, name: &str) -> String {
    sb.path(name).to_string_lossy().into_owned()
}

/// `meterctl report` into NAME.pem with request id NAME.
fn report(sb: &Sandbox, name: &str) -> String {
    let p = path(sb, &format!("{name}.pem"));
    sb.meterctl_json(&["report", "-o", &p, "--request-id", name]);
    p
}

/// Verifies a report with stock OpenSSL against the root; returns its JSON.
fn openssl_report(sb: &Sandbox, report: &str) -> Value {
    sb.cms_json(report, "the report")
}

/// `meter-authority inspect REPORT` into ACK; returns the ack path.
fn inspect(sb: &Sandbox, report: &str, ack: &str, extra: &[&str]) -> String {
    let p = path(sb, ack);
    let mut args = vec!["inspect", report, "--out", &p];
    args.extend_from_slice(extra);
    sb.authority(&args);
    p
}

fn restart_at(sb: &Sandbox, offset_secs: i64) {
    sb.script_env(
        "restart-meterd",
        &[("METERD_TEST_CLOCK_OFFSET", &offset_secs.to_string())],
    );
}

fn state(sb: &Sandbox) -> (String, String) {
    let s = sb.status();
    (
        s["state"].as_str().unwrap().to_owned(),
        s["lock_reason"].as_str().unwrap().to_owned(),
    )
}

/// Polls Status until the state is `want` (the watchdog ticks every 10 s).
fn wait_state(sb: &Sandbox, want: &str, within: Duration) -> Value {
    let start = Instant::now();
    loop {
        let s = sb.status();
        if s["state"] == want || start.elapsed() > within {
            return s;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Rewrites a byte run (same length) inside a PEM CMS after it was signed;
/// returns the path of the altered DER.
fn tamper(sb: &Sandbox, pem: &str, from: &str, to: &str) -> String {
    assert_eq!(from.len(), to.len());
    let der_path = path(sb, "tamper.der");
    ok(
        &sb.run(
            "openssl",
            &[
                "cms", "-cmsout", "-in", pem, "-inform", "PEM", "-outform", "DER", "-out",
                &der_path,
            ],
        ),
        "PEM to DER",
    );
    let mut der = std::fs::read(&der_path).unwrap();
    let at = der
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from} not in the object"));
    der[at..at + to.len()].copy_from_slice(to.as_bytes());
    write(sb, "forged.der", &der)
}

#[test]
fn report_round_trip_charges_once_and_resets_the_watchdog() {
    let sb = Sandbox::up(100_000);
    // A table that charges for reports (the sandbox's charges 0).
    let toml = std::fs::read_to_string(sandbox::repo().join("meter-authority/rates.example.toml"))
        .unwrap()
        .replace("version = 1", "version = 2")
        .replace("status-report = 0", "status-report = 250");
    let toml_path = write(&sb, "rates2.toml", toml.as_bytes());
    let table = path(&sb, "rates2.pem");
    sb.authority(&["rates", "--in", &toml_path, "--out", &table]);
    sb.meterctl_json(&["rates", "install", &table]);
    ok(&sb.postmark_id("p1").2, "postmark");

    let before = sb.status();
    assert_eq!(before["acknowledged_report"], 0, "{before}");
    let (ar0, dr0, ct0) = sb.registers();
    let r1 = report(&sb, "rep1");
    let body = openssl_report(&sb, &r1);
    assert_eq!(body["meter_id"], sb.meter_id());
    assert_eq!(body["sequence"], 1);
    assert_eq!(body["previous_sequence"], 0);
    assert_eq!(body["ascending"].as_u64(), Some(ar0), "{body}");
    assert_eq!(body["descending"].as_u64(), Some(dr0), "{body}");
    assert_eq!(body["control_total"].as_u64(), Some(ct0), "{body}");
    assert_eq!(body["usage"]["postmark"]["pieces"], 1, "{body}");
    assert_eq!(body["usage"]["postmark"]["amount"], 500, "{body}");
    assert_eq!(body["credited"], 100_000, "{body}");
    assert_eq!(body["lock_reason"], "");
    assert_eq!(body["inspection_due"], before["inspection_due"]);
    // Charged once, at the rate in force.
    let (ar1, dr1, ct1) = sb.registers();
    assert_eq!((ar1, dr1, ct1), (ar0 + 250, dr0 - 250, ct0));
    // A retry with the same request id returns the same report, free.
    let again = path(&sb, "rep1-again.pem");
    sb.meterctl_json(&["report", "-o", &again, "--request-id", "rep1"]);
    assert_eq!(std::fs::read(&r1).unwrap(), std::fs::read(&again).unwrap());
    assert_eq!(sb.registers(), (ar1, dr1, ct1));

    // The authority inspects and acknowledges with a 30-day period.
    let ack1 = inspect(&sb, &r1, "ack1.pem", &["--period-days", "30"]);
    let applied = sb.meterctl_json(&["report", "ack", &ack1]);
    let t1 = body["time"].as_i64().unwrap();
    assert_eq!(applied["inspection_due"].as_i64(), Some(t1 + 30 * DAY));
    let s = sb.status();
    assert_eq!(s["acknowledged_report"], 1, "{s}");
    assert_eq!(s["inspection_due"].as_i64(), Some(t1 + 30 * DAY));
    assert_eq!(s["inspection_period_days"], 30);
    // The same acknowledgement again: Replay, nothing changed.
    let regs = sb.registers();
    assert_eq!(
        refused(&sb, &["report", "ack", &ack1]),
        (exit::REFUSED, "Replay".into())
    );
    assert_eq!(sb.registers(), regs);

    // The second report covers what happened since the first.
    ok(&sb.postmark_id("p2").2, "postmark");
    let r2 = report(&sb, "rep2");
    let body2 = openssl_report(&sb, &r2);
    assert_eq!(body2["sequence"], 2);
    assert_eq!(body2["previous_sequence"], 1);
    assert_eq!(body2["previous_time"], body["time"]);
    assert_eq!(body2["usage"]["postmark"]["pieces"], 1, "{body2}");
    assert_eq!(body2["usage"]["status-report"]["amount"], 250, "{body2}");
    assert_eq!(body2["credited"], 0);

    // Forged: an acknowledgement whose content was altered after signing.
    let ack2 = inspect(&sb, &r2, "ack2.pem", &[]);
    let forged = tamper(&sb, &ack2, "\"report_sequence\":2", "\"report_sequence\":1");
    let regs = sb.registers();
    assert_eq!(
        refused(&sb, &["report", "ack", &forged]),
        (exit::REFUSED, "BadSignature".into())
    );
    // Garbage, and a signed object of another kind.
    let garbage = write(&sb, "garbage.pem", b"not a CMS at all");
    assert_eq!(refused(&sb, &["report", "ack", &garbage]).0, exit::INVALID);
    assert_eq!(refused(&sb, &["report", "ack", &table]).0, exit::INVALID);
    // An older acknowledgement than the one applied is refused once a newer one is in.
    ok(&sb.meterctl(&["report", "ack", &ack2]), "report ack 2");
    let stale = inspect(&sb, &r1, "ack1b.pem", &[]);
    assert_eq!(
        refused(&sb, &["report", "ack", &stale]),
        (exit::REFUSED, "Stale".into())
    );
    let s = sb.status();
    assert_eq!(s["acknowledged_report"], 2, "{s}");
    assert_eq!(s["inspection_period_days"], 120, "{s}");
    let (ar, dr, ct) = sb.registers();
    assert_eq!((ar, dr, ct), (regs.0, regs.1, regs.2));
}

#[test]
fn overdue_inspection_locks_and_an_acknowledged_report_clears_it() {
    let sb = Sandbox::up(100_000);
    ok(&sb.postmark_id("p1").2, "postmark");
    let regs = sb.registers();
    // 121 days later (certification + 120 days is the first lock deadline).
    restart_at(&sb, 121 * DAY);
    let (st, reason) = state(&sb);
    assert_eq!(
        (st.as_str(), reason.as_str()),
        ("locked", "inspection-overdue")
    );
    let human = ok(&sb.meterctl(&["status"]), "status");
    assert!(human.contains("meterctl report ack"), "{human}");
    // Locked: sales refused, nothing charged.
    assert_eq!(sb.postmark_id("p2").2.status.code(), Some(exit::LOCKED));
    assert_eq!(sb.registers(), regs);
    // A clear-lock order for another nonce does nothing.
    let wrong = path(&sb, "wrong.pem");
    sb.authority(&[
        "clear-lock",
        "--meter",
        &sb.meter_id(),
        "--nonce",
        "00ff",
        "--out",
        &wrong,
    ]);
    assert_eq!(refused(&sb, &["clear-lock", &wrong]).1, "Stale");
    // Report still answers, free while locked, and says why.
    let r = report(&sb, "locked-rep");
    let body = openssl_report(&sb, &r);
    assert_eq!(body["lock_reason"], "inspection-overdue");
    assert_eq!(sb.registers(), regs);
    // The authority's acknowledgement of that report clears the lock.
    let ack = inspect(&sb, &r, "ack.pem", &[]);
    ok(&sb.meterctl(&["report", "ack", &ack]), "report ack");
    let s = sb.status();
    assert_eq!(s["state"], "ready", "{s}");
    let t = body["time"].as_i64().unwrap();
    assert_eq!(s["inspection_due"].as_i64(), Some(t + 120 * DAY));
    ok(
        &sb.postmark_id("p3").2,
        "postmark after the acknowledgement",
    );
    // Still ready after a watchdog tick.
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(sb.status()["state"], "ready");
    // Another period later it locks again.
    restart_at(&sb, 242 * DAY);
    assert_eq!(state(&sb).1, "inspection-overdue");
    sb.registers();
}

#[test]
fn forced_lock_order_locks_once_and_only_a_clear_order_clears() {
    let sb = Sandbox::up(100_000);
    let meter = sb.meter_id();
    let regs = sb.registers();
    let order = path(&sb, "lock.pem");
    sb.authority(&[
        "lock", "--meter", &meter, "--reason", "audit", "--out", &order,
    ]);

    // Refused orders change nothing: garbage, another meter, another authority.
    let garbage = write(&sb, "garbage.pem", b"\x30\x03\x02\x01\x01");
    assert_eq!(refused(&sb, &["lock", "apply", &garbage]).0, exit::INVALID);
    let other_meter = path(&sb, "other-meter.pem");
    sb.authority(&[
        "lock",
        "--meter",
        "MTR-000000000000",
        "--reason",
        "x",
        "--out",
        &other_meter,
    ]);
    assert_eq!(
        refused(&sb, &["lock", "apply", &other_meter]).1,
        "InvalidInput"
    );
    let foreign_dir = path(&sb, "foreign-authority");
    sb.authority(&["--dir", &foreign_dir, "init"]);
    let foreign = path(&sb, "foreign.pem");
    sb.authority(&[
        "--dir",
        &foreign_dir,
        "lock",
        "--meter",
        &meter,
        "--reason",
        "x",
        "--out",
        &foreign,
    ]);
    assert_eq!(
        refused(&sb, &["lock", "apply", &foreign]),
        (exit::REFUSED, "BadSignature".into())
    );
    // A clear order is not a lock order.
    let clear = path(&sb, "clear.pem");
    sb.authority(&[
        "clear-lock",
        "--meter",
        &meter,
        "--nonce",
        "00",
        "--out",
        &clear,
    ]);
    assert_eq!(refused(&sb, &["lock", "apply", &clear]).0, exit::INVALID);
    assert_eq!(state(&sb).0, "ready");
    assert_eq!(sb.registers(), regs);

    // The real order locks.
    let out = sb.meterctl_json(&["lock", "apply", &order]);
    assert_eq!(out["lock_reason"], "forced");
    assert_eq!(state(&sb), ("locked".into(), "forced".into()));
    assert_eq!(sb.postmark_id("p").2.status.code(), Some(exit::LOCKED));
    // Status and Report still answer.
    let body = openssl_report(&sb, &report(&sb, "r"));
    assert_eq!(body["lock_reason"], "forced");
    assert_eq!(sb.registers(), regs);
    let human = ok(&sb.meterctl(&["status"]), "status");
    assert!(human.contains("meter-authority clear-lock"), "{human}");
    // An acknowledgement does not clear a forced lock.
    let ack = inspect(&sb, &path(&sb, "r.pem"), "ack.pem", &[]);
    ok(&sb.meterctl(&["report", "ack", &ack]), "report ack");
    assert_eq!(state(&sb).1, "forced");

    // The clear order clears; replaying the lock order is refused.
    let clear = sb.clear_lock_order();
    ok(&sb.meterctl(&["clear-lock", &clear]), "clear-lock");
    assert_eq!(state(&sb).0, "ready");
    assert_eq!(
        refused(&sb, &["lock", "apply", &order]),
        (exit::REFUSED, "Replay".into())
    );
    assert_eq!(state(&sb).0, "ready");
    ok(&sb.postmark_id("p2").2, "postmark after clearing");
    sb.registers();
}

#[test]
fn clock_going_backwards_locks_until_cleared() {
    let sb = Sandbox::up(100_000);
    // Two days ahead first: the sandbox's root was made seconds ago, and a
    // meter set back before its notBefore could not verify the clear order.
    restart_at(&sb, 2 * DAY);
    ok(&sb.postmark_id("p1").2, "postmark");
    let regs = sb.registers();
    assert_eq!(state(&sb).0, "ready");
    // A day back: earlier than the last ledger row and the last reading.
    restart_at(&sb, DAY);
    assert_eq!(state(&sb), ("locked".into(), "clock".into()));
    assert_eq!(sb.postmark_id("p2").2.status.code(), Some(exit::LOCKED));
    let body = openssl_report(&sb, &report(&sb, "r"));
    assert_eq!(body["lock_reason"], "clock");
    assert_eq!(sb.registers(), regs);
    // The authority accepts the clock as it is now.
    let clear = sb.clear_lock_order();
    ok(&sb.meterctl(&["clear-lock", &clear]), "clear-lock");
    // The watchdog accepts the new time on its next tick and does not re-lock.
    std::thread::sleep(Duration::from_secs(12));
    let s = wait_state(&sb, "locked", Duration::from_secs(1));
    assert_eq!(s["state"], "ready", "{s}");
    ok(&sb.postmark_id("p3").2, "postmark after clearing");
    sb.registers();
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_order_emits_locked_and_clear_emits_unlocked() {
    use futures_util::StreamExt;
    let sb = Sandbox::up(100_000);
    let conn = zbus::connection::Builder::address(sb.env["DBUS_SYSTEM_BUS_ADDRESS"].as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let p = meter_proto::Meter1Proxy::new(&conn).await.unwrap();
    let mut locked = p.receive_locked().await.unwrap();
    let mut unlocked = p.receive_unlocked().await.unwrap();
    let order = sb.lock_order("lock.pem");
    p.apply_lock_order(&std::fs::read(&order).unwrap())
        .await
        .unwrap();
    let wait = Duration::from_secs(20);
    let sig = tokio::time::timeout(wait, locked.next())
        .await
        .expect("Locked")
        .unwrap();
    assert_eq!(sig.args().unwrap().reason, "forced");
    // Report answers over the bus while locked.
    let report = p.report("while-locked").await.unwrap();
    assert!(!report.is_empty());
    let clear = sb.clear_lock_order();
    p.clear_lock(&std::fs::read(&clear).unwrap()).await.unwrap();
    tokio::time::timeout(wait, unlocked.next())
        .await
        .expect("Unlocked")
        .unwrap();
    assert_eq!(sb.status()["state"], "ready");
}

#[test]
fn a_report_the_funds_cannot_cover_is_refused_and_changes_nothing() {
    let sb = Sandbox::up(200);
    let toml = std::fs::read_to_string(sandbox::repo().join("meter-authority/rates.example.toml"))
        .unwrap()
        .replace("version = 1", "version = 2")
        .replace("status-report = 0", "status-report = 250");
    let toml_path = write(&sb, "rates2.toml", toml.as_bytes());
    let table = path(&sb, "rates2.pem");
    sb.authority(&["rates", "--in", &toml_path, "--out", &table]);
    sb.meterctl_json(&["rates", "install", &table]);
    let regs = sb.registers();
    let rows = sb.status()["ledger_rows"].clone();
    let out = path(&sb, "r.pem");
    assert_eq!(
        refused(&sb, &["report", "-o", &out, "--request-id", "r"]),
        (exit::FUNDS, "InsufficientFunds".into())
    );
    assert_eq!(sb.registers(), regs);
    assert_eq!(sb.status()["ledger_rows"], rows);
    assert!(!std::path::Path::new(&out).exists());
}
