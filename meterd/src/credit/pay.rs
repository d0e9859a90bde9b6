//! `Pay` (Fig. 9): a payment certificate from an open line of credit.
//!
//! Under the line's gate, through the sale pipeline: idempotency lookup,
//! the fee's funds reservation, then the line checks (open here, not
//! damaged, within validity, credit remaining ≥ amount) — all before any
//! TPM work — then the certificate is signed with the identity key and
//! committed in one Debit row (service `payment-certificate`, the fee as
//! debit). The line's registers move only once that row is durable.

use meter_pki::credit::Payment;

use super::{sign_with_identity, CreditBook, NOTE_PAY};
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::ledger::Key;
use crate::meter::Meter;
use crate::money::Amount;
use crate::sale::{self, Made, Sale, Spec};
use crate::service::Service;

/// Pays `amount` to `payee` from line `serial`; returns the payment certificate (DER).
pub async fn pay(
    meter: &Meter,
    book: &CreditBook,
    serial: &str,
    amount: u64,
    payee: &str,
    key: Key,
) -> Result<Vec<u8>> {
    let ledger = meter.require_ledger()?;
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
    let spec = Spec::sale(
        Service::PaymentCertificate,
        Some(key),
        input_digest(
            "credit-pay",
            &[serial.as_bytes(), &amount.to_be_bytes(), payee.as_bytes()],
        ),
    )
    .noted(format!("{NOTE_PAY}{serial}"));
    book.ensure_loaded(&ledger).await?;
    let gate = book.with_lines(|l| l.get(serial).map(|line| line.gate.clone()))?;
    // The gate is held from the credit check to the commit; without a line
    // the pipeline still answers a retry with its stored certificate.
    let _held = match &gate {
        Some(g) => Some(g.lock().await),
        None => None,
    };
    let mut remaining_after = Amount::ZERO;
    let sold = sale::sell(meter, spec, async |sale: &Sale| {
        let line = book.with_lines(|l| l.get(serial).cloned())?.ok_or_else(|| {
            ServiceError::InvalidInput(format!(
                "no line of credit {serial} is open on this meter (meterctl credit list); nothing was changed"
            ))
        })?;
        let now = sale.now();
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
        remaining_after = remaining;
        let payment = Payment {
            holder: line.grant.holder.clone(),
            serial: Payment::serial_for(serial, line.next_sequence),
            meter_id: sale.identity.meter_id.clone(),
            credit_serial: serial.to_owned(),
            credit_line_digest_hex: hex::encode(line.digest),
            amount,
            payee: payee.to_owned(),
            credit_remaining: remaining.0,
            sequence: line.next_sequence,
            time: now,
        };
        Ok(Made::Product(
            sign_with_identity(meter, &sale.identity, &payment, now).await?,
        ))
    })
    .await?;
    if sold.fresh {
        book.with_lines(|l| {
            if let Some(line) = l.get_mut(serial) {
                line.used = Amount(line.used.0.saturating_add(amount));
                line.remaining = remaining_after;
                line.next_sequence += 1;
            }
        })?;
        tracing::info!(%serial, amount, %payee, remaining = remaining_after.0, "payment certificate issued");
    }
    Ok(sold.product)
}
