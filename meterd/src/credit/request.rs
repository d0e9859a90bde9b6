//! `RequestCredit` (Fig. 8, 802): a credit request for a creditor, carrying
//! the meter's postmark and signed with its identity key.
//!
//! The postmark is an RFC 3161 token over the SHA-384 of the request's
//! [`CreditAsk`] JSON, so the creditor learns when and from which meter it
//! was asked; it is sold and charged as a postmark (one Debit row, service
//! `postmark`, idempotent by request id). The CMS around it (eContentType
//! `CT_CREDIT_REQUEST`) proves the meter's identity key made the request.

use meter_pki::credit::{CreditAsk, CreditRequest, MAX_NAME};

use super::sign_with_identity;
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::ledger::Key;
use crate::meter::Meter;
use crate::postmark;
use crate::sale::{self, Made, Sale, Spec};
use crate::service::Service;

/// Makes a signed, postmarked credit request; returns it (CMS DER).
pub async fn request_credit(
    meter: &Meter,
    creditor: &str,
    amount: u64,
    key: Key,
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
    let request_id = key.shown();
    let spec = Spec::sale(
        Service::Postmark,
        Some(key),
        input_digest(
            "credit-request",
            &[creditor.as_bytes(), &amount.to_be_bytes()],
        ),
    );
    let sold = sale::sell(meter, spec, async move |sale: &Sale| {
        let ask = CreditAsk {
            meter_id: sale.identity.meter_id.clone(),
            creditor: creditor.to_owned(),
            amount,
            requested_at: sale.now(),
            request_id,
        };
        let token = postmark::token(meter, sale, CreditRequest::imprint(&ask)?).await?;
        let request = CreditRequest {
            ask,
            postmark_hex: hex::encode(token),
        };
        Ok(Made::Product(
            sign_with_identity(meter, &sale.identity, &request, sale.now()).await?,
        ))
    })
    .await?;
    Ok(sold.product)
}
