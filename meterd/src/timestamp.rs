//! `TimeStamp`: a postmark bought with an RFC 3161 `TimeStampReq`, answered
//! with a `TimeStampResp`, so that every time-stamp client (through the
//! `meter-tsa` HTTP endpoint or over D-Bus) buys a postmark with no new code.
//!
//! It is a postmark sale like `PostmarkDigest` (the same [`Spec`] shape,
//! priced as a postmark, idempotent by request id, the token signed in the
//! ledger's sequencing job and carrying its row's seal); only the imprint's
//! algorithm (SHA-256/384/512), the nonce and `certReq` come from the
//! request. The ledger stores the token itself, so the product seal reader
//! finds it; the response around it is rebuilt on every delivery (a retry
//! gets the same bytes).
//!
//! Refusals travel in-band, as a rejection the HTTP client can read: the
//! client's faults (bad DER, SHA-1, another policy, extensions) before
//! anything is reserved, so they charge nothing; and the meter's reasons to
//! sell nothing (funds short, locked, unpriced, clock) as `systemFailure`
//! with the reason as statusString. Only a request id reused for another
//! request (`Conflict`) and the caller's own faults at the door stay D-Bus
//! errors.

use meter_pki::tsp::{self, ReplyParams, TokenParams};
use meter_pki::tsq::{self, FailInfo, Refusal, Request};

use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::housing::Housing;
use crate::ledger::{Finisher, Key, LedgerError, RowContext};
use crate::meter::{Meter, POSTMARK_KEY};
use crate::sale::{self, Made, Sale, Spec};
use crate::service::Service;

/// Answers the DER `request` (see the module doc): a `TimeStampResp`.
pub async fn time_stamp(meter: &Meter, request: &[u8], key: Key) -> Result<Vec<u8>> {
    let policy = meter_pki::oid::POSTMARK_POLICY;
    let req = match tsq::parse_request(request, policy) {
        Ok(r) => r,
        Err(refusal) => {
            tracing::info!(%refusal, "TimeStamp request refused");
            return Ok(tsq::rejection(&refusal)?);
        }
    };
    let spec = Spec::sale(
        Service::Postmark,
        Some(key),
        input_digest("timestamp", &[request]),
    )
    .keyed_at_commit();
    let sold = sale::sell(meter, spec, async |sale: &Sale| {
        Ok(Made::AtCommit(sealed_reply(sale, req)))
    })
    .await;
    match sold {
        Ok(sold) => Ok(tsq::granted(&sold.product)?),
        Err(e) => match in_band(&e, &meter.rates().currency(crate::clock::now())) {
            Some(text) => {
                tracing::info!(error = %e, "TimeStamp refused: systemFailure");
                Ok(tsq::rejection(&Refusal::new(
                    FailInfo::SystemFailure,
                    text,
                ))?)
            }
            None => Err(e),
        },
    }
}

/// The statusString of a sale the meter refused, amounts in `currency`
/// (code, digits), or `None` for an error that stays a D-Bus error (the
/// caller's request id, access, cancellation).
fn in_band(e: &ServiceError, currency: &(String, u8)) -> Option<String> {
    match e {
        ServiceError::Conflict { .. }
        | ServiceError::AccessDenied(_)
        | ServiceError::InvalidInput(_)
        | ServiceError::Cancelled => None,
        ServiceError::Housing(_) | ServiceError::Storage(_) | ServiceError::Internal(_) => {
            Some("the meter failed; its administrator must see the meter's log".into())
        }
        other => Some(other.message_in(currency.1, &currency.0)),
    }
}

/// The finisher: the token answering `req` for its row, sealing it.
fn sealed_reply(sale: &Sale, req: Request) -> Finisher {
    let cert = sale.identity.postmark_cert.clone();
    Finisher::sealing(move |row: &RowContext, h: &mut dyn Housing| {
        let params = ReplyParams {
            base: TokenParams {
                imprint: [0; 48],
                serial: row.seq,
                gen_time: row.time_ms.div_euclid(1000),
                policy: meter_pki::oid::POSTMARK_POLICY,
                accuracy_secs: 1,
                nonce: None,
            },
            imprint: req.imprint,
            nonce: req.nonce,
            certs: req.cert_req,
        };
        let pki = |e: meter_pki::PkiError| LedgerError::Invalid(format!("time-stamp token: {e}"));
        let prepared = tsp::prepare_reply_sealed(&params, &cert, &[], &row.seal()).map_err(pki)?;
        let raw = h.sign_digest(POSTMARK_KEY, &prepared.digest())?;
        prepared.finish(&raw).map_err(pki)
    })
}
