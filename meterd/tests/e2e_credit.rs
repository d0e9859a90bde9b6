//! End to end on swtpm through D-Bus: lines of credit and payment
//! certificates (Figs. 7A–9). meterctl asks, the reference authority plays
//! the creditor (grant, settle), `openssl cms -verify` plays the merchant.
//! Forged and foreign grants are made with the `openssl` binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use std::collections::BTreeSet;

use meter_proto::exit;
use sandbox::{ok, Sandbox};
use serde_json::Value;
use sha2::{Digest, Sha384};

const CT_CREDIT_LINE: &str = "2.25.252996336.1.13";

/// `meterctl --json ARGS` that must fail: (exit code, error kind).
fn fails(sb: &Sandbox, args: &[&str]) -> (i32, String) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = sb.meterctl(&all);
    assert!(!out.status.success(), "meterctl {args:?} should fail");
    let v: Value = serde_json::from_slice(&out.stdout).expect("error JSON");
    (
        out.status.code().unwrap_or(-1),
        v["error"]["kind"].as_str().unwrap_or_default().to_owned(),
    )
}

fn rate(sb: &Sandbox, service: &str) -> u64 {
    sb.status()["rates"][service].as_u64().expect("rate")
}

fn lines(sb: &Sandbox) -> Vec<Value> {
    sb.meterctl_json(&["credit", "list"])["lines"]
        .as_array()
        .expect("lines")
        .clone()
}

fn line(sb: &Sandbox, serial: &str) -> Value {
    let l = lines(sb)
        .into_iter()
        .find(|l| l["serial"] == serial)
        .expect("line listed");
    let (g, u, r) = (
        l["granted"].as_u64().unwrap(),
        l["used"].as_u64().unwrap(),
        l["remaining"].as_u64().unwrap(),
    );
    assert_eq!(g, u + r, "granted = used + remaining: {l}");
    l
}

/// Content of a CMS file after `openssl cms -verify` against the authority root.
fn cms_verify(sb: &Sandbox, file: &str, any_purpose: bool) -> Value {
    let root = sb.root_pem().to_string_lossy().into_owned();
    let mut args = vec![
        "cms", "-verify", "-inform", "PEM", "-in", file, "-CAfile", &root,
    ];
    if any_purpose {
        args.extend(["-purpose", "any"]);
    }
    let out = sb.run("openssl", &args);
    let text = ok(&out, "openssl cms -verify");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Verification successful"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).expect("payload JSON")
}

fn der_of(path: &str) -> Vec<u8> {
    meter_pki::pem::decode_any(&std::fs::read(path).unwrap(), "CMS").unwrap()
}

/// request → grant → open a line of `amount`; returns (serial, grant path).
fn open_line(sb: &Sandbox, tag: &str, amount: u64) -> (String, String) {
    let req = sb.arg(&format!("{tag}.req.pem"));
    let amount_s = amount.to_string();
    sb.meterctl_json(&[
        "credit",
        "request",
        "--creditor",
        "Bank",
        "--amount",
        &amount_s,
        "-o",
        &req,
        "--request-id",
        &format!("{tag}-req"),
    ]);
    let grant = sb.arg(&format!("{tag}.grant.pem"));
    sb.authority(&["credit-grant", &req, "--out", &grant, "--days", "30"]);
    let first = sb.arg(&format!("{tag}.p0.pem"));
    let v = sb.meterctl_json(&[
        "credit",
        "open",
        &grant,
        "-o",
        &first,
        "--request-id",
        &format!("{tag}-open"),
    ]);
    assert_eq!(v["credit_remaining"], amount);
    assert_eq!(v["sequence"], 0);
    (v["credit_serial"].as_str().unwrap().to_owned(), grant)
}

fn pay(sb: &Sandbox, serial: &str, amount: u64, id: &str) -> std::process::Output {
    let out = sb.arg(&format!("{id}.pay.pem"));
    sb.meterctl(&[
        "--json",
        "--timeout",
        "30",
        "credit",
        "pay",
        "--line",
        serial,
        "--amount",
        &amount.to_string(),
        "--payee",
        "shop",
        "-o",
        &out,
        "--request-id",
        id,
    ])
}

