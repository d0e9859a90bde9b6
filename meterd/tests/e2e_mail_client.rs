//! examples/mail_client.py (issue 13, item 6) against the sandbox: the
//! Python client passes the message by file descriptor to `Postmark`, wraps
//! the token in RFC 5544 TimeStampedData and attaches it to a MIME message.
//! The test checks the result as a receiver would, with openssl alone: the
//! `application/timestamped-data` part is taken out of the MIME text, its
//! DER parsed by `openssl asn1parse` (not by the script's own code), the
//! token cut out at the offsets openssl reports and verified with
//! `openssl ts -verify -data`. Then a refusal: no funds left gives the named
//! error in words, meterctl's exit code, no output file, nothing charged.
//!
//! Needs python3-dbus (tests/packages).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use meter_proto::exit;
use sandbox::{ok, repo, write, Sandbox};

/// Runs the script by its `#!/usr/bin/python3` line: Debian's python3, the one
/// python3-dbus is installed for (not a python3 found first in PATH).
fn mail_client(sb: &Sandbox, msg: &str, out: &str, id: &str) -> std::process::Output {
    let script = repo().join("examples/mail_client.py");
    sb.run(
        &script.to_string_lossy(),
        &[msg, "-o", out, "--request-id", id],
    )
}

/// The base64 body of the MIME part of type `application/timestamped-data`.
fn tsd_part(mime: &str) -> String {
    let at = mime
        .find("Content-Type: application/timestamped-data")
        .unwrap_or_else(|| panic!("no timestamped-data part:\n{mime}"));
    let part = &mime[at..];
    let body = part
        .find("\r\n\r\n")
        .map(|i| &part[i + 4..])
        .expect("part body");
    let end = body.find("\r\n--").unwrap_or(body.len());
    body[..end].to_owned()
}

/// `openssl asn1parse` lines as (offset, depth, header length, length, text).
fn asn1parse(sb: &Sandbox, der: &str) -> Vec<(usize, usize, usize, usize, String)> {
    let text = ok(
        &sb.run("openssl", &["asn1parse", "-inform", "DER", "-in", der]),
        "openssl asn1parse",
    );
    text.lines()
        .filter_map(|l| {
            let (off, rest) = l.trim_start().split_once(":d=")?;
            let (d, rest) = rest.split_once("hl=")?;
            let (hl, rest) = rest.trim().split_once("l=")?;
            let len: String = rest
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            Some((
                off.trim().parse().ok()?,
                d.trim().parse().ok()?,
                hl.trim().parse().ok()?,
                len.parse().ok()?,
                l.to_owned(),
            ))
        })
        .collect()
}

#[test]
fn mail_client_attaches_a_verifiable_timestamped_data_part() {
    let sb = Sandbox::up(100_000);
    let price = sb.status()["rates"]["postmark"].as_u64().expect("rate");
    let (ar0, dr0, ct0) = sb.registers();
    let body = b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: contract\r\n\r\nSigned and sealed.\r\n";
    let msg = write(&sb, "mail.eml", body);
    let out = sb.arg("out.eml");
    ok(&mail_client(&sb, &msg, &out, "mc-1"), "mail_client.py");
    assert_eq!(sb.registers(), (ar0 + price, dr0 - price, ct0));

    let mime = std::fs::read_to_string(&out).expect("MIME output");
    assert!(mime.contains("multipart/mixed"), "{mime}");
    assert!(mime.contains("Subject: contract"), "{mime}");
    assert!(mime.contains("Content-Type: message/rfc822"), "{mime}");
    let b64 = write(&sb, "tsd.b64", tsd_part(&mime).as_bytes());
    let tsd = sb.arg("postmark.tsd");
    ok(
        &sb.run("openssl", &["base64", "-d", "-in", &b64, "-out", &tsd]),
        "base64 -d",
    );
    let der = std::fs::read(&tsd).expect("tsd");
    let items = asn1parse(&sb, &tsd);
    // ContentInfo { id-ct-timestampedData, [0] { TimeStampedData } }.
    assert!(
        items
            .iter()
            .any(|i| i.4.contains("1.2.840.113549.1.9.16.1.31")),
        "no id-ct-timestampedData: {items:#?}"
    );
    // TimeStampedData (d=2): version 1, content = the message, then
    // temporalEvidence [0] (d=3) { TimeStampAndCRL (d=4) { token (d=5) } }.
    let content = items
        .iter()
        .find(|i| i.1 == 3 && i.4.contains("OCTET STRING"))
        .expect("content");
    assert_eq!(&der[content.0 + content.2..][..content.3], body);
    let ev = items
        .iter()
        .position(|i| i.1 == 3 && i.4.contains("cont [ 0 ]"))
        .expect("temporalEvidence [0]");
    let token = &items[ev + 2];
    assert_eq!(token.1, 5, "token: {items:#?}");
    assert!(token.4.contains("SEQUENCE"), "{}", token.4);
    let token_der = &der[token.0..token.0 + token.2 + token.3];
    // The token as openssl itself cuts it out (-strparse at its offset).
    let cut = sb.arg("cut.der");
    let at = token.0.to_string();
    ok(
        &sb.run(
            "openssl",
            &[
                "asn1parse",
                "-inform",
                "DER",
                "-in",
                &tsd,
                "-strparse",
                &at,
                "-noout",
                "-out",
                &cut,
            ],
        ),
        "asn1parse -strparse",
    );
    assert_eq!(std::fs::read(&cut).ok().as_deref(), Some(token_der));
    let v = ok(
        &sb.ts_verify(&msg, &cut, &sb.root_pem().to_string_lossy()),
        "openssl ts -verify",
    );
    assert!(v.contains("Verification: OK"), "{v}");

    // A retry with the same request id is not charged again.
    let again = sb.arg("again.eml");
    ok(&mail_client(&sb, &msg, &again, "mc-1"), "retry");
    assert_eq!(sb.registers(), (ar0 + price, dr0 - price, ct0));
}

#[test]
fn mail_client_names_the_refusal_and_charges_nothing() {
    // Funds for one postmark (rates.example.toml: postmark = 500).
    let sb = Sandbox::up(500);
    let msg = write(&sb, "m.eml", b"Subject: one\r\n\r\none\r\n");
    ok(
        &mail_client(&sb, &msg, &sb.arg("one.eml"), "a"),
        "first postmark",
    );
    let before = sb.snapshot();
    assert_eq!(before.1, 0, "funds spent");
    let out = sb.arg("two.eml");
    let r = mail_client(&sb, &msg, &out, "b");
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(exit::FUNDS), "{r:?}");
    assert!(err.contains("not enough funds"), "{err}");
    assert!(err.contains("InsufficientFunds"), "{err}");
    assert!(!err.contains("Traceback"), "{err}");
    assert!(
        !std::path::Path::new(&out).exists(),
        "no output on a refusal"
    );
    assert_eq!(sb.snapshot(), before, "nothing charged");

    // A file that cannot be written is refused before the meter is asked.
    let r = mail_client(&sb, &msg, "/nonexistent/x.eml", "c");
    assert_eq!(r.status.code(), Some(exit::FILE), "{r:?}");
    assert_eq!(sb.snapshot(), before);
}
