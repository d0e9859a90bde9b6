//! End to end (issue 16): the orders an operator queues over HTTP beyond
//! top-ups and locks — a current-account order, a forced revocation of a
//! user certificate installed on the meter, a trust-anchor update after a
//! root rollover (applied before the acknowledgement its new root signed) — each
//! queued (a retry gets the same order, other terms a 409), applied on the
//! real meterd on swtpm by one `meterctl sync`, shown by the meter (status,
//! certificate list) and by the provider (the CRL),
//! listed as pending until the next acknowledged report shows it applied,
//! and never applied twice. On the file store and on PostgreSQL. The
//! pending list is read with the token the upload earned: without it, 401.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::e2e_sync::{applied_by_sync, results, sync, Provider};
use crate::sandbox::Sandbox;

use meter_authority::book::Book;
use serde_json::json;

/// Runs the orders on a meter with no funds (a current account takes a
/// meter with no prepaid funds); returns the ids of the objects applied.
fn orders_flow(sb: &Sandbox, p: &Provider) -> Vec<String> {
    let meter = sb.meter_id();
    let pending_path = format!("/v1/meters/{meter}/pending");

    // Loopback is no operator when the server has a token: no credential, 401.
    let r = p.as_bearer("GET", &pending_path, "", None);
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));

    // 1. A current-account order, named by the operator's nonce.
    let acct = r#"{"nonce":"acct-1","credit_limit":50000,"period_days":30}"#;
    let first = p.order(&meter, "account", acct);
    assert_eq!(first.headers["meter-order-id"], "account-order/acct-1");
    assert_eq!(p.order(&meter, "account", acct).body, first.body, "a retry");
    let other = r#"{"nonce":"acct-1","credit_limit":1,"period_days":30}"#;
    let path = format!("/v1/meters/{meter}/orders/account");
    assert_eq!(
        p.http("POST", &path, other).0,
        409,
        "acct-1 had other terms"
    );
    applied_by_sync(sb, p, &["account-order/acct-1"]);
    let s = sb.status();
    assert_eq!(
        (s["account_mode"].clone(), s["credit_limit"].clone()),
        (json!(true), json!(50000)),
        "{s}"
    );

    // 2. A forced revocation of a user certificate the meter holds.
    let req = sb.request_cert("Alice", &["--request-id", "req-alice"]);
    let (cert, serial) = sb.certify("Alice", &req);
    sb.meterctl_json(&["cert", "install", &cert]);
    let revoke = json!({"serial": serial, "reason": "keyCompromise"}).to_string();
    let first = p.order(&meter, "revoke", &revoke);
    let id = first.headers["meter-order-id"].clone();
    assert!(id.starts_with("revoke-order/"), "{id}");
    assert_eq!(
        p.order(&meter, "revoke", &revoke).body,
        first.body,
        "a retry"
    );
    let other = json!({"serial": serial, "reason": "superseded"}).to_string();
    let path = format!("/v1/meters/{meter}/orders/revoke");
    assert_eq!(p.http("POST", &path, &other).0, 409, "revoked otherwise");
    // The CRL lists the serial from the order on.
    let (status, crl) = p.http("GET", "/v1/crl", "");
    assert_eq!(status, 200);
    let listed = meter_pki::crl::serials(&crl).unwrap();
    assert!(
        listed
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&serial) || serial.ends_with(s.as_str())),
        "{listed:?} vs {serial}"
    );
    applied_by_sync(sb, p, &[&id]);
    let certs = sb.meterctl_json(&["certs"])["certificates"].clone();
    let alice = certs
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["serial"] == serial.as_str())
        .unwrap_or_else(|| panic!("{serial} in {certs}"));
    assert_eq!(alice["state"], "revoked", "{alice}");
    // A current account: sales and fees raise AR and CT, DR stays 0.
    assert_eq!(sb.registers().1, 0, "a revocation credits nothing");
    // Applied, but not yet in an acknowledged report: still listed.
    let listed = p.pending(&meter);
    assert_eq!(listed["objects"][0]["id"], id.as_str(), "{listed}");

    // The next sync: nothing pending, nothing applied twice.
    let v = sync(sb, p, &[]);
    assert!(results(&v).is_empty(), "{v}");
    assert!(p.pending(&meter)["objects"].as_array().unwrap().is_empty());
    let v = sync(sb, p, &[]);
    assert!(results(&v).is_empty(), "{v}");
    assert_eq!(sb.registers().1, 0, "nothing credited");
    let revoked = sb.meterctl_json(&["certs"])["certificates"].clone();
    assert_eq!(revoked, certs, "no second revocation");
    let anchor = rolled_over(sb, p);
    vec!["account-order/acct-1".to_owned(), id, anchor]
}

