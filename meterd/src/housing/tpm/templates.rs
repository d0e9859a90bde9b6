//! Key templates and conversions between TPM structures and plain bytes.
//!
//! The primary is an ECC P-384 restricted decryption (storage) key from a
//! fixed template under the owner hierarchy: the TPM derives it from the
//! owner seed, so recreating it after a TPM reset yields the same key and
//! the stored child blobs load again. Its own auth value is empty: whoever
//! derives it picks the auth of their instance, so one would protect
//! nothing; the children's auth values do. Signing keys are unrestricted
//! ECDSA P-384 / SHA-384 keys that never leave the TPM (`fixedTPM|
//! fixedParent|sensitiveDataOrigin|userWithAuth|noDA|sign`, no
//! `adminWithPolicy`, empty `authPolicy`): USER and ADMIN roles are both
//! satisfied by the key's auth value (created with it, see
//! `housing/auth.rs`) in a password session.

use tss_esapi::attributes::{ObjectAttributes, ObjectAttributesBuilder};
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::structures::{
    EccPoint, EccScheme, HashScheme, HashcheckTicket, KeyDerivationFunctionScheme, KeyedHashScheme,
    Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters, Signature,
    SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::Result as TssResult;

use crate::housing::RawSignature;

/// Size of a P-384 coordinate / signature half.
const P384_LEN: usize = 48;

/// The attributes every object here shares: born in this TPM and never leaving it
/// (`fixedTPM|fixedParent|sensitiveDataOrigin`, what the authority's attestation check
/// wants to see), used with its auth value, not a policy (`userWithAuth`).
///
/// noDA: the auth values are 256 random bits (housing/auth.rs), so the dictionary-attack
/// counter adds nothing against guessing; with it, every unorderly TPM reset counts as a
/// DA failure (after the third the TPM refuses every sign: lockout; found by
/// `tests/torture --full`), and anyone holding a copy of the blobs could send wrong values
/// until the TPM locks out every DA-protected object.
fn resident_attributes() -> ObjectAttributesBuilder {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
}

/// A P-384 public area (SHA-256 names) with these attributes and parameters.
fn p384_public(
    attributes: ObjectAttributesBuilder,
    params: PublicEccParametersBuilder,
) -> TssResult<Public> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes.build()?)
        .with_ecc_parameters(params.with_curve(EccCurve::NistP384).build()?)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// The fixed template of the owner-hierarchy storage primary.
pub(crate) fn primary_template() -> TssResult<Public> {
    let attributes = resident_attributes()
        .with_restricted(true)
        .with_decrypt(true);
    let params = PublicEccParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::AES_256_CFB)
        .with_ecc_scheme(EccScheme::Null)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .with_is_decryption_key(true)
        .with_restricted(true);
    p384_public(attributes, params)
}

/// The template of a signing key (ECDSA P-384 with SHA-384).
pub(crate) fn signing_key_template() -> TssResult<Public> {
    let params = PublicEccParametersBuilder::new_unrestricted_signing_key(
        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha384)),
        EccCurve::NistP384,
    );
    p384_public(resident_attributes().with_sign_encrypt(true), params)
}

/// The template of a key-agreement key (P-384, ECDH with SHA-384 named as its scheme):
/// `decrypt`, not `sign`, unrestricted, so TPM2_ECDH_ZGen takes any peer point and the
/// key can make no signature (what the certificate's keyAgreement usage promises).
pub(crate) fn ecdh_key_template() -> TssResult<Public> {
    let params = PublicEccParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::Null)
        .with_ecc_scheme(EccScheme::EcDh(HashScheme::new(HashingAlgorithm::Sha384)))
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .with_is_signing_key(false)
        .with_is_decryption_key(true)
        .with_restricted(false);
    p384_public(resident_attributes().with_decrypt(true), params)
}

/// The point of a key-agreement key of [`ecdh_key_template`]'s kind that never leaves
/// this TPM; `None` for any other public area (a signing key, an exportable key).
pub(crate) fn ecdh_key_point(public: &Public) -> Option<Vec<u8>> {
    resident_point(public, |a, scheme| {
        a.decrypt()
            && !a.sign_encrypt()
            && !a.restricted()
            && scheme == EccScheme::EcDh(HashScheme::new(HashingAlgorithm::Sha384))
    })
}

