//! Revocation of a user certificate (Fig. 6), its fee, and payment due.
//!
//! * [`request`] (`Revoke`): the meter signs a [`RevokeRequest`] with its
//!   identity key (602). One Event row noted [`NOTE_REQUEST`] keeps it, so a
//!   retry with the same request id returns the same bytes. Not charged.
//! * [`apply`] (`ApplyRevokeOrder`): verifies the authority's order (610),
//!   then, in this order: decides paid or due, signs the confirmation, commits
//!   ONE Debit row (service `revoke`, request id `m/revoke-order/<order id>`, so
//!   an order applies once; product the confirmation followed by the
//!   authority's order it applied, which the audit verifies; note [`NOTE_PAID`] with
//!   the fee debited, or [`NOTE_DUE`] with nothing debited), marks the
//!   certificate revoked, and only then destroys the key blob (616). A crash
//!   after the commit leaves a blob of a revoked certificate: [`load`]
//!   destroys such leftovers at start. A forced order (the authority's own,
//!   no request) takes the same path.
//!
//! # Payment due (618–620)
//!
//! When the funds cannot cover the fee the meter revokes anyway (a
//! compromised key must not wait for money) and confirms `payment-due`. The
//! ledger chain layout is unchanged: the due row is a Debit of 0 that counts
//! the revoke piece and whose signed product states the amount due. The
//! amount owed is the sum of due rows without a settlement row; it is
//! rebuilt from the ledger at start and held out of every reservation
//! ([`crate::ledger::Ledger::set_owed`]), so no sale can spend money the meter
//! owes — even the little left when the revocation came. [`settle`] runs
//! after every recharge (and at start, and after a due row): oldest first,
//! for each due row the funds not held by in-flight sales cover
//! ([`crate::ledger::Ledger::reserve_owed`]), it commits a Debit row
//! (no service, note [`NOTE_SETTLE`], key `m/settle/<seq of the due
//! row>`), so a settlement happens once even across a crash or a race.
//! Settlement happens whole, never partly: one row per debt.
//!
//! A locked meter still applies orders and settles debts: both are the
//! authority's own business, not sales.

use meter_pki::ledger_format::{revoke_product, split_revoke_product};
use meter_pki::revoke::{self as rv, RevokeConfirmation, RevokeOrder, RevokeRequest};
use meter_pki::{oid, payload};
use tokio::sync::Mutex;

use crate::certs::{CertState, CertStore};
use crate::clock;
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::housing::HousingError;
use crate::ledger::{EntryKind, Fund, Key, Ledger, LedgerError};
use crate::meter::Meter;
use crate::money::Amount;
use crate::sale::{self, Guard, Made, Price, Sale, Spec};
use crate::service::Service;

/// Note of the Event row keeping a revoke request.
pub const NOTE_REQUEST: &str = "revoke-request";
/// Note of the revoke Debit row whose fee was debited.
pub const NOTE_PAID: &str = crate::semantic::NOTE_REVOKE_PAID;
/// Note of the revoke Debit row (debit 0) whose fee is due.
pub const NOTE_DUE: &str = crate::semantic::NOTE_REVOKE_DUE;
/// Note of the Debit row settling a due fee.
pub const NOTE_SETTLE: &str = crate::semantic::NOTE_REVOKE_SETTLE;

/// What this feature owns: the serialization of order applications and
/// settlements (the owed hold is set from the ledger under it).
#[derive(Debug, Default)]
pub struct Dues {
    gate: Mutex<()>,
}

fn invalid(m: impl Into<String>) -> ServiceError {
    ServiceError::InvalidInput(m.into())
}

/// `Revoke`: signs a request to the authority to revoke installed
/// certificate `serial` for `reason`; one Event row, not charged.
pub async fn request(
    meter: &Meter,
    certs: &CertStore,
    serial: &str,
    reason: &str,
    key: Key,
) -> Result<Vec<u8>> {
    rv::check_reason(reason).map_err(|e| invalid(e.to_string()))?;
    let entry = certs.installed(serial)?;
    if entry.revoked {
        return Err(invalid(format!(
            "certificate {} is already revoked",
            entry.serial()
        )));
    }
    let canonical = rv::canonical_serial(&entry.serial())?;
    let request_id = key.shown();
    let spec = Spec::record(
        EntryKind::Event,
        key,
        input_digest(NOTE_REQUEST, &[canonical.as_bytes(), reason.as_bytes()]),
        NOTE_REQUEST,
    );
    let sold = sale::sell(meter, spec, async |sale: &Sale| {
        let body = RevokeRequest {
            meter_id: sale.identity.meter_id.clone(),
            serial: canonical.clone(),
            reason: reason.to_owned(),
            request_id: request_id.clone(),
            issued_at: sale.now(),
        };
        let signed = meter
            .sign_as_meter(
                &sale.identity,
                oid::CT_REVOKE_REQUEST,
                &payload::encode(&body)?,
                sale.now(),
            )
            .await?;
        Ok(Made::Product(signed))
    })
    .await?;
    if sold.fresh {
        tracing::info!(serial = %canonical, reason, "revocation requested");
    }
    Ok(sold.product)
}

