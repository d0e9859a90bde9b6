//! Agent certificates (the patent's Fig. 3A): a business meter acting as a CA for its
//! employees under a certificate the authority gave it.
//!
//! Why here: the meter (TPM signer) and the authority (software key) must agree on the
//! agent-CA request and on the employee certificate profile, and relying parties check the
//! result with stock OpenSSL (`openssl verify -CAfile root.pem -untrusted agentca.pem`).
//!
//! * Agent-CA request: PKCS#10 by the agent key (CN = `<meter id> Agent CA`) carried in a CMS
//!   SignedData by the meter's identity key, eContentType [`oid::CT_CERT_REQUEST`]: the
//!   PKCS#10 proves possession of the agent key, the SignedData proves which certified meter
//!   asks. The authority answers with [`crate::issue::Profile::AgentCa`] (CA, pathLen 0).
//! * Employee certificate: subject O / OU / CN from [`AgentSubject`], keyUsage
//!   digitalSignature (critical), extendedKeyUsage clientAuth + emailProtection (an employee
//!   authenticates to services and signs mail), certificatePolicies [`oid::AGENT_POLICY`],
//!   subjectAltName rfc822Name when an e-mail address is given, SKI and AKI. Two-phase like
//!   every meter signature: [`prepare_employee`] → `digest()` → TPM → `finish`.

use der::asn1::{BitString, Ia5String, ObjectIdentifier, OctetString, SetOfVec, Utf8StringRef};
use der::{Any, Decode, Encode};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::certificate::{TbsCertificate, Version};
use x509_cert::ext::pkix::certpolicy::PolicyInformation;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, CertificatePolicies, ExtendedKeyUsage, KeyUsage,
    KeyUsages, SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::name::{RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;
use x509_cert::Certificate;

use crate::csr::VerifiedCsr;
use crate::{cert, cms, csr, oid, sig, util, PkiError, Result};

/// id-at-organizationName.
const AT_O: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");
/// id-at-organizationalUnitName.
const AT_OU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.11");
/// id-ce-subjectAltName.
const EXT_SAN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
/// id-ce-certificatePolicies.
const EXT_POLICIES: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.32");
/// id-kp-clientAuth.
const KP_CLIENT_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");
/// id-kp-emailProtection.
const KP_EMAIL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.4");

/// Longest name component (RFC 5280 ub-common-name, ub-organization-name).
pub const MAX_NAME: usize = 64;
/// Longest e-mail address accepted.
pub const MAX_EMAIL: usize = 128;

/// Common name of a meter's agent CA.
pub fn agent_ca_cn(meter_id: &str) -> String {
    format!("{meter_id} Agent CA")
}

/// Who an employee certificate is for. Built only through [`AgentSubject::new`], so every
/// value is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSubject {
    cn: String,
    o: Option<String>,
    ou: Option<String>,
    email: Option<String>,
}

/// Punctuation allowed in names besides letters, digits and inner spaces.
const NAME_PUNCT: &str = "-._'(),+/:&@#";

fn check_name(field: &str, v: &str) -> Result<()> {
    let n = v.chars().count();
    if n == 0 || n > MAX_NAME {
        return Err(PkiError::Malformed(format!(
            "subject {field} must be 1 to {MAX_NAME} characters, got {n}"
        )));
    }
    if v.starts_with(' ') || v.ends_with(' ') || v.contains("  ") {
        return Err(PkiError::Malformed(format!(
            "subject {field} has leading, trailing or double spaces"
        )));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_alphanumeric() || *c == ' ' || NAME_PUNCT.contains(*c)))
    {
        return Err(PkiError::Malformed(format!(
            "subject {field} contains the character {c:?}; use letters, digits, spaces and {NAME_PUNCT}"
        )));
    }
    Ok(())
}

