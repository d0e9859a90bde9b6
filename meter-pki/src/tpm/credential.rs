//! TPM2_MakeCredential in software, and the sealed certificates it carries.
//!
//! The authority has no TPM, so it makes the credential itself (TPM 2.0 Part 1 §24,
//! "Credential Protection"; the same computation as `tpm2_makecredential -T none`):
//!
//! 1. `seed` = 32 random bytes (the EK's nameAlg is SHA-256), encrypted to the EK's RSA
//!    key with OAEP-SHA-256 and label `"IDENTITY\0"`: the `secret`.
//! 2. `symKey` = KDFa(SHA-256, seed, "STORAGE", AK Name, ∅, 128); the credential, marshalled
//!    as a `TPM2B_DIGEST`, is AES-128-CFB encrypted under it with a zero IV.
//! 3. `hmacKey` = KDFa(SHA-256, seed, "INTEGRITY", ∅, ∅, 256); the blob carries
//!    HMAC-SHA-256(hmacKey, encIdentity ‖ AK Name) ahead of the ciphertext.
//!
//! Only the TPM holding the EK's private key recovers the seed, and it releases the
//! credential only if an object with that exact Name is loaded in it (TPM2_ActivateCredential
//! checks the HMAC with the Name of its `activateHandle`). A credential is at most a digest
//! long, so it is a 32-byte key here; the certificates travel beside it, AES-256-CBC +
//! HMAC-SHA-384 (encrypt-then-MAC) under keys derived from it ([`seal`], [`open`]). A meter
//! whose AK lives in software never learns the key, so never sees its certificates.

use aes::cipher::{
    block_padding::Pkcs7, AsyncStreamCipher, Block, BlockCipher, BlockDecryptMut, BlockEncryptMut,
    Key, KeyInit, KeyIvInit,
};
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use rsa::{BigUint, Oaep, RsaPublicKey};
use sha2::{Sha256, Sha384};

use super::wire::put_tpm2b;
use crate::{PkiError, Result};

/// Length of the credential (the key the certificates are sealed under).
pub const CREDENTIAL_LEN: usize = 32;

/// KDFa (TPM 2.0 Part 1 §11.4.10.2) with HMAC-SHA-256: `bits` of output for `label`
/// (without its terminating zero, which this adds) and the two contexts.
pub fn kdfa_sha256(
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let want = usize::try_from(bits.div_ceil(8)).unwrap_or(0);
    let mut out = Vec::with_capacity(want + 32);
    let mut counter: u32 = 1;
    while out.len() < want {
        // HMAC takes keys of any length: new_from_slice cannot fail.
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
            return Vec::new();
        };
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter = counter.wrapping_add(1);
    }
    out.truncate(want);
    out
}

/// AES in full-block CFB mode with a zero IV, as the TPM protects credentials (AES-128)
/// and the sensitive areas of duplicated objects (AES-256, [`super::duplicate`]). A stream
/// mode: the output is as long as `data`, a partial last block included.
pub fn aes_cfb<C>(key: &Key<C>, data: &[u8], decrypt: bool) -> Vec<u8>
where
    C: BlockCipher + BlockEncryptMut + KeyInit,
{
    let iv = Block::<C>::default();
    let mut out = data.to_vec();
    if decrypt {
        cfb_mode::Decryptor::<C>::new(key, &iv).decrypt(&mut out);
    } else {
        cfb_mode::Encryptor::<C>::new(key, &iv).encrypt(&mut out);
    }
    out
}

/// What TPM2_MakeCredential returns: the contents of `TPM2B_ID_OBJECT` and of
/// `TPM2B_ENCRYPTED_SECRET` (without their size prefixes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeCredential {
    /// `credentialBlob`: integrity HMAC (as a `TPM2B_DIGEST`) then the encrypted identity.
    pub credential_blob: Vec<u8>,
    /// The seed, OAEP-encrypted to the EK.
    pub secret: Vec<u8>,
}

