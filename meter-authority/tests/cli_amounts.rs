//! Money on the authority's command line, as an operator types it: `1.50`
//! (in the currency of the last rate table signed) and `1500` (minor units)
//! make the same voucher; a malformed amount is a usage error (exit 2) that
//! says why and writes nothing; amounts are printed in currency and times as
//! RFC 3339.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support;

use meter_pki::cert;
use meter_pki::payload::{self, Voucher};
use std::path::Path;
use std::process::Output;
use support::{authority, ok};

fn voucher(dir: &Path, out: &Path, amount: &str) -> Output {
    authority(
        dir,
        &[
            "voucher",
            "--meter",
            "meter-a",
            "--amount",
            amount,
            "--out",
            out.to_str().unwrap(),
        ],
    )
}

fn amount_of(dir: &Path, file: &Path) -> u64 {
    let root = cert::parse(&std::fs::read(dir.join("root.pem")).unwrap()).unwrap();
    let (v, _) = payload::open::<Voucher>(
        &std::fs::read(file).unwrap(),
        &[root],
        meter_authority::now(),
    )
    .unwrap();
    v.amount
}

#[test]
fn decimal_and_minor_units_make_the_same_voucher() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("authority");
    let init = ok(&authority(&dir, &["init", "--name", "Test Root"]));
    // "root serial 01 valid until 2036-...T...Z": a date, not epoch seconds.
    let until = init
        .lines()
        .find_map(|l| l.split("valid until ").nth(1))
        .expect("valid until");
    assert!(
        until.len() == 20 && until.ends_with('Z') && until.as_bytes()[10] == b'T',
        "{init}"
    );
    assert!(
        init.contains("root serial 01 "),
        "openssl's serial form: {init}"
    );

    // No rate table yet: the decimal point has no place; minor units do.
    let early = tmp.path().join("early.pem");
    let o = voucher(&dir, &early, "1.50");
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("give minor units"),
        "{o:?}"
    );
    assert!(!early.exists());
    let text = ok(&voucher(&dir, &early, "1500"));
    assert!(text.contains("amount 1500 minor units"), "{text}");

    // After a USD table with 3 digits: 1.50 = 1.500 USD = 1500.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("rates.example.toml");
    let table = tmp.path().join("table.pem");
    ok(&authority(
        &dir,
        &[
            "rates",
            "--in",
            example.to_str().unwrap(),
            "--out",
            table.to_str().unwrap(),
        ],
    ));
    let mut amounts = Vec::new();
    for (i, typed) in ["1.50", "1500", "1.500 USD"].iter().enumerate() {
        let out = tmp.path().join(format!("v{i}.pem"));
        let text = ok(&voucher(&dir, &out, typed));
        assert!(text.contains("amount 1.500 USD"), "{typed}: {text}");
        amounts.push(amount_of(&dir, &out));
    }
    assert_eq!(amounts, [1500, 1500, 1500]);

    // Malformed: exit 2, the reason named, no file.
    for (typed, why) in [
        ("1,50", "is not an amount"),
        ("1.5000", "decimal places"),
        ("abc", "is not an amount"),
        ("1.50 EUR", "is not an amount"),
        ("99999999999999999999", "too large"),
    ] {
        let out = tmp.path().join("bad.pem");
        let o = voucher(&dir, &out, typed);
        assert_eq!(o.status.code(), Some(2), "{typed}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(why), "{typed}: {err}");
        assert!(!out.exists(), "{typed}");
    }

    let order = tmp.path().join("account.pem");
    let text = ok(&authority(
        &dir,
        &[
            "account",
            "--meter",
            "meter-a",
            "--limit",
            "2.5",
            "--period-days",
            "30",
            "--out",
            order.to_str().unwrap(),
        ],
    ));
    assert!(text.contains("limit 2.500 USD"), "{text}");
}
