//! End to end: inspection as postage meters do it (issue 13, item 8). The
//! inspection falls due 90 days after certification (or the last
//! acknowledged report): `meterctl status` says `due` with both dates, its
//! JSON has an `inspection` object, the bus carries one `InspectionDue`
//! signal and the log one WARN; at 120 days the meter locks
//! `inspection-overdue`; an acknowledgement with `--warn-days` and
//! `--period-days` moves both deadlines and clears the warning.
//!
//! Time is moved with `METERD_TEST_CLOCK_OFFSET` (software TPM only, see
//! `meterd/src/clock.rs`) by restarting meterd, as `e2e_report` does; the
//! watchdog ticks every 100 ms here so that "once, not once per tick" is
//! tested over many ticks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use std::time::Duration;

use futures_util::StreamExt;
use sandbox::{ok, Sandbox};
use serde_json::Value;

const DAY: i64 = 86_400;

fn path(sb: &Sandbox, name: &str) -> String {
    sb.path(name).to_string_lossy().into_owned()
}

fn restart_at(sb: &Sandbox, offset_secs: i64) {
    sb.script_env(
        "restart-meterd",
        &[
            ("METERD_TEST_CLOCK_OFFSET", &offset_secs.to_string()),
            ("METERD_CHECK_INTERVAL_MS", "100"),
        ],
    );
}

fn log(sb: &Sandbox) -> String {
    std::fs::read_to_string(sb.dir.path().join("meterd.log")).expect("meterd.log")
}

/// The log's WARN lines saying the inspection is due.
fn due_warnings(sb: &Sandbox) -> Vec<String> {
    log(sb)
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("inspection due"))
        .map(str::to_owned)
        .collect()
}

