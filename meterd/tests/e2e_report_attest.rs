//! End to end on swtpm with an EK certificate: reports come with the TPM's attestation
//! (`meterctl report` writes `REPORT.att`: AK-signed TPM2_GetTime and TPM2_NV_Certify of
//! the counter over the report's digest) and `meter-authority inspect` checks it against
//! the AK it certified and its book. An attestation of an earlier report sent with a new
//! one, or none at all from a meter certified with attestation, is refused with a named
//! finding.
//!
//! On main before this change reports come with no attestation and `inspect` checks none:
//! `rep1.att` does not exist and the replay is acknowledged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use sandbox::{ok, Sandbox};

fn report(sb: &Sandbox, name: &str) -> (String, String, String) {
    let p = sb.arg(&format!("{name}.pem"));
    let v = sb.report_as(name);
    let att = v["attestation"]
        .as_str()
        .expect("attestation path")
        .to_owned();
    assert_eq!(att, sb.arg(&format!("{name}.att")), "{v}");
    let seg = v["segment"].as_str().expect("segment").to_owned();
    (p, seg, att)
}

fn inspect(sb: &Sandbox, rep: &(String, String, String), ack: &str) -> std::process::Output {
    sb.inspect(&rep.0, &rep.1, ack)
}

fn book(sb: &Sandbox) -> serde_json::Value {
    let dir = sb.authority_dir().join("meters");
    let meter = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap();
    let b = std::fs::read(meter.path().join("book.json")).unwrap();
    serde_json::from_slice(&b).unwrap()
}

#[test]
fn attested_reports_reconcile_and_a_replayed_attestation_is_refused() {
    let sb = Sandbox::up(100_000);
    ok(&sb.postmark_id("p1").2, "postmark p1");
    let r1 = report(&sb, "rep1");
    ok(
        &inspect(&sb, &r1, "ack1.pem"),
        "inspect rep1 with its attestation",
    );
    let tpm1 = book(&sb)["tpm"].clone();
    assert!(tpm1["nv_counter"].as_u64().unwrap() >= 1, "{tpm1}");
    sb.meterctl_json(&["report", "ack", &sb.arg("ack1.pem")]);

    ok(&sb.postmark_id("p2").2, "postmark p2");
    let r2 = report(&sb, "rep2");
    let real = std::fs::read(&r2.2).unwrap();
    // The attacker's way: the earlier report's attestation file beside the new report.
    std::fs::copy(&r1.2, &r2.2).unwrap();
    let out = inspect(&sb, &r2, "ack2.pem");
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "must refuse: {out:?}");
    assert!(
        said.contains("TPM attestation not valid for this report"),
        "{said}"
    );
    // None at all, from a meter certified with attestation.
    std::fs::remove_file(&r2.2).unwrap();
    let out = inspect(&sb, &r2, "ack2.pem");
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "must refuse: {out:?}");
    assert!(said.contains("TPM attestation missing"), "{said}");
    // Its own attestation: acknowledged, and the book moves forward.
    std::fs::write(&r2.2, real).unwrap();
    ok(
        &inspect(&sb, &r2, "ack2.pem"),
        "inspect rep2 with its attestation",
    );
    let tpm2 = book(&sb)["tpm"].clone();
    assert_eq!(tpm2["report_sequence"], 2, "{tpm2}");
    assert!(
        tpm2["clock"].as_u64() > tpm1["clock"].as_u64(),
        "{tpm1} {tpm2}"
    );
    assert!(tpm2["nv_counter"].as_u64() >= tpm1["nv_counter"].as_u64());
}

/// A crash (kill -9) leaves a start epoch row with `previous: unclean`; `inspect` counts it
/// in the segment and keeps the running count in the book (a count, not a refusal).
#[test]
fn inspect_counts_unclean_starts() {
    let sb = Sandbox::up(100_000);
    ok(&sb.postmark_id("p1").2, "postmark p1");
    sb.script("restart-meterd");
    ok(&sb.postmark_id("p2").2, "postmark p2");
    let r1 = report(&sb, "rep1");
    let said = ok(&inspect(&sb, &r1, "ack1.pem"), "inspect rep1");
    assert!(
        said.contains("unclean starts: 1 in this segment (rows ["),
        "{said}"
    );
    assert!(said.contains("1 in all reports so far"), "{said}");
    assert_eq!(book(&sb)["unclean_starts"], 1);
    // Inspected again: not counted twice.
    ok(&inspect(&sb, &r1, "ack1b.pem"), "inspect rep1 again");
    assert_eq!(book(&sb)["unclean_starts"], 1);
}
