//! Recharge (claims 15, 30): credit an authority-signed voucher, once.
//!
//! A revocation fee due (see `revoke`) is settled right after the credit,
//! before the new funds can be sold: the descending register returned is
//! the one after settlement.
//!
//! Single use is enforced by the ledger itself: the voucher's sequence
//! number becomes the row's key `m/voucher/<seq>`, which is UNIQUE and in
//! the meter's own namespace (no caller can burn it), so a replay cannot
//! credit twice even when two copies arrive at the same moment.

use meter_pki::payload::Voucher;

use crate::clock;
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::ledger::{EntryKind, Fund, Key};
use crate::meter::Meter;
use crate::money::Amount;
use crate::revoke::Dues;
use crate::sale::{self, Spec};

/// `Recharge`: verifies the voucher, credits it, settles fees due, returns
/// the new descending register.
pub async fn recharge(meter: &Meter, dues: &Dues, signed: &[u8]) -> Result<Amount> {
    let (identity, ledger) = meter.provisioned()?;
    let verified = meter_pki::cms::verify(
        signed,
        &identity.anchors,
        Some(&meter_pki::oid::CT_VOUCHER),
        clock::now(),
    )?;
    let voucher: Voucher = meter_pki::payload::decode(&verified.content)?;
    if voucher.meter_id != identity.meter_id {
        return Err(ServiceError::InvalidInput(format!(
            "voucher is for meter {}, this meter is {}; ask the authority for a voucher for this meter",
            voucher.meter_id, identity.meter_id
        )));
    }
    if voucher.amount == 0 {
        return Err(ServiceError::InvalidInput("voucher amount is zero".into()));
    }
    // No prepaid funds in current-account mode (see `account`): the mode
    // must not change between this check and the credit. Released before
    // settling fees (the dues gate is never taken under the regime).
    let regime = meter.regime().hold().await;
    if meter.regime().account().is_some() {
        return Err(ServiceError::InvalidInput(
            "the meter is in current-account mode: it takes no vouchers, sales are billed by report".into(),
        ));
    }
    let replay = || {
        ServiceError::Replay(format!(
            "voucher sequence {} was already credited; a voucher is good once",
            voucher.sequence
        ))
    };
    // Recorded whatever the lock: funds from the authority are not a sale,
    // and a locked meter keeps them for when the lock is cleared.
    // The register it funds (issue 17); a voucher without one funds
    // services, the one pool while the funds are not split.
    let fund = match voucher.register.as_deref() {
        None => Fund::Services,
        Some(name) => Fund::from_name(name).ok_or_else(|| {
            ServiceError::InvalidInput(format!("voucher register {name:?} is not one"))
        })?,
    };
    let spec = Spec {
        credit: Amount(voucher.amount),
        fund,
        ..Spec::record(
            EntryKind::Credit,
            Key::meter("voucher", voucher.sequence),
            input_digest("voucher", &[&verified.content]),
            format!("seq {}", voucher.sequence),
        )
    };
    sale::record_once(meter, spec, signed.to_vec(), replay).await?;
    drop(regime);
    tracing::info!(
        sequence = voucher.sequence,
        amount = voucher.amount,
        "voucher credited"
    );
    if ledger.owed() > Amount::ZERO {
        // The credit is durable; a failed settlement is retried at the
        // next recharge or start, and the owed hold stays meanwhile.
        if let Err(e) = crate::revoke::settle(meter, dues).await {
            tracing::error!(error = %e, "settling revocation fees failed");
        }
    }
    // The register it funded, in the mode in force.
    Ok(ledger.state().registers.paying(fund).descending)
}
