//! TPM attestation, verifier side: the evidence a meter sends at provisioning, the checks
//! the authority runs on it, the credential it answers with, and the checks of the TPM
//! time and counter attestations that come with reports. No I/O, no TSS.
//!
//! The chain of trust (issue 12, item 4):
//!
//! * **EK certificate → genuine TPM.** [`ekcert::verify`] checks it against the EK CAs the
//!   authority trusts (vendor CAs; swtpm's local CA in the tests).
//! * **AK → same TPM as the EK.** The meter's attestation key (AK) is a restricted ECDSA
//!   P-384 signing key; the authority answers with a credential made to the EK for the AK's
//!   Name ([`credential::make_credential`]), which only that TPM, holding that AK, can
//!   activate. The issued certificates travel sealed under the credential
//!   ([`credential::seal`]): a meter whose AK or keys are software never sees them.
//! * **Keys → same TPM as the AK, non-exportable.** For each key (identity, postmark) the AK
//!   signs a TPM2_Certify; [`verify_evidence`] checks `TPM_GENERATED`, the certify type,
//!   the qualifying data (binding it to the meter id and role), that the certified Name is
//!   the Name of the public area supplied, that the area is a P-384 signing key with
//!   `fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth`, and that it is the key of the
//!   PKCS#10 request for that role. A restricted key refuses to sign anything that starts
//!   with `TPM_GENERATED`, so such a structure can only come from the TPM itself.
//!
//! The AK must be exactly of the meter's template ([`check_ak`]): restricted, sign, fixed,
//! TPM-generated, no admin policy and no auth policy. The last two matter: a public-only
//! object loaded with TPM2_LoadExternal has no auth value, so an attacker holding a software
//! AK could activate a credential for it only through a policy it chose itself.
//!
//! For reports (issue 12, item 5), [`verify_time`] and [`verify_counter`] check the AK's
//! TPM2_GetTime and TPM2_NV_Certify over a caller's qualifying data (the report digest).

pub mod credential;
pub mod duplicate;
pub mod ekcert;
mod report;
pub mod wire;

pub use report::{ReportAttestation, VerifiedReportAttestation};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

use crate::{sig, util, PkiError, Result};
use wire::{attr, Attest, Attested, ClockInfo, Public};

/// Version of [`Evidence`] and [`SealedCredential`].
pub const VERSION: u32 = 1;
/// Role of the identity (communications) key.
pub const ROLE_IDENTITY: &str = "identity";
/// Role of the postmark key.
pub const ROLE_POSTMARK: &str = "postmark";

/// Attributes every certified meter key must have.
pub const KEY_ATTRIBUTES: u32 = attr::FIXED_TPM
    | attr::FIXED_PARENT
    | attr::SENSITIVE_DATA_ORIGIN
    | attr::USER_WITH_AUTH
    | attr::SIGN;
/// Attributes the AK must have.
pub const AK_ATTRIBUTES: u32 = attr::FIXED_TPM
    | attr::FIXED_PARENT
    | attr::SENSITIVE_DATA_ORIGIN
    | attr::USER_WITH_AUTH
    | attr::RESTRICTED
    | attr::SIGN;

/// The qualifying data of the TPM2_Certify of the key of `role`: binds the certification
/// to the meter (whose id is derived from its identity key) and to the role.
pub fn certify_qualifying(meter_id: &str, role: &str) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(b"meterd-certify-v1\0");
    h.update(meter_id.as_bytes());
    h.update([0]);
    h.update(role.as_bytes());
    h.finalize().into()
}

fn unhex(what: &str, s: &str) -> Result<Vec<u8>> {
    hex::decode(s).map_err(|_| PkiError::Malformed(format!("{what} is not hex")))
}

/// One key certified by the AK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifiedKey {
    /// `identity` or `postmark`.
    pub role: String,
    /// Marshalled `TPMT_PUBLIC` of the key, hex.
    pub public: String,
    /// Marshalled `TPMS_ATTEST` of its TPM2_Certify, hex.
    pub certify: String,
    /// AK signature over it, raw P-384 `r || s`, hex.
    pub signature: String,
}

/// What the meter sends with its requests (`attestation.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// [`VERSION`].
    pub version: u32,
    /// The meter id (as in the requests).
    pub meter_id: String,
    /// EK certificate (DER), hex.
    pub ek_cert: String,
    /// Marshalled `TPMT_PUBLIC` of the AK, hex.
    pub ak_public: String,
    /// The certified keys.
    pub keys: Vec<CertifiedKey>,
}

