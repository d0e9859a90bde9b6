//! Provisioning: the meter's keys are born in the TPM, the authority
//! certifies them, and its root becomes the meter's trust anchor.
//!
//! Two steps, because the authority is a separate party: `begin` creates the
//! identity key (which also seals the ledger, so the ledger is created right
//! after it) and the postmark key, and returns their PKCS#10 requests;
//! `install` checks the certificates the authority returned against those
//! keys and the root, and records them in the ledger. Until then the meter
//! is `unprovisioned` and sells nothing.

use der::Encode;
use meter_pki::cert::{self, Certificate};
use meter_pki::csr;

use crate::clock;
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::identity::{meter_id_from_key, Identity};
use crate::ledger::{Entry, EntryKind, Key, Outcome};
use crate::meter::{Meter, IDENTITY_KEY, POSTMARK_KEY};

/// What `begin` returns.
#[derive(Debug, Clone)]
pub struct Requests {
    /// Meter id, derived from the identity key.
    pub meter_id: String,
    /// PKCS#10 (DER) for the identity key.
    pub identity_csr: Vec<u8>,
    /// PKCS#10 (DER) for the postmark key.
    pub postmark_csr: Vec<u8>,
    /// TPM evidence for both keys (JSON, `meter_pki::tpm::Evidence`), when the housing
    /// can attest (see `attest.rs`).
    pub attestation: Option<Vec<u8>>,
}

/// `Provision`: creates the keys if needed and returns fresh requests.
pub async fn begin(meter: &Meter) -> Result<Requests> {
    let _guard = meter.provisioning().lock().await;
    if meter.identity().is_some() {
        return Err(ServiceError::InvalidInput(
            "the meter is already provisioned".into(),
        ));
    }
    ensure_key(meter, IDENTITY_KEY).await?;
    if meter.ledger().is_none() {
        meter.open_ledger().await?;
    }
    ensure_key(meter, POSTMARK_KEY).await?;
    let identity_pub = public_key(meter, IDENTITY_KEY).await?;
    let meter_id = meter_id_from_key(&identity_pub);
    let identity_csr = request(meter, &meter_id, IDENTITY_KEY, identity_pub).await?;
    let postmark_pub = public_key(meter, POSTMARK_KEY).await?;
    let postmark_csr = request(meter, &meter_id, POSTMARK_KEY, postmark_pub).await?;
    let attestation = crate::attest::evidence(meter, &meter_id).await;
    tracing::info!(%meter_id, attested = attestation.is_some(), "provisioning requests made");
    Ok(Requests {
        meter_id,
        identity_csr,
        postmark_csr,
        attestation,
    })
}

async fn ensure_key(meter: &Meter, name: &'static str) -> Result<()> {
    if !meter.housing().call(move |h| h.has_key(name)).await? {
        meter.housing().call(move |h| h.create_key(name)).await?;
        tracing::info!(key = name, "key created in the TPM");
    }
    Ok(())
}

async fn public_key(meter: &Meter, name: &'static str) -> Result<Vec<u8>> {
    Ok(meter.housing().call(move |h| h.public_key(name)).await?)
}

async fn request(meter: &Meter, cn: &str, key: &'static str, public: Vec<u8>) -> Result<Vec<u8>> {
    let prepared = csr::prepare(cn, &public)?;
    let raw = meter.housing().sign_digest(key, prepared.digest()).await?;
    Ok(prepared.finish(&raw)?)
}

/// `InstallProvisioning`: checks and installs the authority's certificates.
pub async fn install(
    meter: &Meter,
    meter_cert: &[u8],
    postmark_cert: &[u8],
    root: &[u8],
) -> Result<()> {
    let _guard = meter.provisioning().lock().await;
    if meter.identity().is_some() {
        return Err(ServiceError::InvalidInput(
            "the meter is already provisioned".into(),
        ));
    }
    let ledger = meter.ledger().ok_or_else(|| {
        ServiceError::NotProvisioned(
            "run meterctl provision first: the meter has no keys yet".into(),
        )
    })?;
    let meter_id = meter.meter_id().unwrap_or_default();
    let root = cert::parse(root)?;
    let meter_cert = cert::parse(meter_cert)?;
    let postmark_cert = cert::parse(postmark_cert)?;
    let now = clock::now();
    let anchors = vec![root];
    cert::verify_chain(&anchors[0], &[], &anchors, now)?;
    check_cert(meter, &meter_cert, &meter_id, IDENTITY_KEY, &anchors, now).await?;
    check_cert(
        meter,
        &postmark_cert,
        &meter_id,
        POSTMARK_KEY,
        &anchors,
        now,
    )
    .await?;
    if !cert::has_eku_timestamping_critical(&postmark_cert) {
        return Err(ServiceError::InvalidInput(
            "the postmark certificate must carry a critical extended key usage of timeStamping only".into(),
        ));
    }
    let identity = Identity {
        meter_id,
        meter_cert,
        postmark_cert,
        anchors,
    };
    let bundle = identity.to_bundle()?;
    // The bootstrap row: the pipeline needs an identity, which is what
    // this row installs, so it is committed directly.
    let entry = Entry::record(
        EntryKind::Provision,
        Some(Key::meter("provision", "")),
        input_digest("provision", &[&bundle]),
        bundle,
        crate::semantic::NOTE_INSTALLED,
    );
    if let Outcome::Existing { .. } = ledger.commit(entry, None).await? {
        return Err(ServiceError::InvalidInput(
            "the meter is already provisioned".into(),
        ));
    }
    tracing::info!(meter_id = %identity.meter_id, "provisioned");
    meter.set_identity(identity)
}

async fn check_cert(
    meter: &Meter,
    c: &Certificate,
    meter_id: &str,
    key: &'static str,
    anchors: &[Certificate],
    now: i64,
) -> Result<()> {
    cert::verify_chain(c, &[], anchors, now)?;
    if cert::subject_cn(c).as_deref() != Some(meter_id) {
        return Err(ServiceError::InvalidInput(format!(
            "the {key} certificate is not for meter {meter_id}"
        )));
    }
    if cert::public_key_sec1(c)? != public_key(meter, key).await? {
        return Err(ServiceError::InvalidInput(format!(
            "the {key} certificate is for a key this meter does not hold"
        )));
    }
    // Encoding must round-trip, or the ledger bundle could not be read back.
    c.to_der()
        .map_err(|e| ServiceError::InvalidInput(format!("certificate encoding: {e}")))?;
    Ok(())
}
