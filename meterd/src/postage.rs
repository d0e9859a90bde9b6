//! Postage indicium (claims 17–31): prices a mail piece by class and weight
//! band from the rate table in force, debits it, counts the piece, and
//! returns a signed indicium (layout in `meter_pki::indicium`,
//! `docs/INDICIUM.md`) printable as one DataMatrix symbol.
//!
//! The indicium must carry the ascending and descending registers and the
//! piece count *after its own debit*. Those are only known when the ledger
//! applies the row (rows from every service are applied in commit order),
//! so the indicium is made inside the commit by a
//! [`crate::ledger::Finisher`]: the ledger thread hands it the row's
//! sequence number, time and registers, it signs in the TPM (identity key,
//! urgent lane, as the batch seal does) and the row records the product's
//! digest. The values in an indicium are therefore exactly those of its
//! row, under any concurrency, at the cost of one TPM signature on the
//! ledger thread per postage piece (see `docs/INDICIUM.md`, trade-off).
//!
//! Postal MAC (claim 21): once the authority's postal secret key is imported
//! (`postal_key.rs`), the same finisher also asks the TPM for TPM2_HMAC over the
//! body and writes layout version 2 (body, signature, 16-byte MAC): one more
//! TPM command per piece, in the same sale and on the same ledger-thread step.
//!
//! Signing key: the meter identity key, whose certificate (`meter.pem`,
//! KeyUsage digitalSignature, no EKU) verifies the indicium. The postmark
//! key is not used: its certificate has a critical timeStamping EKU.

use meter_pki::indicium::{self, IndiciumBody, TEXT_LEN};

use std::sync::Arc;

use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::housing::{Housing, POSTAL_KEY};
use crate::ledger::{Finisher, Key, LedgerError, RowContext};
use crate::meter::{Meter, IDENTITY_KEY};
use crate::money::Amount;
use crate::sale::{self, Made, Price, Sale, Spec};
use crate::service::Service;
use crate::tariff::RateBook;

/// Heaviest piece accepted before the rate table is even consulted (grams).
pub const MAX_GRAMS: u32 = 1_000_000;

/// A validated postage request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostageRequest {
    /// Mail class (a rate-table class name).
    pub class: String,
    /// Weight in grams.
    pub grams: u32,
    /// Origin data (e.g. postal code), 1–16 printable ASCII.
    pub origin: String,
    /// Destination data, 1–16 printable ASCII.
    pub destination: String,
}

/// The price of a piece and the table that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// Postage in minor units.
    pub amount: Amount,
    /// Rate table version.
    pub rates_version: u32,
    /// Currency code.
    pub currency: String,
    /// Minor-unit digits.
    pub digits: u8,
}

fn invalid(m: String) -> ServiceError {
    ServiceError::InvalidInput(m)
}

impl PostageRequest {
    /// Checks the fields (before any lookup, reservation or TPM work).
    pub fn check(&self) -> Result<()> {
        for (what, v) in [
            ("class", &self.class),
            ("origin", &self.origin),
            ("destination", &self.destination),
        ] {
            indicium::check_text(what, v, TEXT_LEN).map_err(|_| {
                invalid(format!(
                    "{what} must be 1 to {TEXT_LEN} printable ASCII characters (not starting with a space)"
                ))
            })?;
        }
        if self.grams == 0 || self.grams > MAX_GRAMS {
            return Err(invalid(format!(
                "weight must be 1 to {MAX_GRAMS} grams, got {}",
                self.grams
            )));
        }
        Ok(())
    }

    fn input_digest(&self) -> crate::ledger::Digest {
        input_digest(
            "postage",
            &[
                self.class.as_bytes(),
                &self.grams.to_be_bytes(),
                self.origin.as_bytes(),
                self.destination.as_bytes(),
            ],
        )
    }
}

/// Prices `req` from the table in force at `now`: the lightest band of its
/// class that holds the weight.
pub fn quote(book: &RateBook, req: &PostageRequest, now: i64) -> Result<Quote> {
    let table = book.current(now).ok_or_else(|| {
        ServiceError::NotProvisioned(
            "no rate table in force: install one signed by the authority (meterctl rates install)"
                .into(),
        )
    })?;
    let mut bands: Vec<_> = table
        .postage
        .iter()
        .filter(|r| r.class == req.class)
        .collect();
    if bands.is_empty() {
        let mut classes: Vec<&str> = table.postage.iter().map(|r| r.class.as_str()).collect();
        classes.sort_unstable();
        classes.dedup();
        return Err(invalid(format!(
            "unknown mail class {:?}; rate table version {} has: {}",
            req.class,
            table.version,
            classes.join(", ")
        )));
    }
    bands.sort_by_key(|r| r.max_grams);
    let band = bands
        .iter()
        .find(|r| req.grams <= r.max_grams)
        .ok_or_else(|| {
            invalid(format!(
                "{} g is beyond the heaviest {} band ({} g) of rate table version {}",
                req.grams,
                req.class,
                bands.last().map_or(0, |r| r.max_grams),
                table.version
            ))
        })?;
    Ok(Quote {
        amount: Amount(band.amount),
        rates_version: table.version,
        currency: table.currency.clone(),
        digits: table.digits,
    })
}

