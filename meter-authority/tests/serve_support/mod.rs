//! Helpers of the `serve` tests: a PostgreSQL server in a temporary
//! directory, the `meter-authority serve` process, a minimal HTTP/1.1
//! client, and a meter's signed report with its ledger segment.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::path::Path;

use meter_pki::cms::SignOptions;
use meter_pki::ledger_format::{genesis_prev, row_hash, sha384, Digest, RowFields};
use meter_pki::report::{SegmentRef, StatusReport};
use meter_pki::segment::{self, kind, service, Encoder, Segment};
use meter_pki::{cert, csr, oid, payload, pem, sig};
use p384::ecdsa::SigningKey;
use sha2::Digest as _;

pub const BIN: &str = env!("CARGO_BIN_EXE_meter-authority");

#[path = "postgres.rs"]
mod postgres;
pub use postgres::*;
#[path = "server.rs"]
mod server;
pub use server::*;

/// A new authority directory "Test Root" in a temporary directory.
pub fn new_authority() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("authority");
    meter_authority::Authority::init(&dir, "Test Root", meter_authority::now()).unwrap();
    (tmp, dir)
}

impl Server {
    /// This crate's `meter-authority serve` on `dir` (see [`Server::spawn`]).
    pub fn start(dir: &Path, database: Option<&str>) -> Server {
        Server::spawn(Path::new(BIN), dir, database, &[])
    }
}

/// A PostgreSQL server in a temporary directory; `None` (the test skips)
/// when its binaries are absent, which fails under CI.
pub fn postgres() -> Option<Postgres> {
    let Some(bin) = pg_bin() else {
        assert!(std::env::var("CI").is_err(), "CI: PostgreSQL is required");
        eprintln!("SKIPPED: no PostgreSQL binaries");
        return None;
    };
    Some(Postgres::start(&bin))
}

/// Buys a top-up; the reply.
pub fn buy(addr: &str, meter: &str, purchase_id: &str, amount: u64) -> Reply {
    let body = format!(r#"{{"purchase_id":"{purchase_id}","amount":{amount}}}"#);
    http(
        addr,
        "POST",
        &format!("/v1/meters/{meter}/topups"),
        "application/json",
        body.as_bytes(),
    )
}

pub fn make_csr(cn: &str, key: &SigningKey) -> Vec<u8> {
    let sec1 = key.verifying_key().to_encoded_point(false);
    let p = csr::prepare(cn, sec1.as_bytes()).unwrap();
    let raw = sig::sign_prehash_raw(key, &p.digest()).unwrap();
    pem::encode("CERTIFICATE REQUEST", &p.finish(&raw).unwrap()).into_bytes()
}

/// A certified meter's keys and certificates.
pub struct Meter {
    pub key: SigningKey,
    pub identity: cert::Certificate,
    pub postmark_key: SigningKey,
    pub postmark: cert::Certificate,
}

/// A postmark token of `meter` with `serial`, made at `gen_time`.
pub fn token(m: &Meter, serial: u64, gen_time: i64) -> Vec<u8> {
    let prepared = meter_pki::tsp::prepare(
        &meter_pki::tsp::TokenParams {
            imprint: sha2::Sha384::digest(serial.to_be_bytes()).into(),
            serial,
            gen_time,
            policy: oid::POSTMARK_POLICY,
            accuracy_secs: 1,
            nonce: None,
        },
        &m.postmark,
        &[],
    )
    .unwrap();
    let raw = sig::sign_prehash_raw(&m.postmark_key, &prepared.digest()).unwrap();
    prepared.finish(&raw).unwrap()
}

/// A meter certified (unattested) by the authority in `dir`.
pub fn certify(dir: &Path, meter: &str) -> Meter {
    let mut a = meter_authority::Authority::open(dir).unwrap();
    let (id, pm) = (
        SigningKey::random(&mut rand_core::OsRng),
        SigningKey::random(&mut rand_core::OsRng),
    );
    let certs = a
        .certify_meter(
            &make_csr(meter, &id),
            &make_csr(meter, &pm),
            meter_authority::now(),
        )
        .unwrap();
    Meter {
        key: id,
        identity: certs.identity,
        postmark_key: pm,
        postmark: certs.postmark,
    }
}

/// One row: (kind, service, request id, credit, debit, product).
type Spec<'a> = (u8, u8, Option<&'a str>, u64, u64, Vec<u8>);

