//! The postal secret key (claim 21): the meter asks the authority for it, naming its TPM
//! storage parent, and imports the authority's wrapped delivery into the TPM.
//!
//! `PostalKeyRequest` returns a CMS SignedData by the identity key (eContentType
//! `CT_POSTAL_KEY_REQUEST`) around the storage primary's public area; records nothing.
//! `ImportPostalKey` verifies the authority's delivery (signature chaining to the trust
//! anchors, this meter's id), TPM2_Imports the blob (`housing::Housing::import_hmac_key`:
//! the key is never in the clear outside the TPM, not here, not in the state directory)
//! and records the signed delivery as an Event row (note [`NOTE`], key
//! `m/postal-key/<delivery id>`), which the audit verifies again. A delivery is imported
//! once: a second import of the same delivery id is refused (`Replay`); a newer delivery
//! replaces the key. From then on every postage indicium carries a TPM2_HMAC over its
//! body (`postage.rs`, version 2 of the layout).
//!
//! Order: the TPM import comes before the ledger row. A crash in between leaves a key the
//! ledger does not name yet; importing the same delivery again imports and records it.

use meter_pki::postal::{PostalKeyDelivery, PostalKeyRequest};

use crate::clock;
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::housing::POSTAL_KEY;
use crate::ledger::{EntryKind, Key};
use crate::meter::Meter;
use crate::sale::{self, Spec};

/// Note of the Event row that records a postal-key delivery.
pub const NOTE: &str = crate::semantic::NOTE_POSTAL_KEY;

/// `PostalKeyRequest`: the signed request naming this TPM's storage parent.
pub async fn request(meter: &Meter) -> Result<Vec<u8>> {
    let (identity, _ledger) = meter.provisioned()?;
    let parent = meter.housing().call(|h| h.storage_parent_public()).await?;
    let now = clock::now();
    let req = PostalKeyRequest {
        meter_id: identity.meter_id.clone(),
        parent_public_hex: hex::encode(parent),
        issued_at: now,
    };
    let content = meter_pki::payload::encode(&req)?;
    meter
        .sign_as_meter(
            &identity,
            meter_pki::oid::CT_POSTAL_KEY_REQUEST,
            &content,
            now,
        )
        .await
}

/// `ImportPostalKey`: verifies and imports a delivery; returns its delivery id.
pub async fn import(meter: &Meter, signed: &[u8]) -> Result<String> {
    let (identity, ledger) = meter.provisioned()?;
    let (delivery, verified) =
        meter_pki::payload::open::<PostalKeyDelivery>(signed, &identity.anchors, clock::now())?;
    if delivery.meter_id != identity.meter_id {
        return Err(ServiceError::InvalidInput(format!(
            "the postal key delivery is for meter {}, this meter is {}",
            delivery.meter_id, identity.meter_id
        )));
    }
    let (public, duplicate, seed) = delivery.blobs()?;
    let replay = || {
        ServiceError::Replay(format!(
            "postal key delivery {} was already imported",
            delivery.delivery_id
        ))
    };
    let key = Key::meter("postal-key", &delivery.delivery_id);
    // One import at a time (the check, the TPM import and the row).
    let _guard = meter.provisioning().lock().await;
    if ledger.lookup(&key).await?.is_some() {
        return Err(replay());
    }
    meter
        .housing()
        .call(move |h| h.import_hmac_key(POSTAL_KEY, &public, &duplicate, &seed))
        .await?;
    let spec = Spec::record(
        EntryKind::Event,
        key,
        input_digest("postal-key", &[&verified.content]),
        NOTE,
    );
    sale::record_once(meter, spec, signed.to_vec(), replay).await?;
    tracing::info!(delivery = %delivery.delivery_id, "postal secret key imported into the TPM");
    Ok(delivery.delivery_id)
}
