//! TPM2_Duplicate in software: wraps a secret HMAC key for one TPM's storage parent, so that
//! only that TPM can `TPM2_Import` it (the postal secret key of claim 21).
//!
//! The authority has no TPM; it makes the duplication blob itself as TPM 2.0 Part 1 §23.3
//! ("Duplication") describes, the same computation as `tpm2_pytss.utils.wrap` and go-tpm's
//! software duplication, with an outer wrapper only (no inner wrapper, no encryption key):
//!
//! 1. The object: a keyedHash HMAC-SHA-256 key ([`hmac_public`]), nameAlg SHA-256,
//!    `userWithAuth|noDA|sign`, neither `fixedTPM` nor `fixedParent` (an imported object
//!    cannot have them), no `sensitiveDataOrigin` (the key was made outside), empty
//!    authPolicy (so no policy can ever authorize TPM2_Duplicate of it again), unique =
//!    SHA-256(seedValue ‖ key) as the TPM checks on import.
//! 2. The seed, for an ECC parent (§C.6.4 of Part 1): an ephemeral P-384 key; `Z` = the x
//!    coordinate of d_e·Q_parent; `seed` = KDFe(SHA-256, Z, "DUPLICATE", x_e, x_parent,
//!    256). `inSymSeed` is the marshalled `TPMS_ECC_POINT` of the ephemeral key.
//! 3. `symKey` = KDFa(SHA-256, seed, "STORAGE", Name, ∅, 256) (the parent's AES-256);
//!    `encSensitive` = AES-256-CFB(symKey, IV 0, `TPM2B_SENSITIVE`).
//! 4. `HMACkey` = KDFa(SHA-256, seed, "INTEGRITY", ∅, ∅, 256); `outerHMAC` =
//!    HMAC-SHA-256(HMACkey, encSensitive ‖ Name); `duplicate` = `TPM2B_DIGEST(outerHMAC)` ‖
//!    encSensitive.
//!
//! The parent must be the meter's storage primary template (restricted decrypt ECC P-384,
//! nameAlg SHA-256, AES-256-CFB; see `meterd/src/housing/tpm/templates.rs`), checked by
//! [`check_parent`]. Only the TPM holding the parent's private key recovers the seed.

use aes::Aes256;
use hmac::{Hmac, Mac};
use rand_core::{CryptoRngCore, OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::credential::{aes_cfb, kdfa_sha256};
use super::wire::{attr, name, put_tpm2b, Public, ALG_AES, ALG_CFB, ALG_ECC, ALG_SHA256};
use crate::{PkiError, Result};

/// `TPM_ALG_KEYEDHASH`.
pub const ALG_KEYEDHASH: u16 = 0x0008;
/// `TPM_ALG_HMAC`.
pub const ALG_HMAC: u16 = 0x0005;
/// Length of a postal secret key (HMAC-SHA-256, one block of its hash).
pub const KEY_LEN: usize = 32;
/// Attributes of the imported HMAC key.
pub const HMAC_ATTRIBUTES: u32 = attr::USER_WITH_AUTH | attr::NO_DA | attr::SIGN;

/// What the meter hands to TPM2_Import (contents, without their `TPM2B` size prefixes
/// except `public`, which is a whole `TPM2B_PUBLIC`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplication {
    /// `TPM2B_PUBLIC` of the keyedHash object.
    pub public: Vec<u8>,
    /// Contents of `TPM2B_PRIVATE`: `TPM2B_DIGEST(outerHMAC)` ‖ encSensitive.
    pub duplicate: Vec<u8>,
    /// Contents of `TPM2B_ENCRYPTED_SECRET`: the ephemeral `TPMS_ECC_POINT`.
    pub seed: Vec<u8>,
}

