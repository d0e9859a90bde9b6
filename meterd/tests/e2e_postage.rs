//! End to end through D-Bus on swtpm: postage indicia priced from an
//! authority-signed table with two classes and weight bands, printed as a
//! DataMatrix PNG, read back by `dmtxread`, verified offline with the
//! meter's certificate (by meterctl and by the `openssl` binary), and
//! matched against the registers of their own ledger rows, also when eight
//! are bought at once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use meter_proto::exit;
use sandbox::{ok, write, Sandbox};

fn install_rates(sb: &Sandbox) {
    sb.install_rates("rates2", sandbox::POSTAGE_RATES);
    assert_eq!(sb.status()["rates_version"].as_u64(), Some(2));
}

/// `meterctl rates show`: the bands of the table in force, in currency,
/// each with its weight range; `--json` in the documented envelope.
fn rates_show_lists_the_bands(sb: &Sandbox) {
    let text = ok(&sb.meterctl(&["rates", "show"]), "rates show");
    assert!(text.contains("rate table version 2, EUR"), "{text}");
    assert!(text.contains("postmark"), "{text}");
    assert!(text.contains("0.500 EUR"), "{text}");
    assert!(!text.contains("0.000 EUR"), "no flat postage price: {text}");
    let band = |class: &str, range: &str, price: &str| {
        text.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f == [class, range, "g", price, "EUR"]
        })
    };
    assert!(band("letter", "0-20", "0.950"), "{text}");
    assert!(band("letter", "21-100", "1.550"), "{text}");
    assert!(band("parcel", "0-2000", "4.990"), "{text}");
    assert!(band("parcel", "2001-10000", "9.990"), "{text}");
    let j = sb.meterctl_json(&["rates", "show"]);
    assert_eq!(j["version"].as_u64(), Some(1), "{j}");
    assert_eq!(j["rates_version"].as_u64(), Some(2), "{j}");
    assert_eq!(j["currency"].as_str(), Some("EUR"), "{j}");
    assert_eq!(j["currency_digits"].as_u64(), Some(3), "{j}");
    assert_eq!(j["services"]["postmark"].as_u64(), Some(500), "{j}");
    let bands = j["postage_bands"].as_array().expect("bands");
    assert_eq!(bands.len(), 4, "{j}");
    assert_eq!(
        bands[1],
        serde_json::json!({"class": "letter", "min_grams": 21, "max_grams": 100, "amount": 1550})
    );
}

fn meter_cert(sb: &Sandbox) -> String {
    sb.path("certs/meter.pem").to_string_lossy().into_owned()
}

fn postage(
    sb: &Sandbox,
    class: &str,
    grams: &str,
    id: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "--json",
        "postage",
        "--class",
        class,
        "--grams",
        grams,
        "--from",
        "10115",
        "--to",
        "SW1A 1AA",
        "--request-id",
        id,
    ];
    args.extend_from_slice(extra);
    // meterctl refuses a purchase it would not save: default to a file.
    let default_out = sb.path(&format!("{id}.ind")).to_string_lossy().into_owned();
    if !extra
        .iter()
        .any(|a| ["-o", "--out", "--png", "--svg", "--pdf"].contains(a))
    {
        args.extend_from_slice(&["-o", &default_out]);
    }
    sb.meterctl(&args)
}

fn json(out: &std::process::Output, what: &str) -> serde_json::Value {
    serde_json::from_str(&ok(out, what)).expect("JSON")
}

/// (ascending, descending, service_count) of ledger row `seq`, read with sqlite3.
fn row(sb: &Sandbox, seq: u64) -> (u64, u64, u64) {
    let db = format!("{}/ledger.sqlite", sb.env["METERD_STATE_DIR"]);
    let q = format!(
        "SELECT ascending, descending, service_count, service FROM journal WHERE seq = {seq}"
    );
    let text = ok(&sb.run("sqlite3", &["-readonly", &db, &q]), "sqlite3");
    let f: Vec<u64> = text
        .trim()
        .split('|')
        .map(|x| x.parse().expect("integer"))
        .collect();
    assert_eq!(f.len(), 4, "row {seq}: {text}");
    assert_eq!(f[3], 10, "row {seq} is a postage row");
    (f[0], f[1], f[2])
}

