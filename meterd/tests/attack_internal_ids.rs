//! Issue 11, hole 1: "A plain user can burn the meter's own request ids."
//!
//! The meter keys some of its own ledger rows by ids anyone can predict
//! (`voucher:<seq>`, `settle:<seq of the due row>`, `clear-lock:<nonce in
//! Status>`, `rates:v<N>`, `report-ack:<n>`, `lock-order:<nonce>`, ...). A
//! member of group `meter` who sends a free `Report` with such an id first
//! takes the id, and the administrator's operation that needed it then
//! fails or silently does nothing: a voucher's value is lost, a revocation
//! fee is never collected, a lock cannot be cleared.
//!
//! Each test plays the attack as it would happen: a real uid (not root, not
//! in `meteradmin`) calls `Report s <id>` with `busctl` over the sandbox's
//! bus, then the administrator does the operation with `meterctl`, which
//! must still work. After the fix internal ids live where no caller can
//! reach, so the user's call is an ordinary report of its own.
//!
//! Not attacked here: `provision` (a Report needs a provisioned meter, and
//! provisioning happens once before it) and `cert-revoked:<serial>` (no
//! service writes it today); `tests/torture --only access` still tries them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use crate::attacker;

use attacker::{cert_sha384, outcome, p, payload, root_or_skip, user, voucher, User, USER_A};
use sandbox::{write, Sandbox};

/// `meterctl --json ARGS` as the administrator (root).
fn admin(sb: &Sandbox, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    sb.meterctl(&all)
}

#[test]
fn user_report_with_next_voucher_id_does_not_void_the_voucher() {
    if !root_or_skip("user_report_with_next_voucher_id_does_not_void_the_voucher") {
        return;
    }
    let sb = Sandbox::up(1_000);
    let mallory = user(USER_A);
    // The sandbox credited voucher 1; the next one the authority issues is 2.
    mallory.report_ok(&sb, "voucher:2");
    let (v, seq) = voucher(&sb, "v2.pem", 2_500);
    assert_eq!(seq, 2, "the sandbox's own voucher was sequence 1");
    let (_, dr0, ct0) = sb.registers();
    let out = admin(&sb, &["recharge", &v]);
    assert!(
        out.status.success(),
        "after a plain user's `Report s voucher:2`, the administrator's recharge of voucher 2 \
         must still credit it; got {}",
        outcome(&out)
    );
    let (_, dr, ct) = sb.registers();
    assert_eq!((dr, ct), (dr0 + 2_500, ct0 + 2_500), "voucher 2 credited");
}

#[test]
fn user_report_with_settle_id_does_not_cancel_the_revocation_fee() {
    if !root_or_skip("user_report_with_settle_id_does_not_cancel_the_revocation_fee") {
        return;
    }
    let install = 5_000;
    let fee = 1_000;
    // One install, then 600 left: less than the revocation fee.
    let sb = Sandbox::up(install + 600);
    let rates = sb.status()["rates"].clone();
    assert_eq!(rates["certificate-install"].as_u64(), Some(install));
    assert_eq!(rates["revoke"].as_u64(), Some(fee));
    let mallory = user(USER_A);

    let (_, serial) = sb.enrol_and_install("Alice", &["--request-id", "req-alice"]);
    let req = p(&sb, "revoke-alice.pem");
    sb.meterctl_json(&[
        "cert",
        "revoke",
        &serial,
        "--reason",
        "keyCompromise",
        "-o",
        &req,
        "--request-id",
        "rv-alice",
    ]);
    let order = p(&sb, "order-alice.pem");
    sb.authority(&["revoke", &req, "--out", &order]);
    let conf = p(&sb, "conf-alice.pem");
    let applied = sb.meterctl_json(&["cert", "apply-revoke", &order, "-o", &conf]);
    assert_eq!(applied["payment"], "payment-due", "{applied}");
    let s = sb.status();
    assert_eq!(s["payment_due"].as_u64(), Some(fee), "{s}");
    // The due row is the newest row: its sequence is the row count any
    // member of `meter` reads in Status.
    let due_row = s["ledger_rows"].as_u64().expect("ledger_rows");
    mallory.report_ok(&sb, &format!("settle:{due_row}"));

    // The next recharge settles the fee first.
    let (ar0, dr0, ct0) = sb.registers();
    let (v, _) = voucher(&sb, "v.pem", 5_000);
    let r = admin(&sb, &["recharge", &v]);
    assert!(r.status.success(), "recharge: {}", outcome(&r));
    let (ar, dr, ct) = sb.registers();
    assert_eq!(
        (ar, dr, ct),
        (ar0 + fee, dr0 + 5_000 - fee, ct0 + 5_000),
        "after a plain user's `Report s settle:{due_row}`, the recharge must still collect the \
         revocation fee of {fee} (AR, DR, CT before: {:?})",
        (ar0, dr0, ct0)
    );
    assert_eq!(sb.status()["payment_due"].as_u64(), Some(0));
}