/// Whether `public` is an HMAC-SHA-256 keyedHash key of the postal template: imported
/// (neither fixedTPM nor fixedParent, no sensitiveDataOrigin), `userWithAuth|noDA|sign`,
/// not decrypt/restricted, no adminWithPolicy, empty authPolicy.
pub(crate) fn hmac_key_ok(public: &Public) -> bool {
    let Public::KeyedHash {
        object_attributes: a,
        name_hashing_algorithm,
        auth_policy,
        parameters,
        ..
    } = public
    else {
        return false;
    };
    *name_hashing_algorithm == HashingAlgorithm::Sha256
        && auth_policy.is_empty()
        && a.user_with_auth()
        && a.no_da()
        && a.sign_encrypt()
        && !a.decrypt()
        && !a.restricted()
        && !a.admin_with_policy()
        && !a.fixed_tpm()
        && !a.fixed_parent()
        && !a.sensitive_data_origin()
        && *parameters == PublicKeyedHashParameters::new(KeyedHashScheme::HMAC_SHA_256)
}

/// The peer point of TPM2_ECDH_ZGen from an uncompressed SEC1 P-384 point.
pub(crate) fn ecc_point(sec1: &[u8]) -> Option<EccPoint> {
    let (x, y) = match sec1 {
        [4, rest @ ..] if rest.len() == 2 * P384_LEN => rest.split_at(P384_LEN),
        _ => return None,
    };
    Some(EccPoint::new(
        tss_esapi::structures::EccParameter::try_from(x.to_vec()).ok()?,
        tss_esapi::structures::EccParameter::try_from(y.to_vec()).ok()?,
    ))
}

/// The x-coordinate of TPM2_ECDH_ZGen's output, left-padded to 48 bytes.
pub(crate) fn shared_x(point: &EccPoint) -> Option<[u8; P384_LEN]> {
    left_pad(point.x().value())
}

/// The template of the attestation key (AK): a restricted ECDSA P-384 / SHA-384 signing
/// key, so that it signs only structures the TPM itself made (`TPM_GENERATED`), with no
/// admin policy and no auth policy (what the authority checks, `meter_pki::tpm::check_ak`).
pub(crate) fn ak_template() -> TssResult<Public> {
    let attributes = resident_attributes()
        .with_restricted(true)
        .with_sign_encrypt(true);
    let params = PublicEccParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::Null)
        .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha384)))
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .with_is_signing_key(true)
        .with_restricted(true);
    p384_public(attributes, params)
}

/// The uncompressed SEC1 point (`04 || X || Y`, 97 bytes) of a P-384 signing key that
/// never leaves this TPM and is restricted exactly when `restricted`; `None` for any
/// other public area.
fn resident_signing_point(public: &Public, restricted: bool) -> Option<Vec<u8>> {
    resident_point(public, |a, scheme| {
        a.sign_encrypt()
            && !a.decrypt()
            && a.restricted() == restricted
            && scheme == EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha384))
    })
}

/// The uncompressed SEC1 point of a P-384 key born in this TPM and bound to it
/// (`fixedTPM|fixedParent|sensitiveDataOrigin`) whose attributes and scheme pass
/// `kind`; `None` for any other public area. One reader for every resident key kind,
/// so none of them can forget the residency checks.
fn resident_point(
    public: &Public,
    kind: impl Fn(&ObjectAttributes, EccScheme) -> bool,
) -> Option<Vec<u8>> {
    let Public::Ecc {
        object_attributes: a,
        parameters,
        unique,
        ..
    } = public
    else {
        return None;
    };
    let ok = a.fixed_tpm()
        && a.fixed_parent()
        && a.sensitive_data_origin()
        && parameters.ecc_curve() == EccCurve::NistP384
        && kind(a, parameters.ecc_scheme());
    if !ok {
        return None;
    }
    let mut point = Vec::with_capacity(1 + 2 * P384_LEN);
    point.push(0x04);
    point.extend_from_slice(&left_pad(unique.x().value())?);
    point.extend_from_slice(&left_pad(unique.y().value())?);
    Some(point)
}

/// The AK's point if `public` is an AK of [`ak_template`]'s kind, `None` otherwise.
pub(crate) fn ak_point(public: &Public) -> Option<Vec<u8>> {
    resident_signing_point(public, true)
}

