//! Lines of credit and payment certificates (patent Figs. 7A, 7B, 8, 9).
//!
//! The meter asks a creditor for a line ([`request`]: a CMS-signed request
//! carrying its postmark), opens the line the creditor grants ([`open`]:
//! verified, stored, first payment certificate made) and pays merchants
//! from it ([`pay`]: credit checked before any TPM work, a payment
//! certificate signed with the identity key).
//!
//! # Registers
//!
//! Each line has its own registers, granted = used + remaining, kept in the
//! chained ledger rather than in a table of their own (the chain layout is
//! shared with every service): the OpenCreditLine row (service
//! `credit-line`, note `credit-open <serial>`) stores the first payment
//! certificate followed by the line certificate; each Pay row (service
//! `payment-certificate`, note `credit-pay <serial>`) stores its payment
//! certificate, which states the amount and the credit remaining. Their
//! SHA-384 is in the hash chain, so [`CreditBook`] rebuilds the registers at
//! start from those rows and checks, row by row, that each certificate's
//! remaining equals the previous remaining less its amount and that
//! granted = used + remaining. A line that does not add up is marked
//! damaged and refuses payments. The meter's funds pay the service fees
//! (an ordinary debit on the same row), the line pays the merchant.
//!
//! # Concurrency
//!
//! Payments on one line go through that line's gate (an async mutex held
//! from the credit check to the commit), so two payments can never spend
//! the same credit and each certificate's sequence number and remaining are
//! exact; payments on different lines run in parallel.

pub mod open;
pub mod pay;
pub mod request;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use der::{Decode, Reader, SliceReader};
use meter_pki::credit::{read_unverified, CreditLine, Payment};
use meter_pki::payload::{self, Payload};

use crate::error::{Result, ServiceError};
use crate::identity::Identity;
use crate::ledger::{Digest, Ledger};
use crate::meter::Meter;
use crate::money::Amount;
use crate::service::Service;

/// Note prefix of the row that opened a line.
pub const NOTE_OPEN: &str = crate::semantic::NOTE_CREDIT_OPEN;
/// Note prefix of a payment row.
pub const NOTE_PAY: &str = crate::semantic::NOTE_CREDIT_PAY;

/// One open line and its registers.
#[derive(Debug, Clone)]
struct Line {
    grant: CreditLine,
    digest: Digest,
    used: Amount,
    remaining: Amount,
    next_sequence: u64,
    damaged: Option<String>,
    gate: Arc<tokio::sync::Mutex<()>>,
}

/// What `ListCreditLines` reports about a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineView {
    /// Line serial.
    pub serial: String,
    /// Creditor.
    pub issuer: String,
    /// Holder (this meter).
    pub holder: String,
    /// Line amount.
    pub granted: Amount,
    /// Paid out so far.
    pub used: Amount,
    /// Still available.
    pub remaining: Amount,
    /// Payment certificates made, the first (opening) one included.
    pub certificates: u64,
    /// Valid from (unix s).
    pub not_before: i64,
    /// Valid until (unix s).
    pub not_after: i64,
    /// Authorized use.
    pub authorized_use: String,
    /// `open`, `expired` or `damaged`.
    pub state: &'static str,
    /// SHA-384 (hex) of the line certificate.
    pub digest_hex: String,
}

/// The open lines, rebuilt from the ledger on first use.
#[derive(Default)]
pub struct CreditBook {
    lines: Mutex<Option<HashMap<String, Line>>>,
    /// Serializes loading and opening (a grant opens once).
    opening: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for CreditBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreditBook").finish_non_exhaustive()
    }
}

fn poisoned<T>(_: T) -> ServiceError {
    ServiceError::Internal("credit book lock poisoned".into())
}

impl CreditBook {
    /// Loads the lines from the ledger unless already loaded.
    async fn ensure_loaded(&self, ledger: &Ledger) -> Result<()> {
        if self.lines.lock().map_err(poisoned)?.is_some() {
            return Ok(());
        }
        let _guard = self.opening.lock().await;
        self.load_locked(ledger).await
    }

    /// Loads with `opening` already held.
    async fn load_locked(&self, ledger: &Ledger) -> Result<()> {
        if self.lines.lock().map_err(poisoned)?.is_some() {
            return Ok(());
        }
        let mut rows = ledger.service_products(Service::CreditLine).await?;
        rows.extend(ledger.service_products(Service::PaymentCertificate).await?);
        rows.sort_by_key(|(seq, _, _)| *seq);
        let lines = rebuild(&rows);
        for (serial, line) in &lines {
            match &line.damaged {
                Some(why) => tracing::error!(%serial, %why, "credit line registers do not add up"),
                None => tracing::info!(
                    %serial,
                    granted = line.grant.amount,
                    used = line.used.0,
                    remaining = line.remaining.0,
                    "credit line loaded"
                ),
            }
        }
        *self.lines.lock().map_err(poisoned)? = Some(lines);
        Ok(())
    }

    fn with_lines<R>(&self, f: impl FnOnce(&mut HashMap<String, Line>) -> R) -> Result<R> {
        let mut guard = self.lines.lock().map_err(poisoned)?;
        let lines = guard
            .as_mut()
            .ok_or_else(|| ServiceError::Storage("credit lines not loaded".into()))?;
        Ok(f(lines))
    }
}

