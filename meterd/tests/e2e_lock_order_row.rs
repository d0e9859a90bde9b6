//! Issue 12, item 2, for locks the authority orders: the Lock row of an applied lock order
//! (`meterctl lock apply`, key `m/lock-order/<order nonce>`) keeps the authority's signed
//! order beside the lock's own nonce, and every audit (at start, `meterctl audit`)
//! verifies it again: signed by an anchor in force, for this meter, under the nonce its
//! key names (the key makes it good once).
//!
//! The attack, root's way: with meterd stopped, `tests/append_row.py` (python3's sqlite3
//! and hashlib, tpm2-tools with the identity key's derived auth value; no project code)
//! appends a forced Lock row under `m/lock-order/<nonce>` that keeps no order, chained
//! and sealed. Why root would: it burns that order nonce (the authority's real order
//! under it is then refused as already applied) and plants a lock the authority never
//! ordered. Before this branch (run with main's meterd, 74e8a2a): the planted row was
//! accepted, `meterctl audit` answered `"ok":true` (a lock row was checked for its shape
//! only: known reason, fresh nonce, key under `m/lock-order/`) and the meter sat
//! `locked (forced)` by a lock no authority ordered;
//! now `meterctl audit` names the row: a forced lock that keeps no authority lock order.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::root_tools;
use crate::sandbox;

use root_tools::{append_row, last_epoch};
use sandbox::Sandbox;

fn audit_text(sb: &Sandbox) -> String {
    let out = sb.meterctl(&["--json", "audit"]);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn a_real_lock_order_is_kept_and_a_planted_one_is_named() {
    let sb = Sandbox::up(100_000);
    // The real thing: an authority lock order applied, its row keeps the order.
    let order = sb.path("lock.pem").to_string_lossy().into_owned();
    let meter = sb.meter_id();
    let out = sb.authority(&[
        "lock", "--meter", &meter, "--reason", "test", "--out", &order,
    ]);
    assert!(out.status.success(), "{out:?}");
    sb.meterctl_json(&["lock", "apply", &order]);
    assert_eq!(sb.status()["lock_reason"].as_str(), Some("forced"));
    let said = audit_text(&sb);
    assert!(
        !said.contains("lock order"),
        "a real order audits clean: {said}"
    );

    // The planted row.
    sb.script("stop-meterd");
    let epoch = last_epoch(&sb).to_string();
    let nonce = "00112233445566778899aabbccddeeff";
    append_row(
        &sb,
        &meter,
        &[
            "row",
            &epoch,
            "6",
            "forced",
            &format!("m/lock-order/{nonce}"),
            &hex::encode("ffeeddccbbaa99887766554433221100"),
        ],
    );
    sb.script("start-meterd");
    let said = audit_text(&sb);
    assert!(
        said.contains("keeps no authority lock order"),
        "meterctl audit must name the planted lock row: {said}"
    );
}
