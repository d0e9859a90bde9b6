//! Postmark (Fig. 3): an RFC 3161 time-stamp token over the message's
//! SHA-384, signed in the housing with the postmark key.
//!
//! The token names the meter (TSA name = the postmark certificate's subject,
//! whose CN is the meter id) and carries a serial unique to this meter, so
//! any relying party with the authority's root verifies it with
//! `openssl ts -verify`.

use meter_pki::tsp::{self, TokenParams};

use crate::digest::{input_digest, sha384_file};
use crate::error::{Result, ServiceError};
use crate::ledger::Digest;
use crate::meter::{Meter, POSTMARK_KEY};
use crate::sale;
use crate::service::Service;

/// `Postmark`: hashes the message from its descriptor, then postmarks the digest.
pub async fn postmark_file(
    meter: &Meter,
    file: std::fs::File,
    request_id: &str,
) -> Result<Vec<u8>> {
    let limit = meter.config().max_message_bytes;
    sale::sell(
        meter,
        Service::Postmark,
        Some(request_id),
        async move {
            let imprint = sha384_file(file, limit).await?;
            Ok((input_digest("postmark", &[&imprint]), imprint))
        },
        |imprint, identity| make_token(meter, imprint, identity),
    )
    .await
}

/// `PostmarkDigest`: postmarks a SHA-384 digest the caller computed.
pub async fn postmark_digest(meter: &Meter, imprint: &[u8], request_id: &str) -> Result<Vec<u8>> {
    let imprint: Digest = imprint.try_into().map_err(|_| {
        ServiceError::InvalidInput(format!(
            "a SHA-384 digest is 48 bytes, got {}",
            imprint.len()
        ))
    })?;
    sale::sell(
        meter,
        Service::Postmark,
        Some(request_id),
        async move { Ok((input_digest("postmark", &[&imprint]), imprint)) },
        |imprint, identity| make_token(meter, imprint, identity),
    )
    .await
}

async fn make_token(
    meter: &Meter,
    imprint: Digest,
    identity: std::sync::Arc<crate::identity::Identity>,
) -> Result<Vec<u8>> {
    let params = TokenParams {
        imprint,
        serial: meter.next_postmark_serial(),
        gen_time: sale::checked_time(meter, &meter.require_ledger()?)
            .await?
            .div_euclid(1000),
        policy: meter_pki::oid::POSTMARK_POLICY,
        accuracy_secs: 1,
        nonce: None,
    };
    let prepared = tsp::prepare(&params, &identity.postmark_cert, &[])?;
    let raw = meter
        .housing()
        .sign_digest(POSTMARK_KEY, prepared.digest())
        .await?;
    Ok(prepared.finish(&raw)?)
}