/// The marshalled `TPMT_PUBLIC` of the HMAC-SHA-256 keyedHash object whose unique is `unique`.
pub fn hmac_public(unique: &[u8; 32]) -> Result<Vec<u8>> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&ALG_KEYEDHASH.to_be_bytes());
    p.extend_from_slice(&ALG_SHA256.to_be_bytes());
    p.extend_from_slice(&HMAC_ATTRIBUTES.to_be_bytes());
    put_tpm2b(&mut p, &[])?; // authPolicy
    p.extend_from_slice(&ALG_HMAC.to_be_bytes()); // TPMT_KEYEDHASH_SCHEME
    p.extend_from_slice(&ALG_SHA256.to_be_bytes()); // TPMS_SCHEME_HMAC.hashAlg
    put_tpm2b(&mut p, unique)?;
    Ok(p)
}

/// Checks that `parent` (a marshalled `TPMT_PUBLIC`) is a storage key of the meter's
/// template and returns its parsed form.
pub fn check_parent(parent: &[u8]) -> Result<Public> {
    let p = Public::parse(parent)?;
    let storage = attr::RESTRICTED | attr::DECRYPT | attr::FIXED_TPM | attr::FIXED_PARENT;
    let ok = p.alg == ALG_ECC
        && p.name_alg == ALG_SHA256
        && p.has(storage)
        && !p.has(attr::SIGN)
        && p.symmetric == ALG_AES
        && p.symmetric_bits == 256
        && p.symmetric_mode == ALG_CFB
        && p.p384_point().is_some();
    if ok {
        Ok(p)
    } else {
        Err(PkiError::Malformed(
            "the storage parent is not a P-384 restricted decryption key with nameAlg SHA-256 \
             and AES-256-CFB (the meter's storage primary)"
                .into(),
        ))
    }
}

/// KDFe (TPM 2.0 Part 1 §11.4.10.3) with SHA-256: `bits` of output.
pub fn kdfe_sha256(z: &[u8], label: &str, party_u: &[u8], party_v: &[u8], bits: u32) -> Vec<u8> {
    let want = usize::try_from(bits.div_ceil(8)).unwrap_or(0);
    let mut out = Vec::with_capacity(want + 32);
    let mut counter: u32 = 1;
    while out.len() < want {
        let mut h = Sha256::new();
        h.update(counter.to_be_bytes());
        h.update(z);
        h.update(label.as_bytes());
        h.update([0]);
        h.update(party_u);
        h.update(party_v);
        out.extend_from_slice(&h.finalize());
        counter = counter.wrapping_add(1);
    }
    out.truncate(want);
    out
}

/// Wraps the HMAC key `key` for the storage parent `parent` (marshalled `TPMT_PUBLIC`).
pub fn wrap_hmac_key(parent: &[u8], key: &[u8; KEY_LEN]) -> Result<Duplication> {
    wrap_with(parent, key, &mut OsRng)
}

