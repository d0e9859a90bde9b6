//! End to end: trust-anchor rollover. The authority rolls its root over, the
//! meter takes the new root only from a message its current root signed,
//! old tokens stay valid, new vouchers work, and the anchors survive a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use meter_proto::exit;
use sandbox::{ok, write, Sandbox};

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

/// Postmarks `id.txt`, returning (message path, token path).
fn postmark(sb: &Sandbox, id: &str) -> (String, String) {
    let (msg, t, out) = sb.postmark_id(id);
    ok(&out, "postmark");
    (msg, t)
}

fn voucher(sb: &Sandbox, name: &str, amount: u64) -> String {
    let v = sb.path(name).to_string_lossy().into_owned();
    sb.authority(&[
        "voucher",
        "--meter",
        &sb.meter_id(),
        "--amount",
        &amount.to_string(),
        "--out",
        &v,
    ]);
    v
}

#[test]
fn rollover_installs_the_new_root_only_from_the_old_one() {
    let sb = Sandbox::up(100_000);
    let (m1, t1) = postmark(&sb, "t1");
    let old_root = sb.path("old-root.pem").to_string_lossy().into_owned();
    std::fs::copy(sb.root_pem(), &old_root).expect("copy root");

    // The authority rolls over; the message is signed with the old root.
    let msg = sb.path("m.pem").to_string_lossy().into_owned();
    sb.authority(&["rollover", "--out", &msg, "--name", "Rolled Root"]);
    let kept = sb.authority_dir().join("root.1.pem");
    assert_eq!(
        std::fs::read(&kept).expect("root.1.pem"),
        std::fs::read(&old_root).expect("old root")
    );
    assert_ne!(
        std::fs::read(sb.root_pem()).expect("root.pem"),
        std::fs::read(&old_root).expect("old root"),
        "root.pem is the new root"
    );

    // Before the update, the meter refuses what the new root signed.
    let regs = sb.registers();
    let early = voucher(&sb, "early.pem", 700);
    let refused = sb.meterctl(&["recharge", &early]);
    assert_eq!(code(&refused), Some(exit::REFUSED), "{refused:?}");
    assert_eq!(sb.registers(), regs);

    // A rollover message from another authority is refused.
    let other = tempfile::tempdir().expect("tmp");
    let od = other.path().to_string_lossy().into_owned();
    sb.authority(&["--dir", &od, "init"]);
    let forged = sb.path("forged.pem").to_string_lossy().into_owned();
    sb.authority(&["--dir", &od, "rollover", "--out", &forged]);
    let out = sb.meterctl(&["trust-anchor", "update", &forged]);
    assert_eq!(code(&out), Some(exit::REFUSED), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("BadSignature"),
        "{out:?}"
    );
    assert_eq!(sb.registers(), regs, "registers unchanged");
    // Garbage is invalid input.
    let junk = write(&sb, "junk.pem", b"not a message");
    assert_eq!(
        code(&sb.meterctl(&["trust-anchor", "update", &junk])),
        Some(exit::INVALID)
    );

    // The genuine update applies once.
    let applied = sb.meterctl_json(&["trust-anchor", "update", &msg]);
    assert_eq!(applied["updated"], true, "{applied}");
    assert_eq!(applied["anchors"].as_u64(), Some(2), "{applied}");
    let again = sb.meterctl(&["trust-anchor", "update", &msg]);
    assert_eq!(code(&again), Some(exit::REFUSED), "{again:?}");
    assert_eq!(sb.registers(), regs);

    // The early voucher (new root) now recharges.
    let r = sb.meterctl_json(&["recharge", &early]);
    assert_eq!(r["descending"].as_u64(), Some(regs.1 + 700), "{r}");
    let regs = sb.registers();
    assert_eq!(regs.2, 100_000 + 700);

    // The old token is still valid (the old root is still an anchor).
    let v = sb.meterctl_json(&["validate", &m1, &t1]);
    assert_eq!(v["valid"], true, "{v}");
    // New postmarks chain to the old root (the postmark certificate is its own).
    let (m2, t2) = postmark(&sb, "t2");
    ok(
        &sb.ts_verify(&m2, &t2, &old_root),
        "openssl ts -verify under the old root",
    );
    let v2 = sb.meterctl_json(&["validate", &m2, &t2]);
    assert_eq!(v2["valid"], true, "{v2}");

    // Restart: the anchors are in the ledger.
    sb.script("restart-meterd");
    let after_restart = sb.registers();
    let late = voucher(&sb, "late.pem", 300);
    let r = sb.meterctl_json(&["recharge", &late]);
    assert_eq!(r["descending"].as_u64(), Some(after_restart.1 + 300), "{r}");
    // Still refused after restart: the same root cannot be installed twice.
    assert_eq!(
        code(&sb.meterctl(&["trust-anchor", "update", &msg])),
        Some(exit::REFUSED)
    );
    assert_eq!(sb.meterctl_json(&["validate", &m1, &t1])["valid"], true);
    assert_eq!(sb.meterctl_json(&["audit"])["ok"], true);
    sb.registers();
}

#[test]
fn update_for_another_meter_is_invalid_and_chains_roll_on() {
    let sb = Sandbox::up(10_000);
    let regs = sb.registers();
    let msg = sb.path("x.pem").to_string_lossy().into_owned();
    sb.authority(&[
        "rollover",
        "--out",
        &msg,
        "--mode",
        "add",
        "--meter",
        "MTR-000000000000",
    ]);
    assert_eq!(
        code(&sb.meterctl(&["trust-anchor", "update", &msg])),
        Some(exit::INVALID)
    );
    // The meter still only trusts the first root: a voucher from the second is refused.
    let v = voucher(&sb, "v.pem", 50);
    assert_eq!(code(&sb.meterctl(&["recharge", &v])), Some(exit::REFUSED));
    // The authority now signs with root 2, which the meter never accepted: its
    // announcement of root 3, even naming this meter, is refused.
    let msg3 = sb.path("y.pem").to_string_lossy().into_owned();
    sb.authority(&["rollover", "--out", &msg3, "--meter", &sb.meter_id()]);
    assert_eq!(
        code(&sb.meterctl(&["trust-anchor", "update", &msg3])),
        Some(exit::REFUSED)
    );
    assert_eq!(sb.registers(), regs);
}
