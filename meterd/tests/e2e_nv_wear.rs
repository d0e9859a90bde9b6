//! NV wear on swtpm (issue 14 item 3): lone sales, one at a time (each its
//! own batch), move the meter's NV counter once per epoch (`epoch_rows`,
//! default 128 rows), not once per sale; an orderly restart moves it once at
//! the stop and once at the start.
//!
//! Counted on the TPM itself: `meterctl audit` runs the full audit, which
//! reads the counter from the TPM (`nv_counter` of its report is the TPM's
//! value, not the ledger's). On main before ledger v2 each sale was a batch
//! with its own increment: 250 sales moved it 250 times. No timing here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use sandbox::{ok, write, Sandbox};

/// meterd's default epoch length (the sandbox does not change it).
const EPOCH_ROWS: u64 = 128;

/// The meter's NV counter as the TPM holds it now.
fn tpm_counter(sb: &Sandbox) -> u64 {
    let audit = sb.meterctl_json(&["audit"]);
    audit["nv_counter"]
        .as_u64()
        .unwrap_or_else(|| panic!("no nv_counter in the audit: {audit}"))
}

#[test]
fn lone_sales_move_the_tpm_counter_once_per_epoch() {
    let sb = Sandbox::up(10_000_000);
    let msg = write(&sb, "letter.txt", b"a letter");
    let token = sb.path("token.tsr").to_string_lossy().into_owned();
    let before = tpm_counter(&sb);
    let sales: u64 = 250;
    for i in 0..sales {
        let id = format!("nv-wear-{i}");
        ok(
            &sb.meterctl(&["postmark", &msg, "-o", &token, "--request-id", &id]),
            "postmark",
        );
    }
    assert_eq!(
        sb.status()["service_counts"]["postmark"].as_u64(),
        Some(sales),
        "every sale made"
    );
    let after = tpm_counter(&sb);
    // One increment per epoch: an epoch holds EPOCH_ROWS rows, its own
    // epoch row included, so `sales` rows open at most this many epochs.
    let most = sales.div_ceil(EPOCH_ROWS - 1);
    assert!(
        after > before,
        "the counter read is the TPM's and it moves with the epochs: {before} -> {after}"
    );
    assert!(
        after - before <= most,
        "{sales} lone sales moved the TPM's NV counter {} times (at most {most}: one an epoch)",
        after - before
    );

    // An orderly restart: the stop row's increment, then the start's.
    sb.script("stop-meterd");
    sb.script("start-meterd");
    let restarted = tpm_counter(&sb);
    assert!(
        restarted - after <= 2,
        "an orderly restart moved the counter {} times (at most 2)",
        restarted - after
    );
}