/// `ApplyRevokeOrder`: applies an authority-signed revoke order and returns
/// the signed confirmation of revocation and payment, or of payment due.
pub async fn apply(
    meter: &Meter,
    certs: &CertStore,
    dues: &Dues,
    signed_order: &[u8],
) -> Result<Vec<u8>> {
    let (identity, ledger) = meter.provisioned()?;
    let now = clock::now();
    let (order, verified) = payload::open::<RevokeOrder>(signed_order, &identity.anchors, now)?;
    if order.meter_id != identity.meter_id {
        return Err(invalid(format!(
            "the order is for meter {}, this meter is {}",
            order.meter_id, identity.meter_id
        )));
    }
    let one_at_a_time = dues.gate.lock().await;
    let replay = || {
        ServiceError::Replay(format!(
            "revoke order {} was already applied; an order is good once",
            order.order_id
        ))
    };
    let entry = certs.find(&order.serial).ok_or_else(|| {
        invalid(format!(
            "no user certificate with serial {} is installed in this meter",
            order.serial
        ))
    })?;
    // The row keeps the order as DER after the confirmation, so the audit
    // can verify the authority's word itself (`ledger_format::revoke_product`).
    let order_der = meter_pki::pem::decode_any(signed_order, "CMS")?;
    let spec = Spec::sale(
        Service::Revoke,
        Some(Key::meter("revoke-order", &order.order_id)),
        input_digest("revoke-order", &[&verified.content]),
    )
    .guarded(Guard::Recording)
    .priced(Price::RateOrDue(Service::Revoke))
    .noted(NOTE_PAID);
    let sold = sale::sell(meter, spec, async |sale: &Sale| {
        if entry.state(sale.now()) == CertState::Revoked {
            return Err(invalid(format!(
                "certificate {} is already revoked",
                order.serial
            )));
        }
        let fee = sale.price;
        let confirmation = RevokeConfirmation {
            meter_id: sale.identity.meter_id.clone(),
            serial: order.serial.clone(),
            reason: order.reason.clone(),
            order_id: order.order_id.clone(),
            forced: order.forced,
            revoked_at: sale.now(),
            fee: fee.0,
            payment: if sale.due { rv::PAYMENT_DUE } else { rv::PAID }.into(),
            amount_due: if sale.due { fee.0 } else { 0 },
            key_destroyed: true,
        };
        let signed = meter
            .sign_as_meter(
                &sale.identity,
                oid::CT_REVOKE_CONFIRMATION,
                &payload::encode(&confirmation)?,
                sale.now(),
            )
            .await?;
        let kept = revoke_product(&signed, &order_der);
        Ok(if sale.due {
            Made::Noted(kept, NOTE_DUE.into())
        } else {
            Made::Product(kept)
        })
    })
    .await;
    let sold = match sold {
        Ok(s) if s.fresh => s,
        Ok(_) | Err(ServiceError::Conflict { .. }) => {
            refresh_owed(&ledger).await?;
            return Err(replay());
        }
        Err(e) => {
            refresh_owed(&ledger).await?;
            return Err(e);
        }
    };
    certs.mark_revoked(&order.serial)?;
    tracing::info!(
        serial = %order.serial,
        reason = %order.reason,
        forced = order.forced,
        fee = sold.charged.0,
        due = sold.due,
        "certificate revoked"
    );
    destroy(meter, &entry.key).await;
    if sold.due {
        settle_locked(meter, &ledger).await?;
    }
    // The regime is never taken under the dues gate (see `regime`).
    drop(one_at_a_time);
    if order.forced {
        // SPEC, Locks: a revocation the authority forced stops the meter
        // until the authority clears it (the revocation itself is done and
        // confirmed either way).
        meter
            .regime()
            .engage(&ledger, meter_proto::lock_reason::FORCED)
            .await?;
    }
    let (confirmation, _order) = split_revoke_product(&sold.product)?;
    Ok(confirmation.to_vec())
}

