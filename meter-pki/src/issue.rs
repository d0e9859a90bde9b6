//! Certificate issuance with software keys (the authority side, and test fixtures).
//!
//! Certificates are built by hand rather than with `x509_cert::builder` so that each profile
//! carries exactly the extensions the meter formats require (e.g. the postmark profile's
//! critical EKU timeStamping only, leaves with digitalSignature only).

use crate::{oid, util, PkiError, Result};
use der::asn1::{BitString, OctetString};
use der::Encode;
use p384::ecdsa::{Signature, SigningKey};
use x509_cert::certificate::{TbsCertificate, Version};
use x509_cert::ext::pkix::certpolicy::PolicyInformation;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, CertificatePolicies, ExtendedKeyUsage, KeyUsage,
    KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;
use x509_cert::Certificate;

/// Kinds of certificate the authority (or a meter acting as agent CA) issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Self-signed trust anchor: CA, keyCertSign + cRLSign.
    Root,
    /// Meter identity (communications key): digitalSignature.
    MeterIdentity,
    /// Postmark (TSA) key: digitalSignature, critical EKU timeStamping only.
    Postmark,
    /// User key installed in the meter: digitalSignature.
    User,
    /// Agent CA (a business issuing for employees): CA with pathLen 0.
    AgentCa,
    /// User key-agreement (encryption) key installed in the meter: keyAgreement only,
    /// with the user policy. Its key cannot sign, so its request is signed by the
    /// meter's identity key (`csr::verify_signed_by`).
    UserEncryption,
}

fn ext<T: Encode>(id: der::asn1::ObjectIdentifier, critical: bool, v: &T) -> Result<Extension> {
    Ok(Extension {
        extn_id: id,
        critical,
        extn_value: OctetString::new(v.to_der()?)?,
    })
}

fn extensions(
    profile: Profile,
    subject_key_id: Vec<u8>,
    issuer_key_id: Option<Vec<u8>>,
) -> Result<Vec<Extension>> {
    let mut out = Vec::new();
    let ca = matches!(profile, Profile::Root | Profile::AgentCa);
    if ca {
        let bc = BasicConstraints {
            ca: true,
            path_len_constraint: (profile == Profile::AgentCa).then_some(0),
        };
        out.push(ext(oid::EXT_BASIC_CONSTRAINTS, true, &bc)?);
        let ku = KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign);
        out.push(ext(oid::EXT_KEY_USAGE, true, &ku)?);
    } else if profile == Profile::UserEncryption {
        let ku = KeyUsage(KeyUsages::KeyAgreement.into());
        out.push(ext(oid::EXT_KEY_USAGE, true, &ku)?);
    } else {
        let ku = KeyUsage(KeyUsages::DigitalSignature.into());
        out.push(ext(oid::EXT_KEY_USAGE, true, &ku)?);
    }
    if matches!(profile, Profile::User | Profile::UserEncryption) {
        // Certificate policies, non-critical: marks a Fig. 5 user certificate.
        let policies = CertificatePolicies(vec![PolicyInformation {
            policy_identifier: oid::USER_POLICY,
            policy_qualifiers: None,
        }]);
        out.push(ext(oid::EXT_CERT_POLICIES, false, &policies)?);
    }
    if profile == Profile::Postmark {
        let eku = ExtendedKeyUsage(vec![oid::KP_TIME_STAMPING]);
        out.push(ext(oid::EXT_EKU, true, &eku)?);
    }
    let ski = SubjectKeyIdentifier(OctetString::new(subject_key_id)?);
    out.push(ext(oid::EXT_SKI, false, &ski)?);
    if let Some(kid) = issuer_key_id {
        let aki = AuthorityKeyIdentifier {
            key_identifier: Some(OctetString::new(kid)?),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        };
        out.push(ext(oid::EXT_AKI, false, &aki)?);
    }
    Ok(out)
}

/// Key identifier of a certificate: its SKI extension if present, else derived from the key.
pub(crate) fn cert_key_id(c: &Certificate) -> Vec<u8> {
    use der::Decode;
    c.tbs_certificate
        .extensions
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .find(|e| e.extn_id == oid::EXT_SKI)
        .and_then(|e| SubjectKeyIdentifier::from_der(e.extn_value.as_bytes()).ok())
        .map(|s| s.0.as_bytes().to_vec())
        .unwrap_or_else(|| util::key_id(&c.tbs_certificate.subject_public_key_info))
}

fn validity(not_before: i64, days: u32) -> Result<Validity> {
    let end = not_before
        .checked_add(i64::from(days) * 86_400)
        .ok_or_else(|| PkiError::Malformed("validity overflows".into()))?;
    Ok(Validity {
        not_before: util::time_from_unix(not_before)?,
        not_after: util::time_from_unix(end)?,
    })
}

fn sign_tbs(tbs: TbsCertificate, key: &SigningKey) -> Result<Certificate> {
    let digest = util::sha384(&tbs.to_der()?);
    let raw = crate::sig::sign_prehash_raw(key, &digest)?;
    let sig = Signature::from_slice(&raw)
        .map_err(|_| PkiError::Malformed("signature out of range".into()))?;
    Ok(Certificate {
        signature_algorithm: tbs.signature.clone(),
        tbs_certificate: tbs,
        signature: BitString::from_bytes(sig.to_der().as_bytes())?,
    })
}

fn sec1_of(key: &SigningKey) -> Vec<u8> {
    key.verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec()
}

