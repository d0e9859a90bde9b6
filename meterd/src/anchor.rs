//! Trust-anchor rollover: the authority replaces or adds a root the meter trusts.
//!
//! The only way in is an `AnchorUpdate` signed by a root the meter trusts NOW,
//! so a stolen bus socket cannot plant a root. The updated identity (same
//! certificates, new anchor list), followed by the signed update itself, is
//! written as a new Provision row: the meter loads the LAST Provision row at
//! start, so the new anchors survive a restart, the audit verifies the update
//! again (`semantic`), and the row's request id (`anchor:<SHA-384 of the new root>`)
//! makes each new root installable once. Old anchors are always kept, so
//! tokens, vouchers and tables signed under them still verify; the mode only
//! decides which anchor is first (current).

use meter_pki::cert::{self, Certificate};
use meter_pki::payload::{AnchorUpdate, ANCHOR_REPLACE};
use sha2::{Digest, Sha384};

use crate::clock;
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::identity::Identity;
use crate::ledger::{EntryKind, Key};
use crate::meter::Meter;
use crate::sale::{self, Spec};

/// `UpdateTrustAnchor`: applies an authority-signed anchor update; returns
/// the number of anchors now trusted.
pub async fn update(meter: &Meter, signed: &[u8]) -> Result<usize> {
    // One update at a time: each reads the identity it replaces.
    let _guard = meter.provisioning().lock().await;
    let identity = meter.require_identity()?;
    let now = clock::now();
    let verified = meter_pki::cms::verify(
        signed,
        &identity.anchors,
        Some(&meter_pki::oid::CT_ANCHOR_UPDATE),
        now,
    )?;
    let order: AnchorUpdate = meter_pki::payload::decode(&verified.content)?;
    if let Some(id) = &order.meter_id {
        if *id != identity.meter_id {
            return Err(ServiceError::InvalidInput(format!(
                "the update is for meter {id}, this meter is {}",
                identity.meter_id
            )));
        }
    }
    let der = order.new_anchor_der()?;
    let new = parse_root(&der, now)?;
    if identity.anchors.contains(&new) {
        return Err(ServiceError::Stale(
            "this root is already a trust anchor of the meter; nothing to do".into(),
        ));
    }
    let replace = order.mode == ANCHOR_REPLACE;
    let subject = cert::subject_cn(&new).unwrap_or_else(|| cert::serial_hex(&new));
    let mut anchors = Vec::with_capacity(identity.anchors.len() + 1);
    if replace {
        anchors.push(new.clone());
        anchors.extend(identity.anchors.iter().cloned());
    } else {
        anchors.extend(identity.anchors.iter().cloned());
        anchors.push(new);
    }
    let updated = Identity {
        anchors,
        ..(*identity).clone()
    };
    // The row keeps the authority's signed update after the new bundle
    // (`identity::split_row`), so every audit can verify again that an
    // anchor in force then signed it (`semantic`).
    let mut product = updated.to_bundle()?;
    product.extend_from_slice(&meter_pki::pem::decode_any(signed, "CMS")?);
    let note = if replace {
        crate::semantic::NOTE_ANCHOR_REPLACE
    } else {
        crate::semantic::NOTE_ANCHOR_ADD
    };
    let spec = Spec::record(
        EntryKind::Provision,
        Key::meter("anchor", hex::encode(Sha384::digest(&der))),
        input_digest("anchor-update", &[&verified.content]),
        note,
    );
    sale::record_once(meter, spec, product, || {
        ServiceError::Replay("this trust-anchor update was already applied".into())
    })
    .await?;
    let count = updated.anchors.len();
    tracing::warn!(
        mode = %order.mode,
        anchors = count,
        %subject,
        "trust anchors updated by authority order"
    );
    meter.set_identity(updated)?;
    Ok(count)
}

/// Parses the new root: a CA certificate, signed by its own key, valid now.
fn parse_root(der: &[u8], now: i64) -> Result<Certificate> {
    let new = cert::parse(der)?;
    if !cert::is_ca(&new) {
        return Err(ServiceError::InvalidInput(
            "the new trust anchor is not a CA certificate".into(),
        ));
    }
    cert::check_signed_by(&new, &new).map_err(|e| {
        ServiceError::InvalidInput(format!("the new trust anchor is not self-signed: {e}"))
    })?;
    cert::verify_chain(&new, &[], std::slice::from_ref(&new), now)?;
    Ok(new)
}