#[test]
fn user_report_with_clear_lock_id_does_not_keep_the_meter_locked() {
    if !root_or_skip("user_report_with_clear_lock_id_does_not_keep_the_meter_locked") {
        return;
    }
    let sb = Sandbox::up(10_000);
    let mallory = user(USER_A);
    let lock = sb.lock_order("lock.pem");
    sb.meterctl_json(&["lock", "apply", &lock]);
    let s = sb.status();
    assert_eq!(s["state"], "locked", "{s}");
    // The nonce is in Status, which every member of `meter` may call; a
    // locked meter still answers Report.
    let nonce = s["lock_nonce"].as_str().expect("lock_nonce").to_owned();
    mallory.report_ok(&sb, &format!("clear-lock:{nonce}"));

    let order = sb.clear_lock_order();
    let out = admin(&sb, &["clear-lock", &order]);
    assert!(
        out.status.success(),
        "after a plain user's `Report s clear-lock:{nonce}`, the authority's clear order for that \
         lock must still clear it; got {}",
        outcome(&out)
    );
    assert_eq!(sb.status()["state"], "ready");
}

/// The user burns `id`, then the administrator runs `meterctl ARGS`, which
/// must succeed: `Err` says what happened instead.
fn burn_then(sb: &Sandbox, mallory: &User, id: &str, args: &[&str]) -> Result<(), String> {
    let r = mallory.report(sb, id);
    if !r.status.success() {
        return Err(format!("the user's Report {id:?} failed: {}", outcome(&r)));
    }
    let out = admin(sb, args);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "after the user's `Report s {id}`, `meterctl {}` failed: {}",
            args.join(" "),
            outcome(&out)
        ))
    }
}

