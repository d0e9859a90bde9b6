//! Attack: rewrite the ledger of a stopped meter (issue 12, "Rewrite the
//! ledger"), the way root on the workstation would: a raw SQLite
//! connection to the state directory's ledger, the append-only triggers
//! dropped, rows edited or appended, the registers, row hashes and batch
//! heads recomputed with the ledger's own canonical encoding
//! (`meter_pki::ledger_format`, public), the checkpoints deleted, and the
//! last batch seal signed again with the meter's identity key at the TPM
//! counter's value (root holds the key blob; here the in-process
//! `SoftwareHousing` plays the TPM and signs for him, as `tpm2_sign` would).
//! The chain then verifies: only the authority's signatures the rows keep
//! (`meterd::semantic`) can tell, and the meter must start locked `tamper`.
//!
//! On main before issue 12 item 2, `edited_voucher_amount_resealed_is_tamper`
//! and `unlock_without_order_is_tamper` fail: the meter starts unlocked with
//! the forged funds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::inproc;
use crate::rewrite;

use inproc::{InProc, Options, RATES};
use meter_pki::ledger_format::sha384;
use rewrite::{append, attacker, last_seq, rechain_and_reseal};
use rusqlite::params;

async fn lock_reason(m: &InProc) -> Option<String> {
    m.meter
        .require_ledger()
        .unwrap()
        .state()
        .lock
        .map(|l| l.reason)
}

