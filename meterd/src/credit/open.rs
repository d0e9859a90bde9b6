//! `OpenCreditLine` (Fig. 8, 810–812): verify the creditor's line-of-credit
//! certificate, store it, charge the `credit-line` fee and make the first
//! payment certificate, showing the full line remaining.
//!
//! Checks, all before any TPM work: the grant's CMS chains to a trust
//! anchor (forged → BadSignature), it names this meter and its identity key
//! (another meter's → InvalidInput), it is within its validity (Stale), its
//! serial is not already open (Replay), and the funds cover the fee. The
//! signer must be a trust anchor itself: a certificate the root issued (every
//! meter has one) grants no credit.

use meter_pki::credit::{CreditLine, Payment};
use meter_pki::{cert, payload, pem};

use super::{sign_with_identity, split_open_product, CreditBook, Line, NOTE_OPEN};
use crate::clock;
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::ledger::Key;
use crate::meter::Meter;
use crate::money::Amount;
use crate::sale::{self, Made, Sale, Spec};
use crate::service::Service;

/// Seconds a grant may be dated ahead of the meter's clock.
const CLOCK_SKEW: i64 = 300;

/// Opens the line in `grant` (CMS, DER or PEM); returns the first payment certificate (DER).
pub async fn open_credit_line(
    meter: &Meter,
    book: &CreditBook,
    grant: &[u8],
    key: Key,
) -> Result<Vec<u8>> {
    let (identity, ledger) = meter.provisioned()?;
    let grant_der = pem::decode_any(grant, "CMS")?;
    let digest = meter_pki::credit::sha384(&grant_der);
    let _opening = book.opening.lock().await;
    book.load_locked(&ledger).await?;
    let now = clock::now();
    let (line, verified) = payload::open::<CreditLine>(&grant_der, &identity.anchors, now)?;
    // Chaining to the root is not enough: every meter holds a certificate
    // the root issued, and none may grant credit. The creditor signs with
    // an anchor itself.
    if !identity.anchors.contains(&verified.signer) {
        return Err(ServiceError::BadSignature(
            "a line of credit must be signed by the authority itself (a trust anchor), not by a certificate it issued; nothing was changed".into(),
        ));
    }
    let meter_id = identity.meter_id.clone();
    let our_key = hex::encode(cert::public_key_sec1(&identity.meter_cert)?);
    if line.holder != meter_id || !line.holder_key_hex.eq_ignore_ascii_case(&our_key) {
        return Err(ServiceError::InvalidInput(format!(
            "this line of credit is for meter {} (another key), not for {meter_id}; nothing was changed",
            line.holder
        )));
    }
    let spec = Spec::sale(
        Service::CreditLine,
        Some(key),
        input_digest("credit-open", &[&digest]),
    )
    .noted(format!("{NOTE_OPEN}{}", line.serial));
    let sold = sale::sell(meter, spec, async |sale: &Sale| {
        let now = sale.now();
        if now > line.not_after {
            return Err(ServiceError::Stale(format!(
                "line of credit {} expired at {}; ask the creditor for a new one",
                line.serial, line.not_after
            )));
        }
        if line.not_before > now + CLOCK_SKEW {
            return Err(ServiceError::Stale(format!(
                "line of credit {} is not valid before {}; check the clock",
                line.serial, line.not_before
            )));
        }
        if book.with_lines(|l| l.contains_key(&line.serial))? {
            return Err(ServiceError::Replay(format!(
                "line of credit {} is already open on this meter; nothing was changed",
                line.serial
            )));
        }
        let first = Payment {
            holder: line.holder.clone(),
            serial: Payment::serial_for(&line.serial, 0),
            meter_id: meter_id.clone(),
            credit_serial: line.serial.clone(),
            credit_line_digest_hex: hex::encode(digest),
            amount: 0,
            payee: line.issuer.clone(),
            credit_remaining: line.amount,
            sequence: 0,
            time: now,
        };
        let mut product = sign_with_identity(meter, &sale.identity, &first, now).await?;
        product.extend_from_slice(&grant_der);
        Ok(Made::Product(product))
    })
    .await?;
    if sold.fresh {
        tracing::info!(serial = %line.serial, amount = line.amount, issuer = %line.issuer, "credit line opened");
        let serial = line.serial.clone();
        let amount = Amount(line.amount);
        book.with_lines(|l| {
            l.insert(
                serial,
                Line {
                    grant: line,
                    digest,
                    used: Amount::ZERO,
                    remaining: amount,
                    next_sequence: 1,
                    damaged: None,
                    gate: Default::default(),
                },
            )
        })?;
    }
    Ok(split_open_product(&sold.product)?.0.to_vec())
}