#[test]
fn indicium_prints_scans_verifies_and_matches_its_row() {
    let sb = Sandbox::up(100_000);
    install_rates(&sb);
    rates_show_lists_the_bands(&sb);
    let (ar0, dr0, ct0) = sb.registers();

    let png = sb.path("ind.png").to_string_lossy().into_owned();
    let svg = sb.path("ind.svg").to_string_lossy().into_owned();
    let bin = sb.path("ind.bin").to_string_lossy().into_owned();
    let pdf = sb.path("ind.pdf").to_string_lossy().into_owned();
    let j = json(
        &postage(
            &sb,
            "letter",
            "45",
            "pg-1",
            &["-o", &bin, "--png", &png, "--svg", &svg, "--pdf", &pdf],
        ),
        "postage",
    );
    // 45 g is in the second letter band.
    assert_eq!(j["amount"].as_u64(), Some(1550));
    assert_eq!(j["rates_version"].as_u64(), Some(2));
    assert_eq!(j["currency"].as_str(), Some("EUR"));
    assert_eq!(j["meter_id"].as_str(), Some(sb.meter_id().as_str()));
    let bytes = std::fs::read(&bin).unwrap();
    assert!(bytes.len() <= 1556);
    eprintln!("indicium: {} bytes, symbol {}", bytes.len(), j["symbol"]);

    // The printed symbol reads back to exactly the bytes.
    let scan = sb.run("dmtxread", &["-N1", &png]);
    assert!(scan.status.success(), "{scan:?}");
    assert_eq!(
        scan.stdout, bytes,
        "dmtxread output differs from the indicium"
    );
    assert!(std::fs::read_to_string(&svg).unwrap().contains("SW1A 1AA"));

    // The label: a 4 x 2 in page that poppler renders at the printer's
    // 203 dpi into an image that scans to exactly the bytes too.
    let info = ok(&sb.run("pdfinfo", &[&pdf]), "pdfinfo");
    assert!(info.contains("288 x 144 pts"), "{info}");
    let page = sb.path("label").to_string_lossy().into_owned();
    ok(
        &sb.run(
            "pdftoppm",
            &["-r", "203.2", "-gray", "-png", "-singlefile", &pdf, &page],
        ),
        "pdftoppm",
    );
    let scan_pdf = sb.run("dmtxread", &["-N1", &format!("{page}.png")]);
    assert!(scan_pdf.status.success(), "{scan_pdf:?}");
    assert_eq!(scan_pdf.stdout, bytes, "the label scans to other bytes");

    // Registers after the debit, in the indicium, equal the status and the row.
    let (ar1, dr1, ct1) = sb.registers();
    assert_eq!((ar1, dr1, ct1), (ar0 + 1550, dr0 - 1550, ct0));
    assert_eq!(j["ascending"].as_u64(), Some(ar1));
    assert_eq!(j["descending"].as_u64(), Some(dr1));
    assert_eq!(j["pieces"].as_u64(), Some(1));
    assert_eq!(sb.status()["service_counts"]["postage"].as_u64(), Some(1));
    assert_eq!(row(&sb, j["seq"].as_u64().unwrap()), (ar1, dr1, 1));

    // Offline verification of the scanned bytes with the meter certificate.
    let scanned = write(&sb, "scanned.bin", &scan.stdout);
    let root = sb.root_pem().to_string_lossy().into_owned();
    let v = sb.meterctl(&[
        "--json",
        "verify-indicium",
        &scanned,
        "--cert",
        &meter_cert(&sb),
        "--root",
        &root,
    ]);
    let v = json(&v, "verify-indicium");
    assert_eq!(v["valid"], true);
    assert_eq!(v["chain_checked"], true);
    assert_eq!(v["ascending"].as_u64(), Some(ar1));
    assert_eq!(v["origin"].as_str(), Some("10115"));

    // The same signature checked by stock OpenSSL: body = first 125 bytes,
    // signature = last 96 bytes (r‖s) put into DER.
    let body = write(&sb, "body.bin", &bytes[..125]);
    let sig_der = meter_pki::sig::raw_to_der(bytes[125..].try_into().unwrap()).unwrap();
    let sig = write(&sb, "sig.der", &sig_der);
    let pubkey = sb.path("meter-pub.pem").to_string_lossy().into_owned();
    ok(
        &sb.run(
            "openssl",
            &[
                "x509",
                "-in",
                &meter_cert(&sb),
                "-pubkey",
                "-noout",
                "-out",
                &pubkey,
            ],
        ),
        "openssl x509 -pubkey",
    );
    let o = sb.run(
        "openssl",
        &[
            "dgst",
            "-sha384",
            "-verify",
            &pubkey,
            "-signature",
            &sig,
            &body,
        ],
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Verified OK"),
        "{o:?}"
    );

    // A forged byte (the descending register) fails both checks.
    let mut forged = bytes.clone();
    forged[55] ^= 0x01;
    let f = write(&sb, "forged.bin", &forged);
    let out = sb.meterctl(&["verify-indicium", &f, "--cert", &meter_cert(&sb)]);
    assert_eq!(out.status.code(), Some(exit::NOT_VALID), "{out:?}");
    // Another meter's certificate (the postmark certificate's key) does not verify it.
    let other = sb.path("certs/postmark.pem").to_string_lossy().into_owned();
    let out = sb.meterctl(&["verify-indicium", &bin, "--cert", &other]);
    assert_eq!(out.status.code(), Some(exit::NOT_VALID), "{out:?}");

    // With --root, a meter certificate that does not chain to it is refused
    // (here the "root" is the postmark certificate, which signed nothing).
    let out = sb.meterctl(&[
        "--json",
        "verify-indicium",
        &bin,
        "--cert",
        &meter_cert(&sb),
        "--root",
        &other,
    ]);
    assert_eq!(out.status.code(), Some(exit::NOT_VALID), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["step"].as_str(), Some("certificate"));

    // A retry returns the same indicium and charges nothing.
    let again = sb.path("again.bin").to_string_lossy().into_owned();
    ok(
        &postage(&sb, "letter", "45", "pg-1", &["-o", &again]),
        "retry",
    );
    assert_eq!(std::fs::read(&again).unwrap(), bytes);
    assert_eq!(sb.registers(), (ar1, dr1, ct1));
    // The same id with another weight is refused.
    let out = postage(&sb, "letter", "46", "pg-1", &[]);
    assert_eq!(out.status.code(), Some(exit::INVALID), "{out:?}");

    // The other class and its heavier band.
    let p = json(&postage(&sb, "parcel", "2500", "pg-2", &[]), "parcel");
    assert_eq!(p["amount"].as_u64(), Some(9990));
    assert_eq!(p["pieces"].as_u64(), Some(2));
    let (ar2, dr2, ct2) = sb.registers();
    assert_eq!(
        (p["ascending"].as_u64(), p["descending"].as_u64()),
        (Some(ar2), Some(dr2))
    );
    assert_eq!(ar2 + dr2, ct2);
}

