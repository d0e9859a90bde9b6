//! Postmark (Fig. 3): an RFC 3161 time-stamp token over the message's
//! SHA-384, signed in the housing with the postmark key.
//!
//! The token names the meter (TSA name = the postmark certificate's subject,
//! whose CN is the meter id) and carries a serial unique to this meter, so
//! any relying party with the authority's root verifies it with
//! `openssl ts -verify`.
//!
//! A postmark is made inside the ledger's sequencing job (a sealing
//! [`Finisher`]): its serial is its row's sequence number, its genTime the
//! row's time (never earlier than the row before), and it carries its row's
//! ledger seal `(epoch, seq, link)` as a signed attribute, so its one TPM
//! signature also seals the ledger up to its row (see `ledger` and
//! `docs/ARCHITECTURE.md`); relying parties ignore the attribute.

use meter_pki::tsp::{self, TokenParams};

use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::housing::Housing;
use crate::ledger::{Digest, Finisher, Key, LedgerError, RowContext};
use crate::meter::{Meter, POSTMARK_KEY};
use crate::sale::{self, Made, Sale, Spec};
use crate::service::Service;

/// `Postmark` / `PostmarkDigest`: postmarks the SHA-384 `imprint` (the
/// caller's, or one the door computed from the message's descriptor before
/// anything was reserved).
pub async fn postmark(meter: &Meter, imprint: Digest, key: Key) -> Result<Vec<u8>> {
    let spec = Spec::sale(
        Service::Postmark,
        Some(key),
        input_digest("postmark", &[&imprint]),
    )
    .keyed_at_commit();
    let sold = sale::sell(meter, spec, async |sale: &Sale| {
        Ok(Made::AtCommit(sealed_token(sale, imprint)))
    })
    .await?;
    Ok(sold.product)
}

/// The finisher of a postmark: the token of `imprint` for its row, sealing
/// it, signed in the housing the sequencing job hands it.
fn sealed_token(sale: &Sale, imprint: Digest) -> Finisher {
    let cert = sale.identity.postmark_cert.clone();
    Finisher::sealing(move |row: &RowContext, h: &mut dyn Housing| {
        let params = TokenParams {
            imprint,
            serial: row.seq,
            gen_time: row.time_ms.div_euclid(1000),
            policy: meter_pki::oid::POSTMARK_POLICY,
            accuracy_secs: 1,
            nonce: None,
        };
        let pki = |e: meter_pki::PkiError| LedgerError::Invalid(format!("postmark token: {e}"));
        let prepared = tsp::prepare_sealed(&params, &cert, &[], &row.seal()).map_err(pki)?;
        let raw = h.sign_digest(POSTMARK_KEY, &prepared.digest())?;
        prepared.finish(&raw).map_err(pki)
    })
}

/// A caller-computed digest must be a SHA-384.
pub fn imprint_of(bytes: &[u8]) -> Result<Digest> {
    bytes.try_into().map_err(|_| {
        ServiceError::InvalidInput(format!("a SHA-384 digest is 48 bytes, got {}", bytes.len()))
    })
}

/// Signs a token over `imprint` at the sale's time; also used by the credit
/// request (Fig. 8, 802), which carries a postmark of its own.
pub async fn token(meter: &Meter, sale: &Sale, imprint: Digest) -> Result<Vec<u8>> {
    let params = TokenParams {
        imprint,
        serial: meter.next_postmark_serial(),
        gen_time: sale.now(),
        policy: meter_pki::oid::POSTMARK_POLICY,
        accuracy_secs: 1,
        nonce: None,
    };
    let prepared = tsp::prepare(&params, &sale.identity.postmark_cert, &[])?;
    let raw = meter
        .housing()
        .sign_digest(POSTMARK_KEY, prepared.digest())
        .await?;
    Ok(prepared.finish(&raw)?)
}