/// A meter's ledger (genesis, the voucher credited, one postmark sold for
/// 30) as a segment, and its report signed by the meter's identity key;
/// `credit` is what the ledger credits (the voucher's amount when honest);
/// rows are timed from `t0` (Unix ms).
pub fn report(m: &Meter, voucher: &[u8], credit: u64, token: &[u8], t0: i64) -> (Vec<u8>, Vec<u8>) {
    let meter = cert::subject_cn(&m.identity).unwrap();
    let meter = meter.as_str();
    let (key, identity) = (&m.key, &m.identity);
    let now = meter_authority::now();
    let specs: Vec<Spec<'_>> = vec![
        (kind::GENESIS, 0, None, 0, 0, b"genesis".to_vec()),
        (
            kind::CREDIT,
            0,
            Some("m/voucher/1"),
            credit,
            0,
            voucher.to_vec(),
        ),
        (
            kind::DEBIT,
            service::POSTMARK,
            Some("c/0/p1"),
            0,
            30,
            token.to_vec(),
        ),
    ];
    let prev = genesis_prev(meter);
    let mut enc = Encoder::new(meter, 1, specs.len() as u64, &prev).unwrap();
    let (mut h, mut regs): (Digest, (u64, u64, u64, u64)) = (prev, (0, 0, 0, 0));
    let (mut seg, mut canon, mut count) = (Vec::new(), Vec::new(), 0u64);
    for (i, (k, svc, req, cr, db, product)) in specs.iter().enumerate() {
        regs.2 += cr;
        regs.1 = regs.1 + cr - db;
        regs.0 += db;
        if *svc != 0 {
            regs.3 += 1;
            count += 1;
        }
        let d = sha384(product);
        let f = RowFields {
            seq: i as u64 + 1,
            time: t0 + i as i64,
            kind: *k,
            service: *svc,
            request_id: req.map(str::as_bytes),
            credit: *cr,
            debit: *db,
            ascending: regs.0,
            descending: regs.1,
            control_total: regs.2,
            pieces: regs.3,
            service_count: if *svc != 0 { count } else { 0 },
            product_digest: &d,
            note: b"",
            register: 0,
        };
        canon.clear();
        f.encode(&mut canon).unwrap();
        h = row_hash(&h, &canon);
        enc.row(&f, &h, Some(product)).unwrap();
        seg.extend(enc.take());
    }
    let (tail, _) = enc.finish().unwrap();
    seg.extend(tail);
    let n = Segment::parse(&seg).unwrap().last_seq;
    let r = StatusReport {
        meter_id: meter.into(),
        request_id: "r1".into(),
        sequence: 1,
        time: now - 10,
        currency: "USD".into(),
        digits: 3,
        ascending: regs.0,
        descending: regs.1,
        control_total: regs.2,
        pieces: regs.3,
        counts: [("postmark".to_string(), 1u64)].into_iter().collect(),
        ledger_rows: n,
        ledger_head: hex::encode(h),
        nv_counter: 3,
        segment: Some(SegmentRef {
            first_seq: 1,
            last_seq: n,
            prev_head: hex::encode(prev),
            digest: hex::encode(segment::digest(&seg)),
            bytes: seg.len() as u64,
        }),
        ..Default::default()
    };
    let signed = meter_pki::cms::sign_with_key(
        &SignOptions {
            content_type: oid::CT_STATUS_REPORT,
            content: &payload::encode(&r).unwrap(),
            signer: identity,
            extra_certs: &[],
            signing_time: Some(now),
            ess_cert_id_v2: true,
        },
        key,
    )
    .unwrap();
    (signed, seg)
}

