//! Postage funds apart (issue 17 item 3): the authority's signed
//! [`FundsOrder`] (`meter-authority funds-split`, `CT_FUNDS_ORDER`) makes
//! the meter keep postage funds apart from services funds, for good.
//!
//! Applied through `SetAccountMode` (an order on the meter's terms, like the
//! current-account order; [`crate::account::apply_order`] sends it here by
//! its content type), as one Event row noted [`SPLIT_NOTE`] under the key
//! `m/funds/split` through the sale pipeline (`record_once`): the ledger
//! splits from the row after it. The key is the same whatever the order's
//! nonce, so a meter splits once: a retry of the same order answers as the
//! first time and writes nothing; another order is refused (Replay). An
//! order for another meter, or not chaining to the meter's anchors, is
//! refused before anything is written.

use meter_pki::funds::FundsOrder;

use crate::clock;
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::ledger::{EntryKind, Key, SPLIT_NOTE};
use crate::meter::Meter;
use crate::sale::{self, Spec};

/// The key of the one split row.
pub fn split_key() -> Key {
    Key::meter("funds", "split")
}

/// Applies a signed funds order (see the module doc); returns the ledger
/// row that split the funds.
pub async fn apply_split(meter: &Meter, signed: &[u8]) -> Result<u64> {
    let (identity, ledger) = meter.provisioned()?;
    let (order, verified) =
        meter_pki::payload::open::<FundsOrder>(signed, &identity.anchors, clock::now())?;
    if order.meter_id != identity.meter_id {
        return Err(ServiceError::InvalidInput(format!(
            "the funds order is for meter {}, this meter is {}",
            order.meter_id, identity.meter_id
        )));
    }
    let regime = meter.regime();
    let _held = regime.hold().await;
    let key = split_key();
    if let Some(stored) = ledger.lookup(&key).await? {
        if stored.product == signed {
            return Ok(stored.seq);
        }
        return Err(ServiceError::Replay(
            "the funds are already split (by another order)".into(),
        ));
    }
    let spec = Spec::record(
        EntryKind::Event,
        key,
        input_digest("funds-split", &[&verified.content]),
        SPLIT_NOTE,
    );
    let replay = || ServiceError::Replay("the funds are already split".into());
    let sold = sale::record_once(meter, spec, signed.to_vec(), replay).await?;
    tracing::info!(seq = sold.seq, "funds split: postage funds kept apart");
    Ok(sold.seq)
}
