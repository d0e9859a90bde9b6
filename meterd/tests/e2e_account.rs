//! End to end: current-account mode (SPEC "Registers"). An authority order
//! sets a credit limit and a billing period; sales raise AR and CT together
//! while DR stays 0; past the limit a sale is refused and nothing charged;
//! forged, foreign, replayed and older orders are refused; a period that
//! ends without an acknowledged report locks the meter (`period-closed`),
//! the report is still answered, and its acknowledgement opens the next
//! period. AR + DR = CT is checked after every step.
//!
//! Time is moved with `METERD_TEST_CLOCK_OFFSET` by restarting meterd (see
//! `meterd/src/clock.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use meter_proto::exit;
use sandbox::{ok, Sandbox};
use serde_json::Value;

const DAY: i64 = 86_400;
const POSTMARK: u64 = 500;

/// Runs `meterctl --json ARGS` expecting failure; returns (exit code, kind, message).
fn refused(sb: &Sandbox, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = sb.meterctl(&all);
    assert!(!out.status.success(), "meterctl {args:?} should fail");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON error on stdout");
    (
        out.status.code().unwrap_or(-1),
        v["error"]["kind"].as_str().unwrap_or_default().to_owned(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

fn path(sb: &Sandbox, name: &str) -> String {
    sb.path(name).to_string_lossy().into_owned()
}

/// `meter-authority [--dir DIR] account` for METER into NAME; returns its path.
fn order(
    sb: &Sandbox,
    dir: Option<&str>,
    meter: &str,
    limit: u64,
    days: u32,
    name: &str,
) -> String {
    let p = path(sb, name);
    let (limit, days) = (limit.to_string(), days.to_string());
    let mut args = Vec::new();
    if let Some(d) = dir {
        args.extend(["--dir", d]);
    }
    args.extend([
        "account",
        "--meter",
        meter,
        "--limit",
        &limit,
        "--period-days",
        &days,
        "--out",
        &p,
    ]);
    sb.authority(&args);
    p
}

/// Registers (AR, DR, CT), asserting AR + DR = CT.
fn balanced(sb: &Sandbox) -> (u64, u64, u64) {
    let (ar, dr, ct) = sb.registers();
    assert_eq!(ar + dr, ct, "AR + DR = CT violated: {ar} + {dr} != {ct}");
    (ar, dr, ct)
}

fn restart_at(sb: &Sandbox, offset_secs: i64) {
    sb.script_env(
        "restart-meterd",
        &[("METERD_TEST_CLOCK_OFFSET", &offset_secs.to_string())],
    );
}

fn report(sb: &Sandbox, name: &str) -> (String, Value) {
    let p = path(sb, &format!("{name}.pem"));
    sb.meterctl_json(&["report", "-o", &p, "--request-id", name]);
    let body = sb.cms_json(&p, "the report");
    (p, body)
}

#[test]
fn current_account_bills_by_report_and_locks_when_the_period_closes() {
    let sb = Sandbox::up(0);
    let meter = sb.meter_id();
    assert_eq!(balanced(&sb), (0, 0, 0));
    let s = sb.status();
    assert_eq!(s["account_mode"], false, "{s}");

    // The order verifies with stock OpenSSL and says what it sets.
    let o1 = order(&sb, None, &meter, 2 * POSTMARK + 200, 1, "order1.pem");
    let body = sb.cms_json(&o1, "the order");
    assert_eq!(body["credit_limit"], 2 * POSTMARK + 200);
    assert_eq!(body["period_days"], 1);

    let applied = sb.meterctl_json(&["account", "apply", &o1]);
    assert_eq!(applied["account_mode"], true, "{applied}");
    assert_eq!(applied["credit_limit"], 1200);
    let s = sb.status();
    assert_eq!(s["account_mode"], true);
    assert_eq!(s["credit_limit"], 1200);
    assert_eq!(s["period_used"], 0);
    let end = s["period_end"].as_i64().unwrap();
    assert_eq!(applied["period_end"].as_i64(), Some(end));
    assert!(s["user_certificates"].is_u64(), "{s}");

    // Sales raise AR and CT; DR stays 0.
    ok(&sb.postmark_id("p1").2, "postmark 1");
    assert_eq!(balanced(&sb), (POSTMARK, 0, POSTMARK));
    ok(&sb.postmark_id("p2").2, "postmark 2");
    assert_eq!(balanced(&sb), (2 * POSTMARK, 0, 2 * POSTMARK));
    assert_eq!(sb.status()["period_used"], 2 * POSTMARK);

    // Past the limit: refused before any work, nothing charged.
    let rows = sb.status()["ledger_rows"].clone();
    let (code, kind, message) = refused(
        &sb,
        &[
            "postmark",
            &path(&sb, "p1.txt"),
            "-o",
            &path(&sb, "p3.tsr"),
            "--request-id",
            "p3",
        ],
    );
    assert_eq!((code, kind.as_str()), (exit::FUNDS, "InsufficientFunds"));
    assert!(message.contains("credit limit"), "{message}");
    assert_eq!(sb.status()["ledger_rows"], rows);
    assert_eq!(balanced(&sb), (2 * POSTMARK, 0, 2 * POSTMARK));

    // No vouchers in this mode.
    let v = path(&sb, "voucher.pem");
    sb.authority(&[
        "voucher", "--meter", &meter, "--amount", "5000", "--out", &v,
    ]);
    assert_eq!(refused(&sb, &["recharge", &v]).0, exit::INVALID);
    assert_eq!(balanced(&sb), (2 * POSTMARK, 0, 2 * POSTMARK));

    // Replayed, foreign and forged orders: named errors, nothing changed.
    let rows = sb.status()["ledger_rows"].clone();
    let (code, kind, _) = refused(&sb, &["account", "apply", &o1]);
    assert_eq!((code, kind.as_str()), (exit::REFUSED, "Replay"));
    let foreign = order(&sb, None, "MTR-SOMEONE-ELSE", 10_000, 30, "foreign.pem");
    assert_eq!(
        refused(&sb, &["account", "apply", &foreign]).1,
        "InvalidInput"
    );
    let other = path(&sb, "other-authority");
    sb.authority(&["--dir", &other, "init", "--name", "Other Authority"]);
    let forged = order(&sb, Some(&other), &meter, 1_000_000, 30, "forged.pem");
    assert_eq!(
        refused(&sb, &["account", "apply", &forged]).1,
        "BadSignature"
    );
    assert_eq!(refused(&sb, &["account", "apply", &v]).1, "InvalidInput");
    let s = sb.status();
    assert_eq!(s["ledger_rows"], rows);
    assert_eq!(s["credit_limit"], 1200);
    assert_eq!(balanced(&sb), (2 * POSTMARK, 0, 2 * POSTMARK));

    // The period (1 day) ends without an acknowledged report: locked.
    restart_at(&sb, 2 * DAY);
    let s = sb.status();
    assert_eq!(
        (s["state"].as_str(), s["lock_reason"].as_str()),
        (Some("locked"), Some("period-closed")),
        "{s}"
    );
    let human = ok(&sb.meterctl(&["status"]), "status");
    assert!(human.contains("current account"), "{human}");
    assert!(human.contains("meterctl report ack"), "{human}");
    assert_eq!(sb.postmark_id("p4").2.status.code(), Some(exit::LOCKED));
    assert_eq!(balanced(&sb), (2 * POSTMARK, 0, 2 * POSTMARK));

    // The report is still answered and bills the period.
    let (rep, body) = report(&sb, "rep1");
    assert_eq!(body["lock_reason"], "period-closed");
    assert_eq!(body["ascending"], 2 * POSTMARK);
    assert_eq!(body["descending"], 0);
    assert_eq!(body["control_total"], 2 * POSTMARK);
    assert_eq!(body["usage"]["postmark"]["pieces"], 2, "{body}");
    assert_eq!(body["usage"]["postmark"]["amount"], 2 * POSTMARK, "{body}");
    // Charges booked as credit = debit are not funds credited.
    assert_eq!(body["credited"], 0, "{body}");

    // Its acknowledgement opens the next period and lifts the lock.
    let ack = path(&sb, "ack1.pem");
    sb.authority(&["inspect", &rep, "--out", &ack]);
    ok(&sb.meterctl(&["report", "ack", &ack]), "report ack");
    let s = sb.status();
    assert_eq!(s["state"], "ready", "{s}");
    assert_eq!(s["period_used"], 0);
    let t = body["time"].as_i64().unwrap();
    assert_eq!(s["period_end"].as_i64(), Some(t + DAY));
    ok(&sb.postmark_id("p5").2, "postmark in the new period");
    assert_eq!(balanced(&sb), (3 * POSTMARK, 0, 3 * POSTMARK));

    // Rebuilt from the ledger at start.
    restart_at(&sb, 2 * DAY);
    let s = sb.status();
    assert_eq!(s["state"], "ready", "{s}");
    assert_eq!(s["account_mode"], true);
    assert_eq!(s["period_used"], POSTMARK);
    assert_eq!(s["period_end"].as_i64(), Some(t + DAY));

    // An order older than the one in force is Stale; the newer one applies.
    let older = order(&sb, None, &meter, 5_000, 7, "older.pem");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let newer = order(&sb, None, &meter, 5_000, 7, "newer.pem");
    sb.meterctl_json(&["account", "apply", &newer]);
    assert_eq!(refused(&sb, &["account", "apply", &older]).1, "Stale");
    let s = sb.status();
    assert_eq!(s["credit_limit"], 5_000);
    assert_eq!(s["period_used"], 0);
    assert_eq!(balanced(&sb), (3 * POSTMARK, 0, 3 * POSTMARK));
    let audit = sb.meterctl_json(&["audit"]);
    assert_eq!(audit["ok"], true, "{audit}");
}

#[test]
fn an_order_is_refused_while_prepaid_funds_remain() {
    let sb = Sandbox::up(10_000);
    let o = order(&sb, None, &sb.meter_id(), 1_000, 30, "order.pem");
    let (code, kind, message) = refused(&sb, &["account", "apply", &o]);
    assert_eq!((code, kind.as_str()), (exit::INVALID, "InvalidInput"));
    assert!(message.contains("prepaid"), "{message}");
    let s = sb.status();
    assert_eq!(s["account_mode"], false);
    assert_eq!(balanced(&sb), (0, 10_000, 10_000));
}
