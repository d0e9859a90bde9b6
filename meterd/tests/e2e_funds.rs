//! End to end on swtpm through D-Bus (issue 17 item 3): postage funds apart.
//! Before the split one pool pays for everything; the authority's signed
//! funds order (`meter-authority funds-split`, applied with `meterctl
//! account split`, i.e. `SetAccountMode`) splits the funds once (a retry
//! answers the same and writes nothing; foreign and forged orders are
//! refused with named errors); a `--register postage` voucher funds postage
//! only; postage is paid from postage funds only and a postmark from
//! services funds only, each refused with a named error and nothing
//! changed when only the other register holds funds. AR + DR = CT per pair.
//! One sandbox, no sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use meter_proto::exit;
use sandbox::{ok, Sandbox};
use serde_json::Value;

const POSTMARK: u64 = 500;
const LETTER: u64 = 730;

fn path(sb: &Sandbox, name: &str) -> String {
    sb.path(name).to_string_lossy().into_owned()
}

/// Runs `meterctl --json ARGS` expecting failure; returns (exit code, kind, message).
fn refused(sb: &Sandbox, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = sb.meterctl(&all);
    assert!(!out.status.success(), "meterctl {args:?} should fail");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON error on stdout");
    let s = |k: &str| v["error"][k].as_str().unwrap_or_default().to_owned();
    (out.status.code().unwrap_or(-1), s("kind"), s("message"))
}

/// Both pairs and the row count, asserting AR + DR = CT for each:
/// ((AR, DR, CT), (postage AR, DR, CT), rows).
type Both = ((u64, u64, u64), (u64, u64, u64), u64);

fn both(sb: &Sandbox) -> Both {
    let s = sb.status();
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    let services = (n("ascending"), n("descending"), n("control_total"));
    let postage = (
        n("postage_ascending"),
        n("postage_descending"),
        n("postage_control_total"),
    );
    for (what, (ar, dr, ct)) in [("services", services), ("postage", postage)] {
        assert_eq!(ar + dr, ct, "{what}: AR + DR = CT violated: {s}");
    }
    (services, postage, n("ledger_rows"))
}

fn split_order(sb: &Sandbox, dir: Option<&str>, meter: &str, name: &str) -> String {
    let p = path(sb, name);
    let mut args = Vec::new();
    if let Some(d) = dir {
        args.extend(["--dir", d]);
    }
    args.extend(["funds-split", "--meter", meter, "--out", &p]);
    sb.authority(&args);
    p
}

fn run_ok(sb: &Sandbox, args: &[String], what: &str) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&sb.meterctl(&args), what);
}

fn run_refused(sb: &Sandbox, args: &[String]) -> (i32, String, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(sb, &args)
}

fn postmark(id: &str, sb: &Sandbox) -> Vec<String> {
    let msg = sandbox::write(sb, &format!("{id}.txt"), id.as_bytes());
    let t = path(sb, &format!("{id}.tsr"));
    ["postmark", &msg, "-o", &t, "--request-id", id]
        .map(String::from)
        .to_vec()
}