impl Evidence {
    /// JSON bytes.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self).map_err(|e| PkiError::Malformed(format!("evidence: {e}")))
    }

    /// Parses JSON bytes (bounded).
    pub fn from_json(bytes: &[u8]) -> Result<Evidence> {
        util::check_size(bytes.len())?;
        serde_json::from_slice(bytes)
            .map_err(|e| PkiError::Malformed(format!("attestation evidence: {e}")))
    }
}

/// A checked AK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ak {
    /// Its marshalled public area.
    pub public: Vec<u8>,
    /// Its Name.
    pub name: Vec<u8>,
    /// Its P-384 point (uncompressed SEC1).
    pub point: Vec<u8>,
}

/// Checks that `ak_public` is an AK of the meter's template; returns its Name and point.
pub fn check_ak(ak_public: &[u8]) -> Result<Ak> {
    let p = Public::parse(ak_public)?;
    let point = p
        .p384_point()
        .ok_or_else(|| PkiError::Untrusted("the AK is not an ECC P-384 key".into()))?;
    let ok = p.has(AK_ATTRIBUTES)
        && !p.has(attr::DECRYPT)
        && !p.has(attr::ADMIN_WITH_POLICY)
        && p.auth_policy.is_empty()
        && p.name_alg == wire::ALG_SHA256
        && p.scheme == wire::ALG_ECDSA
        && p.scheme_hash == wire::ALG_SHA384;
    if !ok {
        return Err(PkiError::Untrusted(format!(
            "the AK is not a restricted, TPM-generated, fixed ECDSA P-384 signing key without \
             policy (attributes {:#010x})",
            p.attributes
        )));
    }
    Ok(Ak {
        public: ak_public.to_vec(),
        name: wire::object_name(ak_public)?,
        point,
    })
}

/// Verifies the AK's signature over `attest` and parses it (`TPM_GENERATED` checked).
pub fn verify_signed(ak: &Ak, attest: &[u8], signature: &[u8]) -> Result<Attest> {
    let raw: &[u8; 96] = signature
        .try_into()
        .map_err(|_| PkiError::Malformed("an AK signature is 96 bytes (r || s)".into()))?;
    sig::verify_prehash(&ak.point, &util::sha384(attest), raw)
        .map_err(|_| PkiError::BadSignature("the AK signature does not verify".into()))?;
    Attest::parse(attest)
}

fn expect_extra(a: &Attest, qualifying: &[u8]) -> Result<()> {
    if a.extra_data != qualifying {
        return Err(PkiError::BadSignature(
            "the attestation was made for other qualifying data".into(),
        ));
    }
    Ok(())
}

/// A key the AK certified, after the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKey {
    /// Role.
    pub role: String,
    /// Uncompressed SEC1 P-384 point.
    pub point: Vec<u8>,
    /// TPM Name.
    pub name: Vec<u8>,
    /// Its authPolicy (empty: authorization by auth value).
    pub auth_policy: Vec<u8>,
}

/// Checks one TPM2_Certify of the evidence of `meter_id`.
pub fn verify_certify(ak: &Ak, key: &CertifiedKey, meter_id: &str) -> Result<VerifiedKey> {
    let public = unhex("key public area", &key.public)?;
    let a = verify_signed(
        ak,
        &unhex("certify", &key.certify)?,
        &unhex("signature", &key.signature)?,
    )?;
    let Attested::Certify { name, .. } = &a.attested else {
        return Err(PkiError::WrongType(format!(
            "the {} attestation is not a TPM2_Certify",
            key.role
        )));
    };
    expect_extra(&a, &certify_qualifying(meter_id, &key.role))?;
    let expected_name = wire::object_name(&public)?;
    if *name != expected_name {
        return Err(PkiError::BadSignature(format!(
            "the TPM certified another object than the {} public area supplied",
            key.role
        )));
    }
    let p = Public::parse(&public)?;
    let ok = p.has(KEY_ATTRIBUTES)
        && !p.has(attr::DECRYPT)
        && !p.has(attr::RESTRICTED)
        && p.scheme == wire::ALG_ECDSA
        && p.scheme_hash == wire::ALG_SHA384;
    let point = p.p384_point().filter(|_| ok).ok_or_else(|| {
        PkiError::Untrusted(format!(
            "the {} key is not a TPM-generated, non-duplicable (fixedTPM, fixedParent), \
             userWithAuth ECDSA P-384 signing key (attributes {:#010x})",
            key.role, p.attributes
        ))
    })?;
    Ok(VerifiedKey {
        role: key.role.clone(),
        point,
        name: expected_name,
        auth_policy: p.auth_policy,
    })
}

