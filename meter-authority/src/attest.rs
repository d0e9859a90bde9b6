//! Attested certification of a meter (issue 12, item 4), authority side.
//!
//! The meter sends, beside its two PKCS#10 requests, the evidence of `meterctl provision`
//! (`attestation.json`, [`meter_pki::tpm::Evidence`]): its EK certificate, its attestation
//! key (AK) and the AK's TPM2_Certify of the identity and postmark keys.
//! [`Authority::certify_meter_attested`] checks all of it *before* any serial is spent
//! (EK certificate to one of the EK CAs the operator trusts, AK template, each certified
//! Name equal to the Name of the public area given, fixedTPM, fixedParent,
//! sensitiveDataOrigin, userWithAuth, and each request's key being the certified one),
//! then issues the two certificates and returns them only sealed under a credential made
//! to the EK for the AK's Name ([`SealedCredential`]): only the TPM holding that EK and that
//! AK can activate it, so neither a software AK nor a copy of the evidence gets the
//! certificates.
//!
//! The checked evidence is kept as `attested/<meter id>.json`: the AK public area in it is
//! what later verifies the meter's AK-signed TPM time and counter attestations
//! ([`Authority::meter_ak`], for `inspect`).

use std::path::PathBuf;

use meter_pki::cert::Certificate;
use meter_pki::csr;
use meter_pki::tpm::{self, Evidence, SealedCredential};

use crate::{check_meter_id, Authority, AuthorityError, MeterCerts, Result};

impl Authority {
    fn attested_path(&self, meter_id: &str) -> Result<PathBuf> {
        check_meter_id(meter_id)?;
        Ok(self.dir.join("attested").join(format!("{meter_id}.json")))
    }

    /// Verifies the requests and the TPM evidence of a meter against the EK CAs `ek_cas`,
    /// then issues its certificates, sealed in a credential only its TPM can activate.
    pub fn certify_meter_attested(
        &mut self,
        identity_csr: &[u8],
        postmark_csr: &[u8],
        evidence: &[u8],
        ek_cas: &[Certificate],
        now: i64,
    ) -> Result<(MeterCerts, SealedCredential)> {
        self.with_state(|a, state| {
            a.certify_meter_attested_in(state, identity_csr, postmark_csr, evidence, ek_cas, now)
        })
    }

    /// [`Authority::certify_meter_attested`] with the serials taken from and
    /// the certificates recorded in `register` (the caller makes it durable).
    pub fn certify_meter_attested_in(
        &self,
        register: &mut dyn crate::state::Register,
        identity_csr: &[u8],
        postmark_csr: &[u8],
        evidence: &[u8],
        ek_cas: &[Certificate],
        now: i64,
    ) -> Result<(MeterCerts, SealedCredential)> {
        if ek_cas.is_empty() {
            return Err(AuthorityError::Invalid(
                "attested certification needs at least one EK CA (--ek-ca)".into(),
            ));
        }
        let ev = Evidence::from_json(evidence)?;
        let id = csr::verify(identity_csr)?;
        let pm = csr::verify(postmark_csr)?;
        if ev.meter_id != id.subject_cn {
            return Err(AuthorityError::Invalid(format!(
                "the attestation is for meter {:?}, the requests for {:?}",
                ev.meter_id, id.subject_cn
            )));
        }
        let expected: [(&str, &[u8]); 2] = [
            (tpm::ROLE_IDENTITY, &id.public_sec1),
            (tpm::ROLE_POSTMARK, &pm.public_sec1),
        ];
        // Every check before any serial is taken.
        let verified = tpm::verify_evidence(&ev, ek_cas, &expected, now)?;
        let path = self.attested_path(&ev.meter_id)?;
        let certs = self.certify_meter_in(register, &id, &pm, now)?;
        let sealed = SealedCredential::make(
            &verified,
            &certs.meter_id,
            &der(&certs.identity)?,
            &der(&certs.postmark)?,
        )?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| AuthorityError::io(parent, e))?;
        }
        crate::state::write_json_atomic(&path, &ev, "attestation")?;
        Ok((certs, sealed))
    }

    /// The AK public area (marshalled `TPMT_PUBLIC`) of a meter certified with attestation,
    /// `None` for a meter certified `--unattested` (or unknown). Give it to
    /// `meter_pki::tpm::{verify_time, verify_counter}`.
    pub fn meter_ak(&self, meter_id: &str) -> Result<Option<Vec<u8>>> {
        let path = self.attested_path(meter_id)?;
        let Some(ev) = crate::state::read_json::<Evidence>(&path)? else {
            return Ok(None);
        };
        let ak = hex::decode(&ev.ak_public)
            .map_err(|_| AuthorityError::Corrupt(format!("{}: AK not hex", path.display())))?;
        Ok(Some(ak))
    }
}

fn der(c: &Certificate) -> Result<Vec<u8>> {
    use der::Encode;
    c.to_der()
        .map_err(|e| AuthorityError::Invalid(format!("certificate encoding: {e}")))
}

/// Reads the EK CA certificates of `paths` (PEM files may hold several).
pub fn read_ek_cas(paths: &[PathBuf]) -> Result<Vec<Certificate>> {
    let mut all = Vec::new();
    for p in paths {
        all.extend(meter_pki::cert::parse_all(&crate::read_bounded(p)?)?);
    }
    Ok(all)
}

impl Authority {
    /// Checks a report's TPM attestation against the AK this authority certified for
    /// `meter_id`, over `digest` (the report digest). A meter certified `--unattested`
    /// has no AK: refused.
    pub fn verify_report_attestation(
        &self,
        meter_id: &str,
        attestation: &meter_pki::tpm::ReportAttestation,
        digest: &[u8],
    ) -> Result<meter_pki::tpm::VerifiedReportAttestation> {
        let ak = self.meter_ak(meter_id)?.ok_or_else(|| {
            AuthorityError::Invalid(format!(
                "meter {meter_id:?} was not certified with attestation: no AK to check its \
                 report attestation with"
            ))
        })?;
        Ok(attestation.verify(&ak, digest)?)
    }
}
