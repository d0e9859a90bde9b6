//! Certificate revocation lists (RFC 5280 v2), signed by the authority's root.
//!
//! The authority publishes the serials it ordered revoked (Fig. 6, 622: the
//! revocation time and reason enter its database) so that any relying party
//! can refuse a revoked user certificate with stock OpenSSL:
//! `openssl verify -crl_check -CRLfile crl.pem -CAfile root.pem cert.pem`.
//! Built by hand like the certificates in [`crate::issue`]: version v2,
//! ecdsa-with-SHA384, thisUpdate/nextUpdate, one entry per serial with its
//! reasonCode, and the CRL extensions cRLNumber and authorityKeyIdentifier.

use crate::{issue, oid, util, PkiError, Result};
use der::asn1::{BitString, OctetString, Uint};
use der::{Decode, Encode};
use p384::ecdsa::{Signature, SigningKey};
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::pkix::crl::CrlReason;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, CrlNumber};
use x509_cert::ext::Extension;
use x509_cert::serial_number::SerialNumber;
use x509_cert::{Certificate, Version};

/// id-ce-cRLNumber.
const EXT_CRL_NUMBER: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("2.5.29.20");
/// id-ce-cRLReasons.
const EXT_CRL_REASON: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("2.5.29.21");

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlEntry {
    /// Serial, hex (any spelling [`crate::revoke::canonical_serial`] accepts).
    pub serial_hex: String,
    /// Revocation time (unix s).
    pub revoked_at: i64,
    /// RFC 5280 CRLReason code (see [`crate::revoke::REASONS`]).
    pub reason_code: u32,
}

fn reason(code: u32) -> Result<CrlReason> {
    Ok(match code {
        0 => CrlReason::Unspecified,
        1 => CrlReason::KeyCompromise,
        3 => CrlReason::AffiliationChanged,
        4 => CrlReason::Superseded,
        5 => CrlReason::CessationOfOperation,
        9 => CrlReason::PrivilegeWithdrawn,
        _ => {
            return Err(PkiError::Malformed(format!(
                "CRL reason code {code} is not offered"
            )))
        }
    })
}

fn ext<T: Encode>(id: der::asn1::ObjectIdentifier, v: &T) -> Result<Extension> {
    Ok(Extension {
        extn_id: id,
        critical: false,
        extn_value: OctetString::new(v.to_der()?)?,
    })
}

/// Serial number DER content from hex: big-endian, positive (a 0x00 is
/// prepended when the top bit is set, as DER INTEGER requires).
fn serial_number(hex_serial: &str) -> Result<SerialNumber> {
    let canon = crate::revoke::canonical_serial(hex_serial)?;
    let padded = if canon.len() % 2 == 1 {
        format!("0{canon}")
    } else {
        canon
    };
    let bytes =
        hex::decode(&padded).map_err(|_| PkiError::Malformed("serial is not hex".into()))?;
    let uint = Uint::new(&bytes)?;
    Ok(SerialNumber::new(uint.as_bytes())?)
}

/// Builds and signs a v2 CRL issued by `root` (whose key is `key`), valid
/// from `this_update` for `next_days` days, numbered `number`. Returns DER.
pub fn build(
    key: &SigningKey,
    root: &Certificate,
    entries: &[CrlEntry],
    number: u64,
    this_update: i64,
    next_days: u32,
) -> Result<Vec<u8>> {
    if crate::cert::public_key_sec1(root)? != key.verifying_key().to_encoded_point(false).as_bytes()
    {
        return Err(PkiError::Malformed(
            "the CRL key does not match the issuer certificate".into(),
        ));
    }
    let next_update = this_update
        .checked_add(i64::from(next_days) * 86_400)
        .ok_or_else(|| PkiError::Malformed("nextUpdate overflows".into()))?;
    let mut revoked = Vec::with_capacity(entries.len());
    for e in entries {
        revoked.push(RevokedCert {
            serial_number: serial_number(&e.serial_hex)?,
            revocation_date: util::time_from_unix(e.revoked_at)?,
            crl_entry_extensions: Some(vec![ext(EXT_CRL_REASON, &reason(e.reason_code)?)?]),
        });
    }
    let akid = AuthorityKeyIdentifier {
        key_identifier: Some(OctetString::new(issue::cert_key_id(root))?),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    };
    let number = Uint::new(&number.to_be_bytes())?;
    let tbs = TbsCertList {
        version: Version::V2,
        signature: util::alg(oid::ECDSA_SHA384),
        issuer: root.tbs_certificate.subject.clone(),
        this_update: util::time_from_unix(this_update)?,
        next_update: Some(util::time_from_unix(next_update)?),
        revoked_certificates: (!revoked.is_empty()).then_some(revoked),
        crl_extensions: Some(vec![
            ext(oid::EXT_AKI, &akid)?,
            ext(EXT_CRL_NUMBER, &CrlNumber(number))?,
        ]),
    };
    let digest = util::sha384(&tbs.to_der()?);
    let raw = crate::sig::sign_prehash_raw(key, &digest)?;
    let sig = Signature::from_slice(&raw)
        .map_err(|_| PkiError::Malformed("signature out of range".into()))?;
    let list = CertificateList {
        tbs_cert_list: tbs,
        signature_algorithm: util::alg(oid::ECDSA_SHA384),
        signature: BitString::from_bytes(sig.to_der().as_bytes())?,
    };
    Ok(list.to_der()?)
}