/// Re-signs `line` JSON with `key`/`cert` (PEM files) as a CT_CREDIT_LINE CMS.
fn openssl_grant(sb: &Sandbox, line: &Value, cert: &str, key: &str, name: &str) -> String {
    let json = sb.arg(&format!("{name}.json"));
    std::fs::write(&json, serde_json::to_vec(line).unwrap()).unwrap();
    let out = sb.arg(&format!("{name}.pem"));
    ok(
        &sb.run(
            "openssl",
            &[
                "cms",
                "-sign",
                "-in",
                &json,
                "-signer",
                cert,
                "-inkey",
                key,
                "-econtent_type",
                CT_CREDIT_LINE,
                "-nodetach",
                "-binary",
                "-md",
                "sha384",
                "-outform",
                "PEM",
                "-out",
                &out,
            ],
        ),
        "openssl cms -sign",
    );
    out
}

#[test]
fn request_grant_open_pay_settle_and_refusals() {
    let sb = Sandbox::up(100_000);
    let meter_id = sb.meter_id();
    let (pm, cl, pc) = (
        rate(&sb, "postmark"),
        rate(&sb, "credit-line"),
        rate(&sb, "payment-certificate"),
    );
    let (ar0, _, ct0) = sb.registers();

    // Request: signed by the meter, carries its postmark; charged as a postmark, once.
    let req = sb.arg("req.pem");
    let args = [
        "credit",
        "request",
        "--creditor",
        "Bank",
        "--amount",
        "1000",
        "-o",
        &req,
        "--request-id",
        "cr-1",
    ];
    sb.meterctl_json(&args);
    let first_req = std::fs::read(&req).unwrap();
    sb.meterctl_json(&args);
    assert_eq!(
        std::fs::read(&req).unwrap(),
        first_req,
        "retry returns the same request"
    );
    // The same amount typed as money (USD, 3 digits: 1.0 = 1000 minor
    // units) is the same request: the retry is answered, not refused as a
    // request id reused for other input, and not charged again.
    let mut as_money = args;
    as_money[5] = "1.0";
    let j = sb.meterctl_json(&as_money);
    assert_eq!(j["amount"], 1000, "{j}");
    assert_eq!(std::fs::read(&req).unwrap(), first_req);
    let text = ok(&sb.meterctl(&as_money), "credit request");
    assert!(text.contains("for 1.000 USD"), "{text}");
    let content = cms_verify(&sb, &req, false);
    assert_eq!(content["ask"]["meter_id"], meter_id.as_str());
    assert_eq!(content["ask"]["amount"], 1000);
    assert!(content["postmark_hex"].as_str().unwrap().len() > 100);
    assert_eq!(sb.registers().0, ar0 + pm);

    // Grant (the authority checks signature and postmark), then open.
    let grant = sb.arg("grant.pem");
    sb.authority(&["credit-grant", &req, "--out", &grant, "--days", "30"]);
    let granted = cms_verify(&sb, &grant, true);
    assert_eq!(granted["holder"], meter_id.as_str());
    assert_eq!(granted["amount"], 1000);
    let serial = granted["serial"].as_str().unwrap().to_owned();
    let p0 = sb.arg("p0.pem");
    let v = sb.meterctl_json(&[
        "credit",
        "open",
        &grant,
        "-o",
        &p0,
        "--request-id",
        "open-1",
    ]);
    assert_eq!(v["credit_remaining"], 1000);
    let (ar1, _, ct1) = sb.registers();
    assert_eq!((ar1, ct1), (ar0 + pm + cl, ct0));
    let l = line(&sb, &serial);
    assert_eq!(
        (l["used"].as_u64(), l["remaining"].as_u64()),
        (Some(0), Some(1000))
    );
    let grant_digest = hex::encode(Sha384::digest(der_of(&grant)));

    // Three payments, each verified by a merchant with stock openssl.
    let mut remaining = 1000;
    for (i, amount) in [100u64, 250, 300].into_iter().enumerate() {
        let id = format!("pay-{}", i + 1);
        ok(&pay(&sb, &serial, amount, &id), "pay");
        remaining -= amount;
        let cert = cms_verify(&sb, &sb.arg(&format!("{id}.pay.pem")), false);
        assert_eq!(cert["amount"], amount);
        assert_eq!(cert["credit_remaining"], remaining);
        assert_eq!(cert["meter_id"], meter_id.as_str());
        assert_eq!(cert["credit_line_digest_hex"], grant_digest.as_str());
        assert_eq!(cert["sequence"], i as u64 + 1);
        let l = line(&sb, &serial);
        assert_eq!(l["remaining"], remaining);
    }
    let (ar2, _, ct2) = sb.registers();
    assert_eq!((ar2, ct2), (ar1 + 3 * pc, ct0));

    // The creditor settles each once and refuses a replay.
    for i in 1..=3 {
        let out = sb.authority(&["settle", &sb.arg(&format!("pay-{i}.pay.pem"))]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("settled payment"));
    }
    let replay = sb.run(
        sandbox::bin_dir().join("meter-authority").to_str().unwrap(),
        &["settle", &sb.arg("pay-2.pay.pem")],
    );
    assert!(!replay.status.success());
    assert!(String::from_utf8_lossy(&replay.stderr).contains("already settled"));

    // A retry returns the same certificate and charges nothing; a reused id with new input is refused.
    let before = std::fs::read(sb.arg("pay-2.pay.pem")).unwrap();
    ok(&pay(&sb, &serial, 250, "pay-2"), "retry");
    assert_eq!(std::fs::read(sb.arg("pay-2.pay.pem")).unwrap(), before);
    assert_eq!(
        fails(
            &sb,
            &[
                "credit",
                "pay",
                "--line",
                &serial,
                "--amount",
                "1",
                "--payee",
                "shop",
                "-o",
                &sb.arg("x.pem"),
                "--request-id",
                "pay-2"
            ]
        )
        .1,
        "InvalidInput"
    );
    assert_eq!(sb.registers().0, ar2);

    // Refusals change nothing: over the remainder, a foreign line, forged,
    // another meter's and replayed grants.
    let rows = sb.status()["ledger_rows"].as_u64().unwrap();
    let over = [
        "credit",
        "pay",
        "--line",
        &serial,
        "--amount",
        "351",
        "--payee",
        "shop",
        "-o",
        &sb.arg("x.pem"),
        "--request-id",
        "over-1",
    ];
    assert_eq!(
        fails(&sb, &over),
        (exit::FUNDS, "InsufficientFunds".to_owned())
    );
    let foreign = [
        "credit",
        "pay",
        "--line",
        "CLNOSUCHLINE",
        "--amount",
        "1",
        "--payee",
        "shop",
        "-o",
        &sb.arg("x.pem"),
        "--request-id",
        "foreign-1",
    ];
    assert_eq!(fails(&sb, &foreign).1, "InvalidInput");

    let authority = sb.authority_dir();
    let other = sb.arg("other-authority");
    sb.authority(&["--dir", &other, "init"]);
    let forged = openssl_grant(
        &sb,
        &granted,
        &format!("{other}/root.pem"),
        &format!("{other}/root.key"),
        "forged",
    );
    let open_args = |f: &str, id: &str| {
        vec![
            "credit".to_owned(),
            "open".into(),
            f.to_owned(),
            "-o".into(),
            sb.arg("x.pem"),
            "--request-id".into(),
            id.to_owned(),
        ]
    };
    let run = |a: Vec<String>| fails(&sb, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(run(open_args(&forged, "forged-1")).1, "BadSignature");

    let (root, key) = (
        authority.join("root.pem").to_string_lossy().into_owned(),
        authority.join("root.key").to_string_lossy().into_owned(),
    );
    let mut foreign_line = granted.clone();
    foreign_line["holder"] = "MTR-000000000000".into();
    foreign_line["serial"] = "CLFOREIGN".into();
    let foreign_grant = openssl_grant(&sb, &foreign_line, &root, &key, "foreign");
    assert_eq!(
        run(open_args(&foreign_grant, "foreign-open")).1,
        "InvalidInput"
    );
    assert_eq!(run(open_args(&grant, "open-again")).1, "Replay");

    // A certificate the root issued (as every meter has) grants no credit.
    let (ee_key, ee_csr, ee_cert) = (sb.arg("ee.key"), sb.arg("ee.csr"), sb.arg("ee.pem"));
    ok(
        &sb.run(
            "openssl",
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-nodes",
                "-keyout",
                &ee_key,
                "-out",
                &ee_csr,
                "-subj",
                "/CN=MTR-EVIL00000000",
            ],
        ),
        "openssl req",
    );
    ok(
        &sb.run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &ee_csr,
                "-CA",
                &root,
                "-CAkey",
                &key,
                "-set_serial",
                "4242",
                "-days",
                "30",
                "-sha384",
                "-out",
                &ee_cert,
            ],
        ),
        "openssl x509 -req",
    );
    let mut self_line = granted.clone();
    self_line["serial"] = "CLSELFGRANT".into();
    let self_grant = openssl_grant(&sb, &self_line, &ee_cert, &ee_key, "self-grant");
    let a = open_args(&self_grant, "self-open");
    let out = sb.meterctl(
        &["--json"]
            .into_iter()
            .chain(a.iter().map(String::as_str))
            .collect::<Vec<_>>(),
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("error JSON");
    assert_eq!(v["error"]["kind"], "BadSignature");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("authority itself"),
        "refused for the signer, not the chain: {v}"
    );
    assert_eq!(
        sb.status()["ledger_rows"].as_u64().unwrap(),
        rows,
        "refusals write no row"
    );
    assert_eq!(sb.registers().0, ar2);
    assert_eq!(line(&sb, &serial)["remaining"], 350);

    // An expired line refuses payment.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut short = granted.clone();
    short["serial"] = "CLSHORT".into();
    short["not_before"] = (now - 10).into();
    short["not_after"] = (now + 2).into();
    let short_grant = openssl_grant(&sb, &short, &root, &key, "short");
    sb.meterctl_json(&[
        "credit",
        "open",
        &short_grant,
        "-o",
        &sb.arg("s0.pem"),
        "--request-id",
        "open-short",
    ]);
    std::thread::sleep(std::time::Duration::from_secs(4));
    let expired = [
        "credit",
        "pay",
        "--line",
        "CLSHORT",
        "--amount",
        "1",
        "--payee",
        "shop",
        "-o",
        &sb.arg("x.pem"),
        "--request-id",
        "late-1",
    ];
    assert_eq!(fails(&sb, &expired).1, "Stale");
    assert_eq!(line(&sb, "CLSHORT")["state"], "expired");
    sb.registers();
}