/// Step 3: the authority rolls its root over (command line) and queues the
/// trust-anchor update. From then on the provider signs with the new root,
/// so the next sync's acknowledgement does not verify on the meter until
/// the update (which the old root signed) is applied: sync applies the
/// pending update first, then the acknowledgement. Returns the update's id.
fn rolled_over(sb: &Sandbox, p: &Provider) -> String {
    let meter = sb.meter_id();
    // The forced revocation before locked the meter (SPEC, Locks): a locked
    // meter still reports, and takes the update.
    assert_eq!(sb.status()["state"], meter_proto::state::LOCKED);
    let msg = sb.arg("rollover.pem");
    sb.authority(&["rollover", "--out", &msg, "--name", "Rolled Root"]);
    let update = std::fs::read_to_string(&msg).unwrap();
    let body = json!({ "update": update }).to_string();
    let id = p.order(&meter, "anchor", &body).headers["meter-order-id"].clone();
    assert!(id.starts_with("anchor/"), "{id}");
    // The answer is signed by the new root, which the meter refuses until it
    // holds it: acknowledged means the update went first (listed after as
    // stale: the meter holds that root).
    let v = sync(sb, p, &[]);
    assert_eq!(results(&v), vec![(id.clone(), "stale".to_owned())], "{v}");
    // Applied, and acknowledged under the new root from now on.
    let v = sync(sb, p, &[]);
    assert!(results(&v).is_empty(), "{v}");
    assert!(p.pending(&meter)["objects"].as_array().unwrap().is_empty());
    id
}

fn assert_applied(book: &Book, ids: &[String]) {
    for k in ids {
        assert!(
            book.applied.contains_key(k),
            "{k} not applied: {:?}",
            book.applied
        );
    }
    assert_eq!(book.refused, 0);
}

#[test]
fn orders_over_http_on_the_file_store() {
    let sb = Sandbox::up(0);
    let p = Provider::start(&sb, None);
    let ids = orders_flow(&sb, &p);
    let book = meter_authority::book::Shelf::of(&sb.authority_dir(), &sb.meter_id())
        .unwrap()
        .read()
        .unwrap();
    assert_applied(&book, &ids);
}

#[test]
fn orders_over_http_on_postgresql() {
    let Some(bin) = crate::postgres::pg_bin() else {
        assert!(
            std::env::var("CI").is_err(),
            "CI: PostgreSQL is required (Debian package postgresql, see tests/packages)"
        );
        eprintln!("SKIPPED: no PostgreSQL binaries in /usr/lib/postgresql/*/bin");
        return;
    };
    let pg = crate::postgres::Postgres::start(&bin);
    let sb = Sandbox::up(0);
    let p = Provider::start(&sb, Some(&pg.url()));
    let ids = orders_flow(&sb, &p);
    let meter = sb.meter_id();
    let book = pg.psql(&format!(
        "SELECT book::text FROM meters WHERE meter_id = '{meter}'"
    ));
    let book: Book = serde_json::from_str(&book).unwrap();
    assert_applied(&book, &ids);
}
