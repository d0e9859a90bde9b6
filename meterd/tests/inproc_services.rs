//! Service tests through D-Bus on an in-process meter (software housing,
//! peer-to-peer connection; see `support/inproc.rs`). Each runs in tens of
//! milliseconds; the same services keep their end-to-end tests on swtpm.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::inproc;

use std::time::Instant;

use inproc::{boolean, string, InProc, Options, POSTMARK_PRICE, VALIDATE_PRICE};
use meter_proto::keys::report as key;
use meter_proto::MeterError;
use sha2::{Digest, Sha384};
use zbus::zvariant::Fd;

fn sha384(data: &[u8]) -> Vec<u8> {
    Sha384::digest(data).to_vec()
}

/// The token verifies with the authority's own checker (chain to its
/// root, signature, imprint of `data`).
fn assert_token_for(m: &InProc, token: &[u8], data: &[u8]) {
    let info =
        meter_authority::verify_token(token, data, m.authority.root(), meter_authority::now())
            .expect("token verifies against the root");
    assert_eq!(info.imprint, sha384(data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmark_retry_returns_the_same_token_and_charges_once() {
    let started = Instant::now();
    let m = InProc::up(10_000).await;
    eprintln!("meter up in {:?}", started.elapsed());
    let data = b"a letter to post";

    let t1 = m
        .client
        .postmark_digest(&sha384(data), "pm-1")
        .await
        .unwrap();
    assert_token_for(&m, &t1, data);
    let t2 = m
        .client
        .postmark_digest(&sha384(data), "pm-1")
        .await
        .unwrap();
    assert_eq!(t1, t2, "a retry returns the stored token");
    assert_eq!(
        m.registers().await,
        (POSTMARK_PRICE, 10_000 - POSTMARK_PRICE, 10_000)
    );
    assert_eq!(m.client.piece_count().await.unwrap(), 1);

    // The same id with another message is refused and charges nothing.
    let err = m
        .client
        .postmark_digest(&sha384(b"another letter"), "pm-1")
        .await
        .unwrap_err();
    assert!(matches!(err, MeterError::InvalidInput(_)), "{err:?}");

    // Through a descriptor: a new id is a new sale.
    let file = m.message("letter.txt", data);
    let t3 = m.client.postmark(Fd::from(&file), "pm-2").await.unwrap();
    assert_token_for(&m, &t3, data);
    assert_ne!(t3, t1);
    assert_eq!(
        m.registers().await,
        (2 * POSTMARK_PRICE, 10_000 - 2 * POSTMARK_PRICE, 10_000)
    );
    eprintln!("test body done in {:?}", started.elapsed());
    m.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmark_short_of_funds_is_refused_but_a_retry_still_answers() {
    let m = InProc::up(POSTMARK_PRICE + 200).await;
    let first = m
        .client
        .postmark_digest(&sha384(b"one"), "a")
        .await
        .unwrap();
    let err = m
        .client
        .postmark_digest(&sha384(b"two"), "b")
        .await
        .unwrap_err();
    assert!(matches!(err, MeterError::InsufficientFunds(_)), "{err:?}");
    assert_eq!(
        m.registers().await,
        (POSTMARK_PRICE, 200, POSTMARK_PRICE + 200)
    );
    // Paid for already: the stored product, even though funds are short now.
    let again = m
        .client
        .postmark_digest(&sha384(b"one"), "a")
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(m.client.piece_count().await.unwrap(), 1);
    m.down().await;
}

/// A postmark's retry is caught by the commit (the sale skips its lookup,
/// issue 14): it signs nothing, charges nothing, and still answers with the
/// stored token once the meter is locked; other input under the same id is
/// a conflict, also without a signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_caught_at_commit_signs_nothing_and_answers_when_locked() {
    let m = InProc::up(10_000).await;
    let token = m.client.postmark_digest(&sha384(b"p"), "pm").await.unwrap();
    let signs = m.tpm.signs();
    for _ in 0..3 {
        let again = m.client.postmark_digest(&sha384(b"p"), "pm").await.unwrap();
        assert_eq!(again, token);
    }
    let err = m
        .client
        .postmark_digest(&sha384(b"other"), "pm")
        .await
        .unwrap_err();
    assert!(matches!(err, MeterError::InvalidInput(_)), "{err:?}");
    assert_eq!(
        m.tpm.signs(),
        signs,
        "a retry or a conflict made a TPM signature"
    );
    assert_eq!(
        m.registers().await,
        (POSTMARK_PRICE, 10_000 - POSTMARK_PRICE, 10_000)
    );

    // Locked (a counter ahead of the ledger): new sales are refused, the
    // retry still gets what it paid for.
    let nv = m.config.nv_index;
    let m = m
        .restart_with(|tpm| tpm.set_counter(nv, tpm.counter(nv).unwrap() + 5))
        .await;
    assert_eq!(m.client.state().await.unwrap(), meter_proto::state::LOCKED);
    let err = m
        .client
        .postmark_digest(&sha384(b"q"), "pm-2")
        .await
        .unwrap_err();
    assert!(matches!(err, MeterError::Locked(_)), "{err:?}");
    let again = m.client.postmark_digest(&sha384(b"p"), "pm").await.unwrap();
    assert_eq!(
        again, token,
        "a retry on a locked meter gets its stored token"
    );
    m.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_housing_failure_charges_nothing_and_the_retry_is_charged_once() {
    let m = InProc::up(10_000).await;
    m.tpm.fail_sign(true);
    let err = m
        .client
        .postmark_digest(&sha384(b"x"), "x-1")
        .await
        .unwrap_err();
    assert!(matches!(err, MeterError::Housing(_)), "{err:?}");
    assert_eq!(m.registers().await, (0, 10_000, 10_000));
    m.tpm.fail_sign(false);
    let token = m
        .client
        .postmark_digest(&sha384(b"x"), "x-1")
        .await
        .unwrap();
    assert_token_for(&m, &token, b"x");
    assert_eq!(
        m.registers().await,
        (POSTMARK_PRICE, 10_000 - POSTMARK_PRICE, 10_000)
    );
    m.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_names_the_failing_step_and_is_charged() {
    let m = InProc::up(10_000).await;
    let data = b"the message";
    let token = m.client.postmark_digest(&sha384(data), "pm").await.unwrap();

    let good = m.message("good.txt", data);
    let r = m.client.validate(Fd::from(&good), &token).await.unwrap();
    assert!(boolean(&r, key::VALID), "{r:?}");
    assert_eq!(string(&r, key::STEP), meter_proto::step::OK);
    assert_eq!(string(&r, key::METER_ID), m.meter_id);

    let other = m.message("other.txt", b"not the message");
    let r = m.client.validate(Fd::from(&other), &token).await.unwrap();
    assert!(!boolean(&r, key::VALID));
    assert_eq!(string(&r, key::STEP), meter_proto::step::DIGEST);

    let again = m.message("again.txt", data);
    let r = m
        .client
        .validate(Fd::from(&again), b"not a token")
        .await
        .unwrap();
    assert!(!boolean(&r, key::VALID));
    assert_eq!(string(&r, key::STEP), meter_proto::step::MALFORMED);

    let used = POSTMARK_PRICE + 3 * VALIDATE_PRICE;
    assert_eq!(m.registers().await, (used, 10_000 - used, 10_000));
    assert_eq!(m.client.piece_count().await.unwrap(), 4);
    m.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recharge_replay_is_refused_and_credits_once() {
    let mut m = InProc::up(1_000).await;
    let voucher = m.voucher(5_000);
    assert_eq!(m.client.recharge(&voucher).await.unwrap(), 6_000);
    let err = m.client.recharge(&voucher).await.unwrap_err();
    assert!(matches!(err, MeterError::Replay(_)), "{err:?}");
    assert_eq!(m.registers().await, (0, 6_000, 6_000));

    // A voucher for another meter credits nothing.
    let (_, pem) = m
        .authority
        .voucher("another-meter", 5_000, meter_authority::now())
        .unwrap();
    let err = m.client.recharge(pem.as_bytes()).await.unwrap_err();
    assert!(matches!(err, MeterError::InvalidInput(_)), "{err:?}");
    // Nor one signed by someone else.
    let err = m.client.recharge(b"garbage").await.unwrap_err();
    assert!(
        matches!(
            err,
            MeterError::InvalidInput(_) | MeterError::BadSignature(_)
        ),
        "{err:?}"
    );
    assert_eq!(m.registers().await, (0, 6_000, 6_000));
    m.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_is_signed_by_the_meter_and_a_retry_returns_it() {
    let m = InProc::up(10_000).await;
    m.client.postmark_digest(&sha384(b"p"), "pm").await.unwrap();
    let report = m.client.report("r-1").await.unwrap();
    let verified = meter_pki::cms::verify(
        &report,
        std::slice::from_ref(m.authority.root()),
        Some(&meter_pki::oid::CT_STATUS_REPORT),
        meter_authority::now(),
    )
    .expect("report verifies against the root");
    let body: meter_pki::report::StatusReport =
        serde_json::from_slice(&verified.content).expect("report JSON");
    assert_eq!(body.meter_id, m.meter_id);
    assert_eq!(body.request_id, "r-1");
    assert_eq!(
        (
            body.ascending,
            body.descending,
            body.control_total,
            body.pieces
        ),
        (POSTMARK_PRICE, 10_000 - POSTMARK_PRICE, 10_000, 1)
    );
    assert_eq!(m.client.report("r-1").await.unwrap(), report);
    // status-report is priced 0 in the default table.
    assert_eq!(
        m.registers().await,
        (POSTMARK_PRICE, 10_000 - POSTMARK_PRICE, 10_000)
    );
    m.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_the_same_tpm_keeps_the_registers_and_a_counter_ahead_locks_rollback() {
    let m = InProc::up(10_000).await;
    m.client.postmark_digest(&sha384(b"p"), "pm").await.unwrap();
    let m = m.restart().await;
    assert_eq!(m.client.state().await.unwrap(), meter_proto::state::READY);
    assert_eq!(
        m.registers().await,
        (POSTMARK_PRICE, 10_000 - POSTMARK_PRICE, 10_000)
    );
    // Stored products survive the restart.
    m.client.postmark_digest(&sha384(b"p"), "pm").await.unwrap();
    assert_eq!(m.client.piece_count().await.unwrap(), 1);

    // The TPM's counter moved on without this ledger (an older ledger
    // copy restored): the audit at start locks the meter.
    let nv = m.config.nv_index;
    let m = m
        .restart_with(|tpm| tpm.set_counter(nv, tpm.counter(nv).unwrap() + 5))
        .await;
    assert_eq!(m.client.state().await.unwrap(), meter_proto::state::LOCKED);
    assert_eq!(
        m.client.lock_reason().await.unwrap(),
        meter_proto::lock_reason::ROLLBACK
    );
    let err = m
        .client
        .postmark_digest(&sha384(b"q"), "pm-2")
        .await
        .unwrap_err();
    assert!(matches!(err, MeterError::Locked(_)), "{err:?}");
    m.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprovisioned_meter_sells_nothing() {
    let m = InProc::up_with(Options {
        provision: false,
        ..Options::default()
    })
    .await;
    assert_eq!(
        m.client.state().await.unwrap(),
        meter_proto::state::UNPROVISIONED
    );
    let err = m
        .client
        .postmark_digest(&sha384(b"p"), "pm")
        .await
        .unwrap_err();
    assert!(matches!(err, MeterError::NotProvisioned(_)), "{err:?}");
    m.down().await;
}
