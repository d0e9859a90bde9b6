//! The command line on either store (issue 16): with `--database` the
//! commands whose state a store keeps (voucher, inspect, settle, lookup,
//! certify-meter, certify) act on PostgreSQL through the operations `serve`
//! uses, so a request made by the command line and again over HTTP is one
//! request with one answer; a directory `serve --database` ran on refuses
//! them without `--database` (the attack: a voucher sequence handed out
//! twice, one from `state.json`, one from the database). On the file store
//! `voucher --purchase-id` is a purchase too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::serve_support;
use crate::support;

use std::path::Path;
use std::process::Output;

use meter_authority::serve::{frame_upload, UPLOAD};
use meter_pki::payload::{self, Voucher};
use meter_pki::{cert, pem};
use p384::ecdsa::SigningKey;
use serve_support::*;
use support::ok;

const M: &str = "MTR-CLIDB";

fn anchors(dir: &Path) -> Vec<cert::Certificate> {
    vec![cert::parse(&std::fs::read(dir.join("root.pem")).unwrap()).unwrap()]
}

/// `meter-authority ARGS` on `dir`, with `--database URL` when given.
fn cli(dir: &Path, database: Option<&str>, args: &[&str]) -> Output {
    let mut all: Vec<&str> = Vec::new();
    if let Some(url) = database {
        all.extend(["--database", url]);
    }
    all.extend(args);
    support::authority(dir, &all)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The DER of a PEM (or DER) file.
fn der(path: &Path) -> Vec<u8> {
    pem::decode_any(&std::fs::read(path).unwrap(), "CMS").unwrap()
}

fn voucher_of(dir: &Path, der: &[u8]) -> Voucher {
    payload::open::<Voucher>(der, &anchors(dir), meter_authority::now())
        .unwrap()
        .0
}

/// The attack, first: `serve --database` sold voucher 1 to the meter; the
/// command line run on the directory alone must not hand the meter another
/// voucher 1 from `state.json` (the meter would apply one and refuse the
/// other as a replay: a paid voucher lost). It refuses, changing nothing.
#[test]
fn a_cli_voucher_never_repeats_a_database_sequence() {
    let Some(pg) = postgres() else { return };
    let (tmp, dir) = new_authority();
    let _server = serve_voucher_one(&dir, &pg.url());

    let state_before = std::fs::read(dir.join("state.json")).unwrap();
    let out = tmp.path().join("v.pem");
    let o = cli_voucher(&dir, &out);
    if o.status.success() {
        let v = voucher_of(&dir, &der(&out));
        assert_ne!(
            v.sequence, 1,
            "two vouchers with sequence 1 for {M}, one from the database, one from state.json"
        );
    }
    assert!(
        !o.status.success(),
        "the command line must refuse a directory whose meters live in a database"
    );
    assert!(stderr(&o).contains("--database"), "{}", stderr(&o));
    assert!(!out.exists(), "no voucher written");
    assert_eq!(
        std::fs::read(dir.join("state.json")).unwrap(),
        state_before,
        "state.json untouched"
    );
    // The mark names the database and nothing secret.
    let mark = std::fs::read_to_string(dir.join("database")).unwrap();
    assert!(mark.contains("dbname=postgres"), "{mark}");
}

/// `serve --database url` on `dir`, which sells meter M its voucher 1; the
/// server, still running.
fn serve_voucher_one(dir: &Path, url: &str) -> Server {
    let server = Server::start(dir, Some(url));
    let bought = buy(&server.addr, M, "order-1", 1000);
    assert_eq!(bought.status, 200);
    assert_eq!(bought.headers["meter-voucher-sequence"], "1");
    server
}

/// The mark names one database, not any. The directory was served from
/// database A (voucher 1 sold); pointed at another database B, which has
/// never seen the meter, B would sell voucher 1 again (the meter applies
/// one and refuses the other as a replay: a paid voucher lost). The
/// command line and `serve` refuse B, the mark stays A's and B gets no
/// meter row. A under another spelling of its address is still A.
#[test]
fn a_marked_directory_refuses_another_database() {
    let Some(pg) = postgres() else { return };
    let (tmp, dir) = new_authority();
    drop(serve_voucher_one(&dir, &pg.url()));
    let mark = std::fs::read_to_string(dir.join("database")).unwrap();
    pg.psql("CREATE DATABASE other");
    let b = pg.url_of("other");
    let out = tmp.path().join("v.pem");
    let args = [
        "voucher",
        "--meter",
        M,
        "--amount",
        "500",
        "--purchase-id",
        "order-2",
        "--out",
        out.to_str().unwrap(),
    ];
    let o = cli(&dir, Some(&b), &args);
    if o.status.success() {
        assert_ne!(
            voucher_of(&dir, &der(&out)).sequence,
            1,
            "voucher 1 sold twice to {M}: by database A, then by database B"
        );
    }
    assert!(!o.status.success(), "another database must be refused");
    let why = stderr(&o);
    assert!(
        why.contains("another database") && why.contains("dbname=postgres"),
        "{why}"
    );
    assert!(!out.exists(), "no voucher written");

    let (status, err) = serve_briefly(&dir, &b);
    assert!(
        !status.is_some_and(|s| s.success()),
        "serve must refuse database B too"
    );
    assert!(err.contains("another database"), "{err}");

    assert_eq!(
        std::fs::read_to_string(dir.join("database")).unwrap(),
        mark,
        "the mark is still A's"
    );
    assert_eq!(
        pg.psql_in(
            "other",
            &format!("SELECT count(*) FROM meters WHERE meter_id = '{M}'")
        ),
        "0",
        "no row in database B"
    );
    // Database A, named another way, is the same database: voucher 2.
    let a_again = format!("{} connect_timeout=10", pg.url());
    let o = cli(&dir, Some(&a_again), &args);
    ok(&o);
    assert_eq!(voucher_of(&dir, &der(&out)).sequence, 2);
}

/// `serve --database url` on `dir`, stopped after 20 s if it is still
/// running (it should have refused at once): its exit status (`None`: it
/// was serving) and stderr.
fn serve_briefly(dir: &Path, url: &str) -> (Option<std::process::ExitStatus>, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(support::BIN)
        .args([
            "serve",
            "--dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--database",
            url,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (status, err)
}

/// `meter-authority voucher` for meter M, 500 minor units, to `out`, on the
/// file store of `dir` (no `--database`).
fn cli_voucher(dir: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    support::authority(
        dir,
        &[
            "voucher",
            "--meter",
            M,
            "--amount",
            "500",
            "--out",
            out.to_str().unwrap(),
        ],
    )
}

/// The other way round: the file store sold a meter voucher 1, then the
/// directory is served from a database. The database would start that
/// meter at voucher 1 again (the meter applies one and refuses the other:
/// a paid voucher lost), so it refuses the meter with a conflict and makes
/// no row for it; a meter new to both is sold its voucher 1.
#[test]
fn a_database_refuses_a_meter_the_file_store_sold_vouchers_to() {
    let Some(pg) = postgres() else { return };
    let (tmp, dir) = new_authority();
    let out = tmp.path().join("v.pem");
    ok(&cli_voucher(&dir, &out));
    assert_eq!(voucher_of(&dir, &der(&out)).sequence, 1);

    let server = Server::start(&dir, Some(&pg.url()));
    let refused = buy(&server.addr, M, "order-1", 1000);
    assert_eq!(
        refused.status,
        409,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    let why = String::from_utf8_lossy(&refused.body).into_owned();
    assert!(why.contains("file store") && why.contains(M), "{why}");
    assert_eq!(
        pg.psql(&format!(
            "SELECT count(*) FROM meters WHERE meter_id = '{M}'"
        )),
        "0",
        "no row made for the refused meter"
    );
    let other = buy(&server.addr, "MTR-CLIDB2", "order-2", 1000);
    assert_eq!(other.status, 200);
    assert_eq!(other.headers["meter-voucher-sequence"], "1");
}

/// A meter's keys, its CSR files, and the meter once certified.
fn csrs(tmp: &Path, meter: &str) -> (SigningKey, SigningKey, String, String) {
    let (id, pm) = (
        SigningKey::random(&mut rand_core::OsRng),
        SigningKey::random(&mut rand_core::OsRng),
    );
    let (idp, pmp) = (tmp.join("id.csr"), tmp.join("pm.csr"));
    std::fs::write(&idp, make_csr(meter, &id)).unwrap();
    std::fs::write(&pmp, make_csr(meter, &pm)).unwrap();
    (
        id,
        pm,
        idp.to_str().unwrap().to_owned(),
        pmp.to_str().unwrap().to_owned(),
    )
}

fn serial(c: &cert::Certificate) -> u64 {
    u64::from_str_radix(&cert::serial_hex(c), 16).unwrap()
}

/// On PostgreSQL, every store-backed command of the command line and the
/// HTTP API act on the same records.
#[test]
fn cli_and_http_share_the_database() {
    let Some(pg) = postgres() else { return };
    let url = pg.url();
    let db = Some(url.as_str());
    let (tmp, dir) = new_authority();
    let t = tmp.path();
    let server = Server::start(&dir, db);
    let addr = server.addr.as_str();
    let path = |n: &str| t.join(n).to_str().unwrap().to_owned();

    // certify-meter: the database's register (serial >= 2^32); the same
    // CSRs again, on the command line or over HTTP: the same certificates.
    let (id, pm, idp, pmp) = csrs(t, M);
    let certify_args = [
        "certify-meter",
        "--identity-csr",
        &idp,
        "--postmark-csr",
        &pmp,
        "--out-dir",
        &path("m1"),
        "--unattested",
    ];
    assert_eq!(ok(&cli(&dir, db, &certify_args)).trim(), M);
    let identity = cert::parse(&std::fs::read(t.join("m1/meter.pem")).unwrap()).unwrap();
    let postmark = cert::parse(&std::fs::read(t.join("m1/postmark.pem")).unwrap()).unwrap();
    assert!(serial(&identity) >= 1 << 32, "a database serial");
    let mut again = certify_args;
    let m2 = path("m2");
    again[6] = &m2;
    let o = cli(&dir, db, &again);
    ok(&o);
    assert!(stderr(&o).contains("repeated"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(t.join("m2/meter.pem")).unwrap(),
        std::fs::read(t.join("m1/meter.pem")).unwrap()
    );
    let body = serde_json::json!({
        "identity_csr": std::fs::read_to_string(&idp).unwrap(),
        "postmark_csr": std::fs::read_to_string(&pmp).unwrap(),
    })
    .to_string();
    let r = http(
        addr,
        "POST",
        &format!("/v1/meters/{M}/certify"),
        "application/json",
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["meter-certification"], "repeated");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v["identity"].as_str().unwrap().as_bytes(),
        std::fs::read(t.join("m1/meter.pem")).unwrap()
    );
    assert!(std::fs::read_to_string(dir.join("state.json"))
        .map(|s| !s.contains(M))
        .unwrap());
    let meter = Meter {
        key: id,
        identity,
        postmark_key: pm,
        postmark,
    };

    // voucher: a purchase id is required; the command line and HTTP take
    // consecutive sequences of one counter; a retry gets the same bytes.
    let voucher = |pid: Option<&str>, out: &str| {
        let mut a = vec!["voucher", "--meter", M, "--amount", "1000", "--out", out];
        if let Some(p) = pid {
            a.extend(["--purchase-id", p]);
        }
        cli(&dir, db, &a)
    };
    let o = voucher(None, &path("v0.pem"));
    assert!(!o.status.success() && stderr(&o).contains("--purchase-id"));
    let out = ok(&voucher(Some("cli-1"), &path("v1.pem")));
    assert!(out.contains("sequence 1") && out.contains("(new)"), "{out}");
    let http1 = buy(addr, M, "http-1", 700);
    assert_eq!(http1.headers["meter-voucher-sequence"], "2");
    let out = ok(&voucher(Some("cli-1"), &path("v1b.pem")));
    assert!(
        out.contains("sequence 1") && out.contains("(repeated)"),
        "{out}"
    );
    assert_eq!(der(&t.join("v1.pem")), der(&t.join("v1b.pem")));
    let retry = buy(addr, M, "cli-1", 1000);
    assert_eq!(retry.headers["meter-purchase"], "repeated");
    assert_eq!(retry.body, der(&t.join("v1.pem")));
    assert_eq!(buy(addr, M, "cli-1", 999).status, 409);
    let out = ok(&voucher(Some("cli-2"), &path("v3.pem")));
    assert!(out.contains("sequence 3"), "{out}");
    assert_eq!(
        pg.psql(&format!(
            "SELECT string_agg(sequence::text, ',' ORDER BY sequence) FROM purchases WHERE meter_id = '{M}'"
        )),
        "1,2,3"
    );

    // inspect: the report (crediting voucher 1) inspected on the command
    // line; the same upload over HTTP gets the recorded acknowledgement.
    let now = meter_authority::now();
    let sold = token(&meter, 3, now - 60);
    let v1 = der(&t.join("v1.pem"));
    let (signed, seg) = report(&meter, &v1, 1000, &sold, (now - 60) * 1000);
    std::fs::write(t.join("r.pem"), pem::encode("CMS", &signed)).unwrap();
    std::fs::write(t.join("r.seg"), &seg).unwrap();
    let o = cli(
        &dir,
        db,
        &["inspect", &path("r.pem"), "--out", &path("ack.pem")],
    );
    let out = ok(&o);
    assert!(out.contains("reconciled"), "{out}");
    let upload = frame_upload(&signed, &[], &seg);
    let r = http(
        addr,
        "POST",
        &format!("/v1/meters/{M}/reports"),
        UPLOAD,
        &upload,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, der(&t.join("ack.pem")), "one upload, one answer");
    let out = ok(&cli(
        &dir,
        db,
        &["inspect", &path("r.pem"), "--out", &path("ack2.pem")],
    ));
    assert!(out.contains("repeated"), "{out}");
    assert_eq!(der(&t.join("ack2.pem")), der(&t.join("ack.pem")));
    assert_eq!(
        pg.psql(&format!(
            "SELECT count(*) FROM uploads WHERE meter_id = '{M}'"
        )),
        "1"
    );

    // lookup: the row the report indexed in the database.
    std::fs::write(t.join("token.der"), &sold).unwrap();
    let out = ok(&cli(&dir, db, &["lookup", &path("token.der")]));
    assert!(out.contains("reported: row 3"), "{out}");

    // settle: once, in the name of the line's creditor; HTTP by that
    // creditor gets the same settlement.
    let (line, grant) = credit_line(&dir, &meter, 5000);
    std::fs::write(t.join("pay.der"), payment(&meter, &line, &grant, 1, 1200)).unwrap();
    let out = ok(&cli(&dir, db, &["settle", &path("pay.der")]));
    assert!(out.contains("(new)"), "{out}");
    let out = ok(&cli(&dir, db, &["settle", &path("pay.der")]));
    assert!(out.contains("(repeated)"), "{out}");
    add_creditor(&dir, "Bank", "bank-token-0123456789");
    let r = settle(
        addr,
        "bank-token-0123456789",
        &std::fs::read(t.join("pay.der")).unwrap(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["meter-settlement"], "repeated");
    assert_eq!(pg.psql("SELECT count(*) FROM settlements"), "1");

    // certify (a user certificate) for the meter the database certified.
    let code = ok(&cli(&dir, None, &["enrol", "--subject", "CN=Alice"]));
    let user = SigningKey::random(&mut rand_core::OsRng);
    let request = sign_as_meter(
        &meter,
        &meter_pki::certreq::CertRequest {
            meter_id: M.into(),
            subject_cn: "Alice".into(),
            enrolment_code: code.trim().into(),
            csr_hex: hex::encode(
                pem::decode_any(&make_csr("Alice", &user), "CERTIFICATE REQUEST").unwrap(),
            ),
            issued_at: meter_authority::now(),
            purpose: None,
        },
    );
    std::fs::write(t.join("user.req"), &request).unwrap();
    let user_args = ["certify", &path("user.req"), "--out", &path("alice.pem")];
    // Without --database the meter is unknown (only the database certified
    // it): refused, with the hint; nothing issued.
    let o = cli(&dir, None, &user_args);
    assert!(
        !o.status.success() && stderr(&o).contains("--database"),
        "{}",
        stderr(&o)
    );
    assert!(!t.join("alice.pem").exists());
    ok(&cli(&dir, db, &user_args));
    let alice = cert::parse(&std::fs::read(t.join("alice.pem")).unwrap()).unwrap();
    assert_eq!(cert::subject_cn(&alice).as_deref(), Some("Alice"));

    // revoke: the meter's request to revoke it, from a meter the database
    // certified; the order and the CRL stay in the directory.
    let revoke = sign_as_meter(
        &meter,
        &meter_pki::revoke::RevokeRequest {
            meter_id: M.into(),
            serial: meter_pki::revoke::canonical_serial(&cert::serial_hex(&alice)).unwrap(),
            reason: "keyCompromise".into(),
            request_id: "rv-1".into(),
            issued_at: meter_authority::now(),
        },
    );
    std::fs::write(t.join("revoke.req"), &revoke).unwrap();
    let revoke_args = ["revoke", &path("revoke.req"), "--out", &path("rv.pem")];
    assert!(!cli(&dir, None, &revoke_args).status.success());
    let out = ok(&cli(&dir, db, &revoke_args));
    assert!(out.contains("revoke order"), "{out}");

    // Every store-backed command refuses the marked directory without
    // --database; the directory-only ones still work.
    for args in [
        &["inspect", &path("r.pem"), "--out", &path("ack3.pem")][..],
        &["settle", &path("pay.der")][..],
        &["lookup", &path("token.der")][..],
        &certify_args[..],
        &[
            "voucher",
            "--meter",
            M,
            "--amount",
            "1",
            "--purchase-id",
            "x",
            "--out",
            &path("x.pem"),
        ][..],
        &["serve", "--listen", "127.0.0.1:0"][..],
    ] {
        let o = cli(&dir, None, args);
        assert!(!o.status.success(), "{args:?} ran on a marked directory");
        assert!(
            stderr(&o).contains("--database"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    ok(&cli(&dir, None, &["crl", "--out", &path("crl.pem")]));
    ok(&cli(
        &dir,
        db,
        &[
            "lock",
            "--meter",
            M,
            "--reason",
            "test",
            "--out",
            &path("lock.pem"),
        ],
    ));
}

/// On the file store, `voucher --purchase-id` is a purchase: a retry gets
/// the same voucher, and so does the same purchase over HTTP.
#[test]
fn a_cli_purchase_on_the_directory_is_a_purchase() {
    let (tmp, dir) = new_authority();
    let t = tmp.path();
    let path = |n: &str| t.join(n).to_str().unwrap().to_owned();
    let voucher = |pid: &str, out: &str| {
        cli(
            &dir,
            None,
            &[
                "voucher",
                "--meter",
                M,
                "--amount",
                "1000",
                "--purchase-id",
                pid,
                "--out",
                out,
            ],
        )
    };
    let out = ok(&voucher("p1", &path("a.pem")));
    assert!(out.contains("sequence 1") && out.contains("(new)"), "{out}");
    let out = ok(&voucher("p1", &path("b.pem")));
    assert!(
        out.contains("sequence 1") && out.contains("(repeated)"),
        "{out}"
    );
    assert_eq!(der(&t.join("a.pem")), der(&t.join("b.pem")));
    // Without a purchase id, the next sequence of the same counter.
    let out = ok(&cli(
        &dir,
        None,
        &[
            "voucher",
            "--meter",
            M,
            "--amount",
            "5",
            "--out",
            &path("c.pem"),
        ],
    ));
    assert!(out.contains("sequence 2"), "{out}");
    let server = Server::start(&dir, None);
    let r = buy(&server.addr, M, "p1", 1000);
    assert_eq!(r.headers["meter-purchase"], "repeated");
    assert_eq!(r.body, der(&t.join("a.pem")));
    assert_eq!(
        buy(&server.addr, M, "p2", 10).headers["meter-voucher-sequence"],
        "3"
    );
    assert!(!dir.join("database").exists(), "no database, no mark");
}