/// The RSA public key of an RSA EK.
pub fn rsa_key(modulus: &[u8], exponent: u32) -> Result<RsaPublicKey> {
    let e = if exponent == 0 { 65_537 } else { exponent };
    RsaPublicKey::new(BigUint::from_bytes_be(modulus), BigUint::from(e))
        .map_err(|e| PkiError::Malformed(format!("EK RSA key: {e}")))
}

/// TPM2_MakeCredential to an RSA EK of the standard template (nameAlg SHA-256,
/// AES-128-CFB): `credential` for the object named `object_name`.
pub fn make_credential(
    ek: &RsaPublicKey,
    object_name: &[u8],
    credential: &[u8],
) -> Result<MadeCredential> {
    if credential.is_empty() || credential.len() > 32 {
        return Err(PkiError::Malformed("a credential is 1..32 bytes".into()));
    }
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let secret = ek
        .encrypt(
            &mut OsRng,
            Oaep::new_with_label::<Sha256, _>("IDENTITY\0"),
            &seed,
        )
        .map_err(|e| PkiError::Malformed(format!("OAEP to the EK: {e}")))?;
    let made = made_with_seed(&seed, object_name, credential)?;
    Ok(MadeCredential {
        credential_blob: made,
        secret,
    })
}

/// The credential blob for a given seed (split out for the known-answer test).
fn made_with_seed(seed: &[u8; 32], object_name: &[u8], credential: &[u8]) -> Result<Vec<u8>> {
    let sym = kdfa_sha256(seed, "STORAGE", object_name, &[], 128);
    let mut sym_key = [0u8; 16];
    sym_key.copy_from_slice(&sym);
    let mut plain = Vec::with_capacity(2 + credential.len());
    put_tpm2b(&mut plain, credential)?;
    let enc_identity = aes_cfb::<aes::Aes128>(&sym_key.into(), &plain, false);
    let hmac_key = kdfa_sha256(seed, "INTEGRITY", &[], &[], 256);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&hmac_key)
        .map_err(|_| PkiError::Malformed("HMAC key".into()))?;
    mac.update(&enc_identity);
    mac.update(object_name);
    let outer = mac.finalize().into_bytes();
    let mut blob = Vec::with_capacity(2 + outer.len() + enc_identity.len());
    put_tpm2b(&mut blob, &outer)?;
    blob.extend_from_slice(&enc_identity);
    Ok(blob)
}

/// A fresh random credential.
pub fn fresh_credential() -> [u8; CREDENTIAL_LEN] {
    let mut c = [0u8; CREDENTIAL_LEN];
    OsRng.fill_bytes(&mut c);
    c
}

fn subkey(credential: &[u8], purpose: &str) -> Result<[u8; 48]> {
    let mut mac = <Hmac<Sha384> as Mac>::new_from_slice(credential)
        .map_err(|_| PkiError::Malformed("credential".into()))?;
    mac.update(b"meterd-credential-v1\0");
    mac.update(purpose.as_bytes());
    Ok(mac.finalize().into_bytes().into())
}

fn tag(mac_key: &[u8], aad: &[u8], iv: &[u8], ct: &[u8]) -> Result<[u8; 48]> {
    let mut mac = <Hmac<Sha384> as Mac>::new_from_slice(mac_key)
        .map_err(|_| PkiError::Malformed("MAC key".into()))?;
    let aad_len = u64::try_from(aad.len()).unwrap_or(u64::MAX);
    mac.update(&aad_len.to_be_bytes());
    mac.update(aad);
    mac.update(iv);
    mac.update(ct);
    Ok(mac.finalize().into_bytes().into())
}

/// Ciphertext of [`seal`]: IV, AES-256-CBC ciphertext, HMAC-SHA-384 tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// 16-byte IV.
    pub iv: Vec<u8>,
    /// AES-256-CBC (PKCS#7) ciphertext.
    pub ciphertext: Vec<u8>,
    /// HMAC-SHA-384 over the length of `aad`, `aad`, IV and ciphertext.
    pub mac: Vec<u8>,
}