fn check_email(v: &str) -> Result<()> {
    let bad = || {
        PkiError::Malformed(format!(
            "e-mail address must be local@domain.tld, ASCII, at most {MAX_EMAIL} characters"
        ))
    };
    if v.len() > MAX_EMAIL || !v.is_ascii() {
        return Err(bad());
    }
    let (local, domain) = v.split_once('@').ok_or_else(bad)?;
    let local_ok = !local.is_empty()
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._%+-".contains(&b));
    let domain_ok = domain.contains('.')
        && domain.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if local_ok && domain_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

impl AgentSubject {
    /// Checks and builds a subject. Names: 1–64 letters, digits, inner single spaces and
    /// `-._'(),+/:&@#` (no control, quote or escape characters that could confuse a DN
    /// printer); e-mail: plain ASCII `local@domain.tld`.
    pub fn new(
        cn: &str,
        o: Option<&str>,
        ou: Option<&str>,
        email: Option<&str>,
    ) -> Result<AgentSubject> {
        check_name("CN", cn)?;
        if let Some(o) = o {
            check_name("O", o)?;
        }
        if let Some(ou) = ou {
            check_name("OU", ou)?;
        }
        if let Some(e) = email {
            check_email(e)?;
        }
        Ok(AgentSubject {
            cn: cn.to_owned(),
            o: o.map(str::to_owned),
            ou: ou.map(str::to_owned),
            email: email.map(str::to_owned),
        })
    }

    /// Common name.
    pub fn cn(&self) -> &str {
        &self.cn
    }

    /// Canonical bytes (for request digests): fields tagged and length-prefixed.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (tag, v) in [
            (b'C', Some(&self.cn)),
            (b'O', self.o.as_ref()),
            (b'U', self.ou.as_ref()),
            (b'E', self.email.as_ref()),
        ] {
            if let Some(v) = v {
                out.push(tag);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v.as_bytes());
            }
        }
        out
    }

    fn name(&self) -> Result<RdnSequence> {
        let mut rdns = Vec::new();
        for (id, v) in [
            (AT_O, &self.o),
            (AT_OU, &self.ou),
            (oid::CN, &Some(self.cn.clone())),
        ] {
            if let Some(v) = v {
                let atv = AttributeTypeAndValue {
                    oid: id,
                    value: Any::encode_from(&Utf8StringRef::new(v)?)?,
                };
                rdns.push(RelativeDistinguishedName(SetOfVec::try_from(vec![atv])?));
            }
        }
        Ok(RdnSequence(rdns))
    }
}

fn ext<T: Encode>(id: ObjectIdentifier, critical: bool, v: &T) -> Result<Extension> {
    Ok(Extension {
        extn_id: id,
        critical,
        extn_value: OctetString::new(v.to_der()?)?,
    })
}

fn find_ext(c: &Certificate, id: ObjectIdentifier) -> Option<&Extension> {
    c.tbs_certificate
        .extensions
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .find(|e| e.extn_id == id)
}

/// Refuses a certificate that is not an agent CA: basicConstraints cA with pathLen 0 and
/// keyUsage keyCertSign, P-384 key, ECDSA-SHA384 signature.
pub fn check_agent_ca(c: &Certificate) -> Result<()> {
    let bc = find_ext(c, oid::EXT_BASIC_CONSTRAINTS)
        .map(|e| BasicConstraints::from_der(e.extn_value.as_bytes()))
        .transpose()?;
    if !matches!(
        bc,
        Some(BasicConstraints {
            ca: true,
            path_len_constraint: Some(0)
        })
    ) {
        return Err(PkiError::WrongType(
            "not an agent-CA certificate: basicConstraints must be CA:TRUE, pathlen:0".into(),
        ));
    }
    let ku = find_ext(c, oid::EXT_KEY_USAGE)
        .map(|e| KeyUsage::from_der(e.extn_value.as_bytes()))
        .transpose()?;
    if !matches!(ku, Some(k) if k.key_cert_sign()) {
        return Err(PkiError::WrongType(
            "not an agent-CA certificate: keyUsage lacks keyCertSign".into(),
        ));
    }
    cert::public_key_sec1(c)?;
    Ok(())
}

/// An employee certificate waiting for the agent key's signature.
#[derive(Debug, Clone)]
pub struct PreparedEmployee {
    tbs: TbsCertificate,
    digest: [u8; 48],
    issuer_sec1: Vec<u8>,
}

impl PreparedEmployee {
    /// SHA-384 of the DER TBSCertificate: what the agent key signs.
    pub fn digest(&self) -> [u8; 48] {
        self.digest
    }

    /// The DER certificate; `BadSignature` unless `raw_sig` is the agent CA key's.
    pub fn finish(self, raw_sig: &[u8; 96]) -> Result<Vec<u8>> {
        sig::verify_prehash(&self.issuer_sec1, &self.digest, raw_sig)?;
        let c = Certificate {
            signature_algorithm: self.tbs.signature.clone(),
            tbs_certificate: self.tbs,
            signature: BitString::from_bytes(&sig::raw_to_der(raw_sig)?)?,
        };
        Ok(c.to_der()?)
    }
}

