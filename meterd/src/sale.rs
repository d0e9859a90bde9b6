//! The one path every chargeable service takes.
//!
//! Order matters and is the same for all: refuse when locked or not
//! provisioned; look the request id up (a retry returns the stored product
//! even when funds are now short); reserve the price, so that a request the
//! funds cannot cover is refused before any work; compute the input; do the
//! work (TPM signing); commit the debit with the product in one ledger row;
//! only then hand the product out.

use std::future::Future;
use std::sync::Arc;

use crate::error::{Result, ServiceError};
use crate::identity::Identity;
use crate::ledger::{Digest, Entry, EntryKind, Ledger, Outcome};
use crate::meter::Meter;
use crate::money::Amount;
use crate::service::Service;

/// Longest request id accepted.
pub const MAX_REQUEST_ID: usize = 128;

/// Checks a caller-chosen request id: 1–128 printable ASCII characters.
pub fn check_request_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ServiceError::InvalidInput(format!(
            "request id must be 1 to {MAX_REQUEST_ID} printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

/// The clock at the gate (see [`crate::timecheck`]): the time to stamp,
/// Unix ms, never earlier than the ledger's last row; on a clock set back,
/// the meter locks with reason `clock` and the sale is refused.
pub(crate) async fn checked_time(meter: &Meter, ledger: &Ledger) -> Result<i64> {
    match meter.clock().check_sale(ledger.state().time_ms) {
        Ok(ms) => Ok(ms),
        Err(judgement) => {
            tracing::error!(?judgement, "the clock went back: locking");
            crate::lock::engage(meter, meter_proto::lock_reason::CLOCK).await?;
            Err(ServiceError::Locked {
                reason: meter_proto::lock_reason::CLOCK.into(),
            })
        }
    }
}

/// Sells one piece of `service`.
///
/// `input` computes the request's input digest and whatever the work needs
/// (for example by hashing the message); `work` makes the product.
pub async fn sell<I, T, W, WF>(
    meter: &Meter,
    service: Service,
    request_id: Option<&str>,
    input: I,
    work: W,
) -> Result<Vec<u8>>
where
    I: Future<Output = Result<(Digest, T)>>,
    W: FnOnce(T, Arc<Identity>) -> WF,
    WF: Future<Output = Result<Vec<u8>>>,
{
    sell_noted(meter, service, request_id, "", input, work).await
}

/// [`sell`], with a note on the Debit row so that the rows of one kind of
/// product can be found again without reading every debit (e.g.
/// `cert-install`, see `certs`).
pub async fn sell_noted<I, T, W, WF>(
    meter: &Meter,
    service: Service,
    request_id: Option<&str>,
    note: &str,
    input: I,
    work: W,
) -> Result<Vec<u8>>
where
    I: Future<Output = Result<(Digest, T)>>,
    W: FnOnce(T, Arc<Identity>) -> WF,
    WF: Future<Output = Result<Vec<u8>>>,
{
    let (identity, ledger) = meter.ensure_selling()?;
    let now_ms = checked_time(meter, &ledger).await?;
    if let Some(id) = request_id {
        check_request_id(id)?;
    }
    let existing = match request_id {
        Some(id) => ledger.lookup(id).await?,
        None => None,
    };
    let price = match existing {
        Some(_) => Amount::ZERO,
        None => meter.rates().price(service, now_ms.div_euclid(1000))?,
    };
    let reservation = match existing {
        Some(_) => None,
        None => Some(ledger.reserve(price)?),
    };
    let (input_digest, prepared) = input.await?;
    if let Some(stored) = existing {
        if stored.input_digest == input_digest && stored.service == Some(service) {
            return Ok(stored.product);
        }
        return Err(ServiceError::InvalidInput(format!(
            "request id {:?} was already used with different input; choose a new request id",
            request_id.unwrap_or_default()
        )));
    }
    let product = work(prepared, identity).await?;
    let entry = Entry {
        kind: EntryKind::Debit,
        service: Some(service),
        request_id: request_id.map(str::to_owned),
        input_digest,
        credit: Amount::ZERO,
        debit: price,
        product,
        note: note.to_owned(),
    };
    // The product leaves only once its debit is durable.
    let product_copy = entry.product.clone();
    match ledger.commit(entry, reservation).await? {
        Outcome::Committed { .. } => Ok(product_copy),
        Outcome::Existing { product, .. } => Ok(product),
    }
}

/// Sells one piece of `service` whose product must carry the registers of
/// its own ledger row (a postage indicium): the same order as [`sell`] —
/// state, lookup, reserve `price` before any TPM work — but the product is
/// made by `finish` inside the commit, once the row's sequence number, time
/// and registers are known (see [`crate::ledger::Finisher`]).
///
/// `prepare` runs only for a new request id (a retry gets the stored
/// product even if the table changed since): it prices the piece (postage
/// prices by class and weight, not by service) and returns the finisher.
/// `input_digest` comes from the validated request.
pub async fn sell_at_commit<P>(
    meter: &Meter,
    service: Service,
    request_id: &str,
    input_digest: Digest,
    prepare: P,
) -> Result<Vec<u8>>
where
    P: FnOnce() -> Result<(Amount, crate::ledger::Finisher)>,
{
    let (_identity, ledger) = meter.ensure_selling()?;
    checked_time(meter, &ledger).await?;
    check_request_id(request_id)?;
    if let Some(stored) = ledger.lookup(request_id).await? {
        if stored.input_digest == input_digest && stored.service == Some(service) {
            return Ok(stored.product);
        }
        return Err(ServiceError::InvalidInput(format!(
            "request id {request_id:?} was already used with different input; choose a new request id"
        )));
    }
    let (price, finish) = prepare()?;
    let reservation = ledger.reserve(price)?;
    let entry = Entry {
        kind: EntryKind::Debit,
        service: Some(service),
        request_id: Some(request_id.to_owned()),
        input_digest,
        credit: Amount::ZERO,
        debit: price,
        product: Vec::new(),
        note: String::new(),
    };
    let (_, product) = ledger
        .commit_finishing(entry, Some(reservation), finish)
        .await?;
    Ok(product)
}