/// Encrypts `plain` under `credential`, bound to `aad` (encrypt-then-MAC).
pub fn seal(credential: &[u8], aad: &[u8], plain: &[u8]) -> Result<Sealed> {
    let enc = subkey(credential, "encrypt")?;
    let mac_key = subkey(credential, "mac")?;
    let mut iv = [0u8; 16];
    OsRng.fill_bytes(&mut iv);
    let ciphertext = cbc::Encryptor::<aes::Aes256>::new(enc[..32].into(), (&iv).into())
        .encrypt_padded_vec_mut::<Pkcs7>(plain);
    let mac = tag(&mac_key, aad, &iv, &ciphertext)?.to_vec();
    Ok(Sealed {
        iv: iv.to_vec(),
        ciphertext,
        mac,
    })
}

/// Checks and decrypts what [`seal`] made; `BadSignature` if anything was changed or the
/// credential is not the one it was sealed under.
pub fn open(credential: &[u8], aad: &[u8], sealed: &Sealed) -> Result<Vec<u8>> {
    let enc = subkey(credential, "encrypt")?;
    let mac_key = subkey(credential, "mac")?;
    let iv: [u8; 16] = sealed
        .iv
        .as_slice()
        .try_into()
        .map_err(|_| PkiError::Malformed("sealed IV is not 16 bytes".into()))?;
    let want = tag(&mac_key, aad, &iv, &sealed.ciphertext)?;
    if !constant_eq(&want, &sealed.mac) {
        return Err(PkiError::BadSignature(
            "the sealed certificates do not match the activated credential".into(),
        ));
    }
    cbc::Decryptor::<aes::Aes256>::new(enc[..32].into(), (&iv).into())
        .decrypt_padded_vec_mut::<Pkcs7>(&sealed.ciphertext)
        .map_err(|_| PkiError::Malformed("sealed certificates: bad padding".into()))
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_lengths_and_labels() {
        let a = kdfa_sha256(b"k", "STORAGE", b"n", &[], 128);
        assert_eq!(a.len(), 16);
        let b = kdfa_sha256(b"k", "INTEGRITY", &[], &[], 256);
        assert_eq!(b.len(), 32);
        // The bit count is part of the input: 128 bits is not a prefix of 256.
        assert_ne!(&kdfa_sha256(b"k", "STORAGE", b"n", &[], 256)[..16], &a[..]);
        assert_eq!(kdfa_sha256(b"k", "X", &[], &[], 520).len(), 65);
    }

    #[test]
    fn cfb_is_a_stream_over_partial_blocks() {
        let key = [7u8; 16];
        let data: Vec<u8> = (0..40u8).collect();
        let cfb = |d: &[u8]| aes_cfb::<aes::Aes128>(&key.into(), d, false);
        let ct = cfb(&data);
        assert_eq!(ct.len(), 40);
        // The first block is P xor E(0): encrypting a prefix gives a prefix.
        assert_eq!(&cfb(&data[..5])[..], &ct[..5]);
        assert_ne!(&ct[..], &data[..]);
        // Known answer: `openssl enc -aes-128-cfb -K 07..07 -iv 00..00`.
        assert_eq!(
            hex::encode(&ct),
            "4c82b34a0fd4a12b5b4e924d84489fa0c7656213beff9eb6e2f1f78f05064b2461200c12890447a5"
        );
    }

    #[test]
    fn blob_shape() {
        let blob = made_with_seed(&[1u8; 32], &[0, 0xB, 3], &[9u8; 32]).unwrap();
        // TPM2B_DIGEST(32-byte HMAC) then TPM2B(credential) encrypted: 2+32 + 2+32.
        assert_eq!(blob.len(), 68);
        assert_eq!(&blob[..2], &[0, 32]);
    }

    #[test]
    fn seal_open() {
        let c = fresh_credential();
        let s = seal(&c, b"aad", b"certificates").unwrap();
        assert_eq!(open(&c, b"aad", &s).unwrap(), b"certificates");
        assert!(open(&c, b"other", &s).is_err());
        assert!(open(&fresh_credential(), b"aad", &s).is_err());
        let mut t = s.clone();
        t.ciphertext[0] ^= 1;
        assert!(open(&c, b"aad", &t).is_err());
    }
}
