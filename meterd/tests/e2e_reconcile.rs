//! End to end: reports the authority reconciles (issue 12, items 5 and 6).
//!
//! `meterctl report` writes the report and its ledger segment (D-Bus
//! `Report`, then `ReportSegment` into a descriptor); `meter-authority
//! inspect REPORT --segment SEG` re-derives every row and register and
//! acknowledges, or refuses and writes a forced lock order; `lookup`
//! answers for tokens. The attack is done the attacker's way: the ledger
//! rewritten with sqlite3 (python3's module) and the chain recomputed with
//! hashlib, never with project code.
//!
//! On main before this change `inspect` has no `--segment` and
//! acknowledges whatever a report says: both tests fail there.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use std::path::PathBuf;
use std::process::Output;

use sandbox::{ok, write, Sandbox};

/// `meterctl report` into NAME.pem (+ NAME.seg); returns (report, segment).
fn report(sb: &Sandbox, name: &str) -> (String, String) {
    let p = sb.arg(&format!("{name}.pem"));
    let v = sb.report_as(name);
    let seg = v["segment"].as_str().expect("segment path").to_owned();
    assert_eq!(seg, sb.arg(&format!("{name}.seg")), "{v}");
    let len = std::fs::metadata(&seg).unwrap().len();
    assert_eq!(v["segment_bytes"].as_u64(), Some(len), "{v}");
    (p, seg)
}

/// `meter-authority inspect` (not asserting success).
fn inspect(sb: &Sandbox, rep: &(String, String), ack: &str) -> Output {
    sb.inspect(&rep.0, &rep.1, ack)
}

#[test]
fn reports_reconcile_row_by_row_and_lookup_answers() {
    let sb = Sandbox::up(100_000);
    let (_, t1, out) = sb.postmark_id("p1");
    ok(&out, "postmark p1");
    let r1 = report(&sb, "rep1");
    let out = inspect(&sb, &r1, "ack1.pem");
    let said = ok(&out, "inspect rep1");
    assert!(said.contains("rows 1..="), "{said}");
    assert!(
        said.contains("control total 100000 of 100000 issued"),
        "{said}"
    );
    sb.meterctl_json(&["report", "ack", &sb.arg("ack1.pem")]);
    let (code, said) = sb.lookup(&t1);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("reported: row"), "{said}");

    let (_, t2, out) = sb.postmark_id("p2");
    ok(&out, "postmark p2");
    let (code, said) = sb.lookup(&t2);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("not reported yet"), "{said}");

    // The next segment starts after the acknowledged one; two inspections
    // of it at once both succeed and the book keeps one point for it.
    let r2 = report(&sb, "rep2");
    let body = std::fs::read(&r2.1).unwrap();
    let first = u64::from_be_bytes(body[9 + sb.meter_id().len()..][..8].try_into().unwrap());
    assert!(first > 1, "segment 2 starts at row {first}");
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| inspect(&sb, &r2, "ack2a.pem"));
        let b = s.spawn(|| inspect(&sb, &r2, "ack2b.pem"));
        (a.join().unwrap(), b.join().unwrap())
    });
    ok(&a, "inspect rep2 (a)");
    ok(&b, "inspect rep2 (b)");
    let book: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            sb.authority_dir()
                .join("meters")
                .join(sb.meter_id())
                .join("book.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(book["acknowledged"].as_array().unwrap().len(), 2, "{book}");
    assert_eq!(book["vouchers"]["1"], 100_000, "{book}");
    sb.meterctl_json(&["report", "ack", &sb.arg("ack2a.pem")]);
    let (code, said) = sb.lookup(&t2);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("reported: row"), "{said}");

    // A segment that is not the one the report signed is refused.
    let mut other = body.clone();
    let last = other.len() - 1;
    other[last] ^= 1;
    let forged = write(&sb, "forged.seg", &other);
    let out = inspect(&sb, &(r2.0.clone(), forged), "ack-forged.pem");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not the one the report signed"),
        "{out:?}"
    );
}