/// [`wrap_hmac_key`] with a chosen random source (tests).
pub fn wrap_with(
    parent: &[u8],
    key: &[u8; KEY_LEN],
    rng: &mut impl CryptoRngCore,
) -> Result<Duplication> {
    let parsed = check_parent(parent)?;
    let point = parsed
        .p384_point()
        .ok_or_else(|| PkiError::Malformed("storage parent point".into()))?;
    let peer = p384::PublicKey::from_sec1_bytes(&point)
        .map_err(|_| PkiError::Malformed("the storage parent's point is not on P-384".into()))?;

    // The object: public area bound to its sensitive by unique = H(seedValue ‖ key).
    let mut obfuscation = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(obfuscation.as_mut());
    let mut h = Sha256::new();
    h.update(obfuscation.as_ref());
    h.update(key);
    let unique: [u8; 32] = h.finalize().into();
    let public_area = hmac_public(&unique)?;
    let object_name = name(ALG_SHA256, &public_area)?;

    // TPM2B_SENSITIVE { TPMT_SENSITIVE { type, authValue ∅, seedValue, bits } }.
    let mut sensitive = Zeroizing::new(Vec::with_capacity(80));
    sensitive.extend_from_slice(&ALG_KEYEDHASH.to_be_bytes());
    put_tpm2b(&mut sensitive, &[])?;
    put_tpm2b(&mut sensitive, obfuscation.as_ref())?;
    put_tpm2b(&mut sensitive, key)?;
    let mut sensitive_2b = Zeroizing::new(Vec::with_capacity(82));
    put_tpm2b(&mut sensitive_2b, &sensitive)?;

    // Seed by ECDH with the parent's point.
    let ephemeral = p384::ecdh::EphemeralSecret::random(rng);
    let eph_point = p384::EncodedPoint::from(ephemeral.public_key());
    let shared = ephemeral.diffie_hellman(&peer);
    let (ex, ey) = match (eph_point.x(), eph_point.y()) {
        (Some(x), Some(y)) => (x.to_vec(), y.to_vec()),
        _ => return Err(PkiError::Malformed("ephemeral point".into())),
    };
    let parent_x = &point[1..49];
    let seed = Zeroizing::new(kdfe_sha256(
        shared.raw_secret_bytes(),
        "DUPLICATE",
        &ex,
        parent_x,
        256,
    ));
    let mut in_sym_seed = Vec::with_capacity(100);
    put_tpm2b(&mut in_sym_seed, &ex)?;
    put_tpm2b(&mut in_sym_seed, &ey)?;

    // Outer wrapper.
    let sym = Zeroizing::new(kdfa_sha256(&seed, "STORAGE", &object_name, &[], 256));
    let sym_key: [u8; 32] = sym
        .as_slice()
        .try_into()
        .map_err(|_| PkiError::Malformed("symKey length".into()))?;
    let enc_sensitive = aes_cfb::<Aes256>(&sym_key.into(), &sensitive_2b, false);
    let hmac_key = Zeroizing::new(kdfa_sha256(&seed, "INTEGRITY", &[], &[], 256));
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&hmac_key)
        .map_err(|_| PkiError::Malformed("HMAC key".into()))?;
    mac.update(&enc_sensitive);
    mac.update(&object_name);
    let outer = mac.finalize().into_bytes();
    let mut duplicate = Vec::with_capacity(34 + enc_sensitive.len());
    put_tpm2b(&mut duplicate, &outer)?;
    duplicate.extend_from_slice(&enc_sensitive);

    let mut public = Vec::with_capacity(2 + public_area.len());
    put_tpm2b(&mut public, &public_area)?;
    Ok(Duplication {
        public,
        duplicate,
        seed: in_sym_seed,
    })
}

