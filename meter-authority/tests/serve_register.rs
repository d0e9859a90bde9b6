//! `meter-authority serve`: the register of issued certificates and the
//! serial counter, in PostgreSQL (a sequence and the `certificates` table)
//! and in the authority directory (`state.json`). Certifications at once
//! get distinct serials, recorded in the register; a certification that
//! fails never gives its serials to the next one; a report upload is
//! checked against the meter's own certificates (one the command line
//! certified meanwhile too), and one signed with the meter's postmark key
//! instead of its identity key is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::serve_support;

use std::collections::BTreeSet;
use std::path::Path;

use meter_authority::serve::{frame_upload, UPLOAD};
use meter_authority::state::DATABASE_SERIALS;
use meter_pki::cert;
use serve_support::*;

/// Meters certified at once over the API.
const AT_ONCE: usize = 12;

fn serial(c: &cert::Certificate) -> u64 {
    u64::from_str_radix(&cert::serial_hex(c), 16).unwrap()
}

/// Uploads `m`'s first report (crediting a fresh top-up); the status.
fn upload(addr: &str, id: &str, m: &Meter) -> (u16, String) {
    let now = meter_authority::now();
    let voucher = buy(addr, id, &format!("{id}-order"), 1000);
    assert_eq!(voucher.status, 200);
    let (signed, seg) = report(
        m,
        &voucher.body,
        1000,
        &token(m, 3, now - 60),
        (now - 60) * 1000,
    );
    let r = http(
        addr,
        "POST",
        &format!("/v1/meters/{id}/reports"),
        UPLOAD,
        &frame_upload(&signed, &[], &seg),
    );
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// The flow both stores must pass; returns every serial issued over the API.
fn flow(dir: &Path, addr: &str) -> BTreeSet<u64> {
    // Certifications at once: every certificate its own serial.
    let meters: Vec<Meter> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..AT_ONCE)
            .map(|i| s.spawn(move || certify_over_api(addr, &format!("MTR-R{i}"))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut serials = BTreeSet::new();
    for m in &meters {
        serials.insert(serial(&m.identity));
        serials.insert(serial(&m.postmark));
    }
    assert_eq!(serials.len(), 2 * AT_ONCE, "distinct serials: {serials:?}");

    // A certification refused after its checks (an attestation that does
    // not verify), then another: the refused one issued nothing.
    let k = p384::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let bad = serde_json::json!({
        "identity_csr": String::from_utf8(make_csr("MTR-RX", &k)).unwrap(),
        "postmark_csr": String::from_utf8(make_csr("MTR-RX", &k)).unwrap(),
    })
    .to_string();
    let refused = http(
        addr,
        "POST",
        "/v1/meters/MTR-RX/certify",
        "application/json",
        bad.as_bytes(),
    );
    assert_eq!(refused.status, 422, "one key for both: refused");
    let before = *serials.last().unwrap();
    let after = certify_over_api(addr, "MTR-RY");
    for c in [&after.identity, &after.postmark] {
        assert!(serial(c) > before, "a serial handed out again");
        assert!(serials.insert(serial(c)));
    }

    // Reports: a meter certified over the API, and one the command line
    // certified meanwhile, are acknowledged.
    assert_eq!(upload(addr, "MTR-R0", &meters[0]).0, 200);
    let cli = certify(dir, "MTR-CLI");
    assert!(serial(&cli.identity) < DATABASE_SERIALS);
    assert_eq!(upload(addr, "MTR-CLI", &cli).0, 200);

    // The attacker's way: the meter's postmark key signs its report (a
    // certificate of this authority for the meter, but not its identity).
    let swapped = Meter {
        key: meters[1].postmark_key.clone(),
        identity: meters[1].postmark.clone(),
        postmark_key: meters[1].postmark_key.clone(),
        postmark: meters[1].postmark.clone(),
    };
    let (status, body) = upload(addr, "MTR-R1", &swapped);
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("not signed by an identity certificate"),
        "{body}"
    );
    serials
}

#[test]
fn register_on_postgresql() {
    let Some(pg) = postgres() else { return };
    let (_tmp, dir) = new_authority();
    let server = Server::start(&dir, Some(&pg.url()));
    let serials = flow(&dir, &server.addr);
    // The database's range, each recorded once, with the right subject and
    // profile; the directory's register holds only the command line's.
    assert!(serials.iter().all(|s| *s >= DATABASE_SERIALS));
    let listed: BTreeSet<u64> = pg
        .psql("SELECT serial FROM certificates")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(listed, serials);
    assert_eq!(
        pg.psql(
            "SELECT count(*) FROM certificates WHERE subject_cn = 'MTR-R3' \
             AND profile IN ('MeterIdentity', 'Postmark')"
        ),
        "2"
    );
    let state = std::fs::read_to_string(dir.join("state.json")).unwrap();
    let state: meter_authority::state::State = serde_json::from_str(&state).unwrap();
    assert_eq!(
        state
            .issued
            .iter()
            .map(|i| i.subject_cn.as_str())
            .collect::<Vec<_>>(),
        ["MTR-CLI", "MTR-CLI"]
    );
}

#[test]
fn register_on_the_authority_directory() {
    let (_tmp, dir) = new_authority();
    let server = Server::start(&dir, None);
    let serials = flow(&dir, &server.addr);
    let state = std::fs::read_to_string(dir.join("state.json")).unwrap();
    let state: meter_authority::state::State = serde_json::from_str(&state).unwrap();
    let listed: BTreeSet<u64> = state
        .issued
        .iter()
        .filter(|i| i.subject_cn != "MTR-CLI")
        .map(|i| i.serial)
        .collect();
    assert_eq!(listed, serials);
}
