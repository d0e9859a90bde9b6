//! `meter-authority serve`: certification (`POST /v1/meters/{id}/certify`)
//! and settlement (`POST /v1/settle`) on PostgreSQL and on the authority
//! directory. A certification is answered once per request (a retry gets
//! the same certificates; another request for the meter is refused); a
//! payment is settled once, by the creditor the line names (its retry gets
//! the same answer; another creditor, another certificate of the same
//! serial, a forged or an over-the-line payment is refused), also under
//! concurrency.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::serve_support;

use std::path::Path;

use serve_support::*;

const M: &str = "MTR-SETTLE";
const BANK: &str = "bank-token-0123456789";
const OTHER: &str = "other-token-0123456789";

fn flow(dir: &Path, addr: &str) {
    // Certify over the API; the same request again gets the same bytes.
    let (id, pm) = (
        p384::ecdsa::SigningKey::random(&mut rand_core::OsRng),
        p384::ecdsa::SigningKey::random(&mut rand_core::OsRng),
    );
    let body = serde_json::json!({
        "identity_csr": String::from_utf8(make_csr("MTR-C", &id)).unwrap(),
        "postmark_csr": String::from_utf8(make_csr("MTR-C", &pm)).unwrap(),
    })
    .to_string();
    let post = |path: &str, body: &[u8]| http(addr, "POST", path, "application/json", body);
    let first = post("/v1/meters/MTR-C/certify", body.as_bytes());
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.headers["meter-certification"], "new");
    let again = post("/v1/meters/MTR-C/certify", body.as_bytes());
    assert_eq!((again.status, &again.body), (200, &first.body));
    assert_eq!(again.headers["meter-certification"], "repeated");
    let v: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(
        (v["meter_id"].as_str(), v["attested"].as_bool()),
        (Some("MTR-C"), Some(false))
    );
    // Other keys for a meter already certified: refused; the requests of
    // another meter on this path: refused; garbage: refused.
    let k2 = p384::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let other = serde_json::json!({
        "identity_csr": String::from_utf8(make_csr("MTR-C", &k2)).unwrap(),
        "postmark_csr": String::from_utf8(make_csr("MTR-C", &pm)).unwrap(),
    })
    .to_string();
    assert_eq!(
        post("/v1/meters/MTR-C/certify", other.as_bytes()).status,
        409
    );
    assert_eq!(
        post("/v1/meters/MTR-D/certify", body.as_bytes()).status,
        403
    );
    assert_eq!(post("/v1/meters/MTR-C/certify", b"{}").status, 400);
    // An attestation that does not verify is refused, issuing nothing.
    let attested = serde_json::json!({
        "identity_csr": String::from_utf8(make_csr("MTR-E", &id)).unwrap(),
        "postmark_csr": String::from_utf8(make_csr("MTR-E", &pm)).unwrap(),
        "attestation": {"version": 1},
    })
    .to_string();
    assert_eq!(
        post("/v1/meters/MTR-E/certify", attested.as_bytes()).status,
        422
    );

    // Settlement.
    let meter = certify_over_api(addr, M);
    add_creditor(dir, "Bank", BANK);
    add_creditor(dir, "other", OTHER);
    let (line, grant) = credit_line(dir, &meter, 1000);
    let p1 = payment(&meter, &line, &grant, 1, 600);
    assert_eq!(settle(addr, "wrong-token-0123456789", &p1).status, 401);
    let s = settle(addr, BANK, &p1);
    assert_eq!(s.status, 200, "{}", String::from_utf8_lossy(&s.body));
    assert_eq!(s.headers["meter-settlement"], "new");
    let j: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(
        (j["amount"].as_u64(), j["settled_total"].as_u64()),
        (Some(600), Some(600))
    );
    // The retry: the same answer; another creditor: refused.
    let r = settle(addr, BANK, &p1);
    assert_eq!((r.status, &r.body), (200, &s.body));
    assert_eq!(r.headers["meter-settlement"], "repeated");
    // Another creditor: the line is not granted in its name.
    assert_eq!(settle(addr, OTHER, &p1).status, 403);
    // Another certificate with the same serial (a double settle): refused.
    let p1b = payment(&meter, &line, &grant, 1, 10);
    assert_eq!(settle(addr, BANK, &p1b).status, 409);
    // Past the line: refused. Not a payment: refused.
    assert_eq!(
        settle(addr, BANK, &payment(&meter, &line, &grant, 2, 500)).status,
        422
    );
    assert_eq!(settle(addr, BANK, b"junk").status, 422);
    // 8 payments of 100 at once on the 400 left: exactly 4 settle.
    let ps: Vec<Vec<u8>> = (3..11)
        .map(|i| payment(&meter, &line, &grant, i, 100))
        .collect();
    let statuses: Vec<u16> = std::thread::scope(|sc| {
        let hs: Vec<_> = ps
            .iter()
            .map(|p| sc.spawn(move || settle(addr, BANK, p).status))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 422).count(),
        4,
        "{statuses:?}"
    );
    // The same payment by 8 concurrent retries: one settlement, one answer.
    let p11 = payment(&meter, &line, &grant, 11, 0);
    let bodies: Vec<(u16, Vec<u8>)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                sc.spawn(|| {
                    let r = settle(addr, BANK, &p11);
                    (r.status, r.body)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        bodies.iter().all(|b| b.0 == 200 && b.1 == bodies[0].1),
        "one answer"
    );
}

#[test]
fn certify_and_settle_on_postgresql() {
    let Some(pg) = postgres() else { return };
    let (_tmp, dir) = new_authority();
    let server = Server::start(&dir, Some(&pg.url()));
    flow(&dir, &server.addr);
    assert_eq!(
        pg.psql("SELECT count(*), sum(amount), count(DISTINCT creditor) FROM settlements"),
        "6|1000|1"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM certifications"), "2");
    assert_eq!(pg.psql("SELECT max(version) FROM schema_migrations"), "7");
}

#[test]
fn certify_and_settle_on_the_authority_directory() {
    let (_tmp, dir) = new_authority();
    let server = Server::start(&dir, None);
    flow(&dir, &server.addr);
    let line_dirs: Vec<_> = std::fs::read_dir(dir.join("credit/settled"))
        .unwrap()
        .collect();
    assert_eq!(line_dirs.len(), 1);
    let settled = std::fs::read_dir(line_dirs[0].as_ref().unwrap().path())
        .unwrap()
        .count();
    assert_eq!(settled, 6);
}