#[test]
fn postage_funds_apart_after_the_authority_order() {
    let funds = LETTER + POSTMARK + 2 * POSTMARK;
    let sb = Sandbox::up(funds);
    let meter = sb.meter_id();
    assert_eq!(sb.status()["funds_mode"], "combined");

    // Combined: one pool pays postage and services.
    run_ok(&sb, &sb.letter_args("l1", "20"), "postage before the split");
    run_ok(&sb, &postmark("p1", &sb), "postmark before the split");
    let spent = LETTER + POSTMARK;
    assert_eq!(both(&sb).0, (spent, funds - spent, funds));

    // Foreign and forged orders: named errors, nothing changed.
    let before = both(&sb);
    let foreign = split_order(&sb, None, "MTR-SOMEONE-ELSE", "foreign.pem");
    let (code, kind, msg) = refused(&sb, &["account", "split", &foreign]);
    assert_eq!(
        (code, kind.as_str()),
        (exit::INVALID, "InvalidInput"),
        "{msg}"
    );
    assert!(msg.contains("is for meter MTR-SOMEONE-ELSE"), "{msg}");
    let other = path(&sb, "other-authority");
    sb.authority(&["--dir", &other, "init", "--name", "Other Authority"]);
    let forged = split_order(&sb, Some(&other), &meter, "forged.pem");
    assert_eq!(
        refused(&sb, &["account", "split", &forged]).1,
        "BadSignature"
    );
    assert_eq!(both(&sb), before);
    assert_eq!(sb.status()["funds_mode"], "combined");

    // The split: one row; a retry answers the same and writes nothing.
    let order = split_order(&sb, None, &meter, "split.pem");
    assert_eq!(sb.cms_json(&order, "the order")["funds"], "split");
    let applied = sb.meterctl_json(&["account", "split", &order]);
    assert_eq!(applied["funds_mode"], "split", "{applied}");
    let after = both(&sb);
    assert_eq!(after.2, before.2 + 1, "one row");
    assert_eq!(
        (after.0, after.1),
        (before.0, (0, 0, 0)),
        "funds stay in services"
    );
    let again = sb.meterctl_json(&["account", "split", &order]);
    assert_eq!(again, applied);
    assert_eq!(both(&sb), after);
    let second = split_order(&sb, None, &meter, "split2.pem");
    assert_eq!(refused(&sb, &["account", "split", &second]).1, "Replay");
    assert_eq!(both(&sb), after);

    // Only services funds: postage refused, named, nothing changed.
    let (code, kind, msg) = run_refused(&sb, &sb.letter_args("l2", "20"));
    assert_eq!((code, kind.as_str()), (exit::FUNDS, "InsufficientFunds"));
    assert!(msg.contains("insufficient postage funds"), "{msg}");
    assert_eq!(both(&sb), after);

    // Services pay postmarks until empty.
    run_ok(&sb, &postmark("p2", &sb), "postmark 2");
    run_ok(&sb, &postmark("p3", &sb), "postmark 3");
    let (services, postage, _) = both(&sb);
    assert_eq!(services, (funds, 0, funds));
    assert_eq!(postage, (0, 0, 0));

    // A postage voucher funds postage only.
    let v = path(&sb, "pv.pem");
    let amount = (LETTER + 270).to_string();
    sb.authority(&[
        "voucher",
        "--meter",
        &meter,
        "--amount",
        &amount,
        "--register",
        "postage",
        "--out",
        &v,
    ]);
    sb.meterctl_json(&["recharge", &v]);
    let (services, postage, _) = both(&sb);
    assert_eq!(services, (funds, 0, funds));
    assert_eq!(postage, (0, LETTER + 270, LETTER + 270));

    // Postage from postage funds only.
    run_ok(&sb, &sb.letter_args("l3", "20"), "postage after the split");
    let now = both(&sb);
    assert_eq!(now.0, (funds, 0, funds));
    assert_eq!(now.1, (LETTER, 270, LETTER + 270));

    // Only postage funds: a postmark refused, named, nothing changed.
    let (code, kind, msg) = run_refused(&sb, &postmark("p4", &sb));
    assert_eq!((code, kind.as_str()), (exit::FUNDS, "InsufficientFunds"));
    assert!(msg.contains("insufficient services funds"), "{msg}");
    assert_eq!(both(&sb), now);

    // Status shows both pairs, in text and JSON.
    let text = ok(&sb.meterctl(&["status"]), "status");
    for want in [
        "split",
        "postage DR",
        "postage AR",
        "postage CT",
        "postage AR + DR = CT",
    ] {
        assert!(text.contains(want), "{want:?} missing: {text}");
    }
    let s = sb.status();
    assert_eq!(s["funds_mode"], "split");
    assert_eq!(s["postage_descending"], 270);
    assert_eq!(s["postage_piece_count"], 1);

    // The authority reconciles the split meter per register and acknowledges.
    let rep = sb.arg("rep1.pem");
    let v = sb.report_as("rep1");
    let seg = v["segment"].as_str().expect("segment path").to_owned();
    // The signed report states the postage pair beside the services pair.
    let body = sb.cms_json(&rep, "the report");
    assert_eq!(body["postage"]["descending"], 270, "{body}");
    assert_eq!(body["postage"]["pieces"], 1, "{body}");
    assert_eq!(
        body["postage"]["ascending"].as_u64().unwrap() + 270,
        body["postage"]["control_total"].as_u64().unwrap(),
        "{body}"
    );
    let said = ok(
        &sb.inspect(&rep, &seg, "ack1.pem"),
        "inspect after the split",
    );
    let issued = funds + LETTER + 270;
    assert!(
        said.contains(&format!("control total {issued} of {issued} issued")),
        "{said}"
    );
    sb.meterctl_json(&["report", "ack", &sb.arg("ack1.pem")]);
    // The full audit (chain, both pairs, the rows' orders) is clean.
    let audit = sb.meterctl_json(&["audit"]);
    assert_eq!(audit["ok"], true, "{audit}");
}