/// `Postage`: validates, prices at the sale's time, reserves (refusing
/// before any TPM work when funds are short), then debits and returns the
/// indicium made at commit. A retry with the same request id and input
/// returns the same indicium, even if the table changed since.
pub async fn postage(meter: &Meter, req: PostageRequest, key: Key) -> Result<Vec<u8>> {
    req.check()?;
    let spec = Spec::sale(Service::Postage, Some(key), req.input_digest()).keyed_at_commit();
    let priced = req.clone();
    let spec = spec.priced(Price::Quoted(Arc::new(move |book, now| {
        Ok(quote(book, &priced, now)?.amount)
    })));
    let sold = sale::sell(meter, spec, async |sale: &Sale| {
        let q = quote(&sale.rates, &req, sale.now())?;
        let meter_id = sale.identity.meter_id.clone();
        let req = req.clone();
        // Runs on the housing thread: signs with the housing it is handed.
        let finish = Finisher::new(move |row: &RowContext, h: &mut dyn Housing| {
            let body = body_for(&meter_id, &req, &q, row)?;
            let with_mac = h.has_key(POSTAL_KEY)?;
            let version = if with_mac {
                indicium::VERSION_MAC
            } else {
                indicium::VERSION
            };
            let bytes = body
                .encode_version(version)
                .map_err(|e| LedgerError::Invalid(e.to_string()))?;
            let digest = indicium::body_digest(&bytes);
            let sig = h.sign_digest(IDENTITY_KEY, &digest)?;
            if !with_mac {
                return Ok(indicium::assemble(&bytes, &sig));
            }
            let full = h.hmac(POSTAL_KEY, &bytes)?;
            let mut mac = [0u8; indicium::MAC_LEN];
            mac.copy_from_slice(&full[..indicium::MAC_LEN]);
            Ok(indicium::assemble_with_mac(&bytes, &sig, &mac))
        });
        Ok(Made::AtCommit(finish))
    })
    .await?;
    Ok(sold.product)
}

/// The indicium fields for the row `row`.
fn body_for(
    meter_id: &str,
    req: &PostageRequest,
    q: &Quote,
    row: &RowContext,
) -> std::result::Result<IndiciumBody, LedgerError> {
    let date = u32::try_from(row.time_ms.div_euclid(1000))
        .map_err(|_| LedgerError::Invalid("row time does not fit the indicium date".into()))?;
    Ok(IndiciumBody {
        meter_id: meter_id.to_owned(),
        date,
        seq: row.seq,
        amount: q.amount.0,
        // The register that paid: the postage pair once the funds are
        // split (issue 17), the one combined pool before.
        ascending: row
            .registers
            .paying(crate::ledger::Fund::Postage)
            .ascending
            .0,
        descending: row
            .registers
            .paying(crate::ledger::Fund::Postage)
            .descending
            .0,
        pieces: row.registers.per_service[Service::Postage.index()],
        rates_version: q.rates_version,
        currency: q.currency.clone(),
        digits: q.digits,
        class: req.class.clone(),
        grams: req.grams,
        origin: req.origin.clone(),
        destination: req.destination.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> PostageRequest {
        PostageRequest {
            class: "letter".into(),
            grams: 20,
            origin: "10115".into(),
            destination: "SW1A 1AA".into(),
        }
    }

    #[test]
    fn request_checks() {
        assert!(req().check().is_ok());
        let bad = [
            PostageRequest { grams: 0, ..req() },
            PostageRequest {
                grams: MAX_GRAMS + 1,
                ..req()
            },
            PostageRequest {
                origin: "x".repeat(17),
                ..req()
            },
            PostageRequest {
                destination: "a\u{7}b".into(),
                ..req()
            },
            PostageRequest {
                class: String::new(),
                ..req()
            },
        ];
        for b in bad {
            assert!(
                matches!(b.check(), Err(ServiceError::InvalidInput(_))),
                "{b:?}"
            );
        }
        // Different input, different digest: a reused request id is caught.
        let other = PostageRequest { grams: 21, ..req() };
        assert_ne!(req().input_digest(), other.input_digest());
    }
}