/// The attacker's chain recomputation: canonical row bytes (layout v1) and
/// SHA-384 links, registers shifted by the added credit from the edited row on.
const REWRITE: &str = r#"
import hashlib, sqlite3, struct, sys
db, meter, key, factor = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = sqlite3.connect(db)
for (t,) in c.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
    c.execute('DROP TRIGGER "%s"' % t)
seq0, credit = c.execute("SELECT seq, credit FROM journal WHERE request_id=?", (key,)).fetchone()
delta = credit * (factor - 1)
c.execute("UPDATE journal SET credit=credit+? WHERE seq=?", (delta, seq0))
c.execute("UPDATE journal SET descending=descending+?, control_total=control_total+? WHERE seq>=?", (delta, delta, seq0))
def u64(v): return struct.pack(">Q", v & (2**64 - 1))
prev = hashlib.sha384(b"meterd-ledger-v1" + meter.encode()).digest()
rows = c.execute("SELECT seq,time,kind,service,request_id,credit,debit,ascending,descending,control_total,pieces,service_count,product_digest,note FROM journal ORDER BY seq").fetchall()
for r in rows:
    seq, time, kind, service, rid, *regs = r[:12]
    digest, note = r[12], r[13].encode()
    b = u64(seq) + u64(time) + bytes([kind, service])
    b += b"\x00" if rid is None else b"\x01" + bytes([len(rid.encode())]) + rid.encode()
    b += b"".join(u64(v) for v in regs) + digest + bytes([len(note)]) + note
    h = hashlib.sha384(prev + b).digest()
    c.execute("UPDATE journal SET prev_hash=?, hash=? WHERE seq=?", (prev, h, seq))
    c.execute("UPDATE batches SET head=? WHERE last_seq=?", (h, seq))
    prev = h
c.commit()
"#;

#[test]
fn a_ledger_rewritten_between_reports_is_refused_with_a_lock_order() {
    let sb = Sandbox::up(100_000);
    ok(&sb.postmark_id("p1").2, "postmark p1");
    let r1 = report(&sb, "rep1");
    ok(&inspect(&sb, &r1, "ack1.pem"), "inspect rep1");
    sb.meterctl_json(&["report", "ack", &sb.arg("ack1.pem")]);

    // A second voucher, credited; then the operator makes it worth 1000 times more.
    let meter = sb.meter_id();
    let v2 = sb.arg("voucher2.pem");
    sb.authority(&[
        "voucher", "--meter", &meter, "--amount", "500", "--out", &v2,
    ]);
    sb.meterctl_json(&["recharge", &v2]);
    ok(&sb.postmark_id("p2").2, "postmark p2");
    sb.script("stop-meterd");
    let db = PathBuf::from(&sb.env["METERD_STATE_DIR"]).join("ledger.sqlite");
    let script = write(&sb, "rewrite.py", REWRITE.as_bytes());
    ok(
        &sb.run(
            "python3",
            &[
                &script,
                &db.to_string_lossy(),
                &meter,
                "m/voucher/2",
                "1000",
            ],
        ),
        "rewrite the ledger",
    );
    let dump = ok(
        &sb.run(
            "sqlite3",
            &[
                &db.to_string_lossy(),
                "SELECT credit FROM journal WHERE request_id='m/voucher/2'",
            ],
        ),
        "read back",
    );
    assert_eq!(dump.trim(), "500000");
    sb.script("start-meterd");

    let r2 = report(&sb, "rep2");
    let ack = sb.arg("ack2.pem");
    let out = inspect(&sb, &r2, "ack2.pem");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "inspect must refuse: {out:?}");
    assert!(err.contains("REFUSED"), "{err}");
    assert!(err.contains("credits 500000, voucher 2 says 500"), "{err}");
    assert!(err.contains("control total"), "{err}");
    assert!(!std::path::Path::new(&ack).exists(), "no acknowledgement");
    // The forced lock order, for this meter, signed by the root.
    let order = sb.arg("ack2.lock-order.pem");
    let body = sb.cms_json(&order, "the lock order");
    assert_eq!(body["meter_id"], meter.as_str(), "{body}");
    // Refused again on a second try: the refusal changed nothing acknowledged.
    assert_eq!(inspect(&sb, &r2, "ack2.pem").status.code(), Some(3));
}