/// A self-signed root certificate `CN=<cn>` valid `days` days from `not_before`.
pub fn self_signed_root(
    key: &SigningKey,
    cn: &str,
    serial: u64,
    not_before: i64,
    days: u32,
) -> Result<Certificate> {
    let name = util::name_cn(cn)?;
    let spki = util::spki_from_sec1(&sec1_of(key))?;
    let kid = util::key_id(&spki);
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::from(serial),
        signature: util::alg(oid::ECDSA_SHA384),
        issuer: name.clone(),
        validity: validity(not_before, days)?,
        subject: name,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions(Profile::Root, kid, None)?),
    };
    sign_tbs(tbs, key)
}

/// Issues a certificate `CN=<subject_cn>` for a P-384 key under `issuer_cert`, whose private
/// key is `issuer_key` (checked to match). `Profile::Root` here makes a cross-signed CA.
#[allow(clippy::too_many_arguments)]
pub fn issue(
    subject_cn: &str,
    subject_public_sec1: &[u8],
    profile: Profile,
    issuer_key: &SigningKey,
    issuer_cert: &Certificate,
    serial: u64,
    not_before: i64,
    days: u32,
) -> Result<Certificate> {
    if crate::cert::public_key_sec1(issuer_cert)? != sec1_of(issuer_key) {
        return Err(PkiError::Malformed(
            "issuer key does not match the issuer certificate".into(),
        ));
    }
    if serial == 0 {
        return Err(PkiError::Malformed("serial must be positive".into()));
    }
    let spki = util::spki_from_sec1(subject_public_sec1)?;
    let kid = util::key_id(&spki);
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::from(serial),
        signature: util::alg(oid::ECDSA_SHA384),
        issuer: issuer_cert.tbs_certificate.subject.clone(),
        validity: validity(not_before, days)?,
        subject: util::name_cn(subject_cn)?,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions(profile, kid, Some(cert_key_id(issuer_cert)))?),
    };
    sign_tbs(tbs, issuer_key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::cert;
    use crate::test_keys::{key, T0};

    #[test]
    fn chain_root_agent_leaf() {
        let rk = key(1);
        let root = self_signed_root(&rk, "Root", 1, T0, 3650).unwrap();
        let ak = key(2);
        let agent = issue(
            "Agent",
            &sec1_of(&ak),
            Profile::AgentCa,
            &rk,
            &root,
            2,
            T0,
            365,
        )
        .unwrap();
        let leaf = issue(
            "Emp",
            &sec1_of(&key(3)),
            Profile::User,
            &ak,
            &agent,
            3,
            T0,
            30,
        )
        .unwrap();
        let anchors = [root.clone()];
        assert_eq!(
            cert::verify_chain(&leaf, std::slice::from_ref(&agent), &anchors, T0 + 10),
            Ok(0)
        );
        assert_eq!(cert::verify_chain(&root, &[], &anchors, T0 + 10), Ok(0));
        // Missing intermediate, expired, not yet valid.
        assert!(matches!(
            cert::verify_chain(&leaf, &[], &anchors, T0 + 10),
            Err(PkiError::Untrusted(_))
        ));
        assert!(matches!(
            cert::verify_chain(
                &leaf,
                std::slice::from_ref(&agent),
                &anchors,
                T0 + 31 * 86_400
            ),
            Err(PkiError::Expired(_))
        ));
        assert!(cert::verify_chain(&leaf, std::slice::from_ref(&agent), &anchors, T0 - 1).is_err());
        // pathLen 0: an agent CA cannot certify another CA that then issues.
        let sub = issue(
            "Sub",
            &sec1_of(&key(4)),
            Profile::AgentCa,
            &ak,
            &agent,
            4,
            T0,
            30,
        )
        .unwrap();
        let deep = issue(
            "Deep",
            &sec1_of(&key(5)),
            Profile::User,
            &key(4),
            &sub,
            5,
            T0,
            30,
        )
        .unwrap();
        assert!(cert::verify_chain(&deep, &[agent.clone(), sub], &anchors, T0 + 10).is_err());
        // A leaf cannot issue.
        let bogus = issue(
            "X",
            &sec1_of(&key(6)),
            Profile::User,
            &key(3),
            &leaf,
            6,
            T0,
            30,
        )
        .unwrap();
        assert!(cert::verify_chain(&bogus, &[agent, leaf], &anchors, T0 + 10).is_err());
        // Wrong issuer key refused.
        assert!(issue(
            "Y",
            &sec1_of(&key(7)),
            Profile::User,
            &key(9),
            &root,
            7,
            T0,
            1
        )
        .is_err());
    }

    #[test]
    fn postmark_profile_has_critical_eku() {
        let rk = key(1);
        let root = self_signed_root(&rk, "Root", 1, T0, 3650).unwrap();
        let pm = issue(
            "meter-1",
            &sec1_of(&key(2)),
            Profile::Postmark,
            &rk,
            &root,
            2,
            T0,
            365,
        )
        .unwrap();
        let id = issue(
            "meter-1",
            &sec1_of(&key(3)),
            Profile::MeterIdentity,
            &rk,
            &root,
            3,
            T0,
            365,
        )
        .unwrap();
        assert!(cert::has_eku_timestamping_critical(&pm));
        assert!(!cert::has_eku_timestamping_critical(&id));
        assert_eq!(cert::subject_cn(&pm).as_deref(), Some("meter-1"));
        assert_eq!(cert::serial_hex(&pm), "02");
        assert_eq!(cert::public_key_sec1(&pm).unwrap(), sec1_of(&key(2)));
        assert_eq!(cert::not_after(&pm), T0 + 365 * 86_400);
        let der = cert::to_der(&pm).unwrap();
        assert_eq!(cert::parse(&der).unwrap(), pm);
        assert_eq!(
            cert::parse(cert::to_pem(&pm).unwrap().as_bytes()).unwrap(),
            pm
        );
    }
}