/// Certifies `meter` over `POST /v1/meters/{id}/certify` (unattested, as
/// the operator on loopback): fresh software keys, as `certify` does.
pub fn certify_over_api(addr: &str, meter: &str) -> Meter {
    let (id, pm) = (
        SigningKey::random(&mut rand_core::OsRng),
        SigningKey::random(&mut rand_core::OsRng),
    );
    let body = serde_json::json!({
        "identity_csr": String::from_utf8(make_csr(meter, &id)).unwrap(),
        "postmark_csr": String::from_utf8(make_csr(meter, &pm)).unwrap(),
    })
    .to_string();
    let r = http(
        addr,
        "POST",
        &format!("/v1/meters/{meter}/certify"),
        "application/json",
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let parse = |k: &str| cert::parse(v[k].as_str().unwrap().as_bytes()).unwrap();
    Meter {
        key: id,
        identity: parse("identity"),
        postmark_key: pm,
        postmark: parse("postmark"),
    }
}

pub fn sign_as_meter<T: meter_pki::payload::Payload>(m: &Meter, v: &T) -> Vec<u8> {
    meter_pki::cms::sign_with_key(
        &SignOptions {
            content_type: T::CONTENT_TYPE,
            content: &payload::encode(v).unwrap(),
            signer: &m.identity,
            extra_certs: &[],
            signing_time: Some(meter_authority::now()),
            ess_cert_id_v2: true,
        },
        &m.key,
    )
    .unwrap()
}

/// A line of credit of `amount` granted by the authority in `dir` to `m`
/// (as `meter-authority credit-grant` does); the line and its PEM.
pub fn credit_line(dir: &Path, m: &Meter, amount: u64) -> (meter_pki::credit::CreditLine, String) {
    use meter_pki::credit::{CreditAsk, CreditRequest};
    let now = meter_authority::now();
    let meter_id = cert::subject_cn(&m.identity).unwrap();
    let ask = CreditAsk {
        meter_id,
        creditor: "Bank".into(),
        amount,
        requested_at: now,
        request_id: "credit-1".into(),
    };
    let prepared = meter_pki::tsp::prepare(
        &meter_pki::tsp::TokenParams {
            imprint: CreditRequest::imprint(&ask).unwrap(),
            serial: 1,
            gen_time: now,
            policy: oid::POSTMARK_POLICY,
            accuracy_secs: 1,
            nonce: None,
        },
        &m.postmark,
        &[],
    )
    .unwrap();
    let raw = sig::sign_prehash_raw(&m.postmark_key, &prepared.digest()).unwrap();
    let request = sign_as_meter(
        m,
        &CreditRequest {
            ask,
            postmark_hex: hex::encode(prepared.finish(&raw).unwrap()),
        },
    );
    let mut a = meter_authority::Authority::open(dir).unwrap();
    a.credit_grant(&request, None, 30, "any", now).unwrap()
}

/// The meter's payment certificate `seq` of `amount` on `line` (DER).
pub fn payment(
    m: &Meter,
    line: &meter_pki::credit::CreditLine,
    grant_pem: &str,
    seq: u64,
    amount: u64,
) -> Vec<u8> {
    use meter_pki::credit::Payment;
    let der = pem::decode_any(grant_pem.as_bytes(), "CMS").unwrap();
    sign_as_meter(
        m,
        &Payment {
            holder: line.holder.clone(),
            serial: Payment::serial_for(&line.serial, seq),
            meter_id: line.holder.clone(),
            credit_serial: line.serial.clone(),
            credit_line_digest_hex: hex::encode(meter_pki::credit::sha384(&der)),
            amount,
            payee: "shop".into(),
            credit_remaining: 0,
            sequence: seq,
            time: meter_authority::now(),
        },
    )
}

/// Writes the creditor `name` with `token` into the authority directory.
pub fn add_creditor(dir: &Path, name: &str, token: &str) {
    std::fs::create_dir_all(dir.join("creditors")).unwrap();
    std::fs::write(dir.join("creditors").join(name), token).unwrap();
}

/// `POST /v1/settle` as the creditor holding `token`.
pub fn settle(addr: &str, token: &str, payment: &[u8]) -> Reply {
    try_http(
        addr,
        "POST",
        "/v1/settle",
        "application/cms",
        payment,
        Some(token),
    )
    .unwrap()
}