async fn funded() -> InProc {
    InProc::up_with(Options {
        funds: 100_000,
        rates: Some(RATES.into()),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn edited_voucher_amount_resealed_is_tamper() {
    let m = funded().await;
    let (_, dr, _) = m.registers().await;
    assert_eq!(dr, 100_000);
    let path = m.config.ledger_path();
    let meter_id = m.meter_id.clone();
    let m = m
        .restart_with(|tpm| {
            let c = attacker(&path);
            let seq: i64 = c
                .query_row("SELECT seq FROM journal WHERE kind = 4", [], |r| r.get(0))
                .unwrap();
            let delta = 10_000_000 - 100_000;
            c.execute(
                "UPDATE journal SET credit = credit + ?1 WHERE seq = ?2",
                params![delta, seq],
            )
            .unwrap();
            c.execute(
                "UPDATE journal SET descending = descending + ?1,
                    control_total = control_total + ?1 WHERE seq >= ?2",
                params![delta, seq],
            )
            .unwrap();
            rechain_and_reseal(&c, &meter_id, tpm);
        })
        .await;
    // The chain and the seal verify (the forged funds are in the registers)...
    assert_eq!(
        m.meter
            .require_ledger()
            .unwrap()
            .state()
            .registers
            .descending
            .0,
        10_000_000
    );
    // ...but the voucher the row keeps says 100,000.
    assert_eq!(lock_reason(&m).await.as_deref(), Some("tamper"));
    let audit = meterd::audit::audit(&m.meter).await.unwrap();
    assert!(
        matches!(&audit.verdict, meterd::ledger::Verdict::Tamper { detail, .. }
            if detail.contains("voucher")),
        "{audit:?}"
    );
    m.meter.close().await;
}

/// Locks the meter (`clock`), stops it, and appends an Unlock row that
/// carries no clear order, crediting `credit`.
async fn unlock_attack(credit: i64) {
    let m = funded().await;
    let ledger = m.meter.require_ledger().unwrap();
    m.meter
        .regime()
        .engage(&ledger, meter_proto::lock_reason::CLOCK)
        .await
        .unwrap();
    let nonce = ledger.state().lock.unwrap().nonce;
    drop(ledger);
    let path = m.config.ledger_path();
    let meter_id = m.meter_id.clone();
    let planted = std::cell::Cell::new(0);
    let m = m
        .restart_with(|tpm| {
            let c = attacker(&path);
            let key = format!("m/clear-lock/{nonce}");
            append(&c, (7, "clear", &key, b"no order", credit));
            planted.set(last_seq(&c));
            rechain_and_reseal(&c, &meter_id, tpm);
        })
        .await;
    assert_eq!(
        lock_reason(&m).await.as_deref(),
        Some("tamper"),
        "an Unlock row without a clear order (credit {credit}) was accepted"
    );
    // Caught for the planted row itself, not for a side effect of planting it.
    let audit = meterd::audit::audit(&m.meter).await.unwrap();
    assert!(
        matches!(audit.verdict, meterd::ledger::Verdict::Tamper { first_bad_seq: Some(s), .. }
            if s as i64 == planted.get()),
        "the planted row {} must be the one named: {audit:?}",
        planted.get()
    );
    m.meter.close().await;
}

#[tokio::test]
async fn unlock_without_order_is_tamper() {
    unlock_attack(0).await;
}

#[tokio::test]
async fn unlock_with_a_credit_is_tamper() {
    unlock_attack(5_000_000).await;
}

/// The same rewrite with the meter's own stored objects left alone (only
/// rehashed and resealed) is clean: the check judges what the rows say,
/// not that they were rehashed.
#[tokio::test]
async fn rehashed_untouched_ledger_is_clean() {
    let m = funded().await;
    let path = m.config.ledger_path();
    let meter_id = m.meter_id.clone();
    let m = m
        .restart_with(|tpm| {
            let c = attacker(&path);
            rechain_and_reseal(&c, &meter_id, tpm);
        })
        .await;
    assert_eq!(lock_reason(&m).await, None);
    m.down().await;
}

/// An older ledger: a trust-anchor row as meterd wrote it before issue 12
/// (the new bundle alone, without the authority's signed update). It is
/// refused (`tamper`, the row named): nothing left in the row shows that an
/// anchor in force signed the new root, and no marker could tell an old
/// row from a forged one (root rewrites a marker as easily as any row).
/// The authority accepts it with a clear order for the `tamper` lock
/// signed by a root the meter trusted before that row (here its retired
/// root): after that `reanchor`, the meter starts clean and trusts the new
/// root. Every other row that brings value already kept its signed object
/// before issue 12.
#[tokio::test]
async fn legacy_anchor_row_without_its_update_is_refused_until_the_authority_reanchors() {
    let mut m = funded().await;
    let meter_id = m.meter_id.clone();
    let (update, n) = m
        .authority
        .rollover(
            "Second Root",
            "add",
            Some(&meter_id),
            meter_authority::now(),
        )
        .unwrap();
    assert_eq!(
        m.client
            .update_trust_anchor(update.as_bytes())
            .await
            .unwrap(),
        2
    );
    let path = m.config.ledger_path();
    let m = m
        .restart_with(|tpm| {
            let c = attacker(&path);
            let (seq, product): (i64, Vec<u8>) = c
                .query_row(
                    "SELECT j.seq, p.product FROM journal j JOIN products p ON p.seq = j.seq
                     WHERE j.note = 'anchor-add'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            let (bundle, signed) = meterd::identity::split_row(&product).unwrap();
            assert!(signed.is_some(), "the row keeps the signed update");
            let bundle = bundle.to_vec();
            c.execute(
                "UPDATE products SET product = ?1 WHERE seq = ?2",
                params![&bundle, seq],
            )
            .unwrap();
            c.execute(
                "UPDATE journal SET product_digest = ?1 WHERE seq = ?2",
                params![&sha384(&bundle)[..], seq],
            )
            .unwrap();
            rechain_and_reseal(&c, &meter_id, tpm);
        })
        .await;
    assert_eq!(lock_reason(&m).await.as_deref(), Some("tamper"));
    let nonce = m
        .meter
        .require_ledger()
        .unwrap()
        .state()
        .lock
        .unwrap()
        .nonce;

    // A clear order signed by the new root does not pardon the row that
    // brought that root: the next start locks again.
    let order = m
        .authority
        .clear_lock(&meter_id, &nonce, meter_authority::now())
        .unwrap();
    m.client.clear_lock(order.as_bytes()).await.unwrap();
    let ledger = m.meter.require_ledger().unwrap();
    let s = meterd::semantic::check(&ledger, &meter_id, 0)
        .await
        .unwrap();
    let f = s.finding.expect("the legacy row stays a finding");
    assert!(
        f.detail.contains("without the authority's signed update"),
        "{f:?}"
    );
    drop(ledger);
    let m = m.restart_unchecked(|_| {}).await;
    assert_eq!(lock_reason(&m).await.as_deref(), Some("tamper"));
    let nonce = m
        .meter
        .require_ledger()
        .unwrap()
        .state()
        .lock
        .unwrap()
        .nonce;

    // The same order from the root the meter trusted before that row
    // (the authority's retired root `root.<n>`) accepts the ledger.
    let dir = m.dir.path().join("authority");
    let old = m.dir.path().join("authority-old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::copy(dir.join("state.json"), old.join("state.json")).unwrap();
    std::fs::copy(dir.join(format!("root.{n}.key")), old.join("root.key")).unwrap();
    std::fs::copy(dir.join(format!("root.{n}.pem")), old.join("root.pem")).unwrap();
    let old = meter_authority::Authority::open(&old).unwrap();
    let order = old
        .clear_lock(&meter_id, &nonce, meter_authority::now())
        .unwrap();
    m.client.clear_lock(order.as_bytes()).await.unwrap();
    let mut m = m.restart().await;
    assert_eq!(lock_reason(&m).await, None);
    // The new root is trusted from then on, by the meter and by the check.
    let voucher = m.voucher(1_000);
    m.client.recharge(&voucher).await.unwrap();
    let m = m.restart().await;
    assert_eq!(lock_reason(&m).await, None);
    m.down().await;
}

/// Cost of the check (`cargo nextest run --release -p meterd --test
/// attack_rewrite --run-ignored only`): 500 vouchers (each a CMS signature
/// and a certificate chain verified again), walked as at every start.
#[tokio::test]
#[ignore]
async fn check_cost_for_500_vouchers() {
    let mut m = funded().await;
    for _ in 0..500 {
        let v = m.voucher(10);
        m.client.recharge(&v).await.unwrap();
    }
    let ledger = m.meter.require_ledger().unwrap();
    let s = meterd::semantic::check(&ledger, &m.meter_id, 0)
        .await
        .unwrap();
    eprintln!(
        "semantic check: {} rows walked, {} signatures verified, {} ms",
        s.rows, s.verified, s.millis
    );
    assert!(s.finding.is_none());
    drop(ledger);
    m.down().await;
}