/// Every other internal id whose administrator step is easy to play: the
/// user takes it first, the administrator's operation must still work.
/// All forms are tried; the failure lists each one that was burned.
#[test]
fn user_report_cannot_burn_any_internal_id_of_an_admin_operation() {
    if !root_or_skip("user_report_cannot_burn_any_internal_id_of_an_admin_operation") {
        return;
    }
    let sb = Sandbox::up(100_000);
    let mallory = user(USER_A);
    let mut results: Vec<(&str, Result<(), String>)> = Vec::new();

    // rates:v<N> — the next table's version.
    let toml = std::fs::read_to_string(sandbox::repo().join("meter-authority/rates.example.toml"))
        .unwrap()
        .replace("version = 1", "version = 2");
    let src = write(&sb, "rates2.toml", toml.as_bytes());
    let table = p(&sb, "rates2.pem");
    sb.authority(&["rates", "--in", &src, "--out", &table]);
    results.push((
        "rates:v2",
        burn_then(&sb, &mallory, "rates:v2", &["rates", "install", &table]),
    ));

    // report-ack:<n> — the sequence of the administrator's report.
    let rep = p(&sb, "rep.pem");
    sb.meterctl_json(&["report", "-o", &rep, "--request-id", "admin-report"]);
    let n = payload(&sb, &rep)["sequence"].as_u64().expect("sequence");
    let ack = p(&sb, "ack.pem");
    sb.authority(&["inspect", &rep, "--out", &ack]);
    let id = format!("report-ack:{n}");
    results.push((
        "report-ack",
        burn_then(&sb, &mallory, &id, &["report", "ack", &ack]),
    ));

    // lock-order:<nonce> — anyone who sees the order file reads its nonce.
    let lock = sb.lock_order("lock.pem");
    let id = format!(
        "lock-order:{}",
        payload(&sb, &lock)["nonce"].as_str().unwrap()
    );
    let mut r = burn_then(&sb, &mallory, &id, &["lock", "apply", &lock]);
    let s = sb.status();
    if r.is_ok() && s["state"] != "locked" {
        r = Err(format!(
            "the lock order was accepted but the meter is not locked: {s}"
        ));
    }
    if s["state"] == "locked" {
        let order = sb.clear_lock_order();
        sb.meterctl_json(&["clear-lock", &order]);
    }
    results.push(("lock-order", r));

    // agent-ca:<sha384 of the certificate> — the authority's agent-CA certificate.
    let req = p(&sb, "agentca.req.pem");
    let ca = p(&sb, "agentca.pem");
    sb.meterctl_json(&["agent-ca", "request", "-o", &req]);
    sb.authority(&["certify-agent-ca", &req, "--out", &ca]);
    let id = format!("agent-ca:{}", cert_sha384(&sb, &ca));
    results.push((
        "agent-ca",
        burn_then(&sb, &mallory, &id, &["agent-ca", "install", &ca]),
    ));

    // cert-install:<key> — the pending key, listed by ListCertificates,
    // which members of `meter` may call.
    let (_, alice_serial) = sb.enrol_and_install("Alice", &["--request-id", "req-alice"]);
    let bob_req = sb.request_cert("Bob", &["--request-id", "req-bob"]);
    let listed = mallory.meterctl(&sb, &["certs"]);
    assert!(listed.status.success(), "user certs: {}", outcome(&listed));
    let list: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("certs JSON");
    let key = list["certificates"]
        .as_array()
        .expect("list")
        .iter()
        .find(|c| c["state"] == "pending")
        .unwrap_or_else(|| panic!("no pending key in {list}"))["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let (bob, _) = sb.certify("Bob", &bob_req);
    let id = format!("cert-install:{key}");
    results.push((
        "cert-install",
        burn_then(&sb, &mallory, &id, &["cert", "install", &bob]),
    ));

    // revoke-order:<order id> — from the order the authority sends back.
    let rv = p(&sb, "revoke-alice.pem");
    sb.meterctl_json(&[
        "cert",
        "revoke",
        &alice_serial,
        "--reason",
        "superseded",
        "-o",
        &rv,
        "--request-id",
        "rv-alice",
    ]);
    let order = p(&sb, "order-alice.pem");
    sb.authority(&["revoke", &rv, "--out", &order]);
    let id = format!(
        "revoke-order:{}",
        payload(&sb, &order)["order_id"].as_str().unwrap()
    );
    results.push((
        "revoke-order",
        burn_then(
            &sb,
            &mallory,
            &id,
            &[
                "cert",
                "apply-revoke",
                &order,
                "-o",
                &p(&sb, "conf-alice.pem"),
            ],
        ),
    ));

    // anchor:<sha384 of the new root> — last: it changes the authority's root.
    let msg = p(&sb, "anchor.pem");
    sb.authority(&["rollover", "--out", &msg, "--name", "Rolled Root"]);
    let id = format!(
        "anchor:{}",
        cert_sha384(&sb, &sb.root_pem().to_string_lossy())
    );
    results.push((
        "anchor",
        burn_then(&sb, &mallory, &id, &["trust-anchor", "update", &msg]),
    ));
    drop(sb);

    // account-order:<nonce> — a current account starts from a meter without funds.
    let sb = Sandbox::up(0);
    let order = p(&sb, "account.pem");
    sb.authority(&[
        "account",
        "--meter",
        &sb.meter_id(),
        "--limit",
        "1200",
        "--period-days",
        "1",
        "--out",
        &order,
    ]);
    let id = format!(
        "account-order:{}",
        payload(&sb, &order)["nonce"].as_str().unwrap()
    );
    results.push((
        "account-order",
        burn_then(&sb, &mallory, &id, &["account", "apply", &order]),
    ));

    let burned: Vec<String> = results
        .iter()
        .filter_map(|(form, r)| r.as_ref().err().map(|e| format!("  {form}: {e}")))
        .collect();
    assert!(
        burned.is_empty(),
        "a plain user's Report burned {} of {} internal ids:\n{}",
        burned.len(),
        results.len(),
        burned.join("\n")
    );
}