/// Serials (canonical hex) listed in a CRL, bounded and strictly parsed; the
/// signature is not checked here (relying parties use OpenSSL).
pub fn serials(der: &[u8]) -> Result<Vec<String>> {
    util::check_size(der.len())?;
    let list = CertificateList::from_der(der)?;
    list.tbs_cert_list
        .revoked_certificates
        .unwrap_or_default()
        .iter()
        .map(|r| crate::revoke::canonical_serial(&hex::encode(r.serial_number.as_bytes())))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::issue::Profile;
    use crate::test_keys::{key, sec1, T0};
    use std::process::Command;

    #[test]
    fn serial_numbers_are_positive_integers() {
        assert_eq!(serial_number("ff").unwrap().as_bytes(), &[0, 0xff]);
        assert_eq!(serial_number("7").unwrap().as_bytes(), &[7]);
        assert_eq!(serial_number("0x0100").unwrap().as_bytes(), &[1, 0]);
        assert!(serial_number("zz").is_err());
    }

    #[test]
    fn refuses_another_key_and_unknown_reasons() {
        let root = issue::self_signed_root(&key(1), "R", 1, T0, 30).unwrap();
        assert!(build(&key(2), &root, &[], 1, T0, 7).is_err());
        let e = CrlEntry {
            serial_hex: "5".into(),
            revoked_at: T0,
            reason_code: 6,
        };
        assert!(build(&key(1), &root, &[e], 1, T0, 7).is_err());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(serials(b"").is_err());
        assert!(serials(&[0x30, 0x03, 1, 2, 3]).is_err());
        assert!(serials(&vec![0u8; crate::MAX_OBJECT + 1]).is_err());
    }

    /// The external verifier decides: a revoked leaf fails `openssl verify
    /// -crl_check` with "certificate revoked", another leaf passes.
    #[test]
    fn openssl_refuses_revoked_and_accepts_others() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let rk = key(1);
        let root = issue::self_signed_root(&rk, "CRL Test Root", 1, now - 60, 30).unwrap();
        let leaf = |serial: u64, b: u8| {
            issue::issue(
                "User",
                &sec1(&key(b)),
                Profile::User,
                &rk,
                &root,
                serial,
                now - 60,
                10,
            )
            .unwrap()
        };
        let (bad, good) = (leaf(0x80, 2), leaf(3, 3));
        let entries = [CrlEntry {
            serial_hex: "80".into(),
            revoked_at: now - 10,
            reason_code: 1,
        }];
        let der = build(&rk, &root, &entries, 7, now - 30, 7).unwrap();
        assert_eq!(serials(&der).unwrap(), vec!["80".to_string()]);
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, label: &str, der: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, crate::pem::encode(label, der)).unwrap();
            p
        };
        let root_p = write("root.pem", "CERTIFICATE", &root.to_der().unwrap());
        let crl_p = write("crl.pem", "X509 CRL", &der);
        let run = |c: &Certificate, name: &str| {
            let p = write(name, "CERTIFICATE", &c.to_der().unwrap());
            Command::new("openssl")
                .args(["verify", "-crl_check", "-CRLfile"])
                .arg(&crl_p)
                .arg("-CAfile")
                .arg(&root_p)
                .arg(&p)
                .output()
                .unwrap()
        };
        let out = run(&bad, "bad.pem");
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("certificate revoked"), "{text}");
        let out = run(&good, "good.pem");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = Command::new("openssl")
            .args(["crl", "-noout", "-text", "-in"])
            .arg(&crl_p)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("Key Compromise"), "{text}");
        assert!(text.contains("Version 2"), "{text}");
    }
}
