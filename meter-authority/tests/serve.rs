//! `meter-authority serve` end to end: on a real PostgreSQL server the test
//! starts (Debian's `postgresql` package; skipped only when it is absent
//! and CI is not set), and on the authority directory (the file store).
//! Top-ups are idempotent (a retry, and concurrent requests with one id,
//! get the one voucher) and concurrent distinct ones each get their own;
//! a meter's report is acknowledged once (the same bytes again on retry),
//! a falsified one is refused with a forced lock order.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::serve_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use meter_authority::serve::{frame_upload, UPLOAD};
use meter_pki::payload::{self, Voucher};
use meter_pki::report::{LockOrder, ReportAck};
use serve_support::*;

const M: &str = "MTR-1";

fn anchors(dir: &Path) -> Vec<meter_pki::cert::Certificate> {
    vec![meter_pki::cert::parse(&std::fs::read(dir.join("root.pem")).unwrap()).unwrap()]
}

/// The flow both stores must pass; returns top-ups/s of the throughput run.
fn flow(dir: &Path, server: &Server, what: &str) -> f64 {
    let addr = server.addr.as_str();
    let now = meter_authority::now();
    let meter = certify(dir, M);
    let t0 = (now - 60) * 1000;
    let sold = token(&meter, 3, now - 60);

    // A purchase and its retry: the same bytes, one voucher.
    let first = buy(addr, M, "order-1", 1000);
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.headers["meter-purchase"], "new");
    assert_eq!(first.headers["meter-voucher-sequence"], "1");
    let again = buy(addr, M, "order-1", 1000);
    assert_eq!(again.status, 200);
    assert_eq!(again.headers["meter-purchase"], "repeated");
    assert_eq!(
        again.body, first.body,
        "a retried purchase gets the same voucher"
    );
    let (v, _) = payload::open::<Voucher>(&first.body, &anchors(dir), now).unwrap();
    assert_eq!((v.meter_id.as_str(), v.amount, v.sequence), (M, 1000, 1));
    // The same id for another amount is a conflict, not a second voucher.
    assert_eq!(buy(addr, M, "order-1", 2000).status, 409);
    // Garbage and oversized requests are refused.
    let bad = http(
        addr,
        "POST",
        &format!("/v1/meters/{M}/topups"),
        "application/json",
        b"{",
    );
    assert_eq!(bad.status, 400);
    let big = vec![b' '; 10_000];
    let big = http(
        addr,
        "POST",
        &format!("/v1/meters/{M}/topups"),
        "application/json",
        &big,
    );
    assert_eq!(big.status, 413);

    // 8 concurrent requests with one purchase id: one voucher.
    let same: Vec<Vec<u8>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| s.spawn(|| buy(addr, M, "order-same", 500)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap().body).collect()
    });
    assert!(
        same.iter().all(|b| *b == same[0]),
        "one purchase id, one voucher"
    );

    // 16 concurrent purchases with distinct ids: 16 distinct vouchers.
    let distinct: Vec<(u16, String, Vec<u8>)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16u64)
            .map(|i| s.spawn(move || buy(addr, M, &format!("c-{i}"), 100 + i)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .map(|r| {
                (
                    r.status,
                    r.headers["meter-voucher-sequence"].clone(),
                    r.body,
                )
            })
            .collect()
    });
    assert!(distinct.iter().all(|d| d.0 == 200));
    let seqs: BTreeSet<u64> = distinct.iter().map(|d| d.1.parse().unwrap()).collect();
    assert_eq!(
        seqs,
        (3..=18).collect(),
        "16 distinct sequences after 1 and 2"
    );
    let bodies: BTreeSet<&Vec<u8>> = distinct.iter().map(|d| &d.2).collect();
    assert_eq!(bodies.len(), 16);

    // Throughput: 16 clients, 20 purchases each (a new connection each).
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..16u64 {
            s.spawn(move || {
                for i in 0..20u64 {
                    let r = buy(addr, M, &format!("load-{t}-{i}"), 7);
                    assert_eq!(r.status, 200);
                }
            });
        }
    });
    let rate = 320.0 / started.elapsed().as_secs_f64();
    eprintln!("serve [{what}]: 320 top-ups by 16 concurrent clients at {rate:.0} top-ups/s");

    // The meter reports its ledger, which credited voucher 1: acknowledged.
    let (signed, seg) = report(&meter, &first.body, 1000, &sold, t0);
    let upload = frame_upload(&signed, &[], &seg);
    let path = format!("/v1/meters/{M}/reports");
    let t = Instant::now();
    let ack = http(addr, "POST", &path, UPLOAD, &upload);
    let took = t.elapsed();
    assert_eq!(ack.status, 200, "{}", String::from_utf8_lossy(&ack.body));
    let (a, _) = payload::open::<ReportAck>(&ack.body, &anchors(dir), now).unwrap();
    assert_eq!((a.meter_id.as_str(), a.report_sequence), (M, 1));
    let retry = http(addr, "POST", &path, UPLOAD, &upload);
    assert_eq!(
        (retry.status, &retry.body),
        (200, &ack.body),
        "same upload, same answer"
    );
    eprintln!("serve [{what}]: report reconciled and acknowledged in {took:?}");

    // Another meter's path, or no signature of this authority: refused.
    assert_eq!(
        http(addr, "POST", "/v1/meters/MTR-2/reports", UPLOAD, &upload).status,
        403
    );
    let forged = frame_upload(b"not a report", &[], &seg);
    assert_eq!(http(addr, "POST", &path, UPLOAD, &forged).status, 422);

    // The operator credits 100 times the voucher: refused, with a lock order.
    let (signed, seg) = report(&meter, &first.body, 100_000, &sold, t0);
    let upload = frame_upload(&signed, &[], &seg);
    let refused = http(addr, "POST", &path, UPLOAD, &upload);
    assert_eq!(refused.status, 409);
    let (o, _) = payload::open::<LockOrder>(&refused.body, &anchors(dir), now).unwrap();
    assert_eq!(o.meter_id, M);
    assert!(
        refused.headers["meter-findings"].contains("voucher 1 says 1000"),
        "{:?}",
        refused.headers
    );
    let again = http(addr, "POST", &path, UPLOAD, &upload);
    assert_eq!((again.status, &again.body), (409, &refused.body));

    // A relying party looks up the token sold in row 3: reported. One made
    // later (serial 4) is not reported yet, and kept as awaited.
    let look = |object: &[u8]| {
        let r = http(
            addr,
            "POST",
            "/v1/lookup",
            "application/octet-stream",
            object,
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()
    };
    let l = look(&sold);
    assert_eq!(
        (l["answer"].as_str(), l["seq"].as_u64()),
        (Some("reported"), Some(3)),
        "{l}"
    );
    let l = look(&token(&meter, 4, now));
    assert_eq!(l["answer"].as_str(), Some("not-reported-yet"), "{l}");
    assert_eq!(l["acknowledged_rows"].as_u64(), Some(3), "{l}");
    let r = http(
        addr,
        "POST",
        "/v1/lookup",
        "application/octet-stream",
        b"junk",
    );
    assert_eq!(r.status, 422);

    // The CRL: DER, signed by the root, the same until revocations change.
    let crl = http(addr, "GET", "/v1/crl", "text/plain", b"");
    assert_eq!(crl.status, 200);
    assert_eq!(crl.body.first(), Some(&0x30));
    assert_eq!(
        http(addr, "GET", "/v1/crl", "text/plain", b"").body,
        crl.body
    );
    rate
}

