//! Attack: rewrite the ledger of a stopped meter on a real (software) TPM,
//! the attacker's way (issue 12, "Rewrite the ledger"): `tests/sandbox
//! stop-meterd`; `sqlite3` on the state directory's ledger drops the
//! append-only triggers and turns the 100,000 voucher into 10,000,000
//! (credit and every register after it); the row hashes and batch heads
//! are recomputed with the ledger's public canonical encoding
//! (`meter_pki::ledger_format`); the last batch seal is signed again with
//! the meter's identity key, loaded from its blobs in `state/keys` with
//! `tpm2_createprimary` (the code's template), `tpm2_load` and `tpm2_sign`.
//! The meter then starts on a chain that verifies; only the voucher the
//! row keeps (`meterd::semantic`) says 100,000, and the meter must start
//! locked `tamper` and `meterctl audit` must say so.
//!
//! Fails on main before issue 12 item 2 (the meter starts unlocked with
//! 10,000,000). The TPM objects carry authorization (issue 12 item 3), so
//! the attacker is root, who reads `keys/auth` and derives the identity
//! key's auth value: the reseal itself succeeds, and the content check is
//! what refuses the ledger.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::rewrite;
use crate::root_tools;
use crate::sandbox;

use sandbox::Sandbox;

#[test]
fn edited_voucher_resealed_with_tpm2_tools_is_tamper() {
    let sb = Sandbox::up(100_000);
    let meter_id = sb.meter_id();
    sb.script("stop-meterd");
    let db = sb.path("state/ledger.sqlite");
    let db = db.to_str().unwrap();

    // sqlite3: triggers dropped, the voucher and the registers after it.
    root_tools::sql(
        &sb,
        db,
        "DROP TRIGGER journal_no_update; DROP TRIGGER batches_no_update;
         DROP TRIGGER checkpoints_no_update; DELETE FROM checkpoints;
         UPDATE journal SET credit = 10000000 WHERE kind = 4 AND credit = 100000;
         UPDATE journal SET descending = descending + 9900000,
             control_total = control_total + 9900000
           WHERE seq >= (SELECT seq FROM journal WHERE kind = 4 AND credit = 10000000);",
    );

    // Hashes and heads again, with the public canonical encoding; the seal again with
    // the identity key's blobs, tpm2-tools and the auth value root derives from
    // `keys/auth` (issue 12 item 3 stops everyone else; root is caught by the content
    // check below).
    let c = rewrite::attacker(&sb.path("state/ledger.sqlite"));
    let (batch, digest) = rewrite::rechain(&c, &meter_id);
    drop(c);
    root_tools::reseal(&sb, batch, &digest);

    // The voucher row may lie before the signed checkpoint: then the
    // background audit after READY finds it.
    sb.start_meterd_audited();
    let status = sb.status();
    assert_eq!(
        status["lock_reason"].as_str(),
        Some("tamper"),
        "the meter started on the edited voucher: {status}"
    );
    let audit = sb.meterctl(&["--json", "audit"]);
    let text = String::from_utf8_lossy(&audit.stdout).into_owned()
        + &String::from_utf8_lossy(&audit.stderr);
    assert!(text.contains("voucher"), "meterctl audit: {text}");
}
