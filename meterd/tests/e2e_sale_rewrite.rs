//! Issue 12, "Rewrite the ledger", the rewrites that forge nothing from outside: root
//! lowers what a sale debited, or deletes a sale, with the registers after it shifted so
//! they add up and every hash and batch head recomputed (`tests/rewrite_sale.py`:
//! python3's sqlite3 and hashlib, no project code; the re-seal with the identity key and
//! the derived auth value is shown in `attack_rewrite_tpm` and `e2e_rollback`, and the
//! authority does not depend on it). The next report's segment carries the rewritten
//! rows:
//!
//! * **a lowered price**: `meter-authority inspect` re-prices each sale with the rate
//!   table in force at its row (the tables are rows of the ledger; the book keeps those of
//!   acknowledged segments) and refuses naming the row, the debit and the rate. With main's
//!   `meter-authority` (74e8a2a) in place of this branch's, `inspect` acknowledged it
//!   (run: exit 0, "rows 7..=13 reconciled"): registers re-derive, the control total
//!   holds, nothing looked at prices.
//! * **a deleted sale** (the rows after it renumbered): the segment reconciles (it is a
//!   consistent ledger that never sold that piece), but the tokens sold are out in the
//!   world: `meter-authority lookup` of the deleted sale's token, whose serial is its
//!   row number, answers "reported with another digest" (exit 3). That already held with
//!   main's `meter-authority` (run: the test passes with it): lookup is how the
//!   authority catches it; `inspect` cannot know of a sale no row shows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use std::path::PathBuf;
use std::process::Output;

use sandbox::{ok, Sandbox};

fn report(sb: &Sandbox, name: &str) -> (String, String) {
    let p = sb.arg(&format!("{name}.pem"));
    let v = sb.report_as(name);
    (p, v["segment"].as_str().expect("segment").to_owned())
}

fn inspect(sb: &Sandbox, rep: &(String, String), ack: &str) -> Output {
    sb.inspect(&rep.0, &rep.1, ack)
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Sells p1, reports (acknowledged), sells p2..p4, stops meterd, rewrites with `args`,
/// starts meterd and reports again; returns the inspection and the tokens.
fn rewritten(args: &[&str]) -> (Sandbox, Output, Vec<String>) {
    let sb = Sandbox::up(100_000);
    ok(&sb.postmark_id("p1").2, "postmark p1");
    let r1 = report(&sb, "rep1");
    ok(&inspect(&sb, &r1, "ack1.pem"), "inspect rep1");
    sb.meterctl_json(&["report", "ack", &sb.arg("ack1.pem")]);
    let tokens = ["p2", "p3", "p4"]
        .iter()
        .map(|id| {
            let (_, t, out) = sb.postmark_id(id);
            ok(&out, id);
            t
        })
        .collect();
    let meter = sb.meter_id();
    sb.script("stop-meterd");
    let db = PathBuf::from(&sb.env["METERD_STATE_DIR"]).join("ledger.sqlite");
    let script = sandbox::repo().join("meterd/tests/rewrite_sale.py");
    let mut a = vec![
        script.to_string_lossy().into_owned(),
        db.to_string_lossy().into_owned(),
        meter,
    ];
    a.extend(args.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    ok(&sb.run("python3", &a), "rewrite_sale.py");
    sb.script("start-meterd");
    let r2 = report(&sb, "rep2");
    let out = inspect(&sb, &r2, "ack2.pem");
    (sb, out, tokens)
}

#[test]
fn a_sale_repriced_with_a_recomputed_chain_is_named_by_inspect() {
    let (sb, out, _) = rewritten(&["reprice", "p3", "1"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(3), "inspect must refuse: {said}");
    assert!(
        said.contains("a postmark debited 1, rate table v"),
        "{said}"
    );
    assert!(!sb.path("ack2.pem").exists(), "no acknowledgement");
    assert!(
        sb.path("ack2.lock-order.pem").exists(),
        "a forced lock order"
    );
}

#[test]
fn a_deleted_sale_is_caught_by_lookup_of_its_token() {
    let (sb, out, tokens) = rewritten(&["delete", "p3"]);
    let said = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a consistent ledger that never sold p3: inspect has nothing to name: {said}"
    );
    let out = sb.run(
        &sandbox::bin_dir().join("meter-authority").to_string_lossy(),
        &["lookup", &tokens[1]],
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(said.contains("REPORTED WITH ANOTHER DIGEST"), "{said}");
    // The sale before it is untouched: reported.
    let out = sb.run(
        &sandbox::bin_dir().join("meter-authority").to_string_lossy(),
        &["lookup", &tokens[0]],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