/// A fresh random postal secret key.
pub fn fresh_key() -> Zeroizing<[u8; KEY_LEN]> {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    OsRng.fill_bytes(k.as_mut());
    k
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// The meter's storage primary template with a P-384 point (from `d`).
    pub(crate) fn parent_area(d: &p384::SecretKey) -> Vec<u8> {
        let pt = p384::EncodedPoint::from(d.public_key());
        let mut p = Vec::new();
        p.extend_from_slice(&ALG_ECC.to_be_bytes());
        p.extend_from_slice(&ALG_SHA256.to_be_bytes());
        let a = attr::FIXED_TPM
            | attr::FIXED_PARENT
            | attr::SENSITIVE_DATA_ORIGIN
            | attr::USER_WITH_AUTH
            | attr::NO_DA
            | attr::RESTRICTED
            | attr::DECRYPT;
        p.extend_from_slice(&a.to_be_bytes());
        put_tpm2b(&mut p, &[]).unwrap();
        p.extend_from_slice(&ALG_AES.to_be_bytes());
        p.extend_from_slice(&256u16.to_be_bytes());
        p.extend_from_slice(&ALG_CFB.to_be_bytes());
        p.extend_from_slice(&super::super::wire::ALG_NULL.to_be_bytes()); // scheme
        p.extend_from_slice(&super::super::wire::ECC_NIST_P384.to_be_bytes());
        p.extend_from_slice(&super::super::wire::ALG_NULL.to_be_bytes()); // kdf
        put_tpm2b(&mut p, pt.x().unwrap()).unwrap();
        put_tpm2b(&mut p, pt.y().unwrap()).unwrap();
        p
    }

    /// What the TPM does in TPM2_Import, in software: recovers the key.
    fn unwrap(d: &p384::SecretKey, dup: &Duplication) -> Vec<u8> {
        let ex = &dup.seed[2..50];
        let ey = &dup.seed[52..100];
        let mut sec1 = vec![4u8];
        sec1.extend_from_slice(ex);
        sec1.extend_from_slice(ey);
        let eph = p384::PublicKey::from_sec1_bytes(&sec1).unwrap();
        let z = p384::ecdh::diffie_hellman(d.to_nonzero_scalar(), eph.as_affine());
        let parent = p384::EncodedPoint::from(d.public_key());
        let seed = kdfe_sha256(
            z.raw_secret_bytes(),
            "DUPLICATE",
            ex,
            parent.x().unwrap(),
            256,
        );
        let object_name = name(ALG_SHA256, &dup.public[2..]).unwrap();
        let hk = kdfa_sha256(&seed, "INTEGRITY", &[], &[], 256);
        let (tag, enc) = (&dup.duplicate[2..34], &dup.duplicate[34..]);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&hk).unwrap();
        mac.update(enc);
        mac.update(&object_name);
        mac.verify_slice(tag).expect("outer HMAC");
        let sk: [u8; 32] = kdfa_sha256(&seed, "STORAGE", &object_name, &[], 256)
            .try_into()
            .unwrap();
        let plain = aes_cfb::<Aes256>(&sk.into(), enc, true);
        // TPM2B_SENSITIVE: size, type, authValue(0), seedValue(32), sensitive(32).
        assert_eq!(&plain[..2], &[0, 72]);
        assert_eq!(&plain[2..4], &ALG_KEYEDHASH.to_be_bytes());
        assert_eq!(&plain[4..6], &[0, 0]);
        let seed_value = &plain[8..40];
        let key = plain[42..74].to_vec();
        let unique = Sha256::new()
            .chain_update(seed_value)
            .chain_update(&key)
            .finalize();
        assert_eq!(dup.public[dup.public.len() - 32..], unique[..]);
        key
    }

    #[test]
    fn software_import_recovers_the_key() {
        let d = p384::SecretKey::from_slice(&[5u8; 48]).unwrap();
        let parent = parent_area(&d);
        let key = [0x42u8; KEY_LEN];
        let dup = wrap_hmac_key(&parent, &key).unwrap();
        assert_eq!(unwrap(&d, &dup), key);
        // The key never appears in the clear in the blob.
        for part in [&dup.public, &dup.duplicate, &dup.seed] {
            assert!(!part.windows(KEY_LEN).any(|w| w == key));
        }
        // Another parent recovers nothing that passes the outer HMAC.
        let other = p384::SecretKey::from_slice(&[6u8; 48]).unwrap();
        assert!(std::panic::catch_unwind(|| unwrap(&other, &dup)).is_err());
    }

    #[test]
    fn refuses_other_parents() {
        let d = p384::SecretKey::from_slice(&[5u8; 48]).unwrap();
        let mut parent = parent_area(&d);
        // A signing key is no storage parent.
        parent[5] |= 0x04; // SIGN (bit 18) in the big-endian attributes at 4..8
        assert!(wrap_hmac_key(&parent, &[1u8; 32]).is_err());
        assert!(wrap_hmac_key(&[0u8; 10], &[1u8; 32]).is_err());
    }

    #[test]
    fn cfb_round_trip() {
        let k = [3u8; 32];
        let data: Vec<u8> = (0..75u8).collect();
        let ct = aes_cfb::<Aes256>(&k.into(), &data, false);
        assert_eq!(aes_cfb::<Aes256>(&k.into(), &ct, true), data);
        // Known answer: `openssl enc -aes-256-cfb -K 03..03 -iv 00..00`.
        assert_eq!(
            hex::encode(&ct),
            "91c185618368cafeb22940387a82abf1c5df5cdc90824a01392f4096e75a2863bae2a5e46a0a7ce7\
             a97df901e8482cd8ef8082f577d12ca782ebeca730fe6cd367a91a6a8c2f6f753ce64e"
        );
    }
}