/// After `flow`: what the meter must still apply, and a clear-lock order
/// queued by the operator (issue 16, `meterctl sync`).
fn pending_flow(dir: &Path, server: &Server) {
    let addr = server.addr.as_str();
    let order = |nonce: &str| {
        let body = format!(r#"{{"nonce":"{nonce}"}}"#);
        let path = format!("/v1/meters/{M}/orders/clear-lock");
        http(addr, "POST", &path, "application/json", body.as_bytes())
    };
    let first = order("n-1");
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.headers["meter-order-id"], "clear-lock/n-1");
    let o: meter_pki::payload::ClearLockOrder =
        payload::open(&first.body, &anchors(dir), meter_authority::now())
            .unwrap()
            .0;
    assert_eq!((o.meter_id.as_str(), o.nonce.as_str()), (M, "n-1"));
    assert_eq!(order("n-1").body, first.body, "one order per nonce");
    assert_eq!(order("a b").status, 422);
    let path = format!("/v1/meters/{M}/pending");
    assert_eq!(http(addr, "POST", &path, "text/plain", b"").status, 405);
    let r = http(addr, "GET", &path, "text/plain", b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["acknowledged_rows"].as_u64(), Some(3), "{v}");
    let objects = v["objects"].as_array().unwrap();
    // The refused upload's lock order, the clear-lock order, then the
    // vouchers the acknowledged report did not credit (all but 1), bounded.
    let lock = hex::decode(objects[0]["der_hex"].as_str().unwrap()).unwrap();
    let (l, _) = payload::open::<LockOrder>(&lock, &anchors(dir), meter_authority::now()).unwrap();
    assert_eq!(objects[0]["id"], format!("lock-order/{}", l.nonce));
    assert_eq!(objects[1]["id"], "clear-lock/n-1");
    assert_eq!(objects[1]["der_hex"], hex::encode(&first.body));
    assert_eq!(objects[2]["id"], "voucher/2");
    assert_eq!(objects[2]["kind"], "voucher");
    assert_eq!(objects[2]["amount"].as_u64(), Some(500));
    assert_eq!(objects.len(), 256);
    assert_eq!(v["more"], true);
    assert!(
        !objects.iter().any(|o| o["id"] == "voucher/1"),
        "voucher 1 was credited in the acknowledged report"
    );
    // The same answer until the next acknowledged report.
    assert_eq!(http(addr, "GET", &path, "text/plain", b"").body, r.body);
}

