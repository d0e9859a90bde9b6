//! X.509 certificate parsing and path validation (RFC 5280 subset).
//!
//! The meter trusts exactly the authority's anchors; paths are short (root → leaf, or root →
//! agent CA → leaf), so a small validator is enough: names, ECDSA P-384/SHA-384 signatures,
//! validity at a given time, CA basic constraints with path length, keyCertSign, and refusal
//! of unknown critical extensions. No revocation (the meter learns revocations from orders).

use crate::{oid, sig, util, PkiError, Result};
use der::{Decode, Encode};
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use x509_cert::ext::Extension;

pub use x509_cert::Certificate;

/// Longest path accepted (leaf + intermediates), to bound the search.
const MAX_DEPTH: usize = 6;

/// Parses one certificate from DER or PEM.
pub fn parse(der_or_pem: &[u8]) -> Result<Certificate> {
    let der = crate::pem::decode_any(der_or_pem, "CERTIFICATE")?;
    Ok(Certificate::from_der(&der)?)
}

/// Parses every certificate of a PEM bundle (or one DER certificate).
pub fn parse_all(der_or_pem: &[u8]) -> Result<Vec<Certificate>> {
    crate::pem::decode_all(der_or_pem, "CERTIFICATE")?
        .iter()
        .map(|d| Ok(Certificate::from_der(d)?))
        .collect()
}

/// DER encoding of a certificate.
pub fn to_der(c: &Certificate) -> Result<Vec<u8>> {
    util::to_der(c)
}

/// PEM encoding of a certificate.
pub fn to_pem(c: &Certificate) -> Result<String> {
    Ok(crate::pem::encode("CERTIFICATE", &to_der(c)?))
}

/// Uncompressed SEC1 public key; `Malformed` unless it is a P-384 EC key.
pub fn public_key_sec1(c: &Certificate) -> Result<Vec<u8>> {
    util::sec1_from_spki(&c.tbs_certificate.subject_public_key_info)
}

/// First common name of the subject.
pub fn subject_cn(c: &Certificate) -> Option<String> {
    util::cn_of(&c.tbs_certificate.subject)
}

/// Serial number as lowercase hex (as stored, including a leading `00` if present).
pub fn serial_hex(c: &Certificate) -> String {
    hex::encode(c.tbs_certificate.serial_number.as_bytes())
}

/// notAfter as unix seconds.
pub fn not_after(c: &Certificate) -> i64 {
    util::unix_of(&c.tbs_certificate.validity.not_after)
}

/// notBefore as unix seconds.
pub fn not_before(c: &Certificate) -> i64 {
    util::unix_of(&c.tbs_certificate.validity.not_before)
}

fn extensions(c: &Certificate) -> &[Extension] {
    c.tbs_certificate.extensions.as_deref().unwrap_or(&[])
}

fn find_ext(c: &Certificate, id: der::asn1::ObjectIdentifier) -> Option<&Extension> {
    extensions(c).iter().find(|e| e.extn_id == id)
}

fn basic_constraints(c: &Certificate) -> Result<Option<BasicConstraints>> {
    find_ext(c, oid::EXT_BASIC_CONSTRAINTS)
        .map(|e| BasicConstraints::from_der(e.extn_value.as_bytes()))
        .transpose()
        .map_err(Into::into)
}

fn key_usage(c: &Certificate) -> Result<Option<KeyUsage>> {
    find_ext(c, oid::EXT_KEY_USAGE)
        .map(|e| KeyUsage::from_der(e.extn_value.as_bytes()))
        .transpose()
        .map_err(Into::into)
}

/// True when the certificate is a CA (basicConstraints cA = TRUE).
pub fn is_ca(c: &Certificate) -> bool {
    matches!(basic_constraints(c), Ok(Some(bc)) if bc.ca)
}

/// True when the only extended key usage is id-kp-timeStamping and the extension is
/// critical (RFC 3161 §2.3, and what `openssl ts -verify` requires).
pub fn has_eku_timestamping_critical(c: &Certificate) -> bool {
    let Some(ext) = find_ext(c, oid::EXT_EKU) else {
        return false;
    };
    match ExtendedKeyUsage::from_der(ext.extn_value.as_bytes()) {
        Ok(eku) => ext.critical && eku.0 == [oid::KP_TIME_STAMPING],
        Err(_) => false,
    }
}