/// Evidence that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedEvidence {
    /// The EK (from its certificate).
    pub ek: ekcert::VerifiedEk,
    /// The AK.
    pub ak: Ak,
    /// The certified keys, in the order of `expected`.
    pub keys: Vec<VerifiedKey>,
}

/// Runs every check of the evidence: EK certificate to `ek_cas`, AK template, and one
/// TPM2_Certify per `(role, SEC1 key of its request)` in `expected`, no more, no less.
pub fn verify_evidence(
    ev: &Evidence,
    ek_cas: &[x509_cert::Certificate],
    expected: &[(&str, &[u8])],
    now: i64,
) -> Result<VerifiedEvidence> {
    if ev.version != VERSION {
        return Err(PkiError::Malformed(format!(
            "attestation evidence version {} (expected {VERSION})",
            ev.version
        )));
    }
    let ek = ekcert::verify(&unhex("EK certificate", &ev.ek_cert)?, ek_cas, now)?;
    let ak = check_ak(&unhex("AK public area", &ev.ak_public)?)?;
    if ev.keys.len() != expected.len() {
        return Err(PkiError::Malformed(format!(
            "the evidence certifies {} keys, expected {}",
            ev.keys.len(),
            expected.len()
        )));
    }
    let mut keys = Vec::with_capacity(expected.len());
    for (role, sec1) in expected {
        let mut found = ev.keys.iter().filter(|k| k.role == *role);
        let (Some(k), None) = (found.next(), found.next()) else {
            return Err(PkiError::Malformed(format!(
                "the evidence must certify exactly one {role} key"
            )));
        };
        let v = verify_certify(&ak, k, &ev.meter_id)?;
        if v.point != *sec1 {
            return Err(PkiError::Untrusted(format!(
                "the {role} request is for a key the TPM did not certify"
            )));
        }
        if keys.iter().any(|o: &VerifiedKey| o.name == v.name) || v.name == ak.name {
            return Err(PkiError::Untrusted(
                "one TPM object is certified for two roles".into(),
            ));
        }
        keys.push(v);
    }
    Ok(VerifiedEvidence { ek, ak, keys })
}

/// What the authority answers (`credential.json`): the credential made to the EK for the
/// AK, and the certificates sealed under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedCredential {
    /// [`VERSION`].
    pub version: u32,
    /// The meter id.
    pub meter_id: String,
    /// Name of the AK it was made for, hex.
    pub ak_name: String,
    /// `TPM2B_ID_OBJECT` contents, hex.
    pub credential_blob: String,
    /// `TPM2B_ENCRYPTED_SECRET` contents, hex.
    pub secret: String,
    /// IV of the sealed certificates, hex.
    pub iv: String,
    /// The sealed certificates, hex.
    pub ciphertext: String,
    /// Their MAC, hex.
    pub mac: String,
}

/// The certificates inside a [`SealedCredential`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuedCerts {
    /// Identity certificate (DER), hex.
    pub meter_cert: String,
    /// Postmark certificate (DER), hex.
    pub postmark_cert: String,
}