/// A top-up naming a register (issue 17): the voucher names it, the
/// purchase keeps it, and a retry naming another register (or none) is a
/// conflict, as one for another amount.
fn register_flow(dir: &Path, server: &Server) {
    let addr = server.addr.as_str();
    let topup = |json: &str| {
        http(
            addr,
            "POST",
            "/v1/meters/MTR-2/topups",
            "application/json",
            json.as_bytes(),
        )
    };
    let postage = r#"{"purchase_id":"reg-1","amount":700,"register":"postage"}"#;
    let first = topup(postage);
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let now = meter_authority::now();
    let (v, _) = payload::open::<Voucher>(&first.body, &anchors(dir), now).unwrap();
    assert_eq!((v.amount, v.register.as_deref()), (700, Some("postage")));
    let again = topup(postage);
    assert_eq!(
        (again.status, again.headers["meter-purchase"].as_str()),
        (200, "repeated")
    );
    assert_eq!(again.body, first.body, "a retry gets the same voucher");
    let services = r#"{"purchase_id":"reg-1","amount":700,"register":"services"}"#;
    assert_eq!(topup(services).status, 409, "another register");
    assert_eq!(topup(r#"{"purchase_id":"reg-1","amount":700}"#).status, 409);
    let bad = r#"{"purchase_id":"reg-2","amount":700,"register":"stamps"}"#;
    assert_eq!(topup(bad).status, 400);
    // No register: a voucher naming none, and naming one on retry conflicts.
    let none = buy(addr, "MTR-2", "reg-3", 50);
    assert_eq!(none.status, 200);
    let (v, _) = payload::open::<Voucher>(&none.body, &anchors(dir), now).unwrap();
    assert_eq!(
        (v.sequence, v.register),
        (2, None),
        "reg-2 took no sequence"
    );
    let late = r#"{"purchase_id":"reg-3","amount":50,"register":"services"}"#;
    assert_eq!(topup(late).status, 409);
}

#[test]
fn serve_on_postgresql() {
    let Some(bin) = pg_bin() else {
        assert!(
            std::env::var("CI").is_err(),
            "CI: PostgreSQL is required (Debian package postgresql, see tests/packages)"
        );
        eprintln!("SKIPPED: no PostgreSQL binaries in /usr/lib/postgresql/*/bin (apt-get install postgresql)");
        return;
    };
    let pg = Postgres::start(&bin);
    let (_tmp, dir) = new_authority();
    let server = Server::start(&dir, Some(&pg.url()));
    flow(&dir, &server, "PostgreSQL");
    pending_flow(&dir, &server);

    // The database agrees: 1 + 1 + 16 + 320 purchases, the book's vouchers
    // are exactly the purchases, and their sums match.
    let want_sum: u64 = 1000 + 500 + (100..116).sum::<u64>() + 320 * 7;
    assert_eq!(
        pg.psql("SELECT count(*), sum(amount), count(DISTINCT sequence) FROM purchases"),
        format!("338|{want_sum}|338")
    );
    assert_eq!(
        pg.psql(
            "SELECT (SELECT count(*) FROM meters m CROSS JOIN LATERAL jsonb_each_text(m.book->'vouchers') v \
              JOIN purchases p ON p.meter_id = m.meter_id AND p.sequence = v.key::bigint \
              AND p.amount = v.value::bigint), \
             (SELECT count(*) FROM meters m, jsonb_each_text(m.book->'vouchers'))"
        ),
        "338|338"
    );
    assert_eq!(
        pg.psql("SELECT count(*), count(*) FILTER (WHERE accepted) FROM uploads"),
        "2|1"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM index_rows"), "1");
    assert_eq!(
        pg.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations"),
        "1,2,3,4,5,6,7"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM orders"), "1");
    assert_eq!(
        pg.psql("SELECT jsonb_array_length(book->'awaited') FROM meters"),
        "1"
    );
    register_flow(&dir, &server);
    assert_eq!(
        pg.psql(
            "SELECT string_agg(purchase_id || '=' || coalesce(register, '-'), ',' \
             ORDER BY purchase_id) FROM purchases WHERE meter_id = 'MTR-2'"
        ),
        "reg-1=postage,reg-3=-"
    );
    // A second server on the same database: migrations are not re-applied,
    // and a retry there gets the voucher the first one issued.
    let second = Server::start(&dir, Some(&pg.url()));
    let r = buy(&second.addr, M, "order-1", 1000);
    assert_eq!(
        (r.status, r.headers["meter-voucher-sequence"].as_str()),
        (200, "1")
    );
}

#[test]
fn serve_on_the_authority_directory() {
    let (_tmp, dir) = new_authority();
    let server = Server::start(&dir, None);
    flow(&dir, &server, "files");
    pending_flow(&dir, &server);
    let book = meter_authority::book::Shelf::of(&dir, M)
        .unwrap()
        .read()
        .unwrap();
    assert_eq!(book.vouchers.len(), 338);
    assert_eq!(book.acknowledged.len(), 1);
    assert_eq!(book.refused, 1);
    assert_eq!(book.awaited.len(), 1);
    register_flow(&dir, &server);
}