/// Deletes a revoked key's blobs; a failure is logged and retried at start.
async fn destroy(meter: &Meter, key: &str) {
    let k = key.to_owned();
    let done = meter
        .housing()
        .call(move |h| {
            if h.has_key(&k)? {
                match h.destroy_key(&k) {
                    Ok(()) | Err(HousingError::NoSuchKey(_)) => return Ok(true),
                    Err(e) => return Err(e),
                }
            }
            Ok(false)
        })
        .await;
    match done {
        Ok(true) => tracing::info!(key, "revoked key destroyed"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(key, error = %e, "revoked key not destroyed yet; retried at start")
        }
    }
}

/// Due rows not settled yet, oldest first: (seq of the due row, amount).
async fn outstanding(ledger: &Ledger) -> Result<Vec<(u64, Amount)>> {
    let mut out = Vec::new();
    for (seq, _, product) in ledger.products_noted(EntryKind::Debit, NOTE_DUE).await? {
        let c = match rv::stored_confirmation(&product) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(seq, error = %e, "unreadable revoke-due row");
                continue;
            }
        };
        let settled = ledger
            .lookup(&settle_key(seq))
            .await?
            .is_some_and(|s| s.kind == EntryKind::Debit && s.service.is_none());
        if !settled {
            out.push((seq, Amount(c.amount_due)));
        }
    }
    Ok(out)
}

fn settle_key(due_row: u64) -> Key {
    Key::meter("settle", due_row)
}

async fn refresh_owed(ledger: &Ledger) -> Result<Amount> {
    let mut owed = Amount::ZERO;
    for (_, a) in outstanding(ledger).await? {
        owed = owed.checked_add(a).map_err(LedgerError::from)?;
    }
    ledger.set_owed(owed)?;
    Ok(owed)
}

/// Settles due revocation fees the descending register now covers (oldest
/// first), one Debit row each; returns what is still owed.
pub async fn settle(meter: &Meter, dues: &Dues) -> Result<Amount> {
    let ledger = meter.require_ledger()?;
    let _one_at_a_time = dues.gate.lock().await;
    settle_locked(meter, &ledger).await
}

async fn settle_locked(meter: &Meter, ledger: &Ledger) -> Result<Amount> {
    for (seq, amount) in outstanding(ledger).await? {
        let spec = Spec {
            kind: EntryKind::Debit,
            service: None,
            key: Some(settle_key(seq)),
            input: input_digest(NOTE_SETTLE, &[&seq.to_be_bytes()]),
            guard: Guard::Recording,
            price: Price::Owed(amount),
            credit: Amount::ZERO,
            note: NOTE_SETTLE.into(),
            fund: Fund::Services,
            key_at_commit: false,
        };
        let product = seq.to_string().into_bytes();
        match sale::sell(meter, spec, async move |_: &Sale| {
            Ok(Made::Product(product))
        })
        .await
        {
            Ok(_) => tracing::info!(due_row = seq, amount = amount.0, "revocation fee settled"),
            Err(ServiceError::InsufficientFunds { .. }) => break,
            Err(e) => {
                refresh_owed(ledger).await?;
                return Err(e);
            }
        }
    }
    refresh_owed(ledger).await
}

/// At start: marks the certificates of revoke rows revoked, destroys
/// leftover key blobs of revoked certificates (a crash between the row and
/// the deletion), holds the amount owed, and settles what the funds cover.
pub async fn load(meter: &Meter, certs: &CertStore, dues: &Dues) -> Result<()> {
    let ledger = meter.require_ledger()?;
    for note in [NOTE_PAID, NOTE_DUE] {
        for (seq, _, product) in ledger.products_noted(EntryKind::Debit, note).await? {
            match rv::stored_confirmation(&product) {
                Ok(c) => {
                    certs.mark_revoked(&c.serial)?;
                }
                Err(e) => tracing::error!(seq, error = %e, "unreadable revoke row"),
            }
        }
    }
    let now = clock::now();
    for e in certs.list() {
        if e.state(now) == CertState::Revoked {
            destroy(meter, &e.key).await;
        }
    }
    let _one_at_a_time = dues.gate.lock().await;
    // The hold first (a start must not let sales spend owed money); a failed
    // settlement only waits for the next recharge.
    let mut owed = refresh_owed(&ledger).await?;
    if meter.identity().is_some() {
        match settle_locked(meter, &ledger).await {
            Ok(left) => owed = left,
            Err(e) => tracing::error!(error = %e, "settling revocation fees at start failed"),
        }
    }
    if owed > Amount::ZERO {
        tracing::warn!(
            owed = owed.0,
            "revocation fees due; the next recharge settles them first"
        );
    }
    Ok(())
}

/// Amount owed (revocation fees due, not settled yet).
pub fn payment_due(meter: &Meter) -> Amount {
    meter.ledger().map(|l| l.owed()).unwrap_or(Amount::ZERO)
}