fn sealing_aad(meter_id: &str, ak_name: &[u8]) -> Vec<u8> {
    let mut aad = b"meterd-credential-v1\0".to_vec();
    aad.extend_from_slice(meter_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(ak_name);
    aad
}

impl SealedCredential {
    /// Makes the credential for `ev` and seals the two certificates (DER) under it.
    pub fn make(
        ev: &VerifiedEvidence,
        meter_id: &str,
        meter_cert: &[u8],
        postmark_cert: &[u8],
    ) -> Result<SealedCredential> {
        let credential = credential::fresh_credential();
        let made = credential::make_credential(&ev.ek.key, &ev.ak.name, &credential)?;
        let plain = serde_json::to_vec(&IssuedCerts {
            meter_cert: hex::encode(meter_cert),
            postmark_cert: hex::encode(postmark_cert),
        })
        .map_err(|e| PkiError::Malformed(format!("certificates: {e}")))?;
        let sealed = credential::seal(&credential, &sealing_aad(meter_id, &ev.ak.name), &plain)?;
        Ok(SealedCredential {
            version: VERSION,
            meter_id: meter_id.to_owned(),
            ak_name: hex::encode(&ev.ak.name),
            credential_blob: hex::encode(made.credential_blob),
            secret: hex::encode(made.secret),
            iv: hex::encode(sealed.iv),
            ciphertext: hex::encode(sealed.ciphertext),
            mac: hex::encode(sealed.mac),
        })
    }

    /// JSON bytes.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self).map_err(|e| PkiError::Malformed(format!("credential: {e}")))
    }

    /// Parses JSON bytes (bounded).
    pub fn from_json(bytes: &[u8]) -> Result<SealedCredential> {
        util::check_size(bytes.len())?;
        let c: SealedCredential = serde_json::from_slice(bytes)
            .map_err(|e| PkiError::Malformed(format!("sealed credential: {e}")))?;
        if c.version != VERSION {
            return Err(PkiError::Malformed(format!(
                "sealed credential version {} (expected {VERSION})",
                c.version
            )));
        }
        Ok(c)
    }

    /// The credential blob and encrypted secret, for TPM2_ActivateCredential.
    pub fn activation_input(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        Ok((
            unhex("credential blob", &self.credential_blob)?,
            unhex("secret", &self.secret)?,
        ))
    }

    /// Opens the certificates with the activated `credential`; `meter_id` and `ak_name` are
    /// the meter's own (a credential for another meter or AK is refused).
    pub fn open(
        &self,
        credential: &[u8],
        meter_id: &str,
        ak_name: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        if self.meter_id != meter_id || unhex("AK name", &self.ak_name)? != ak_name {
            return Err(PkiError::WrongType(
                "the credential is for another meter or attestation key".into(),
            ));
        }
        let sealed = credential::Sealed {
            iv: unhex("iv", &self.iv)?,
            ciphertext: unhex("ciphertext", &self.ciphertext)?,
            mac: unhex("mac", &self.mac)?,
        };
        let plain = credential::open(credential, &sealing_aad(meter_id, ak_name), &sealed)?;
        let certs: IssuedCerts = serde_json::from_slice(&plain)
            .map_err(|e| PkiError::Malformed(format!("sealed certificates: {e}")))?;
        Ok((
            unhex("meter certificate", &certs.meter_cert)?,
            unhex("postmark certificate", &certs.postmark_cert)?,
        ))
    }
}

/// A verified TPM2_GetTime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeAttestation {
    /// The TPM clock, reset and restart counts (in the clear: the AK is in the endorsement
    /// hierarchy).
    pub clock: ClockInfo,
    /// Milliseconds since the last TPM reset or restart.
    pub time: u64,
    /// Firmware version.
    pub firmware_version: u64,
}

/// Verifies the AK's TPM2_GetTime over `qualifying` (e.g. a report digest).
pub fn verify_time(
    ak_public: &[u8],
    attest: &[u8],
    signature: &[u8],
    qualifying: &[u8],
) -> Result<TimeAttestation> {
    let ak = check_ak(ak_public)?;
    let a = verify_signed(&ak, attest, signature)?;
    expect_extra(&a, qualifying)?;
    match a.attested {
        Attested::Time {
            time,
            clock,
            firmware_version,
        } => Ok(TimeAttestation {
            clock,
            time,
            firmware_version,
        }),
        _ => Err(PkiError::WrongType("not a TPM2_GetTime attestation".into())),
    }
}

/// A verified TPM2_NV_Certify of an 8-byte counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterAttestation {
    /// Name of the NV index (nameAlg ‖ hash of its `TPMS_NV_PUBLIC`): the same index
    /// always has the same Name while its attributes stay (a written counter has
    /// `TPMA_NV_WRITTEN`).
    pub index_name: Vec<u8>,
    /// The counter value.
    pub value: u64,
    /// The TPM clock when it signed.
    pub clock: ClockInfo,
}

/// Verifies the AK's TPM2_NV_Certify of a whole 8-byte counter over `qualifying`.
pub fn verify_counter(
    ak_public: &[u8],
    attest: &[u8],
    signature: &[u8],
    qualifying: &[u8],
) -> Result<CounterAttestation> {
    let ak = check_ak(ak_public)?;
    let a = verify_signed(&ak, attest, signature)?;
    expect_extra(&a, qualifying)?;
    match a.attested {
        Attested::Nv {
            index_name,
            offset: 0,
            contents,
        } => {
            let bytes: [u8; 8] = contents.as_slice().try_into().map_err(|_| {
                PkiError::Malformed("the certified NV contents are not 8 bytes".into())
            })?;
            Ok(CounterAttestation {
                index_name,
                value: u64::from_be_bytes(bytes),
                clock: a.clock,
            })
        }
        _ => Err(PkiError::WrongType(
            "not a TPM2_NV_Certify of a whole counter".into(),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
