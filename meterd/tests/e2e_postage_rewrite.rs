//! Issue 12, "Rewrite the ledger", for postage: root lowers what a postage piece debited.
//! The row does not say the piece's class and weight; its indicium does, and travels in
//! the report's segment (`meter_pki::segment::product_required`), so
//! `meter-authority inspect` re-prices the piece from the rate table in force at its row
//! and checks the indicium against the row and the meter's identity key.
//!
//! The attack, root's way, with meterd stopped: the attacker's SQLite connection (triggers
//! dropped) lowers the debit of the last postage row and shifts the registers after it;
//! the chain is recomputed with the public canonical encoding and the last batch re-sealed
//! with `tpm2_sign` and the identity key's auth value derived from `keys/auth`
//! (`support/rewrite.rs`, `root_tools::reseal`). Three ways with the indicium:
//!
//! * **kept**: the indicium still says 1,160 (a letter of 40 g) → named twice: the
//!   indicium disagrees with the row, and the row's debit is not the band's price.
//! * **edited**: its amount and registers lowered to the row's, its signature kept → its
//!   signature does not verify with the meter's identity key.
//! * **re-signed**: edited and signed again with `tpm2_sign` and the derived identity auth
//!   (root holds it): a valid indicium that agrees with its row, yet a 40 g letter costs
//!   1,160 by the table in force → named by its band.
//!
//! With the pricing of main (postmark, validate and sign only; the segment without the
//! indicium), `inspect` acknowledged every one of them (run: exit 0): nothing looked at
//! postage prices.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::rewrite;
use crate::root_tools;
use crate::sandbox;

use rusqlite::params;
use sandbox::{ok, Sandbox};
use sha2::{Digest, Sha384};

/// The indicium's body length and the offsets of amount, AR and DR in it (docs/INDICIUM.md).
const BODY_LEN: usize = 125;
const O_AMOUNT: usize = 32;
const O_AR: usize = 40;
const O_DR: usize = 48;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Indicium {
    Kept,
    Edited,
    Resigned,
}

fn postage(sb: &Sandbox, grams: &str, id: &str) {
    let args = sb.letter_args(id, grams);
    let mut all = vec!["--json"];
    all.extend(args.iter().map(String::as_str));
    ok(&sb.meterctl(&all), id);
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// Buys a 10 g and a 40 g letter (730 and 1,160 by the sandbox's table), lowers the
/// second to `new` with the indicium handled as `how`, reports and inspects; returns
/// the row rewritten and what `inspect` said (exit code, text).
fn rewritten(new: u64, how: Indicium) -> (Sandbox, i64, Option<i32>, String) {
    let sb = Sandbox::up(100_000);
    let meter = sb.meter_id();
    postage(&sb, "10", "pg-1");
    postage(&sb, "40", "pg-2");
    sb.script("stop-meterd");

    let c = rewrite::attacker(&sb.path("state/ledger.sqlite"));
    let (seq, debit, product): (i64, i64, Vec<u8>) = c
        .query_row(
            "SELECT j.seq, j.debit, p.product FROM journal j JOIN products p ON p.seq = j.seq
             WHERE j.request_id LIKE '%/pg-2'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(debit, 1160, "a 40 g letter by the sandbox's table");
    let delta = debit - new as i64;
    c.execute(
        "UPDATE journal SET debit = ?1 WHERE seq = ?2",
        params![new as i64, seq],
    )
    .unwrap();
    c.execute(
        "UPDATE journal SET ascending = ascending - ?1, descending = descending + ?1
         WHERE seq >= ?2",
        params![delta, seq],
    )
    .unwrap();
    if how != Indicium::Kept {
        let (ar, dr): (i64, i64) = c
            .query_row(
                "SELECT ascending, descending FROM journal WHERE seq = ?1",
                [seq],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let mut ind = product.clone();
        put_u64(&mut ind, O_AMOUNT, new);
        put_u64(&mut ind, O_AR, ar as u64);
        put_u64(&mut ind, O_DR, dr as u64);
        if how == Indicium::Resigned {
            let digest: [u8; 48] = Sha384::digest(&ind[..BODY_LEN]).into();
            let sig = root_tools::sign_as_meter(&sb, &digest);
            ind[BODY_LEN..].copy_from_slice(&sig);
        }
        c.execute(
            "UPDATE products SET product = ?1 WHERE seq = ?2",
            params![ind, seq],
        )
        .unwrap();
        c.execute(
            "UPDATE journal SET product_digest = ?1 WHERE seq = ?2",
            params![&Sha384::digest(&ind)[..], seq],
        )
        .unwrap();
    }
    let (batch, digest) = rewrite::rechain(&c, &meter);
    drop(c);
    root_tools::reseal(&sb, batch, &digest);
    sb.script("start-meterd");

    let p = sb.arg("rep.pem");
    let v = sb.report_as("rep");
    let seg = v["segment"].as_str().expect("segment").to_owned();
    let out = sb.inspect(&p, &seg, "ack.pem");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        assert!(!sb.path("ack.pem").exists(), "no acknowledgement");
        assert!(
            sb.path("ack.lock-order.pem").exists(),
            "a forced lock order"
        );
    }
    (sb, seq, out.status.code(), said)
}

#[test]
fn a_postage_debit_lowered_under_its_own_indicium_is_named_by_inspect() {
    let (_sb, seq, code, said) = rewritten(1, Indicium::Kept);
    assert_eq!(code, Some(3), "inspect must refuse: {said}");
    assert!(
        said.contains(&format!("row {seq}: its indicium says")),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "row {seq}: a postage letter of 40 g debited 1, rate table v1 in force then says 1160"
        )),
        "{said}"
    );
}

#[test]
fn a_postage_indicium_edited_to_the_lower_debit_does_not_verify() {
    let (_sb, seq, code, said) = rewritten(1, Indicium::Edited);
    assert_eq!(code, Some(3), "inspect must refuse: {said}");
    assert!(
        said.contains(&format!(
            "row {seq}: its indicium does not verify with the meter's identity key"
        )),
        "{said}"
    );
}

#[test]
fn a_postage_indicium_resigned_by_root_at_a_lower_price_is_named_by_its_band() {
    let (_sb, seq, code, said) = rewritten(1, Indicium::Resigned);
    assert_eq!(code, Some(3), "inspect must refuse: {said}");
    assert!(
        !said.contains("does not verify"),
        "root's signature is the meter's: {said}"
    );
    assert!(!said.contains("its indicium says"), "{said}");
    assert!(
        said.contains(&format!(
            "row {seq}: a postage letter of 40 g debited 1, rate table v1 in force then says 1160"
        )),
        "{said}"
    );
}