/// Refuses critical extensions this validator does not process (RFC 5280 §4.2).
fn check_critical(c: &Certificate) -> Result<()> {
    const KNOWN: [der::asn1::ObjectIdentifier; 5] = [
        oid::EXT_BASIC_CONSTRAINTS,
        oid::EXT_KEY_USAGE,
        oid::EXT_EKU,
        oid::EXT_SKI,
        oid::EXT_AKI,
    ];
    for e in extensions(c) {
        if e.critical && !KNOWN.contains(&e.extn_id) {
            return Err(PkiError::Untrusted(format!(
                "unsupported critical extension {}",
                e.extn_id
            )));
        }
    }
    Ok(())
}

fn check_validity(c: &Certificate, now: i64) -> Result<()> {
    let (nb, na) = (not_before(c), not_after(c));
    if now < nb || now > na {
        return Err(PkiError::Expired(format!(
            "certificate {} valid {nb}..{na}, now {now}",
            subject_cn(c).unwrap_or_else(|| serial_hex(c))
        )));
    }
    Ok(())
}

/// Checks that `issuer` signed `child` (names and ECDSA P-384/SHA-384 signature).
pub fn check_signed_by(child: &Certificate, issuer: &Certificate) -> Result<()> {
    if child.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return Err(PkiError::Untrusted("issuer name does not match".into()));
    }
    if !util::is_ecdsa_sha384(&child.signature_algorithm)
        || child.signature_algorithm != child.tbs_certificate.signature
    {
        return Err(PkiError::Untrusted(
            "certificate not signed with ecdsa-with-SHA384".into(),
        ));
    }
    let key = public_key_sec1(issuer)?;
    let tbs = child.tbs_certificate.to_der()?;
    let sig = child
        .signature
        .as_bytes()
        .ok_or_else(|| PkiError::Malformed("signature bit string has unused bits".into()))?;
    sig::verify_prehash_der(&key, &util::sha384(&tbs), sig)
        .map_err(|_| PkiError::Untrusted("certificate signature does not verify".into()))
}

/// Checks that `issuer` may issue a certificate with `below` CA certificates under it.
fn check_issuer(issuer: &Certificate, below: usize, now: i64) -> Result<()> {
    let bc = basic_constraints(issuer)?
        .filter(|b| b.ca)
        .ok_or_else(|| PkiError::Untrusted("issuer is not a CA".into()))?;
    if let Some(max) = bc.path_len_constraint {
        if below > usize::from(max) {
            return Err(PkiError::Untrusted(
                "path length constraint exceeded".into(),
            ));
        }
    }
    if let Some(ku) = key_usage(issuer)? {
        if !ku.key_cert_sign() {
            return Err(PkiError::Untrusted(
                "issuer key usage lacks keyCertSign".into(),
            ));
        }
    }
    check_critical(issuer)?;
    check_validity(issuer, now)
}

/// Validates `leaf` up to one of `anchors`, through `intermediates` if needed; returns the
/// index of the anchor. A leaf that is itself an anchor is accepted (after its validity).
pub fn verify_chain(
    leaf: &Certificate,
    intermediates: &[Certificate],
    anchors: &[Certificate],
    now: i64,
) -> Result<usize> {
    if let Some(i) = anchors.iter().position(|a| a == leaf) {
        check_validity(leaf, now)?;
        return Ok(i);
    }
    check_critical(leaf)?;
    check_validity(leaf, now)?;
    let mut last = PkiError::Untrusted("no path to a trusted anchor".into());
    let mut path = vec![leaf];
    match extend(&mut path, intermediates, anchors, now, &mut last) {
        Some(i) => Ok(i),
        None => Err(last),
    }
}

/// Depth-first search for an anchor above `path.last()`; `last` keeps the most telling error.
fn extend<'a>(
    path: &mut Vec<&'a Certificate>,
    intermediates: &'a [Certificate],
    anchors: &[Certificate],
    now: i64,
    last: &mut PkiError,
) -> Option<usize> {
    let child = *path.last()?;
    // CA certificates below the next issuer: everything on the path except the leaf.
    let below = path.len() - 1;
    for (i, a) in anchors.iter().enumerate() {
        if a.tbs_certificate.subject != child.tbs_certificate.issuer {
            continue;
        }
        match check_signed_by(child, a).and_then(|()| check_issuer(a, below, now)) {
            Ok(()) => return Some(i),
            Err(e) => *last = e,
        }
    }
    if path.len() >= MAX_DEPTH {
        return None;
    }
    for c in intermediates {
        if c.tbs_certificate.subject != child.tbs_certificate.issuer || path.contains(&c) {
            continue;
        }
        if let Err(e) = check_signed_by(child, c).and_then(|()| check_issuer(c, below, now)) {
            *last = e;
            continue;
        }
        path.push(c);
        if let Some(i) = extend(path, intermediates, anchors, now, last) {
            return Some(i);
        }
        path.pop();
    }
    None
}