#[test]
fn bad_input_and_short_funds_charge_nothing() {
    // Enough for one 20 g letter (950) and not a second.
    let sb = Sandbox::up(1_500);
    install_rates(&sb);
    let before = sb.registers();
    let rows = |sb: &Sandbox| sb.status()["ledger_rows"].as_u64().unwrap();
    let rows0 = rows(&sb);
    let long = "x".repeat(17);
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        ("airmail", "10", "10115", "75001"),        // unknown class
        ("letter", "101", "10115", "75001"),        // beyond the last letter band
        ("parcel", "10001", "10115", "75001"),      // beyond the last parcel band
        ("letter", "0", "10115", "75001"),          // zero weight
        ("letter", "4000000000", "10115", "75001"), // absurd weight
        ("letter", "10", &long, "75001"),           // origin too long
        ("letter", "10", "10115", "75\u{1}01"),     // destination not printable
        ("letter", "10", "10115", ""),              // destination empty
    ];
    for (i, (class, grams, from, to)) in cases.iter().enumerate() {
        let id = format!("bad-{i}");
        let out = sb.meterctl(&[
            "postage",
            "--class",
            class,
            "--grams",
            grams,
            "--from",
            from,
            "--to",
            to,
            "--request-id",
            &id,
            "-o",
            "/dev/null",
        ]);
        assert_eq!(out.status.code(), Some(exit::INVALID), "case {i}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("InvalidInput"),
            "case {i}: {out:?}"
        );
    }
    assert_eq!(sb.registers(), before);
    assert_eq!(rows(&sb), rows0);

    let j = json(&postage(&sb, "letter", "20", "ok-1", &[]), "postage");
    assert_eq!(j["amount"].as_u64(), Some(950));
    let after_one = sb.registers();
    let out = postage(&sb, "letter", "20", "short-1", &[]);
    assert_eq!(out.status.code(), Some(exit::FUNDS), "{out:?}");
    // The refusal reads in currency, not minor units (1 500 - 950 left).
    let refusal: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON error");
    let message = refusal["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the charge is 0.950 EUR, 0.550 EUR available"),
        "{refusal}"
    );
    assert_eq!(sb.registers(), after_one);
    assert_eq!(sb.status()["service_counts"]["postage"].as_u64(), Some(1));
    let (ar, dr, ct) = after_one;
    assert_eq!(ar + dr, ct);
}

