//! Small shared helpers: digests, algorithm identifiers, names and time conversions.

use crate::{oid, PkiError, Result};
use der::asn1::{GeneralizedTime, ObjectIdentifier, SetOfVec, UtcTime, Utf8StringRef};
use der::{Any, Decode, Encode, Tagged};
use sha2::{Digest, Sha384};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use std::time::Duration;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::time::Time;

/// SHA-384 of `data`.
pub(crate) fn sha384(data: &[u8]) -> [u8; 48] {
    Sha384::digest(data).into()
}

/// Refuses input larger than [`crate::MAX_OBJECT`].
pub(crate) fn check_size(len: usize) -> Result<()> {
    if len > crate::MAX_OBJECT {
        return Err(PkiError::TooLarge(len));
    }
    Ok(())
}

/// `AlgorithmIdentifier` with absent parameters (as RFC 5758 requires for ECDSA and
/// RFC 5754 recommends for SHA-2).
pub(crate) fn alg(oid: ObjectIdentifier) -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid,
        parameters: None,
    }
}

/// Accepts ecdsa-with-SHA384 (params absent or NULL).
pub(crate) fn is_ecdsa_sha384(a: &AlgorithmIdentifierOwned) -> bool {
    a.oid == oid::ECDSA_SHA384 && params_absent_or_null(a)
}

/// Accepts id-sha384 (params absent or NULL).
pub(crate) fn is_sha384(a: &AlgorithmIdentifierOwned) -> bool {
    a.oid == oid::SHA384 && params_absent_or_null(a)
}

fn params_absent_or_null(a: &AlgorithmIdentifierOwned) -> bool {
    match &a.parameters {
        None => true,
        Some(p) => p.tag() == der::Tag::Null && p.value().is_empty(),
    }
}

/// Validates a common name: 1..=64 characters, no control characters.
pub(crate) fn check_cn(cn: &str) -> Result<()> {
    let n = cn.chars().count();
    if n == 0 || n > 64 || cn.chars().any(char::is_control) {
        return Err(PkiError::Malformed(format!(
            "common name must be 1..64 printable characters, got {n}"
        )));
    }
    Ok(())
}

/// The name `CN=<cn>` (UTF8String), built without string parsing so any character is safe.
pub(crate) fn name_cn(cn: &str) -> Result<Name> {
    check_cn(cn)?;
    let value = Any::encode_from(&Utf8StringRef::new(cn)?)?;
    let atv = AttributeTypeAndValue {
        oid: oid::CN,
        value,
    };
    let rdn = RelativeDistinguishedName(SetOfVec::try_from(vec![atv])?);
    Ok(RdnSequence(vec![rdn]))
}

/// First common name in `name`, if any is a readable string.
pub(crate) fn cn_of(name: &Name) -> Option<String> {
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == oid::CN {
                let v = &atv.value;
                return match v.tag() {
                    der::Tag::Utf8String | der::Tag::PrintableString | der::Tag::Ia5String => {
                        std::str::from_utf8(v.value()).ok().map(str::to_owned)
                    }
                    _ => None,
                };
            }
        }
    }
    None
}

/// SubjectPublicKeyInfo for an uncompressed or compressed SEC1 P-384 point.
pub(crate) fn spki_from_sec1(sec1: &[u8]) -> Result<SubjectPublicKeyInfoOwned> {
    use p384::pkcs8::EncodePublicKey;
    let pk = p384::PublicKey::from_sec1_bytes(sec1)
        .map_err(|_| PkiError::Malformed("not a P-384 public key".into()))?;
    let doc = pk
        .to_public_key_der()
        .map_err(|e| PkiError::Malformed(format!("public key encoding: {e}")))?;
    Ok(SubjectPublicKeyInfoOwned::from_der(doc.as_bytes())?)
}

/// Uncompressed SEC1 bytes of a P-384 SubjectPublicKeyInfo, or `Malformed`.
pub(crate) fn sec1_from_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<Vec<u8>> {
    if spki.algorithm.oid != oid::EC_PUBLIC_KEY {
        return Err(PkiError::Malformed("public key is not an EC key".into()));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if curve != Some(oid::SECP384R1) {
        return Err(PkiError::Malformed("EC key is not on P-384".into()));
    }
    let bits = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| PkiError::Malformed("public key bit string has unused bits".into()))?;
    let pk = p384::PublicKey::from_sec1_bytes(bits)
        .map_err(|_| PkiError::Malformed("invalid P-384 point".into()))?;
    Ok(p384::EncodedPoint::from(pk).as_bytes().to_vec())
}

/// Key identifier: leftmost 160 bits of SHA-256 of the key bits (RFC 7093 method 1).
pub(crate) fn key_id(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    use sha2::Sha256;
    let h = Sha256::digest(spki.subject_public_key.raw_bytes());
    h[..20].to_vec()
}

fn unix(t: i64) -> Result<Duration> {
    u64::try_from(t)
        .map(Duration::from_secs)
        .map_err(|_| PkiError::Malformed(format!("time {t} before 1970")))
}

/// RFC 5280 time: UTCTime through 2049, GeneralizedTime after.
pub(crate) fn time_from_unix(t: i64) -> Result<Time> {
    let d = unix(t)?;
    let g = GeneralizedTime::from_unix_duration(d)?;
    if g.to_date_time().year() < 2050 {
        Ok(Time::UtcTime(UtcTime::from_unix_duration(d)?))
    } else {
        Ok(Time::GeneralTime(g))
    }
}

/// GeneralizedTime from unix seconds.
pub(crate) fn gentime_from_unix(t: i64) -> Result<GeneralizedTime> {
    Ok(GeneralizedTime::from_unix_duration(unix(t)?)?)
}

/// Unix seconds of an X.509 time (saturating: years are bounded by 9999).
pub(crate) fn unix_of(t: &Time) -> i64 {
    i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

/// Minimal two's-complement big-endian bytes of an unsigned value (for INTEGER).
pub(crate) fn int_bytes_u64(v: u64) -> Vec<u8> {
    let b = v.to_be_bytes();
    let start = b.iter().position(|&x| x != 0).unwrap_or(7);
    let mut out = b[start..].to_vec();
    if out[0] & 0x80 != 0 {
        out.insert(0, 0);
    }
    out
}

/// DER of any encodable value, mapped to our error.
pub(crate) fn to_der<T: Encode>(v: &T) -> Result<Vec<u8>> {
    Ok(v.to_der()?)
}

/// Appends `tag`, the DER length of `value`, and `value`.
pub(crate) fn push_tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) -> Result<()> {
    out.push(tag);
    der::Length::try_from(value.len())?.encode_to_vec(out)?;
    out.extend_from_slice(value);
    Ok(())
}

/// DER's order of a SET OF's elements (X.690 11.6): their encodings as
/// octet strings, the shorter padded with zeros at its end.
pub(crate) fn der_set_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let n = a.len().max(b.len());
    let at = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0);
    (0..n)
        .map(|i| at(a, i).cmp(&at(b, i)))
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}
