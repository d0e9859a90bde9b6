//! Attacks on `GET /v1/meters/{id}/pending` (issue 16), the attacker's way,
//! on both stores: the list opens with the token of the meter's own new
//! report upload (`meter-pending-token`) or the operator's credential, and
//! with nothing else — no credential (401), another meter's token, a forged
//! one, another store's, one made before its key was rotated (403), and a
//! replayed upload earns none. A token is good on every server of its store
//! (the key is the store's shared secret), also after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::serve_support;

use std::path::Path;

use meter_authority::serve::{frame_upload, UPLOAD};
use serve_support::*;

const OPERATOR: &str = "serve-auth-operator-token";

fn start(dir: &Path, database: Option<&str>) -> Server {
    let token = dir.join("operator.token");
    std::fs::write(&token, OPERATOR).unwrap();
    let token = token.to_string_lossy().into_owned();
    Server::spawn(
        Path::new(BIN),
        dir,
        database,
        &["--operator-token-file", &token],
    )
}

fn attacks(dir: &Path, pg: Option<&Postgres>) {
    let url = pg.map(Postgres::url);
    let database = url.as_deref();
    let server = start(dir, database);
    let addr = server.addr.as_str();
    let (a, _b) = (certify(dir, "MTR-A"), certify(dir, "MTR-B"));
    let get = |meter: &str, bearer: Option<&str>| {
        let path = format!("/v1/meters/{meter}/pending");
        try_http(addr, "GET", &path, "text/plain", b"", bearer).unwrap()
    };

    // No credential: loopback is no operator when the server has a token.
    assert_eq!(get("MTR-A", None).status, 401);
    assert_eq!(
        get("MTR-A", Some(OPERATOR)).status,
        200,
        "the operator reads"
    );

    // Meter A's upload earns a token for A.
    let body = br#"{"purchase_id":"p-1","amount":1000}"#;
    let bought = try_http(
        addr,
        "POST",
        "/v1/meters/MTR-A/topups",
        "application/json",
        body,
        Some(OPERATOR),
    )
    .unwrap();
    assert_eq!(bought.status, 200);
    let now = meter_authority::now();
    let (signed, seg) = report(
        &a,
        &bought.body,
        1000,
        &token(&a, 3, now - 60),
        (now - 60) * 1000,
    );
    let upload = frame_upload(&signed, &[], &seg);
    let up = http(addr, "POST", "/v1/meters/MTR-A/reports", UPLOAD, &upload);
    assert_eq!(up.status, 200, "{}", String::from_utf8_lossy(&up.body));
    let ta = up.headers["meter-pending-token"].clone();
    let r = get("MTR-A", Some(&ta));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // Another meter's token: refused for B.
    assert_eq!(get("MTR-B", Some(&ta)).status, 403);
    // A forged one: A's with its last digit changed, or a later expiry.
    let last = if ta.ends_with('0') { "1" } else { "0" };
    let forged = format!("{}{last}", &ta[..ta.len() - 1]);
    assert_eq!(get("MTR-A", Some(&forged)).status, 403);
    let (expiry, tag) = ta.split_once('.').unwrap();
    let later = format!("{}.{tag}", expiry.parse::<i64>().unwrap() + 86_400);
    assert_eq!(get("MTR-A", Some(&later)).status, 403);
    assert_eq!(get("MTR-A", Some("garbage")).status, 403);

    // A replayed upload gets the stored answer, and no token.
    let again = http(addr, "POST", "/v1/meters/MTR-A/reports", UPLOAD, &upload);
    assert_eq!((again.status, &again.body), (200, &up.body));
    assert!(
        !again.headers.contains_key("meter-pending-token"),
        "a replay earned a token: {:?}",
        again.headers
    );

    // The key is the store's, not the process's: a second server on the
    // same store (PostgreSQL: beside the first, as behind one address;
    // the directory: after the first stopped) takes A's token, and only A's.
    let path = "/v1/meters/MTR-A/pending";
    let pending = |addr: &str, bearer: &str| {
        try_http(addr, "GET", path, "text/plain", b"", Some(bearer))
            .unwrap()
            .status
    };
    if database.is_none() {
        drop(server);
    }
    let second = start(dir, database);
    assert_eq!(
        pending(&second.addr, &ta),
        200,
        "another server of the store"
    );
    assert_eq!(pending(&second.addr, &forged), 403);
    drop(second);

    // A server of another store (its own directory, its own key) refuses it.
    let (_other_tmp, other) = new_authority();
    let stranger = start(&other, None);
    assert_eq!(pending(&stranger.addr, &ta), 403, "another store's server");
    drop(stranger);

    // Rotation: the secret deleted, the servers restarted, old tokens die.
    match pg {
        None => std::fs::remove_file(dir.join("pending-token.secret")).unwrap(),
        Some(pg) => {
            pg.psql("DELETE FROM shared_secrets WHERE name = 'pending-token'");
        }
    }
    let rotated = start(dir, database);
    assert_eq!(
        pending(&rotated.addr, &ta),
        403,
        "a token of the rotated key"
    );
}

#[test]
fn pending_auth_attacks_on_the_authority_directory() {
    let (_tmp, dir) = new_authority();
    attacks(&dir, None);
}

#[test]
fn pending_auth_attacks_on_postgresql() {
    let Some(bin) = pg_bin() else {
        assert!(
            std::env::var("CI").is_err(),
            "CI: PostgreSQL is required (Debian package postgresql, see tests/packages)"
        );
        eprintln!("SKIPPED: no PostgreSQL binaries in /usr/lib/postgresql/*/bin");
        return;
    };
    let pg = Postgres::start(&bin);
    let (_tmp, dir) = new_authority();
    attacks(&dir, Some(&pg));
}
