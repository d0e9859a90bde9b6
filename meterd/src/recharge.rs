//! Recharge (claims 15, 30): credit an authority-signed voucher, once.
//!
//! A revocation fee due (see `revoke`) is settled right after the credit,
//! before the new funds can be sold: the descending register returned is
//! the one after settlement.
//!
//! Single use is enforced by the ledger itself: the voucher's sequence
//! number becomes the row's request id, which is UNIQUE, so a replay cannot
//! credit twice even when two copies arrive at the same moment.

use meter_pki::payload::Voucher;

use crate::clock;
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::ledger::{Entry, EntryKind, LedgerError, Outcome};
use crate::meter::Meter;
use crate::money::Amount;

/// `Recharge`: verifies the voucher, credits it, returns the new descending register.
pub async fn recharge(meter: &Meter, signed: &[u8]) -> Result<Amount> {
    let (identity, ledger) = meter.ensure_selling()?;
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
    // No prepaid funds in current-account mode (see `account`).
    let _mode = crate::account::hold().await;
    if meter.account().current().is_some() {
        return Err(ServiceError::InvalidInput(
            "the meter is in current-account mode: it takes no vouchers, sales are billed by report".into(),
        ));
    }
    let entry = Entry {
        kind: EntryKind::Credit,
        service: None,
        request_id: Some(format!("voucher:{}", voucher.sequence)),
        input_digest: input_digest("voucher", &[&verified.content]),
        credit: Amount(voucher.amount),
        debit: Amount::ZERO,
        product: signed.to_vec(),
        note: format!("seq {}", voucher.sequence),
    };
    match ledger.commit(entry, None).await {
        Ok(Outcome::Committed { registers, .. }) => {
            tracing::info!(
                sequence = voucher.sequence,
                amount = voucher.amount,
                "voucher credited"
            );
            if ledger.owed() == Amount::ZERO {
                return Ok(registers.descending);
            }
            // The credit is durable; a failed settlement is retried at the
            // next recharge or start, and the owed hold stays meanwhile.
            if let Err(e) = crate::revoke::settle(meter).await {
                tracing::error!(error = %e, "settling revocation fees failed");
            }
            Ok(ledger.state().registers.descending)
        }
        Ok(Outcome::Existing { .. }) | Err(LedgerError::Conflict(_)) => {
            Err(ServiceError::Replay(format!(
                "voucher sequence {} was already credited; a voucher is good once",
                voucher.sequence
            )))
        }
        Err(LedgerError::Overflow(_)) => Err(ServiceError::InvalidInput(
            "the voucher would overflow the registers; nothing was credited".into(),
        )),
        Err(e) => Err(e.into()),
    }
}
