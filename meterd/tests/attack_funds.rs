//! Attack: root rewrites the rows that keep postage funds apart (issue 17
//! item 3), the way `attack_rewrite` does (a raw SQLite connection, the
//! chain recomputed with the public canonical encoding, the last seal
//! signed again with the identity key: root holds its blob; the in-process
//! `SoftwareHousing` signs for him, as `tpm2_sign` would). The chain then
//! verifies, so only the audit's rules on what the rows keep can tell.
//!
//! * A funds-split row planted without the authority's order: the meter
//!   would split on root's word, and the authority's real order would be
//!   refused as a replay of the planted one.
//! * A postage voucher's row moved onto the services pair (registers
//!   recomputed): the post's money becomes the provider's.
//! * A sale paid from the other pair: the writer refuses it, and a row
//!   rewritten so is tamper.
//!
//! Before this change (main at 8c4101e) the first two started clean and
//! unlocked: the audit never read a split row (nor a postal-key row: its
//! rule was written but its rows were not in the walk's filter), and
//! checked no voucher's register.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::inproc;
use crate::rewrite;

use inproc::InProc;
use meterd::ledger::Verdict;
use rewrite::{append, attacker, rechain_and_reseal};
use rusqlite::params;

/// The authority's postage voucher on a split meter.
const POSTAGE: i64 = 5_000;

async fn lock_reason(m: &InProc) -> Option<String> {
    m.meter
        .require_ledger()
        .unwrap()
        .state()
        .lock
        .map(|l| l.reason)
}

/// The audit's finding, which must name `what`.
async fn tamper_naming(m: &InProc, what: &str) {
    assert_eq!(lock_reason(m).await.as_deref(), Some("tamper"));
    let audit = meterd::audit::audit(&m.meter).await.unwrap();
    assert!(
        matches!(&audit.verdict, Verdict::Tamper { detail, .. } if detail.contains(what)),
        "the audit must name {what:?}: {audit:?}"
    );
}

/// A meter split by the authority's order, with a postage voucher.
async fn split_funded() -> InProc {
    let mut m = InProc::up(100_000).await;
    let now = meter_authority::now();
    let (_, order) = m.authority.funds_split_order(&m.meter_id, now).unwrap();
    m.client.set_account_mode(order.as_bytes()).await.unwrap();
    let (_, v) = m
        .authority
        .voucher_for(&m.meter_id, POSTAGE as u64, Some("postage"), now)
        .unwrap();
    m.client.recharge(v.as_bytes()).await.unwrap();
    let r = m.meter.require_ledger().unwrap().state().registers;
    assert!(r.split);
    assert_eq!(r.postage.descending.0, POSTAGE as u64);
    m
}

#[tokio::test]
async fn a_planted_split_row_is_tamper() {
    let m = InProc::up(100_000).await;
    let path = m.config.ledger_path();
    let meter_id = m.meter_id.clone();
    let m = m
        .restart_with(|tpm| {
            let c = attacker(&path);
            append(&c, (8, "funds-split", "m/funds/split", b"no order", 0));
            rechain_and_reseal(&c, &meter_id, tpm);
        })
        .await;
    // The chain and seal verify: the meter took the split...
    assert!(m.meter.require_ledger().unwrap().state().registers.split);
    // ...but no authority ordered it.
    tamper_naming(&m, "CMS").await;
    m.meter.close().await;
}

#[tokio::test]
async fn a_postage_voucher_moved_to_services_is_tamper() {
    let m = split_funded().await;
    let path = m.config.ledger_path();
    let meter_id = m.meter_id.clone();
    let m = m
        .restart_with(|tpm| {
            let c = attacker(&path);
            let seq: i64 = c
                .query_row("SELECT MAX(seq) FROM journal WHERE kind = 4", [], |r| {
                    r.get(0)
                })
                .unwrap();
            // The services pair as the last services row before it left it,
            // plus the voucher; the services rows after it carry it too.
            c.execute(
                "UPDATE journal SET register = 0,
                    ascending = s.ascending, descending = s.descending + ?1,
                    control_total = s.control_total + ?1, pieces = s.pieces
                 FROM (SELECT ascending, descending, control_total, pieces FROM journal
                       WHERE register = 0 AND seq < ?2 ORDER BY seq DESC LIMIT 1) AS s
                 WHERE seq = ?2",
                params![POSTAGE, seq],
            )
            .unwrap();
            c.execute(
                "UPDATE journal SET descending = descending + ?1,
                    control_total = control_total + ?1 WHERE register = 0 AND seq > ?2",
                params![POSTAGE, seq],
            )
            .unwrap();
            rechain_and_reseal(&c, &meter_id, tpm);
        })
        .await;
    // The chain and seal verify: the postage money sits on services...
    let r = m.meter.require_ledger().unwrap().state().registers;
    assert_eq!(r.postage.descending.0, 0);
    // ...but the voucher the row keeps funds postage.
    tamper_naming(&m, "the voucher funds postage").await;
    m.meter.close().await;
}

#[tokio::test]
async fn a_sale_moved_to_the_other_pair_is_tamper() {
    let m = split_funded().await;
    // A services sale: a postmark (charged from services).
    m.client.postmark_digest(&[7u8; 48], "r-1").await.unwrap();
    let path = m.config.ledger_path();
    let meter_id = m.meter_id.clone();
    let m = m
        .restart_with(|tpm| {
            let c = attacker(&path);
            let (seq, debit): (i64, i64) = c
                .query_row(
                    "SELECT seq, debit FROM journal WHERE service != 0 AND debit > 0
                     ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            // Paid from the postage pair instead (both pairs recomputed from
            // there): the services funds root keeps for certificates stay whole.
            c.execute(
                "UPDATE journal SET register = 1,
                    ascending = p.ascending + ?1, descending = p.descending - ?1,
                    control_total = p.control_total, pieces = p.pieces + 1
                 FROM (SELECT ascending, descending, control_total, pieces FROM journal
                       WHERE register = 1 AND seq < ?2 ORDER BY seq DESC LIMIT 1) AS p
                 WHERE seq = ?2",
                params![debit, seq],
            )
            .unwrap();
            c.execute(
                "UPDATE journal SET ascending = ascending - ?1, descending = descending + ?1,
                    pieces = pieces - 1 WHERE register = 0 AND seq > ?2",
                params![debit, seq],
            )
            .unwrap();
            rechain_and_reseal(&c, &meter_id, tpm);
        })
        .await;
    tamper_naming(&m, "paid from the other register pair").await;
    m.meter.close().await;
}
