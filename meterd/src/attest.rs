//! TPM attestation, meter side (issue 12, item 4): the evidence sent with the provisioning
//! requests, the activation of the authority's credential, and the AK-signed TPM time and
//! counter that come with reports.
//!
//! * **Evidence.** `Provision` returns, beside the two PKCS#10 requests, the JSON of
//!   [`meter_pki::tpm::Evidence`]: the EK certificate, the AK public area and the AK's
//!   TPM2_Certify of the identity and postmark keys, each over
//!   [`meter_pki::tpm::certify_qualifying`] (meter id, role). A housing that cannot attest
//!   (software housing, a TPM with no EK certificate) gives none: the authority then
//!   refuses the requests unless told `--unattested`.
//! * **Credential.** An attested `certify-meter` answers with a
//!   [`SealedCredential`]: the certificates sealed under a secret only the TPM with that EK
//!   and that AK can recover (TPM2_ActivateCredential). `InstallCredential` activates it,
//!   opens the certificates and installs them like `InstallProvisioning`.
//! * **Reports.** [`report_attestation`] has the AK sign TPM2_GetTime and
//!   TPM2_NV_Certify of the ledger's NV counter over a caller's digest (the report
//!   digest); the authority checks them with `meter_pki::tpm::ReportAttestation::verify`
//!   and the AK it kept at certification.

use meter_pki::tpm::{self, CertifiedKey, Evidence, ReportAttestation, SealedCredential};

use crate::error::{Result, ServiceError};
use crate::meter::{Meter, IDENTITY_KEY, POSTMARK_KEY};

/// The evidence of `meter_id`'s keys (JSON), or `None` with a warning when the housing
/// cannot attest.
pub async fn evidence(meter: &Meter, meter_id: &str) -> Option<Vec<u8>> {
    match make_evidence(meter, meter_id).await {
        Ok(ev) => Some(ev),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "no TPM attestation for the provisioning requests: the authority will \
                 certify this meter only --unattested"
            );
            None
        }
    }
}

async fn make_evidence(meter: &Meter, meter_id: &str) -> Result<Vec<u8>> {
    let id = meter.housing().call(|h| h.attest_identity()).await?;
    let mut keys = Vec::with_capacity(2);
    for (role, key) in [
        (tpm::ROLE_IDENTITY, IDENTITY_KEY),
        (tpm::ROLE_POSTMARK, POSTMARK_KEY),
    ] {
        let q = tpm::certify_qualifying(meter_id, role);
        let (public, a) = meter
            .housing()
            .call(move |h| Ok((h.key_public_area(key)?, h.certify_key(key, &q)?)))
            .await?;
        keys.push(CertifiedKey {
            role: role.to_owned(),
            public: hex::encode(public),
            certify: hex::encode(&a.attest),
            signature: hex::encode(a.signature),
        });
    }
    let ev = Evidence {
        version: tpm::VERSION,
        meter_id: meter_id.to_owned(),
        ek_cert: hex::encode(&id.ek_cert),
        ak_public: hex::encode(&id.ak_public),
        keys,
    };
    Ok(ev.to_json()?)
}

/// `InstallCredential`, first half: activates `credential` (JSON of [`SealedCredential`])
/// with the AK and opens the certificates in it: (identity, postmark), DER, for
/// `provision::install` (`App::install_credential` does both).
pub async fn open_credential(meter: &Meter, credential: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let sealed = SealedCredential::from_json(credential)?;
    let meter_id = meter.meter_id().ok_or_else(|| {
        ServiceError::NotProvisioned(
            "run meterctl provision first: the meter has no keys yet".into(),
        )
    })?;
    let (blob, secret) = sealed.activation_input()?;
    let (ak_public, activated) = meter
        .housing()
        .call(move |h| {
            let ak = h.attest_identity()?.ak_public;
            Ok((ak, h.activate_credential(&blob, &secret)?))
        })
        .await
        .map_err(|e| {
            ServiceError::InvalidInput(format!(
                "the credential does not activate in this TPM (made for another TPM or \
                 attestation key?): {e}"
            ))
        })?;
    let ak_name = tpm::wire::object_name(&ak_public)?;
    Ok(sealed.open(&activated, &meter_id, &ak_name)?)
}

/// Has the AK attest TPM time and the NV counter over `digest` (at most 64 bytes; a
/// SHA-384 report digest); the authority checks the result with
/// [`ReportAttestation::verify`] and the AK it kept (`Authority::meter_ak`). About 20 ms
/// on swtpm; NV_Certify reconnects to the TPM, so call it once per report, never on the
/// sale path. Fails on a housing without a TPM or a TPM without an EK certificate.
pub async fn report_attestation(meter: &Meter, digest: &[u8]) -> Result<ReportAttestation> {
    if digest.len() > 64 {
        return Err(ServiceError::InvalidInput(
            "a report digest to attest is at most 64 bytes".into(),
        ));
    }
    let index = meter.config().nv_index;
    let q = digest.to_vec();
    let (ak, time, counter) = meter
        .housing()
        .call(move |h| {
            let ak = h.attest_identity()?.ak_public;
            let time = h.attest_time(&q)?;
            let counter = h.certify_counter(index, &q)?;
            Ok((ak, time, counter))
        })
        .await?;
    Ok(ReportAttestation::new(
        &ak,
        (&time.attest, &time.signature),
        (&counter.attest, &counter.signature),
    ))
}

/// `ReportAttestation`: the TPM's attestation (JSON [`ReportAttestation`]) of the caller's
/// report `key`, over the SHA-384 of the report's JSON (the digest the authority's
/// acknowledgement names; the JSON signs the segment reference, so the attestation binds
/// the report and its rows). Made after the report: its counter may be ahead of the
/// report's, never behind. Empty when the housing cannot attest (software housing, no
/// EK certificate): such a meter sends none, and an authority that certified it with
/// attestation refuses the report.
pub async fn attest_report(meter: &Meter, key: crate::ledger::Key) -> Result<Vec<u8>> {
    let (identity, ledger) = meter.provisioned()?;
    let no_report = || {
        ServiceError::InvalidInput(format!(
            "you made no status report with request id {:?}; make it first (Report)",
            key.shown()
        ))
    };
    let stored = ledger.lookup(&key).await?.ok_or_else(no_report)?;
    if stored.kind != crate::ledger::EntryKind::Debit
        || stored.service != Some(crate::service::Service::StatusReport)
    {
        return Err(no_report());
    }
    let (_, opened) = meter_pki::payload::open::<meter_pki::report::StatusReport>(
        &stored.product,
        &identity.anchors,
        crate::clock::now(),
    )?;
    let digest = hex::decode(meter_pki::report::report_digest(&opened.content))
        .map_err(|_| ServiceError::Internal("report digest not hex".into()))?;
    match report_attestation(meter, &digest).await {
        Ok(a) => Ok(a.to_json()?),
        Err(e) => {
            tracing::warn!(error = %e, "no TPM attestation for the report: the housing cannot attest");
            Ok(Vec::new())
        }
    }
}
