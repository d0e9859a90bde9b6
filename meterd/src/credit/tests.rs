//! Rebuilding the per-line registers from ledger rows.

use super::*;
use meter_pki::cms::{sign_with_key, SignOptions};
use meter_pki::credit::{CreditLine, Payment};
use meter_pki::payload::{encode, Payload};

struct Signer {
    key: p384::ecdsa::SigningKey,
    cert: meter_pki::cert::Certificate,
}

fn signer() -> Signer {
    let key = p384::ecdsa::SigningKey::from_slice(&[7u8; 48]).unwrap();
    let cert = meter_pki::issue::self_signed_root(&key, "T", 1, 0, 10).unwrap();
    Signer { key, cert }
}

impl Signer {
    fn sign<T: Payload>(&self, v: &T) -> Vec<u8> {
        let content = encode(v).unwrap();
        sign_with_key(
            &SignOptions {
                content_type: T::CONTENT_TYPE,
                content: &content,
                signer: &self.cert,
                extra_certs: &[],
                signing_time: None,
                ess_cert_id_v2: false,
            },
            &self.key,
        )
        .unwrap()
    }
}

fn grant(serial: &str, amount: u64) -> CreditLine {
    CreditLine {
        serial: serial.into(),
        holder: "MTR-1".into(),
        holder_key_hex: "04".repeat(97),
        issuer: "Bank".into(),
        amount,
        not_before: 0,
        not_after: i64::MAX,
        authorized_use: "any".into(),
        request_digest_hex: "00".repeat(48),
    }
}

fn payment(line: &[u8], serial: &str, seq: u64, amount: u64, remaining: u64) -> Payment {
    Payment {
        holder: "MTR-1".into(),
        serial: Payment::serial_for(serial, seq),
        meter_id: "MTR-1".into(),
        credit_serial: serial.into(),
        credit_line_digest_hex: hex::encode(meter_pki::credit::sha384(line)),
        amount,
        payee: "shop".into(),
        credit_remaining: remaining,
        sequence: seq,
        time: 0,
    }
}

/// Rows for a line of `amount` opened and then paid `pays` (amount, stated remaining).
fn rows(s: &Signer, serial: &str, amount: u64, pays: &[(u64, u64)]) -> Vec<(u64, String, Vec<u8>)> {
    let g = s.sign(&grant(serial, amount));
    let mut open = s.sign(&payment(&g, serial, 0, 0, amount));
    open.extend_from_slice(&g);
    let mut out = vec![(1, format!("{NOTE_OPEN}{serial}"), open)];
    for (i, (a, r)) in pays.iter().enumerate() {
        let seq = i as u64 + 1;
        out.push((
            seq + 1,
            format!("{NOTE_PAY}{serial}"),
            s.sign(&payment(&g, serial, seq, *a, *r)),
        ));
    }
    out
}

#[test]
fn registers_add_up_after_payments() {
    let s = signer();
    let mut r = rows(&s, "A1", 1000, &[(100, 900), (250, 650)]);
    let mut b = rows(&s, "B2", 50, &[(50, 0)]);
    for row in &mut b {
        row.0 += 100;
    }
    r.extend(b);
    let lines = rebuild(&r);
    let a = &lines["A1"];
    assert!(a.damaged.is_none(), "{:?}", a.damaged);
    assert_eq!(
        (a.used, a.remaining, a.next_sequence),
        (Amount(350), Amount(650), 3)
    );
    let b = &lines["B2"];
    assert!(b.damaged.is_none());
    assert_eq!((b.used, b.remaining), (Amount(50), Amount::ZERO));
}

#[test]
fn a_wrong_remaining_marks_the_line_damaged() {
    let s = signer();
    let lines = rebuild(&rows(&s, "A1", 1000, &[(100, 950)]));
    assert!(lines["A1"]
        .damaged
        .as_deref()
        .unwrap()
        .contains("remaining"));
}

#[test]
fn overspending_and_gaps_are_damage() {
    let s = signer();
    let lines = rebuild(&rows(&s, "A1", 100, &[(150, 0)]));
    assert!(lines["A1"].damaged.is_some());
    let mut r = rows(&s, "A1", 100, &[(10, 90), (10, 80)]);
    r.remove(1);
    let lines = rebuild(&r);
    assert!(lines["A1"].damaged.as_deref().unwrap().contains("sequence"));
}

#[test]
fn a_payment_without_its_line_is_damage() {
    let s = signer();
    let mut r = rows(&s, "A1", 100, &[(10, 90)]);
    r.remove(0);
    let lines = rebuild(&r);
    assert!(lines["A1"].damaged.is_some());
    assert_eq!(lines["A1"].remaining, Amount::ZERO);
}

#[test]
fn open_product_splits_in_two() {
    let s = signer();
    let r = rows(&s, "A1", 100, &[]);
    let (first, grant) = split_open_product(&r[0].2).unwrap();
    assert_eq!(
        meter_pki::credit::read_unverified::<Payment>(first)
            .unwrap()
            .credit_remaining,
        100
    );
    assert_eq!(
        meter_pki::credit::read_unverified::<CreditLine>(grant)
            .unwrap()
            .serial,
        "A1"
    );
    assert!(split_open_product(&[0x30]).is_err());
}
