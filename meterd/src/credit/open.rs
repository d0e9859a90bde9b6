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

use super::{sign_with_identity, split_open_product, Line, NOTE_OPEN};
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::ledger::{Entry, EntryKind, Outcome};
use crate::meter::Meter;
use crate::money::Amount;
use crate::service::Service;
use crate::{clock, sale};

/// Seconds a grant may be dated ahead of the meter's clock.
const CLOCK_SKEW: i64 = 300;

/// Opens the line in `grant` (CMS, DER or PEM); returns the first payment certificate (DER).
pub async fn open_credit_line(meter: &Meter, grant: &[u8], request_id: &str) -> Result<Vec<u8>> {
    let (identity, ledger) = meter.ensure_selling()?;
    sale::check_request_id(request_id)?;
    let grant_der = pem::decode_any(grant, "CMS")?;
    let input = input_digest("credit-open", &[&meter_pki::credit::sha384(&grant_der)]);
    let book = meter.credit();
    let _opening = book.opening.lock().await;
    book.load_locked(&ledger).await?;
    if let Some(stored) = ledger.lookup(request_id).await? {
        if stored.input_digest == input && stored.service == Some(Service::CreditLine) {
            let (first, _) = split_open_product(&stored.product)?;
            return Ok(first.to_vec());
        }
        return Err(ServiceError::InvalidInput(format!(
            "request id {request_id:?} was already used with different input; choose a new request id"
        )));
    }
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
    let price = meter.rates().price(Service::CreditLine, now)?;
    let reservation = ledger.reserve(price)?;
    let digest = meter_pki::credit::sha384(&grant_der);
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
    let first_der = sign_with_identity(meter, &identity, &first).await?;
    let mut product = first_der.clone();
    product.extend_from_slice(&grant_der);
    let entry = Entry {
        kind: EntryKind::Debit,
        service: Some(Service::CreditLine),
        request_id: Some(request_id.to_owned()),
        input_digest: input,
        credit: Amount::ZERO,
        debit: price,
        product,
        note: format!("{NOTE_OPEN}{}", line.serial),
    };
    match ledger.commit(entry, Some(reservation)).await? {
        Outcome::Committed { .. } => {
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
            Ok(first_der)
        }
        Outcome::Existing { product, .. } => Ok(split_open_product(&product)?.0.to_vec()),
    }
}
