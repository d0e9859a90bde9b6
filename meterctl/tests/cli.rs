//! Smoke tests of the built binary: exit codes and output streams without a
//! daemon (no bus at the address given), help and generated docs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

use serde_json::Value;

fn meterctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meterctl"))
        .args(args)
        .env_remove("DBUS_SYSTEM_BUS_ADDRESS")
        .output()
        .expect("run meterctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn unreachable_bus_exits_11_with_a_hint() {
    let out = meterctl(&["--bus", "unix:path=/nonexistent", "status"]);
    assert_eq!(out.status.code(), Some(11), "stderr: {}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.starts_with("error: Bus: "), "{err}");
    assert!(err.contains("unix:path=/nonexistent"), "{err}");
    assert!(err.contains("start meterd"), "{err}");
    assert!(err.contains("DBUS_SYSTEM_BUS_ADDRESS"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "data only on stdout: {}",
        text(&out.stdout)
    );
}

#[test]
fn env_address_is_honoured_and_json_errors_go_to_stdout() {
    let out = Command::new(env!("CARGO_BIN_EXE_meterctl"))
        .args(["--json", "audit"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/env-bus")
        .output()
        .expect("run meterctl");
    assert_eq!(out.status.code(), Some(11));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(doc["error"]["kind"], "Bus");
    let msg = doc["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("/nonexistent/env-bus"), "{msg}");
}

#[test]
fn local_file_errors_exit_15_before_any_bus_call() {
    // The bus is unreachable too: the missing file must be reported first.
    let out = meterctl(&[
        "--bus",
        "unix:path=/nonexistent",
        "recharge",
        "/nonexistent/voucher",
    ]);
    assert_eq!(out.status.code(), Some(15), "{}", text(&out.stderr));
    assert!(text(&out.stderr).starts_with("error: File: /nonexistent/voucher"));
}

/// The meter is unreachable: a refusal with any code but 11 (bus) proves
/// meterctl refused before it tried to buy anything.
const NO_BUS: [&str; 2] = ["--bus", "unix:path=/nonexistent"];

#[test]
fn postage_without_an_output_is_refused_before_the_call() {
    let args = [
        "postage", "--class", "letter", "--grams", "20", "--from", "A", "--to", "B",
    ];
    let out = meterctl(&[&NO_BUS[..], &args[..]].concat());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--png"), "{}", text(&out.stderr));
}

#[test]
fn unwritable_outputs_are_refused_before_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("m.eml");
    std::fs::write(&msg, b"hello").unwrap();
    let msg = msg.to_str().unwrap();
    let bad = "/nonexistent/x.png";
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "postage", "--class", "letter", "--grams", "20", "--from", "A", "--to", "B", "--png",
            bad,
        ],
        vec![
            "postage", "--class", "letter", "--grams", "20", "--from", "A", "--to", "B", "-o", "-",
            "--svg", bad,
        ],
        vec!["postmark", msg, "-o", bad],
        vec!["sign", "--cert", "04", msg, "-o", bad],
        vec!["report", "-o", bad],
        vec![
            "cert",
            "request",
            "--subject",
            "CN=A",
            "--code",
            "C",
            "-o",
            bad,
        ],
        vec![
            "credit", "pay", "--line", "1", "--amount", "5", "--payee", "p", "--out", bad,
        ],
    ];
    for args in cases {
        let out = meterctl(&[&NO_BUS[..], &args[..]].concat());
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(15), "{args:?}: {err}");
        assert!(
            err.contains("error: File: /nonexistent/x.png"),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("request id:"),
            "no request id before a refusal: {err}"
        );
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().count() == 1,
        "no temporary file left"
    );
}

#[test]
fn dash_is_stdin_for_inputs() {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_meterctl"))
        .args([&NO_BUS[..], &["recharge", "-"][..]].concat())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"voucher").unwrap();
    let out = child.wait_with_output().unwrap();
    // The voucher was read from stdin (no file named `-`), then the bus failed.
    assert_eq!(out.status.code(), Some(11), "{}", text(&out.stderr));
    let out = meterctl(&[&NO_BUS[..], &["postmark", "-"][..]].concat());
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdin needs -o: {}",
        text(&out.stderr)
    );
}

#[test]
fn bad_digest_is_a_usage_error() {
    let out = meterctl(&[
        "--bus",
        "unix:path=/nonexistent",
        "postmark",
        "--digest",
        "abcd",
        "-o",
        "/tmp/x.tsr",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("SHA-384"));
}

#[test]
fn generated_request_id_is_printed_before_the_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let msg = dir.path().join("mail.eml");
    std::fs::write(&msg, b"hello").expect("write");
    let path = msg.to_string_lossy().into_owned();
    let out = meterctl(&["--bus", "unix:path=/nonexistent", "postmark", &path]);
    assert_eq!(out.status.code(), Some(11));
    let err = text(&out.stderr);
    let id = err
        .lines()
        .find_map(|l| l.strip_prefix("request id: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no request id in: {err}"));
    assert_eq!(id.len(), 32);
    assert!(!dir.path().join("mail.eml.tsr").exists());
}

#[test]
fn malformed_amounts_are_usage_errors_before_the_bus() {
    for (amount, why) in [
        ("1,50", "is not an amount"),
        ("-1", "is not an amount"),
        ("1.", "is not an amount"),
        ("99999999999999999999", "too large"),
    ] {
        let arg = format!("--amount={amount}");
        let out = meterctl(&[
            "--bus",
            "unix:path=/nonexistent",
            "credit",
            "pay",
            "--line",
            "CL1",
            &arg,
            "--payee",
            "shop",
            "-o",
            "/tmp/never-written.pem",
        ]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{amount}: {err}");
        assert!(err.contains(why), "{amount}: {err}");
        assert!(err.contains("--amount"), "names the argument: {err}");
    }
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(meterctl(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(meterctl(&["provision"]).status.code(), Some(2));
}

#[test]
fn help_lists_the_exit_codes() {
    let out = meterctl(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(help.contains("Exit codes:"), "{help}");
    for (code, meaning) in meter_proto::exit::TABLE {
        assert!(
            help.contains(&format!("{code:>3}  {meaning}")),
            "code {code} missing"
        );
    }
    for sub in [
        "provision",
        "status",
        "rates",
        "recharge",
        "postmark",
        "validate",
        "audit",
        "clear-lock",
        "postage",
        "verify-indicium",
    ] {
        assert!(help.contains(sub), "subcommand {sub} missing");
    }
}

#[test]
fn completions_and_man_page_are_generated() {
    let out = meterctl(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    let script = text(&out.stdout);
    assert!(script.contains("complete") && script.contains("clear-lock"));

    let out = meterctl(&["man"]);
    assert_eq!(out.status.code(), Some(0));
    let page = text(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH meterctl"),
        "{page}"
    );
    assert!(
        page.contains("meter not provisioned"),
        "exit codes in the man page"
    );
}