/// Prepares the certificate of an employee key under `agent_ca`. `serial` is the positive
/// big-endian serial (1–20 bytes); validity is clipped to the agent CA's.
pub fn prepare_employee(
    subject: &AgentSubject,
    public_sec1: &[u8],
    agent_ca: &Certificate,
    serial: &[u8],
    not_before: i64,
    not_after: i64,
) -> Result<PreparedEmployee> {
    check_agent_ca(agent_ca)?;
    let not_after = not_after.min(cert::not_after(agent_ca));
    let not_before = not_before.max(cert::not_before(agent_ca));
    if not_after <= not_before {
        return Err(PkiError::Expired(
            "the agent-CA certificate leaves no validity for an employee certificate".into(),
        ));
    }
    if serial.first().is_none_or(|b| *b == 0 || *b >= 0x80) || serial.len() > 20 {
        return Err(PkiError::Malformed(
            "serial must be 1-20 bytes, positive, minimal".into(),
        ));
    }
    let spki = util::spki_from_sec1(public_sec1)?;
    let mut exts = vec![
        ext(
            oid::EXT_KEY_USAGE,
            true,
            &KeyUsage(KeyUsages::DigitalSignature.into()),
        )?,
        ext(
            oid::EXT_EKU,
            false,
            &ExtendedKeyUsage(vec![KP_CLIENT_AUTH, KP_EMAIL]),
        )?,
        ext(
            EXT_POLICIES,
            false,
            &CertificatePolicies(vec![PolicyInformation {
                policy_identifier: oid::AGENT_POLICY,
                policy_qualifiers: None,
            }]),
        )?,
        ext(
            oid::EXT_SKI,
            false,
            &SubjectKeyIdentifier(OctetString::new(util::key_id(&spki))?),
        )?,
    ];
    let issuer_kid = find_ext(agent_ca, oid::EXT_SKI)
        .and_then(|e| SubjectKeyIdentifier::from_der(e.extn_value.as_bytes()).ok())
        .map(|s| s.0.as_bytes().to_vec())
        .unwrap_or_else(|| util::key_id(&agent_ca.tbs_certificate.subject_public_key_info));
    exts.push(ext(
        oid::EXT_AKI,
        false,
        &AuthorityKeyIdentifier {
            key_identifier: Some(OctetString::new(issuer_kid)?),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        },
    )?);
    if let Some(e) = &subject.email {
        let san = SubjectAltName(vec![GeneralName::Rfc822Name(Ia5String::new(e)?)]);
        exts.push(ext(EXT_SAN, false, &san)?);
    }
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(serial)?,
        signature: util::alg(oid::ECDSA_SHA384),
        issuer: agent_ca.tbs_certificate.subject.clone(),
        validity: Validity {
            not_before: util::time_from_unix(not_before)?,
            not_after: util::time_from_unix(not_after)?,
        },
        subject: subject.name()?,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(exts),
    };
    let digest = util::sha384(&tbs.to_der()?);
    Ok(PreparedEmployee {
        tbs,
        digest,
        issuer_sec1: cert::public_key_sec1(agent_ca)?,
    })
}

/// What the authority learns from a verified agent-CA request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCaRequest {
    /// Meter id (CN of the identity certificate that signed the request).
    pub meter_id: String,
    /// The agent key's PKCS#10, self-signature checked.
    pub csr: VerifiedCsr,
}

