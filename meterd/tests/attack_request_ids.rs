//! Issue 11, hole 2: "Idempotency keys are global across callers."
//!
//! A request id makes a call idempotent for the caller who chose it: a
//! retry returns the stored product and is not charged again. Keyed by the
//! id alone, one caller's id is every caller's: a second user who happens
//! to pick the same id (or picks it on purpose) is refused, or — worse —
//! receives the first user's product for free. After the fix the key is
//! (caller uid, request id): each caller is served, and charged, on its own.
//!
//! The callers are real uids in group `meter` (and root as the
//! administrator), calling through the sandbox's bus with `meterctl`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use crate::attacker;

use attacker::{drop_dir, outcome, payload, root_or_skip, user, User, USER_A, USER_B};
use sandbox::{write, Sandbox};

const POSTMARK: u64 = 500;

/// `meterctl postmark MESSAGE` as USER with request id ID into the drop
/// directory; returns (token path, meterctl's output).
fn postmark_as(
    sb: &Sandbox,
    who: &User,
    message: &str,
    id: &str,
    token: &str,
) -> (String, std::process::Output) {
    let t = drop_dir(sb).join(token).to_string_lossy().into_owned();
    let out = who.meterctl(sb, &["postmark", message, "-o", &t, "--request-id", id]);
    (t, out)
}

/// (AR, pieces) from Status.
fn charged(sb: &Sandbox) -> (u64, u64) {
    let (ar, ..) = sb.registers();
    let pieces = sb.status()["piece_count"].as_u64().expect("piece_count");
    (ar, pieces)
}

fn verifies(sb: &Sandbox, message: &str, token: &str) -> bool {
    sb.ts_verify(message, token, &sb.root_pem().to_string_lossy())
        .status
        .success()
}

#[test]
fn two_users_same_request_id_different_messages_each_get_their_own_token() {
    if !root_or_skip("two_users_same_request_id_different_messages_each_get_their_own_token") {
        return;
    }
    let sb = Sandbox::up(10_000);
    let (alice, bob) = (user(USER_A), user(USER_B));
    let m_a = write(&sb, "alice.txt", b"Alice's mail\n");
    let m_b = write(&sb, "bob.txt", b"Bob's mail, nothing like Alice's\n");
    let before = charged(&sb);

    let (t_a, out) = postmark_as(&sb, &alice, &m_a, "r1", "alice.tsr");
    assert!(out.status.success(), "alice: {}", outcome(&out));
    let (t_b, out) = postmark_as(&sb, &bob, &m_b, "r1", "bob.tsr");
    assert!(
        out.status.success(),
        "bob's Postmark with request id \"r1\" (already used by alice, another uid) must be \
         served as his own request; got {}",
        outcome(&out)
    );
    assert!(verifies(&sb, &m_a, &t_a), "alice's token is for her mail");
    assert!(verifies(&sb, &m_b, &t_b), "bob's token is for his mail");
    assert_eq!(
        charged(&sb),
        (before.0 + 2 * POSTMARK, before.1 + 2),
        "two postmarks, two charges"
    );
}

#[test]
fn two_users_same_request_id_same_message_each_get_their_own_token() {
    if !root_or_skip("two_users_same_request_id_same_message_each_get_their_own_token") {
        return;
    }
    let sb = Sandbox::up(10_000);
    let (alice, bob) = (user(USER_A), user(USER_B));
    // The same bytes in two files (a newsletter both send, say).
    let m_a = write(&sb, "alice.txt", b"the same message\n");
    let m_b = write(&sb, "bob.txt", b"the same message\n");
    let before = charged(&sb);

    let (t_a, out) = postmark_as(&sb, &alice, &m_a, "r1", "alice.tsr");
    assert!(out.status.success(), "alice: {}", outcome(&out));
    let (t_b, out) = postmark_as(&sb, &bob, &m_b, "r1", "bob.tsr");
    assert!(out.status.success(), "bob: {}", outcome(&out));
    let (a, b) = (std::fs::read(&t_a).unwrap(), std::fs::read(&t_b).unwrap());
    let after = charged(&sb);
    assert!(
        a != b && after == (before.0 + 2 * POSTMARK, before.1 + 2),
        "bob's Postmark \"r1\" of the same message must get a fresh token of his own and be \
         charged; he got {} and (AR, pieces) went from {before:?} to {after:?}",
        if a == b {
            "alice's token, byte for byte (her product leaked to another uid, for free)"
        } else {
            "a token of his own"
        }
    );
    // A retry by bob is his own idempotent retry: his token again, free.
    let (t_b2, out) = postmark_as(&sb, &bob, &m_b, "r1", "bob2.tsr");
    assert!(out.status.success(), "bob's retry: {}", outcome(&out));
    assert_eq!(
        std::fs::read(&t_b2).unwrap(),
        b,
        "a retry returns bob's token"
    );
    assert_eq!(charged(&sb), after, "a retry is free");
}

#[test]
fn admin_and_user_same_request_id_on_different_methods_both_served() {
    if !root_or_skip("admin_and_user_same_request_id_on_different_methods_both_served") {
        return;
    }
    let sb = Sandbox::up(10_000);
    let alice = user(USER_A);
    let msg = write(&sb, "alice.txt", b"Alice's mail\n");
    let report = |id: &str| {
        let out_file = sb.path(&format!("{id}.pem")).to_string_lossy().into_owned();
        let out = sb.meterctl(&["--json", "report", "-o", &out_file, "--request-id", id]);
        (out_file, out)
    };
    let mut failures = Vec::new();

    // The user first (Postmark), then the administrator (Report), same id.
    let (_, out) = postmark_as(&sb, &alice, &msg, "shared-1", "s1.tsr");
    assert!(out.status.success(), "alice: {}", outcome(&out));
    let (_, out) = report("shared-1");
    if !out.status.success() {
        failures.push(format!(
            "user Postmark \"shared-1\", then admin Report \"shared-1\": {}",
            outcome(&out)
        ));
    }

    // The administrator first, then the user.
    let (_, out) = report("shared-2");
    assert!(out.status.success(), "admin report: {}", outcome(&out));
    let (_, out) = postmark_as(&sb, &alice, &msg, "shared-2", "s2.tsr");
    if !out.status.success() {
        failures.push(format!(
            "admin Report \"shared-2\", then user Postmark \"shared-2\": {}",
            outcome(&out)
        ));
    }

    // Same method: the user's report, then the administrator's with the
    // same id must be a new report of the administrator's own.
    alice.report_ok(&sb, "shared-3");
    let user_seq = sb.status()["service_counts"]["status-report"]
        .as_u64()
        .unwrap();
    let (f, out) = report("shared-3");
    if out.status.success() {
        let seq = payload(&sb, &f)["sequence"].as_u64().unwrap();
        if seq == user_seq {
            failures.push(format!(
                "user Report \"shared-3\", then admin Report \"shared-3\": the administrator got \
                 the user's report (sequence {seq}), not a new one"
            ));
        }
    } else {
        failures.push(format!(
            "user Report \"shared-3\", then admin Report \"shared-3\": {}",
            outcome(&out)
        ));
    }
    assert!(
        failures.is_empty(),
        "one caller's request id must not be another's:\n  {}",
        failures.join("\n  ")
    );
}
