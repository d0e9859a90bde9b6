//! End to end: agent certificates (Fig. 3A). The meter gets an agent-CA certificate from
//! the authority, issues an employee certificate that chains root → agent CA → employee
//! under `openssl verify`, and delivers the private key in an envelope that
//! `openssl cms -decrypt` opens with the receiver's key only; refused requests charge
//! nothing, a retry is free, and the agent CA survives a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use meter_proto::exit;
use sandbox::{ok, Sandbox};

const PRICE: u64 = 3000; // agent-certificate in rates.example.toml

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

fn openssl(sb: &Sandbox, args: &[&str]) -> String {
    ok(&sb.run("openssl", args), &format!("openssl {args:?}"))
}

/// `meterctl agent issue` for `cn` to `receiver`, outputs under `tag`.
fn issue(sb: &Sandbox, tag: &str, cn: &str, receiver: &str, id: &str) -> std::process::Output {
    sb.meterctl(&[
        "agent",
        "issue",
        "--cn",
        cn,
        "--org",
        "ACME, Inc.",
        "--email",
        "alice@acme.example",
        "--receiver",
        receiver,
        "--out-cert",
        &sb.arg(&format!("{tag}.pem")),
        "--out-key",
        &sb.arg(&format!("{tag}.cms")),
        "--out-chain",
        &sb.arg(&format!("{tag}.chain.pem")),
        "--request-id",
        id,
    ])
}

/// Decrypts `tag.cms` with `key` (and `-recip` if given), checks the key matches `tag.pem`.
fn check_key_matches(sb: &Sandbox, tag: &str, key: &str, recip: Option<&str>) {
    let der = sb.arg(&format!("{tag}.key.der"));
    let cms = sb.arg(&format!("{tag}.cms"));
    let mut args = vec![
        "cms", "-decrypt", "-inform", "DER", "-in", &cms, "-inkey", key, "-out", &der,
    ];
    if let Some(r) = recip {
        args.extend_from_slice(&["-recip", r]);
    }
    openssl(sb, &args);
    let from_key = openssl(sb, &["pkey", "-inform", "DER", "-in", &der, "-pubout"]);
    let from_cert = openssl(
        sb,
        &[
            "x509",
            "-in",
            &sb.arg(&format!("{tag}.pem")),
            "-pubkey",
            "-noout",
        ],
    );
    assert!(from_key.contains("BEGIN PUBLIC KEY"), "{from_key}");
    assert_eq!(
        from_key, from_cert,
        "the enveloped key is the certificate's key"
    );
}

