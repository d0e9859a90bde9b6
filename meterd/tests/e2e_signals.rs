//! End to end: the typed proxy (the one meterctl uses) sees the meter's
//! signals and property changes: LowFunds once per crossing, Descending
//! changes, Locked on tamper found by a live audit, Unlocked on clearance.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use std::time::Duration;

use futures_util::StreamExt;
use meter_proto::Meter1Proxy;
use sandbox::{ok, Sandbox};

async fn proxy(sb: &Sandbox) -> Meter1Proxy<'static> {
    let conn = zbus::connection::Builder::address(sb.env["DBUS_SYSTEM_BUS_ADDRESS"].as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    Meter1Proxy::new(&conn).await.unwrap()
}

fn postmark(sb: &Sandbox, id: &str) {
    ok(&sb.postmark_id(id).2, "postmark");
}

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn low_funds_once_per_crossing_and_property_changes() {
    // Default threshold 10000; postmark costs 500.
    let sb = Sandbox::up(10_500);
    let p = proxy(&sb).await;
    assert_eq!(p.descending().await.unwrap(), 10_500);
    assert_eq!(p.state().await.unwrap(), "ready");
    let mut low = p.receive_low_funds().await.unwrap();
    let mut desc = p.receive_descending_changed().await;

    postmark(&sb, "a"); // 10000: not below
    postmark(&sb, "b"); // 9500: crosses
    postmark(&sb, "c"); // 9000: already below, no second signal

    let sig = tokio::time::timeout(WAIT, low.next())
        .await
        .expect("LowFunds")
        .unwrap();
    assert_eq!(sig.args().unwrap().descending, 9_500);
    let mut seen = Vec::new();
    while let Ok(Some(change)) = tokio::time::timeout(Duration::from_secs(3), desc.next()).await {
        seen.push(change.get().await.unwrap());
        if seen.last() == Some(&9_000) {
            break;
        }
    }
    assert_eq!(
        seen.last(),
        Some(&9_000),
        "Descending changes seen: {seen:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(1), low.next())
            .await
            .is_err(),
        "LowFunds must fire once per crossing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn live_audit_locks_and_order_unlocks_with_signals() {
    let sb = Sandbox::up(100_000);
    postmark(&sb, "x");
    let p = proxy(&sb).await;
    let mut locked = p.receive_locked().await.unwrap();
    let mut unlocked = p.receive_unlocked().await.unwrap();

    // Edit a row under the running daemon, then ask for an audit.
    let db = std::path::Path::new(&sb.env["METERD_STATE_DIR"]).join("ledger.sqlite");
    let db = db.to_string_lossy().into_owned();
    let triggers = ok(
        &sb.run(
            "sqlite3",
            &[&db, "SELECT name FROM sqlite_master WHERE type='trigger'"],
        ),
        "list triggers",
    );
    let mut sql = String::from("PRAGMA busy_timeout=5000;");
    for t in triggers.lines().filter(|l| !l.is_empty()) {
        sql.push_str(&format!("DROP TRIGGER \"{t}\";"));
    }
    sql.push_str("UPDATE journal SET note = 'edited' WHERE seq = 2;");
    ok(&sb.run("sqlite3", &[&db, &sql]), "edit a row");
    let audit = p.audit().await.unwrap();
    let ok_flag: bool = audit["ok"].downcast_ref().unwrap();
    assert!(!ok_flag, "the audit must see the edit");

    let sig = tokio::time::timeout(WAIT, locked.next())
        .await
        .expect("Locked")
        .unwrap();
    assert_eq!(sig.args().unwrap().reason, "tamper");
    // Read through Status: the proxy's property cache follows
    // PropertiesChanged on its own task and may lag the signal just seen.
    let s = sb.status();
    assert_eq!(s["state"], "locked", "{s}");
    assert_eq!(s["lock_reason"], "tamper", "{s}");

    let order = sb.clear_lock_order();
    let bytes = std::fs::read(&order).unwrap();
    p.clear_lock(&bytes).await.unwrap();
    tokio::time::timeout(WAIT, unlocked.next())
        .await
        .expect("Unlocked")
        .unwrap();
    assert_eq!(sb.status()["state"], "ready");
    // A second use of the order is refused with a named error.
    let err = p.clear_lock(&bytes).await.unwrap_err();
    assert!(matches!(err, meter_proto::MeterError::Stale(_)), "{err:?}");
}

/// Sales close together wake the signals task at most every 100 ms
/// (`ledger::Notice`); the registers' PropertiesChanged must still end on
/// the last sale's values, read on the task's own timer, not on whichever
/// sale last woke it.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_sales_ends_with_its_last_registers_shown() {
    let sb = Sandbox::up(1_000_000);
    let p = proxy(&sb).await;
    let mut desc = p.receive_descending_changed().await;
    // Eight clients, back to back, for a second: many sales inside each
    // 100-ms period.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut clients = Vec::new();
    for c in 0..8 {
        let p = proxy(&sb).await;
        clients.push(tokio::spawn(async move {
            let mut n = 0u32;
            while tokio::time::Instant::now() < deadline {
                let id = format!("burst-{c}-{n}");
                p.postmark_digest(&[c as u8; 48], &id).await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut sales = 0;
    for c in clients {
        sales += c.await.unwrap();
    }
    // The register itself, not the proxy's cache (which the
    // PropertiesChanged under test fill).
    let conn = zbus::connection::Builder::address(sb.env["DBUS_SYSTEM_BUS_ADDRESS"].as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let uncached = Meter1Proxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let last = uncached.descending().await.unwrap();
    assert!(sales > 8, "only {sales} sales");
    let mut seen = Vec::new();
    while let Ok(Some(change)) = tokio::time::timeout(Duration::from_secs(3), desc.next()).await {
        seen.push(change.get().await.unwrap());
        if seen.last() == Some(&last) {
            break;
        }
    }
    assert_eq!(
        seen.last(),
        Some(&last),
        "{sales} sales; Descending changes seen: {seen:?}"
    );
}