#[test]
fn concurrent_payments_never_overspend_and_a_crash_loses_none() {
    let sb = Sandbox::up(100_000);
    let pc = rate(&sb, "payment-certificate");

    // Eight concurrent payments of 300 on a line of 1000: exactly three fit.
    let (small, _) = open_line(&sb, "small", 1000);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (sb, small) = (&sb, &small);
                s.spawn(move || pay(sb, small, 300, &format!("c-{i}")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let paid: Vec<_> = (0..8).filter(|i| results[*i].status.success()).collect();
    assert_eq!(paid.len(), 3, "exactly three payments fit");
    for r in results.iter().filter(|r| !r.status.success()) {
        assert_eq!(r.status.code(), Some(exit::FUNDS));
    }
    let seqs: BTreeSet<u64> = paid
        .iter()
        .map(|i| {
            cms_verify(&sb, &sb.arg(&format!("c-{i}.pay.pem")), false)["sequence"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, BTreeSet::from([1, 2, 3]));
    assert_eq!(line(&sb, &small)["remaining"], 100);

    // A burst of payments with meterd killed in the middle; every id is retried until it
    // succeeds. None is lost, none doubled.
    let (big, _) = open_line(&sb, "big", 10_000);
    let (ar0, _, _) = sb.registers();
    const N: u64 = 24;
    let first_try: Vec<Option<Vec<u8>>> = std::thread::scope(|s| {
        let burst = s.spawn(|| {
            (0..N)
                .map(|i| {
                    let id = format!("b-{i}");
                    pay(&sb, &big, 10, &id)
                        .status
                        .success()
                        .then(|| std::fs::read(sb.arg(&format!("{id}.pay.pem"))).unwrap())
                })
                .collect()
        });
        // Let a few payments through, then crash the daemon.
        let third = sb.path("b-2.pay.pem");
        while !third.exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        sb.script("restart-meterd");
        burst.join().unwrap()
    });
    let mut certs = Vec::new();
    for i in 0..N {
        let id = format!("b-{i}");
        let mut done = false;
        for _ in 0..50 {
            if pay(&sb, &big, 10, &id).status.success() {
                done = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert!(done, "payment {id} never succeeded");
        let bytes = std::fs::read(sb.arg(&format!("{id}.pay.pem"))).unwrap();
        if let Some(first) = &first_try[i as usize] {
            assert_eq!(
                &bytes, first,
                "a retry of {id} returns the same certificate"
            );
        }
        certs.push(cms_verify(&sb, &sb.arg(&format!("{id}.pay.pem")), false));
    }
    let seqs: BTreeSet<u64> = certs
        .iter()
        .map(|c| c["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=N).collect::<BTreeSet<_>>(),
        "no payment lost or doubled"
    );
    for c in &certs {
        assert_eq!(
            c["credit_remaining"].as_u64().unwrap(),
            10_000 - 10 * c["sequence"].as_u64().unwrap()
        );
    }
    let l = line(&sb, &big);
    assert_eq!(
        (l["used"].as_u64(), l["certificates"].as_u64()),
        (Some(10 * N), Some(N + 1))
    );
    let (ar1, _, _) = sb.registers();
    assert_eq!(ar1, ar0 + N * pc, "each payment charged once");
    assert!(
        first_try.iter().any(Option::is_none),
        "the crash interrupted the burst"
    );
    assert_eq!(sb.meterctl_json(&["audit"])["ok"], true);
}