/// The hierarchy of the storage primary a stored key lives under: the endorsement one for
/// the AK (so its attestations show reset and restart counts in clear), the owner one
/// for every other key.
pub(crate) fn parent_hierarchy(name: &str) -> Hierarchy {
    if name == crate::housing::AK_KEY {
        Hierarchy::Endorsement
    } else {
        Hierarchy::Owner
    }
}

/// The scheme passed to TPM2_Sign.
pub(crate) fn sign_scheme() -> SignatureScheme {
    SignatureScheme::EcDsa {
        hash_scheme: HashScheme::new(HashingAlgorithm::Sha384),
    }
}

/// The null hashcheck ticket (enough for an unrestricted key).
pub(crate) fn null_ticket() -> TssResult<HashcheckTicket> {
    HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
}

/// Checks that a public area is one of our signing keys and returns its
/// uncompressed SEC1 point (`04 || X || Y`, 97 bytes). `None` otherwise:
/// a blob pair swapped for an exportable or non-P-384 key is refused.
pub(crate) fn signing_key_point(public: &Public) -> Option<Vec<u8>> {
    resident_signing_point(public, false)
}

/// `r || s`, each left-padded to 48 bytes; `None` for any other signature.
pub(crate) fn raw_signature(sig: &Signature) -> Option<RawSignature> {
    let Signature::EcDsa(ecc) = sig else {
        return None;
    };
    let mut out = [0u8; 2 * P384_LEN];
    out[..P384_LEN].copy_from_slice(&left_pad(ecc.signature_r().value())?);
    out[P384_LEN..].copy_from_slice(&left_pad(ecc.signature_s().value())?);
    Some(out)
}

/// Left-pads a big-endian integer to 48 bytes (leading zeros stripped by
/// the TPM); `None` if it does not fit.
fn left_pad(v: &[u8]) -> Option<[u8; P384_LEN]> {
    let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
    let v = &v[start..];
    if v.len() > P384_LEN {
        return None;
    }
    let mut out = [0u8; P384_LEN];
    out[P384_LEN - v.len()..].copy_from_slice(v);
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn pads() {
        let p = left_pad(&[1, 2]).unwrap();
        assert_eq!(&p[46..], &[1, 2]);
        assert!(p[..46].iter().all(|&b| b == 0));
        assert!(left_pad(&[1u8; 49]).is_none());
        let mut with_zero = vec![0u8];
        with_zero.extend_from_slice(&[9u8; 48]);
        assert_eq!(left_pad(&with_zero).unwrap(), [9u8; 48]);
    }

    #[test]
    fn templates_build() {
        assert!(primary_template().is_ok());
        let t = signing_key_template().unwrap();
        // The template passes the attribute/parameter check (its empty
        // unique point pads to zeros); the storage primary does not.
        assert!(signing_key_point(&t).is_some_and(|p| p.len() == 97));
        assert!(signing_key_point(&primary_template().unwrap()).is_none());
        // Unorderly resets must not lock the keys out (see the template).
        assert!(t.object_attributes().no_da());
        // The auth value, not a policy, authorizes every use (TPM2_Certify
        // shows these attributes and the empty authPolicy).
        let a = t.object_attributes();
        assert!(a.user_with_auth() && !a.admin_with_policy());
        assert!(t.auth_policy().is_empty());
        // The AK is no signing key of ours, and a signing key is no AK.
        let ak = ak_template().unwrap();
        assert!(ak_point(&ak).is_some());
        assert!(signing_key_point(&ak).is_none());
        assert!(ak_point(&t).is_none());
        // A key-agreement key is no signing key, and the reverse.
        let e = ecdh_key_template().unwrap();
        assert!(ecdh_key_point(&e).is_some_and(|p| p.len() == 97));
        assert!(signing_key_point(&e).is_none());
        assert!(ecdh_key_point(&t).is_none());
        assert!(ecdh_key_point(&primary_template().unwrap()).is_none());
        assert!(e.object_attributes().no_da() && e.object_attributes().decrypt());
        let mut sec1 = vec![4u8];
        sec1.extend_from_slice(&[7u8; 96]);
        assert!(ecc_point(&sec1).is_some());
        assert!(ecc_point(&sec1[..96]).is_none());
    }
}