#[test]
fn concurrent_indicia_each_carry_their_own_rows_registers() {
    let sb = Sandbox::up(200_000);
    install_rates(&sb);
    let (ar0, _, ct0) = sb.registers();
    let sb = std::sync::Arc::new(sb);
    // Eight postage pieces of different prices, with postmarks in between so
    // rows of another service interleave in the same group commits.
    let mut handles = Vec::new();
    for i in 0..8u32 {
        let sb1 = std::sync::Arc::clone(&sb);
        handles.push(std::thread::spawn(move || {
            let (class, grams) = if i % 2 == 0 {
                ("letter", "15")
            } else {
                ("parcel", "3000")
            };
            let j = json(
                &postage(&sb1, class, grams, &format!("c-{i}"), &[]),
                "postage",
            );
            (j, None::<()>)
        }));
        let sb2 = std::sync::Arc::clone(&sb);
        handles.push(std::thread::spawn(move || {
            let (_, _, out) = sb2.postmark_id(&format!("pm-{i}"));
            ok(&out, "postmark");
            (serde_json::Value::Null, Some(()))
        }));
    }
    let mut indicia: Vec<serde_json::Value> = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|(_, pm)| pm.is_none())
        .map(|(j, _)| j)
        .collect();
    assert_eq!(indicia.len(), 8);
    indicia.sort_by_key(|j| j["seq"].as_u64().unwrap());

    let mut seqs: Vec<u64> = indicia.iter().map(|j| j["seq"].as_u64().unwrap()).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), 8, "each indicium has its own row");
    for (n, j) in indicia.iter().enumerate() {
        let (ar, dr, count) = row(&sb, j["seq"].as_u64().unwrap());
        assert_eq!(j["ascending"].as_u64(), Some(ar), "{j}");
        assert_eq!(j["descending"].as_u64(), Some(dr), "{j}");
        assert_eq!(j["pieces"].as_u64(), Some(count), "{j}");
        // In row order, the postage piece count runs 1..=8.
        assert_eq!(count, n as u64 + 1);
        assert_eq!(ar + dr, ct0, "AR + DR = CT inside every indicium");
        // Each verifies offline.
        let f = write(
            &sb,
            &format!("c{n}.bin"),
            &hex::decode(j["indicium_hex"].as_str().unwrap()).unwrap(),
        );
        ok(
            &sb.meterctl(&["verify-indicium", &f, "--cert", &meter_cert(&sb)]),
            "verify-indicium",
        );
    }
    let status = sb.status();
    let (ar, dr, ct) = sb.registers();
    assert_eq!(ct, ct0);
    assert_eq!(status["service_counts"]["postage"].as_u64(), Some(8));
    assert_eq!(status["service_counts"]["postmark"].as_u64(), Some(8));
    let postage_total: u64 = indicia.iter().map(|j| j["amount"].as_u64().unwrap()).sum();
    assert_eq!(ar, ar0 + postage_total + 8 * 500);
    // The last indicium's registers plus the postmarks committed after it
    // are the final status.
    let last = indicia.last().unwrap();
    let db = format!("{}/ledger.sqlite", sb.env["METERD_STATE_DIR"]);
    let q = format!(
        "SELECT count(*) FROM journal WHERE seq > {} AND service = 1",
        last["seq"]
    );
    let later: u64 = ok(&sb.run("sqlite3", &["-readonly", &db, &q]), "sqlite3")
        .trim()
        .parse()
        .unwrap();
    let biggest = ok(
        &sb.run(
            "sqlite3",
            &[
                "-readonly",
                &db,
                "SELECT max(last_seq - first_seq + 1) FROM batches",
            ],
        ),
        "sqlite3",
    );
    eprintln!("largest group commit: {} rows", biggest.trim());
    assert_eq!(last["ascending"].as_u64().unwrap() + later * 500, ar);
    assert_eq!(last["descending"].as_u64().unwrap() - later * 500, dr);
}
