//! `Pay` (Fig. 9): a payment certificate from an open line of credit.
//!
//! Under the line's gate: idempotency lookup, then the line checks (open
//! here, not damaged, within validity, credit remaining ≥ amount) and the
//! fee's funds reservation — all before any TPM work — then the
//! certificate is signed with the identity key and committed in one Debit
//! row (service `payment-certificate`, the fee as debit). The line's
//! registers move only once that row is durable.

use meter_pki::credit::Payment;

use super::{sign_with_identity, NOTE_PAY};
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::ledger::{Entry, EntryKind, Outcome};
use crate::meter::Meter;
use crate::money::Amount;
use crate::service::Service;
use crate::{clock, sale};

/// Pays `amount` to `payee` from line `serial`; returns the payment certificate (DER).
pub async fn pay(
    meter: &Meter,
    serial: &str,
    amount: u64,
    payee: &str,
    request_id: &str,
) -> Result<Vec<u8>> {
    let (identity, ledger) = meter.ensure_selling()?;
    sale::check_request_id(request_id)?;
    meter_pki::credit::check_serial(serial)?;
    let payee_ok = !payee.is_empty()
        && payee.len() <= meter_pki::credit::MAX_NAME
        && payee.bytes().all(|b| b.is_ascii_graphic());
    if !payee_ok {
        return Err(ServiceError::InvalidInput(format!(
            "payee must be 1..{} printable ASCII characters without spaces",
            meter_pki::credit::MAX_NAME
        )));
    }
    if amount == 0 {
        return Err(ServiceError::InvalidInput(
            "a payment amount must be positive".into(),
        ));
    }
    let input = input_digest(
        "credit-pay",
        &[serial.as_bytes(), &amount.to_be_bytes(), payee.as_bytes()],
    );
    let book = meter.credit();
    book.ensure_loaded(&ledger).await?;
    let gate = book.with_lines(|l| l.get(serial).map(|line| line.gate.clone()))?;
    let Some(gate) = gate else {
        // A retry must still find its certificate even if nothing else is known.
        return match ledger.lookup(request_id).await? {
            Some(s) if s.input_digest == input && s.service == Some(Service::PaymentCertificate) => {
                Ok(s.product)
            }
            _ => Err(ServiceError::InvalidInput(format!(
                "no line of credit {serial} is open on this meter (meterctl credit list); nothing was changed"
            ))),
        };
    };
    let _held = gate.lock().await;
    if let Some(stored) = ledger.lookup(request_id).await? {
        if stored.input_digest == input && stored.service == Some(Service::PaymentCertificate) {
            return Ok(stored.product);
        }
        return Err(ServiceError::InvalidInput(format!(
            "request id {request_id:?} was already used with different input; choose a new request id"
        )));
    }
    let now = clock::now();
    let line = book
        .with_lines(|l| l.get(serial).cloned())?
        .ok_or_else(|| ServiceError::Storage("credit line vanished".into()))?;
    if let Some(why) = &line.damaged {
        return Err(ServiceError::Storage(format!(
            "credit line {serial} is damaged ({why}); it pays nothing until the authority reviews the ledger"
        )));
    }
    if now > line.grant.not_after {
        return Err(ServiceError::Stale(format!(
            "line of credit {serial} expired at {}; it pays nothing more",
            line.grant.not_after
        )));
    }
    if now < line.grant.not_before {
        return Err(ServiceError::Stale(format!(
            "line of credit {serial} is not valid before {}",
            line.grant.not_before
        )));
    }
    let remaining = line.remaining.checked_sub(Amount(amount)).map_err(|_| {
        ServiceError::InsufficientCredit {
            serial: serial.to_owned(),
            needed: Amount(amount),
            remaining: line.remaining,
        }
    })?;
    let price = meter.rates().price(Service::PaymentCertificate, now)?;
    let reservation = ledger.reserve(price)?;
    let payment = Payment {
        holder: line.grant.holder.clone(),
        serial: Payment::serial_for(serial, line.next_sequence),
        meter_id: identity.meter_id.clone(),
        credit_serial: serial.to_owned(),
        credit_line_digest_hex: hex::encode(line.digest),
        amount,
        payee: payee.to_owned(),
        credit_remaining: remaining.0,
        sequence: line.next_sequence,
        time: now,
    };
    let der = sign_with_identity(meter, &identity, &payment).await?;
    let entry = Entry {
        kind: EntryKind::Debit,
        service: Some(Service::PaymentCertificate),
        request_id: Some(request_id.to_owned()),
        input_digest: input,
        credit: Amount::ZERO,
        debit: price,
        product: der.clone(),
        note: format!("{NOTE_PAY}{serial}"),
    };
    match ledger.commit(entry, Some(reservation)).await? {
        Outcome::Committed { .. } => {
            book.with_lines(|l| {
                if let Some(line) = l.get_mut(serial) {
                    line.used = Amount(line.used.0.saturating_add(amount));
                    line.remaining = remaining;
                    line.next_sequence += 1;
                }
            })?;
            tracing::info!(%serial, amount, %payee, remaining = remaining.0, "payment certificate issued");
            Ok(der)
        }
        Outcome::Existing { product, .. } => Ok(product),
    }
}
