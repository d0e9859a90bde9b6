//! Issue 12, item 2, for revocations: the Debit row of an applied revoke order keeps,
//! after the meter's signed confirmation, the authority's signed order it applied, and
//! every audit (at start, `meterctl audit`) verifies that order again: signed by an anchor
//! in force, for this meter, and the very order the confirmation answers (id, serial,
//! reason, forced).
//!
//! The attack, root's way, with meterd stopped: `sqlite3`-level edits on the ledger
//! (triggers dropped) cut the order off the revoke row's product (what a row forged from
//! a confirmation alone looks like: the meter's own word that the authority ordered a
//! revocation), the chain recomputed with the public canonical encoding, and the last
//! batch re-sealed with `tpm2_sign` and the identity key's auth value derived from
//! `keys/auth`. Before this change the revoke row kept the confirmation alone and the
//! audit checked only the meter's word (this meter, the key's order, once, the fee); now
//! the meter starts `tamper` and `meterctl audit` names the row: a revoke row that keeps
//! no authority revoke order.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::rewrite;
use crate::root_tools;
use crate::sandbox;

use rusqlite::params;
use sandbox::Sandbox;
use sha2::{Digest, Sha384};

fn audit_text(sb: &Sandbox) -> String {
    let out = sb.meterctl(&["--json", "audit"]);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The length of the first DER element of `der` (tag, length, contents).
fn first_element_len(der: &[u8]) -> usize {
    match der[1] {
        n if n < 0x80 => 2 + usize::from(n),
        0x81 => 3 + usize::from(der[2]),
        0x82 => 4 + (usize::from(der[2]) << 8 | usize::from(der[3])),
        n => panic!("length form {n:#x}"),
    }
}

#[test]
fn a_revoke_row_keeps_the_authority_order_and_one_cut_off_is_named() {
    let sb = Sandbox::up(100_000);
    let meter = sb.meter_id();

    // A certificate requested, certified and installed; revoked by the authority's order.
    let (_, serial) = sb.enrol_and_install("Alice", &[]);
    let rv_req = sb.arg("revoke-req.pem");
    sb.meterctl_json(&[
        "cert",
        "revoke",
        &serial,
        "--reason",
        "keyCompromise",
        "-o",
        &rv_req,
    ]);
    let order = sb.arg("order.pem");
    sandbox::ok(
        &sb.authority(&["revoke", &rv_req, "--out", &order]),
        "meter-authority revoke",
    );
    let confirmation = sb.arg("confirmation.pem");
    sb.meterctl_json(&["cert", "apply-revoke", &order, "-o", &confirmation]);
    let said = audit_text(&sb);
    assert!(
        !said.contains("revoke"),
        "a real order audits clean: {said}"
    );

    // Root cuts the order off the row, rechains and re-seals.
    sb.script("stop-meterd");
    let c = rewrite::attacker(&sb.path("state/ledger.sqlite"));
    let (seq, product): (i64, Vec<u8>) = c
        .query_row(
            "SELECT p.seq, p.product FROM products p JOIN journal j ON j.seq = p.seq
             WHERE j.request_id LIKE 'm/revoke-order/%'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let cut = first_element_len(&product);
    assert!(
        cut < product.len(),
        "the revoke row keeps the order after the confirmation"
    );
    let confirmation = &product[..cut];
    c.execute(
        "UPDATE products SET product = ?1 WHERE seq = ?2",
        params![confirmation, seq],
    )
    .unwrap();
    c.execute(
        "UPDATE journal SET product_digest = ?1 WHERE seq = ?2",
        params![&Sha384::digest(confirmation)[..], seq],
    )
    .unwrap();
    let (batch, digest) = rewrite::rechain(&c, &meter);
    drop(c);
    root_tools::reseal(&sb, batch, &digest);

    // The row may lie before the signed checkpoint: the background audit then finds it.
    sb.start_meterd_audited();
    let status = sb.status();
    assert_eq!(
        status["lock_reason"].as_str(),
        Some("tamper"),
        "the meter started on a revoke row without its order: {status}"
    );
    let said = audit_text(&sb);
    assert!(
        said.contains("keeps no authority revoke order"),
        "meterctl audit must name the revoke row: {said}"
    );
}
