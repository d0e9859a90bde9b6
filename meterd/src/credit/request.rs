//! `RequestCredit` (Fig. 8, 802): a credit request for a creditor, carrying
//! the meter's postmark and signed with its identity key.
//!
//! The postmark is an RFC 3161 token over the SHA-384 of the request's
//! [`CreditAsk`] JSON, so the creditor learns when and from which meter it
//! was asked; it is sold and charged as a postmark (one Debit row, service
//! `postmark`, idempotent by request id). The CMS around it (eContentType
//! `CT_CREDIT_REQUEST`) proves the meter's identity key made the request.

use meter_pki::credit::{CreditAsk, CreditRequest, MAX_NAME};
use meter_pki::tsp::{self, TokenParams};

use super::sign_with_identity;
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::meter::{Meter, POSTMARK_KEY};
use crate::sale;
use crate::service::Service;

/// Makes a signed, postmarked credit request; returns it (CMS DER).
pub async fn request_credit(
    meter: &Meter,
    creditor: &str,
    amount: u64,
    request_id: &str,
) -> Result<Vec<u8>> {
    let ok = !creditor.is_empty()
        && creditor.len() <= MAX_NAME
        && creditor.bytes().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(ServiceError::InvalidInput(format!(
            "creditor must be 1..{MAX_NAME} printable ASCII characters without spaces"
        )));
    }
    if amount == 0 {
        return Err(ServiceError::InvalidInput(
            "the credit asked must be positive".into(),
        ));
    }
    let digest = input_digest(
        "credit-request",
        &[creditor.as_bytes(), &amount.to_be_bytes()],
    );
    sale::sell(
        meter,
        Service::Postmark,
        Some(request_id),
        async move { Ok((digest, ())) },
        |(), identity| async move {
            let now = sale::checked_time(meter, &meter.require_ledger()?)
                .await?
                .div_euclid(1000);
            let ask = CreditAsk {
                meter_id: identity.meter_id.clone(),
                creditor: creditor.to_owned(),
                amount,
                requested_at: now,
                request_id: request_id.to_owned(),
            };
            let params = TokenParams {
                imprint: CreditRequest::imprint(&ask)?,
                serial: meter.next_postmark_serial(),
                gen_time: now,
                policy: meter_pki::oid::POSTMARK_POLICY,
                accuracy_secs: 1,
                nonce: None,
            };
            let prepared = tsp::prepare(&params, &identity.postmark_cert, &[])?;
            let raw = meter
                .housing()
                .sign_digest(POSTMARK_KEY, prepared.digest())
                .await?;
            let token = prepared.finish(&raw)?;
            let request = CreditRequest {
                ask,
                postmark_hex: hex::encode(token),
            };
            sign_with_identity(meter, &identity, &request).await
        },
    )
    .await
}