/// Authority side: verifies an agent-CA request (SignedData by a meter certificate that
/// chains to `anchors`, content a PKCS#10 whose CN is [`agent_ca_cn`] of that meter).
pub fn verify_agent_ca_request(
    der_or_pem: &[u8],
    anchors: &[Certificate],
    now: i64,
) -> Result<AgentCaRequest> {
    let v = cms::verify(der_or_pem, anchors, Some(&oid::CT_CERT_REQUEST), now)?;
    let meter_id = cert::subject_cn(&v.signer)
        .ok_or_else(|| PkiError::Malformed("request signer has no common name".into()))?;
    let csr = csr::verify(&v.content)?;
    if csr.subject_cn != agent_ca_cn(&meter_id) {
        return Err(PkiError::Malformed(format!(
            "the request names {:?}, a meter {meter_id} agent CA must be {:?}",
            csr.subject_cn,
            agent_ca_cn(&meter_id)
        )));
    }
    if csr.public_sec1 == cert::public_key_sec1(&v.signer)? {
        return Err(PkiError::Malformed(
            "the agent key must not be the meter's identity key".into(),
        ));
    }
    Ok(AgentCaRequest { meter_id, csr })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::issue::{self, Profile};
    use crate::test_keys::{key, sec1, T0};
    use p384::ecdsa::SigningKey;

    #[test]
    fn subject_rules() {
        assert!(AgentSubject::new(
            "Alice O'Neil",
            Some("ACME, Inc."),
            Some("Sales"),
            Some("a.b@acme.example")
        )
        .is_ok());
        assert!(AgentSubject::new("Zoë Ærø", None, None, None).is_ok());
        for bad in [
            "", " a", "a ", "a  b", "a\nb", "a\"b", "a\\b", "a<b", "a=b;",
        ] {
            assert!(AgentSubject::new(bad, None, None, None).is_err(), "{bad:?}");
        }
        assert!(AgentSubject::new(&"x".repeat(65), None, None, None).is_err());
        assert!(AgentSubject::new(&"é".repeat(64), None, None, None).is_ok());
        for bad in [
            "a", "a@b", "@b.c", "a@.c", "a@b..c", "a b@c.d", "ä@b.c", "a@-b.c",
        ] {
            assert!(
                AgentSubject::new("A", None, None, Some(bad)).is_err(),
                "{bad:?}"
            );
        }
        let a = AgentSubject::new("A", Some("B"), None, None).unwrap();
        let b = AgentSubject::new("A", None, Some("B"), None).unwrap();
        assert_ne!(a.canonical(), b.canonical());
    }

    #[test]
    fn employee_chains_and_agent_ca_checked() {
        let rk = key(1);
        let root = issue::self_signed_root(&rk, "Root", 1, T0, 3650).unwrap();
        let ak = key(2);
        let agent = issue::issue(
            "M Agent CA",
            &sec1(&ak),
            Profile::AgentCa,
            &rk,
            &root,
            2,
            T0,
            365,
        )
        .unwrap();
        check_agent_ca(&agent).unwrap();
        assert!(check_agent_ca(&root).is_err()); // no pathLen 0
        let subj = AgentSubject::new("Emp", Some("Org"), None, Some("e@x.example")).unwrap();
        let p = prepare_employee(
            &subj,
            &sec1(&key(3)),
            &agent,
            &[1, 2, 3],
            T0,
            T0 + 10 * 365 * 86_400,
        )
        .unwrap();
        let d = p.digest();
        assert!(p
            .clone()
            .finish(&sig::sign_prehash_raw(&key(9), &d).unwrap())
            .is_err());
        let der = p.finish(&sig::sign_prehash_raw(&ak, &d).unwrap());
        let emp = cert::parse(&der.unwrap()).unwrap();
        assert_eq!(cert::subject_cn(&emp).as_deref(), Some("Emp"));
        // Clipped to the agent CA's validity.
        assert_eq!(cert::not_after(&emp), cert::not_after(&agent));
        assert_eq!(
            cert::verify_chain(
                &emp,
                std::slice::from_ref(&agent),
                std::slice::from_ref(&root),
                T0 + 5
            ),
            Ok(0)
        );
        assert!(prepare_employee(&subj, &sec1(&key(3)), &agent, &[0x80], T0, T0 + 5).is_err());
        assert!(prepare_employee(&subj, &sec1(&key(3)), &agent, &[], T0, T0 + 5).is_err());
    }

    fn request(
        meter_key: &SigningKey,
        meter_cert: &Certificate,
        agent_key: &SigningKey,
        cn: &str,
    ) -> Vec<u8> {
        let p = csr::prepare(cn, &sec1(agent_key)).unwrap();
        let der = p
            .clone()
            .finish(&sig::sign_prehash_raw(agent_key, &p.digest()).unwrap())
            .unwrap();
        cms::sign_with_key(
            &cms::SignOptions {
                content_type: oid::CT_CERT_REQUEST,
                content: &der,
                signer: meter_cert,
                extra_certs: &[],
                signing_time: Some(T0 + 5),
                ess_cert_id_v2: true,
            },
            meter_key,
        )
        .unwrap()
    }

    #[test]
    fn agent_ca_request_checks() {
        let rk = key(1);
        let root = issue::self_signed_root(&rk, "Root", 1, T0, 3650).unwrap();
        let mk = key(2);
        let meter = issue::issue(
            "MTR-1",
            &sec1(&mk),
            Profile::MeterIdentity,
            &rk,
            &root,
            2,
            T0,
            365,
        )
        .unwrap();
        let ak = key(3);
        let anchors = [root.clone()];
        let ok = request(&mk, &meter, &ak, "MTR-1 Agent CA");
        let v = verify_agent_ca_request(&ok, &anchors, T0 + 10).unwrap();
        assert_eq!(v.meter_id, "MTR-1");
        assert_eq!(v.csr.public_sec1, sec1(&ak));
        // Another meter's name, the identity key itself, an unknown root: refused.
        let wrong = request(&mk, &meter, &ak, "MTR-2 Agent CA");
        assert!(matches!(
            verify_agent_ca_request(&wrong, &anchors, T0 + 10),
            Err(PkiError::Malformed(_))
        ));
        let same = request(&mk, &meter, &mk, "MTR-1 Agent CA");
        assert!(verify_agent_ca_request(&same, &anchors, T0 + 10).is_err());
        let other_root = issue::self_signed_root(&key(9), "Other", 1, T0, 3650).unwrap();
        assert!(matches!(
            verify_agent_ca_request(&ok, &[other_root], T0 + 10),
            Err(PkiError::Untrusted(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn subject_never_panics(cn in ".{0,80}", email in ".{0,80}") {
            let _ = AgentSubject::new(&cn, Some(&cn), None, Some(&email));
        }

        #[test]
        fn request_verify_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = verify_agent_ca_request(&bytes, &[], T0);
        }
    }
}