#[test]
fn agent_ca_issue_verify_decrypt_and_refusals() {
    let sb = Sandbox::up(2 * PRICE + 1000);
    let root = sb.root_pem().to_string_lossy().into_owned();
    let rkey = sb.arg("receiver.key");
    let rcert = sb.arg("receiver.pem");
    let rpub = sb.arg("receiver.pub");
    openssl(
        &sb,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            &rkey,
        ],
    );
    openssl(
        &sb,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &rkey,
            "-subj",
            "/CN=Alice device",
            "-days",
            "2",
            "-out",
            &rcert,
        ],
    );
    openssl(&sb, &["pkey", "-in", &rkey, "-pubout", "-out", &rpub]);

    // Without an agent CA: a named error, nothing charged.
    let regs0 = sb.registers();
    let out = issue(&sb, "early", "Alice", &rcert, "early");
    assert_eq!(code(&out), Some(exit::NOT_PROVISIONED), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("agent-ca"),
        "{out:?}"
    );
    assert_eq!(sb.registers(), regs0);

    // Set up the agent CA.
    let req = sb.arg("agentca.req.pem");
    let ca = sb.arg("agentca.pem");
    assert_eq!(
        sb.meterctl_json(&["agent-ca", "request", "-o", &req])["request"],
        req
    );
    sb.authority(&["certify-agent-ca", &req, "--out", &ca]);
    let text = openssl(&sb, &["x509", "-in", &ca, "-noout", "-text"]);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(
        text.contains(&format!("{} Agent CA", sb.meter_id())),
        "{text}"
    );
    openssl(&sb, &["verify", "-CAfile", &root, &ca]);
    // The root is not an agent CA; a tampered request is refused by the authority.
    let out = sb.meterctl(&["agent-ca", "install", &root]);
    assert_eq!(code(&out), Some(exit::INVALID), "{out:?}");
    let installed = sb.meterctl_json(&["agent-ca", "install", &ca]);
    assert_eq!(installed["installed"], true);
    let out = sb.meterctl(&["agent-ca", "install", &ca]);
    assert_eq!(
        code(&out),
        Some(exit::REFUSED),
        "reinstall is a replay: {out:?}"
    );
    assert_eq!(sb.registers(), regs0, "agent-CA setup is not charged");

    // Issue for a receiver certificate.
    let out = issue(&sb, "alice", "Alice O'Neil", &rcert, "agent-1");
    ok(&out, "agent issue");
    let (ar, dr, ct) = sb.registers();
    assert_eq!((ar, dr, ct), (regs0.0 + PRICE, regs0.1 - PRICE, regs0.2));
    let v = openssl(
        &sb,
        &[
            "verify",
            "-CAfile",
            &root,
            "-untrusted",
            &sb.arg("alice.chain.pem"),
            &sb.arg("alice.pem"),
        ],
    );
    assert!(v.contains(": OK"), "{v}");
    let text = openssl(
        &sb,
        &["x509", "-in", &sb.arg("alice.pem"), "-noout", "-text"],
    );
    for want in [
        "TLS Web Client Authentication",
        "E-mail Protection",
        "email:alice@acme.example",
        "O = \"ACME, Inc.\", CN = Alice O'Neil",
        "2.25.252996336.2.3",
    ] {
        assert!(text.contains(want), "missing {want}: {text}");
    }
    check_key_matches(&sb, "alice", &rkey, Some(&rcert));
    check_key_matches(&sb, "alice", &rkey, None);
    // Another key cannot open the envelope.
    let other = sb.arg("other.key");
    openssl(
        &sb,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            &other,
        ],
    );
    let bad = sb.run(
        "openssl",
        &[
            "cms",
            "-decrypt",
            "-inform",
            "DER",
            "-in",
            &sb.arg("alice.cms"),
            "-inkey",
            &other,
        ],
    );
    assert!(!bad.status.success(), "a stranger's key must not decrypt");

    // A retry returns the stored product, uncharged; same id with other input is refused.
    let first = std::fs::read(sb.arg("alice.pem")).unwrap();
    ok(
        &issue(&sb, "retry", "Alice O'Neil", &rcert, "agent-1"),
        "retry",
    );
    assert_eq!(std::fs::read(sb.arg("retry.pem")).unwrap(), first);
    assert_eq!(
        std::fs::read(sb.arg("retry.cms")).unwrap(),
        std::fs::read(sb.arg("alice.cms")).unwrap()
    );
    let out = issue(&sb, "conflict", "Bob", &rcert, "agent-1");
    assert_eq!(code(&out), Some(exit::INVALID), "{out:?}");
    assert_eq!(sb.registers(), (ar, dr, ct));

    // Bad input: nothing charged.
    let p256 = sb.arg("p256.pem");
    openssl(
        &sb,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &p256,
        ],
    );
    let p256pub = sb.arg("p256.pub");
    openssl(&sb, &["pkey", "-in", &p256, "-pubout", "-out", &p256pub]);
    let junk = sandbox::write(
        &sb,
        "junk.pem",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    );
    let long = "x".repeat(65);
    for (cn, receiver, what) in [
        ("Bob", p256pub.as_str(), "P-256 receiver"),
        ("Bob", junk.as_str(), "malformed receiver"),
        (long.as_str(), rpub.as_str(), "subject too long"),
        ("Bob\"; rm", rpub.as_str(), "bad characters"),
    ] {
        let out = issue(&sb, "bad", cn, receiver, &format!("bad-{}", what.len()));
        assert_eq!(code(&out), Some(exit::INVALID), "{what}: {out:?}");
    }
    assert_eq!(
        sb.registers(),
        (ar, dr, ct),
        "refused requests charge nothing"
    );

    // A bare public key as receiver.
    ok(
        &issue(&sb, "bob", "Bob", &rpub, "agent-2"),
        "issue to a public key",
    );
    check_key_matches(&sb, "bob", &rkey, None);
    let (ar2, dr2, ct2) = sb.registers();
    assert_eq!((ar2, dr2, ct2), (ar + PRICE, dr - PRICE, ct));

    // Funds short: refused before any work.
    let out = issue(&sb, "carol", "Carol", &rpub, "agent-3");
    assert_eq!(code(&out), Some(exit::FUNDS), "{out:?}");
    assert_eq!(sb.registers(), (ar2, dr2, ct2));

    // After a restart the agent CA is still installed (the refusal is about funds, not
    // a missing CA) and the stored product is returned for a retry.
    sb.script("restart-meterd");
    let out = issue(&sb, "carol", "Carol", &rpub, "agent-3");
    assert_eq!(code(&out), Some(exit::FUNDS), "{out:?}");
    ok(
        &issue(&sb, "again", "Alice O'Neil", &rcert, "agent-1"),
        "retry after restart",
    );
    assert_eq!(std::fs::read(sb.arg("again.pem")).unwrap(), first);
    assert_eq!(sb.registers(), (ar2, dr2, ct2));
    assert_eq!(sb.meterctl_json(&["audit"])["ok"], true);
}