/// Every line, for `ListCreditLines`, ordered by serial.
pub async fn list(meter: &Meter, book: &CreditBook) -> Result<Vec<LineView>> {
    let ledger = meter.require_ledger()?;
    book.ensure_loaded(&ledger).await?;
    let now = crate::clock::now();
    book.with_lines(|lines| {
        let sorted: BTreeMap<_, _> = lines.iter().collect();
        sorted
            .into_values()
            .map(|l| LineView {
                serial: l.grant.serial.clone(),
                issuer: l.grant.issuer.clone(),
                holder: l.grant.holder.clone(),
                granted: Amount(l.grant.amount),
                used: l.used,
                remaining: l.remaining,
                certificates: l.next_sequence,
                not_before: l.grant.not_before,
                not_after: l.grant.not_after,
                authorized_use: l.grant.authorized_use.clone(),
                state: if l.damaged.is_some() {
                    "damaged"
                } else if now > l.grant.not_after {
                    "expired"
                } else {
                    "open"
                },
                digest_hex: hex::encode(l.digest),
            })
            .collect()
    })
}

/// Splits the product of an opening row: first payment certificate, then the line certificate.
pub(crate) fn split_open_product(product: &[u8]) -> Result<(&[u8], &[u8])> {
    let bad = |e: der::Error| ServiceError::Storage(format!("credit-open product: {e}"));
    let mut r = SliceReader::new(product).map_err(bad)?;
    der::asn1::AnyRef::decode(&mut r).map_err(bad)?;
    let n = usize::try_from(r.position()).map_err(bad)?;
    Ok(product.split_at(n))
}

/// Replays the credit rows (in seq order) into the lines and their registers.
fn rebuild(rows: &[(u64, String, Vec<u8>)]) -> HashMap<String, Line> {
    let mut lines: HashMap<String, Line> = HashMap::new();
    for (seq, note, product) in rows {
        if let Some(serial) = note.strip_prefix(NOTE_OPEN) {
            match open_row(product) {
                Ok(line) if line.grant.serial == serial => {
                    lines.insert(serial.to_owned(), line);
                }
                Ok(_) => damage(&mut lines, serial, format!("row {seq}: serial differs")),
                Err(e) => damage(&mut lines, serial, format!("row {seq}: {e}")),
            }
        } else if let Some(serial) = note.strip_prefix(NOTE_PAY) {
            let result = match lines.get_mut(serial) {
                Some(line) => pay_row(line, product),
                None => Err("payment before the line opened".to_string()),
            };
            if let Err(e) = result {
                damage(&mut lines, serial, format!("row {seq}: {e}"));
            }
        }
    }
    lines
}

fn damage(lines: &mut HashMap<String, Line>, serial: &str, why: String) {
    match lines.get_mut(serial) {
        Some(line) => {
            if line.damaged.is_none() {
                line.damaged = Some(why);
            }
        }
        None => {
            let grant = CreditLine {
                serial: serial.to_owned(),
                holder: String::new(),
                holder_key_hex: String::new(),
                issuer: String::new(),
                amount: 0,
                not_before: 0,
                not_after: 0,
                authorized_use: String::new(),
                request_digest_hex: String::new(),
            };
            lines.insert(
                serial.to_owned(),
                Line {
                    grant,
                    digest: [0; 48],
                    used: Amount::ZERO,
                    remaining: Amount::ZERO,
                    next_sequence: 0,
                    damaged: Some(why),
                    gate: Arc::default(),
                },
            );
        }
    }
}

fn open_row(product: &[u8]) -> std::result::Result<Line, String> {
    let (first, grant_der) = split_open_product(product).map_err(|e| e.to_string())?;
    let grant: CreditLine = read_unverified(grant_der).map_err(|e| e.to_string())?;
    let digest = meter_pki::credit::sha384(grant_der);
    let mut line = Line {
        grant,
        digest,
        used: Amount::ZERO,
        remaining: Amount::ZERO,
        next_sequence: 0,
        damaged: None,
        gate: Arc::default(),
    };
    line.remaining = Amount(line.grant.amount);
    apply(&mut line, first)?;
    Ok(line)
}

fn pay_row(line: &mut Line, product: &[u8]) -> std::result::Result<(), String> {
    if line.damaged.is_some() {
        return Ok(());
    }
    apply(line, product)
}

/// Applies one payment certificate to the line, checking it continues the registers.
fn apply(line: &mut Line, der: &[u8]) -> std::result::Result<(), String> {
    let p: Payment = read_unverified(der).map_err(|e| e.to_string())?;
    if p.credit_serial != line.grant.serial || p.credit_line_digest_hex != hex::encode(line.digest)
    {
        return Err("payment names another line".into());
    }
    if p.sequence != line.next_sequence {
        return Err(format!(
            "payment sequence {} where {} was expected",
            p.sequence, line.next_sequence
        ));
    }
    let remaining = line
        .remaining
        .checked_sub(Amount(p.amount))
        .map_err(|_| "payment larger than the credit remaining".to_string())?;
    if remaining.0 != p.credit_remaining {
        return Err(format!(
            "certificate states {} remaining, the registers {}",
            p.credit_remaining, remaining
        ));
    }
    let used = line
        .used
        .checked_add(Amount(p.amount))
        .map_err(|_| "used register overflow".to_string())?;
    // The line's control total: granted = used + remaining.
    if used.checked_add(remaining).ok() != Some(Amount(line.grant.amount)) {
        return Err("granted != used + remaining".into());
    }
    line.used = used;
    line.remaining = remaining;
    line.next_sequence += 1;
    Ok(())
}

/// Signs `v` as CMS SignedData with the meter's identity key (certificate
/// embedded), signing time `now`.
pub(crate) async fn sign_with_identity<T: Payload>(
    meter: &Meter,
    identity: &Identity,
    v: &T,
    now: i64,
) -> Result<Vec<u8>> {
    v.validate()?;
    let content = payload::encode(v)?;
    meter
        .sign_as_meter(identity, T::CONTENT_TYPE, &content, now)
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