/// Unix seconds as RFC 3339, as meterctl and the log print them.
fn rfc3339(secs: i64) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A raw listener for `InspectionDue`, by interface and member only (no
/// sender: meterd restarts under another unique name).
async fn listen(sb: &Sandbox) -> zbus::MessageStream {
    let conn = zbus::connection::Builder::address(sb.env["DBUS_SYSTEM_BUS_ADDRESS"].as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(meter_proto::INTERFACE)
        .unwrap()
        .member("InspectionDue")
        .unwrap()
        .build();
    zbus::MessageStream::for_match_rule(rule, &conn, Some(16))
        .await
        .unwrap()
}

async fn next_signal(stream: &mut zbus::MessageStream, within: Duration) -> Option<(i64, i64)> {
    match tokio::time::timeout(within, stream.next()).await {
        Ok(Some(Ok(msg))) => Some(msg.body().deserialize::<(i64, i64)>().unwrap()),
        _ => None,
    }
}

/// `meterctl status` (human) and `meterctl --json status`.
fn status_both(sb: &Sandbox) -> (String, Value) {
    let human = ok(&sb.meterctl(&["status"]), "meterctl status");
    (human, sb.meterctl_json(&["status"]))
}

fn inspection_line(human: &str) -> String {
    human
        .lines()
        .find(|l| l.starts_with("inspection: "))
        .unwrap_or_else(|| panic!("no inspection line in:\n{human}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn inspection_warns_once_then_locks_and_an_ack_moves_both_deadlines() {
    let sb = Sandbox::up(100_000);
    let mut signals = listen(&sb).await;

    // Freshly certified: ok, due in 90 days, locks in 120.
    let (human, json) = status_both(&sb);
    assert_eq!(json["inspection_state"], "ok", "{json}");
    assert_eq!(json["inspection_warn_days"], 90, "{json}");
    assert_eq!(json["inspection_period_days"], 120, "{json}");
    let warn_at = json["inspection_warn_at"].as_i64().unwrap();
    let lock_at = json["inspection_due"].as_i64().unwrap();
    assert_eq!(lock_at - warn_at, 30 * DAY, "{json}");
    assert_eq!(json["inspection"]["state"], "ok", "{json}");
    assert!(
        inspection_line(&human).starts_with("inspection: ok — due "),
        "{human}"
    );
    assert!(due_warnings(&sb).is_empty());

    // 91 days later: due. Still selling; one signal, one WARN over many ticks.
    restart_at(&sb, 91 * DAY);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (human, json) = status_both(&sb);
    assert_eq!(json["state"], "ready", "{json}");
    assert_eq!(json["inspection_state"], "due", "{json}");
    assert_eq!(
        json["inspection"],
        serde_json::json!({
            "state": "due",
            "due": warn_at,
            "due_time": rfc3339(warn_at),
            "locks": lock_at,
            "lock_time": rfc3339(lock_at),
            "warn_days": 90,
            "period_days": 120,
        }),
        "{json}"
    );
    assert_eq!(
        inspection_line(&human),
        format!(
            "inspection: due — report by {}, locks {}",
            rfc3339(warn_at),
            rfc3339(lock_at)
        )
    );
    let status_err = String::from_utf8_lossy(&sb.meterctl(&["status"]).stderr).into_owned();
    assert!(status_err.contains("inspection due"), "{status_err}");
    assert_eq!(
        next_signal(&mut signals, Duration::from_secs(20)).await,
        Some((warn_at, lock_at)),
        "InspectionDue(due, lock)"
    );
    assert_eq!(
        next_signal(&mut signals, Duration::from_secs(1)).await,
        None,
        "InspectionDue once per entry into the warning period, not per tick"
    );
    let warns = due_warnings(&sb);
    assert_eq!(warns.len(), 1, "one WARN, not one per tick:\n{}", log(&sb));
    assert!(warns[0].contains(&rfc3339(warn_at)), "{}", warns[0]);
    assert!(warns[0].contains(&rfc3339(lock_at)), "{}", warns[0]);
    // 29 days and some hours left (certification was a moment ago).
    assert!(
        warns[0].contains("days_left=29") || warns[0].contains("days_left=30"),
        "{}",
        warns[0]
    );
    ok(
        &sb.postmark_id("while-due").2,
        "a sale while the inspection is due",
    );

    // Past the lock deadline: locked inspection-overdue, as before.
    restart_at(&sb, 121 * DAY);
    let (human, json) = status_both(&sb);
    assert_eq!(json["state"], "locked", "{json}");
    assert_eq!(json["lock_reason"], "inspection-overdue", "{json}");
    assert_eq!(json["inspection"]["state"], "overdue", "{json}");
    assert!(
        inspection_line(&human).starts_with("inspection: overdue"),
        "{human}"
    );
    assert_eq!(due_warnings(&sb).len(), 1, "no new warning past the lock");

    // The authority acknowledges with its own periods: warn at 30, lock at 40.
    let rep = path(&sb, "rep.pem");
    sb.meterctl_json(&["report", "-o", &rep, "--request-id", "rep"]);
    let body = sb.cms_json(&rep, "the report");
    let t = body["time"].as_i64().unwrap();
    let ack = path(&sb, "ack.pem");
    sb.authority(&[
        "inspect",
        &rep,
        "--out",
        &ack,
        "--period-days",
        "40",
        "--warn-days",
        "30",
    ]);
    let signed = sb.cms_json(&ack, "the acknowledgement");
    assert_eq!(
        (signed["warn_days"].as_u64(), signed["period_days"].as_u64()),
        (Some(30), Some(40)),
        "{signed}"
    );
    let applied = sb.meterctl_json(&["report", "ack", &ack]);
    assert_eq!(applied["inspection_due"].as_i64(), Some(t + 40 * DAY));
    let (human, json) = status_both(&sb);
    assert_eq!(json["state"], "ready", "{json}");
    assert_eq!(json["inspection_state"], "ok", "{json}");
    assert_eq!(json["inspection_warn_at"].as_i64(), Some(t + 30 * DAY));
    assert_eq!(json["inspection_due"].as_i64(), Some(t + 40 * DAY));
    assert_eq!(
        (
            json["inspection_warn_days"].as_u64(),
            json["inspection_period_days"].as_u64()
        ),
        (Some(30), Some(40))
    );
    assert!(
        inspection_line(&human).starts_with("inspection: ok"),
        "{human}"
    );
    assert!(
        log(&sb).contains("inspection no longer due"),
        "an INFO line when the acknowledgement ends it"
    );

    // The new warning deadline, after a restart: due again, by the ack's dates
    // (the ledger's, not the configuration's), signalled again.
    restart_at(&sb, 121 * DAY + 31 * DAY);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let json = sb.status();
    assert_eq!(json["state"], "ready", "{json}");
    assert_eq!(json["inspection_state"], "due", "{json}");
    assert_eq!(
        next_signal(&mut signals, Duration::from_secs(20)).await,
        Some((t + 30 * DAY, t + 40 * DAY))
    );
    assert_eq!(due_warnings(&sb).len(), 2, "{}", log(&sb));
    // And the lock after the ack's period.
    restart_at(&sb, 121 * DAY + 41 * DAY);
    let json = sb.status();
    assert_eq!(
        (json["state"].as_str(), json["lock_reason"].as_str()),
        (Some("locked"), Some("inspection-overdue")),
        "{json}"
    );
}
