//! The log tells the story, read the way an operator reads it: the
//! sandbox's `meterd.log` (meterd's stderr, as journald would get it) has one
//! line per sale (service, caller's key = uid and request id, price,
//! registers after) and one per refusal (error name, uid), no colour codes in
//! a file and no false ERRORs from provisioning.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use sandbox::{ok, write, Sandbox};

fn log(sb: &Sandbox) -> String {
    std::fs::read_to_string(sb.dir.path().join("meterd.log")).expect("meterd.log")
}

#[test]
fn the_log_has_a_line_per_sale_and_per_refusal() {
    let sb = Sandbox::up(100_000);
    let (_, _, out) = sb.postmark_id("journal-1");
    ok(&out, "postmark");
    let (ar, _, _) = sb.registers();

    // The same request id over another message: a refusal (InvalidInput).
    let other = write(&sb, "other.txt", b"another message");
    let t = sb.path("other.tsr").to_string_lossy().into_owned();
    let out = sb.meterctl(&["postmark", &other, "-o", &t, "--request-id", "journal-1"]);
    assert!(!out.status.success(), "{out:?}");

    let log = log(&sb);
    let sold: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" sold ") && l.contains("c/0/journal-1"))
        .collect();
    assert_eq!(sold.len(), 1, "one line for the sale:\n{log}");
    assert!(sold[0].contains("INFO"), "{}", sold[0]);
    assert!(
        sold[0].contains("service=\"postmark\"") || sold[0].contains("service=postmark"),
        "{}",
        sold[0]
    );
    assert!(sold[0].contains("price_minor="), "{}", sold[0]);
    assert!(
        sold[0].contains(&format!("ascending_minor={ar}")),
        "{}",
        sold[0]
    );

    let refused: Vec<&str> = log.lines().filter(|l| l.contains(" refused ")).collect();
    assert_eq!(refused.len(), 1, "one line for the refusal:\n{log}");
    assert!(refused[0].contains("WARN"), "{}", refused[0]);
    assert!(
        refused[0].contains("error_name=\"InvalidInput\"")
            || refused[0].contains("error_name=InvalidInput"),
        "{}",
        refused[0]
    );
    assert!(refused[0].contains("uid=0"), "{}", refused[0]);
    // The refusal carries the caller's request id, as the sale line does.
    assert!(
        refused[0].contains("request_id=\"journal-1\"")
            || refused[0].contains("request_id=journal-1"),
        "{}",
        refused[0]
    );

    assert!(
        !log.contains('\u{1b}'),
        "no ANSI colour codes in a log file:\n{log}"
    );
    assert!(!log.contains("ERROR"), "no ERROR in a clean run:\n{log}");
}
