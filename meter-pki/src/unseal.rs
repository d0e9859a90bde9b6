//! Opening a CMS EnvelopedData addressed to a key that lives in a TPM (`Decrypt`).
//!
//! Why two phases: the receiver's private key never leaves the TPM, which computes only
//! the ECDH shared point (`TPM2_ECDH_ZGen`). So [`prepare`] parses the envelope strictly,
//! finds the key-agreement recipient that names the receiver's certificate and returns
//! the originator's ephemeral point for the TPM; [`Prepared::finish`] takes the shared
//! x-coordinate back, derives the KEK, unwraps the content-encryption key and decrypts.
//!
//! What is accepted (RFC 5652 §6, RFC 5753 §3.1, RFC 3565), and nothing else:
//!
//! * `ContentInfo` id-envelopedData, DER (no BER indefinite lengths), content type id-data,
//!   the encrypted content present (not detached);
//! * recipient infos of any kind; only `kari` ones are read, and the one whose
//!   `RecipientEncryptedKey` names the certificate (issuerAndSerialNumber, or rKeyId
//!   equal to its subject key identifier) is used; others are for other people;
//! * key agreement `dhSinglePass-stdDH-sha{1,224,256,384,512}kdf-scheme` (OpenSSL 3's
//!   `openssl cms -encrypt` writes the SHA-1 one by default) with an ephemeral P-384
//!   originator key; an optional UKM (entityUInfo of the KDF's shared info);
//! * key wrap id-aes{128,192,256}-wrap (RFC 3394), content AES-{128,192,256}-CBC with
//!   PKCS#7 padding; the unwrapped key's length must be the content cipher's.
//!
//! Refusals: an envelope with no recipient for this certificate is
//! [`UnsealError::NotForUs`]; a key unwrap that fails its integrity check, or a content
//! that does not decrypt to valid padding, is [`UnsealError::Undecryptable`] (tampered, or
//! made for another key with our name on it); anything else is [`PkiError`]. Every secret
//! (shared x, KEK, CEK) is zeroized when dropped.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
use cms::cert::IssuerAndSerialNumber;
use cms::content_info::ContentInfo;
use cms::enveloped_data::OriginatorIdentifierOrKey;
use der::asn1::{ObjectIdentifier, OctetString};
use der::{Any, Decode, Encode, Tag, Tagged};
use sha2::Digest;
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use zeroize::Zeroizing;

use crate::envelope::{kari_tag, EccCmsSharedInfo, Enveloped, Kari, Rid, ID_ENVELOPED_DATA};
use crate::{oid, PkiError};

/// Why an envelope could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    /// The envelope has no key-agreement recipient naming this certificate.
    #[error("the envelope is not addressed to certificate {0}; it was encrypted for someone else")]
    NotForUs(String),
    /// The key unwrap or the content decryption failed its check.
    #[error("the envelope does not decrypt ({0}); it was altered, or made for another key")]
    Undecryptable(String),
    /// Malformed, unsupported or too large.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

impl From<der::Error> for UnsealError {
    fn from(e: der::Error) -> Self {
        UnsealError::Pki(PkiError::from(e))
    }
}

type Result<T> = std::result::Result<T, UnsealError>;

fn malformed(m: &str) -> UnsealError {
    UnsealError::Pki(PkiError::Malformed(m.into()))
}

const fn o(s: &str) -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap(s)
}

/// The X9.63 KDF digests of the stdDH schemes (RFC 5753 §7.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KdfHash {
    /// dhSinglePass-stdDH-sha1kdf-scheme (1.3.133.16.840.63.0.2).
    Sha1,
    /// dhSinglePass-stdDH-sha224kdf-scheme (1.3.132.1.11.0).
    Sha224,
    /// dhSinglePass-stdDH-sha256kdf-scheme (1.3.132.1.11.1).
    Sha256,
    /// dhSinglePass-stdDH-sha384kdf-scheme (1.3.132.1.11.2).
    Sha384,
    /// dhSinglePass-stdDH-sha512kdf-scheme (1.3.132.1.11.3).
    Sha512,
}

const KDFS: [(ObjectIdentifier, KdfHash); 5] = [
    (o("1.3.133.16.840.63.0.2"), KdfHash::Sha1),
    (o("1.3.132.1.11.0"), KdfHash::Sha224),
    (o("1.3.132.1.11.1"), KdfHash::Sha256),
    (o("1.3.132.1.11.2"), KdfHash::Sha384),
    (o("1.3.132.1.11.3"), KdfHash::Sha512),
];

/// id-aes{128,192,256}-wrap and their key lengths.
const WRAPS: [(ObjectIdentifier, usize); 3] = [
    (o("2.16.840.1.101.3.4.1.5"), 16),
    (o("2.16.840.1.101.3.4.1.25"), 24),
    (o("2.16.840.1.101.3.4.1.45"), 32),
];

/// id-aes{128,192,256}-CBC and their key lengths.
const CIPHERS: [(ObjectIdentifier, usize); 3] = [
    (o("2.16.840.1.101.3.4.1.2"), 16),
    (o("2.16.840.1.101.3.4.1.22"), 24),
    (o("2.16.840.1.101.3.4.1.42"), 32),
];

fn lookup<T: Copy>(table: &[(ObjectIdentifier, T)], id: &ObjectIdentifier) -> Option<T> {
    table.iter().find(|(k, _)| k == id).map(|(_, v)| *v)
}

/// An envelope parsed and matched to its recipient, waiting for the shared secret.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The originator's ephemeral P-384 point (uncompressed SEC1): give it to ECDH.
    pub ephemeral_sec1: Vec<u8>,
    /// The KDF digest the sender chose.
    pub kdf: KdfHash,
    wrap_alg: AlgorithmIdentifierOwned,
    wrap_len: usize,
    ukm: Option<Vec<u8>>,
    wrapped: Vec<u8>,
    cipher_len: usize,
    iv: [u8; 16],
    ciphertext: Vec<u8>,
}

/// Parses `der_or_pem` (DER, or PEM `CMS`/`PKCS7`) strictly and finds the recipient that
/// names `recipient`; refuses a ciphertext longer than `max_content` bytes.
pub fn prepare(der_or_pem: &[u8], recipient: &Certificate, max_content: usize) -> Result<Prepared> {
    let der = decode_input(der_or_pem)?;
    let ci = ContentInfo::from_der(&der)?;
    if ci.content_type != ID_ENVELOPED_DATA {
        return Err(UnsealError::Pki(PkiError::WrongType(
            "not a CMS EnvelopedData".into(),
        )));
    }
    let env: Enveloped = ci.content.decode_as()?;
    let eci = &env.encrypted_content;
    if eci.content_type != oid::ID_DATA {
        return Err(malformed("encrypted content type is not id-data"));
    }
    let cipher_len = lookup(&CIPHERS, &eci.content_enc_alg.oid)
        .ok_or_else(|| malformed("content cipher is not AES-128/192/256-CBC"))?;
    let iv: OctetString = eci
        .content_enc_alg
        .parameters
        .as_ref()
        .ok_or_else(|| malformed("AES-CBC without IV"))?
        .decode_as()?;
    let iv: [u8; 16] = iv
        .as_bytes()
        .try_into()
        .map_err(|_| malformed("AES-CBC IV is not 16 bytes"))?;
    let ciphertext = eci
        .encrypted_content
        .as_ref()
        .ok_or_else(|| malformed("no encrypted content (detached content is not supported)"))?
        .as_bytes();
    if ciphertext.len() > max_content.saturating_add(16) {
        return Err(UnsealError::Pki(PkiError::TooLarge(ciphertext.len())));
    }
    if ciphertext.is_empty() || ciphertext.len() % 16 != 0 {
        return Err(malformed("encrypted content is not whole AES blocks"));
    }
    let ias = IssuerAndSerialNumber {
        issuer: recipient.tbs_certificate.issuer.clone(),
        serial_number: recipient.tbs_certificate.serial_number.clone(),
    };
    let ski = crate::issue::cert_key_id(recipient);
    for ri in env.recip_infos.iter() {
        if ri.tag() != kari_tag() {
            continue;
        }
        let kari: Kari = Any::new(Tag::Sequence, ri.value())?.decode_as()?;
        let Some(rek) = kari.recipient_enc_keys.iter().find(|rek| match &rek.rid {
            Rid::IssuerAndSerialNumber(x) => *x == ias,
            Rid::RKeyId(k) => k.subject_key_identifier.0.as_bytes() == ski.as_slice(),
        }) else {
            continue;
        };
        return prepared(&kari, rek.enc_key.as_bytes(), cipher_len, iv, ciphertext);
    }
    Err(UnsealError::NotForUs(crate::cert::serial_hex(recipient)))
}

fn prepared(
    kari: &Kari,
    wrapped: &[u8],
    cipher_len: usize,
    iv: [u8; 16],
    ciphertext: &[u8],
) -> Result<Prepared> {
    let kdf = lookup(&KDFS, &kari.key_enc_alg.oid).ok_or_else(|| {
        malformed("key agreement is not dhSinglePass-stdDH-sha1/224/256/384/512kdf-scheme")
    })?;
    let wrap_alg: AlgorithmIdentifierOwned = kari
        .key_enc_alg
        .parameters
        .as_ref()
        .ok_or_else(|| malformed("key agreement without key-wrap algorithm"))?
        .decode_as()?;
    let wrap_len = lookup(&WRAPS, &wrap_alg.oid)
        .ok_or_else(|| malformed("key wrap is not id-aes128/192/256-wrap"))?;
    if wrap_alg.parameters.is_some() {
        return Err(malformed("AES key wrap with parameters"));
    }
    let OriginatorIdentifierOrKey::OriginatorKey(orig) = &kari.originator else {
        return Err(malformed("originator is not an ephemeral key"));
    };
    if orig.algorithm.oid != oid::EC_PUBLIC_KEY {
        return Err(malformed("originator key is not an EC key"));
    }
    let bits = orig
        .public_key
        .as_bytes()
        .ok_or_else(|| malformed("originator key has unused bits"))?;
    let point = p384::PublicKey::from_sec1_bytes(bits)
        .map_err(|_| malformed("originator key is not a P-384 point"))?;
    if wrapped.len() != cipher_len + 8 {
        return Err(UnsealError::Undecryptable(format!(
            "the wrapped key is {} bytes, not an AES-{} key",
            wrapped.len(),
            cipher_len * 8
        )));
    }
    Ok(Prepared {
        ephemeral_sec1: point.to_sec1_bytes().to_vec(),
        kdf,
        wrap_alg,
        wrap_len,
        ukm: kari.ukm.as_ref().map(|u| u.as_bytes().to_vec()),
        wrapped: wrapped.to_vec(),
        cipher_len,
        iv,
        ciphertext: ciphertext.to_vec(),
    })
}

fn decode_input(input: &[u8]) -> Result<Vec<u8>> {
    if input.first() == Some(&0x30) {
        return Ok(input.to_vec());
    }
    let text =
        std::str::from_utf8(input).map_err(|_| malformed("the envelope is neither DER nor PEM"))?;
    for label in ["CMS", "PKCS7"] {
        let (begin, end) = (
            format!("-----BEGIN {label}-----"),
            format!("-----END {label}-----"),
        );
        if let (Some(b), Some(e)) = (text.find(&begin), text.find(&end)) {
            let block = text
                .get(b..e + end.len())
                .ok_or_else(|| malformed("PEM END line before its BEGIN line"))?;
            let (_, der) = der::pem::decode_vec(block.as_bytes())
                .map_err(|e| malformed(&format!("PEM: {e}")))?;
            return Ok(der);
        }
    }
    Err(malformed(
        "the envelope is neither DER nor PEM (-----BEGIN CMS----- or PKCS7)",
    ))
}

/// X9.63 KDF (SEC 1 §3.6.1) of `z` with `info`, `len` bytes.
fn x963<D: Digest>(z: &[u8], info: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + 64));
    let mut counter: u32 = 1;
    while out.len() < len {
        let mut h = D::new();
        h.update(z);
        h.update(counter.to_be_bytes());
        h.update(info);
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}

impl Prepared {
    /// The KEK for the shared x-coordinate `shared_x` (RFC 5753 §3.1.2).
    fn kek(&self, shared_x: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let bits = u32::try_from(self.wrap_len * 8).unwrap_or(256);
        let info = EccCmsSharedInfo {
            key_info: self.wrap_alg.clone(),
            entity_u_info: self.ukm.clone().map(OctetString::new).transpose()?,
            supp_pub_info: OctetString::new(bits.to_be_bytes().to_vec())?,
        }
        .to_der()?;
        let n = self.wrap_len;
        Ok(match self.kdf {
            KdfHash::Sha1 => x963::<sha1::Sha1>(shared_x, &info, n),
            KdfHash::Sha224 => x963::<sha2::Sha224>(shared_x, &info, n),
            KdfHash::Sha256 => x963::<sha2::Sha256>(shared_x, &info, n),
            KdfHash::Sha384 => x963::<sha2::Sha384>(shared_x, &info, n),
            KdfHash::Sha512 => x963::<sha2::Sha512>(shared_x, &info, n),
        })
    }

    /// Unwraps the content-encryption key with the ECDH x-coordinate `shared_x` (48
    /// bytes, from the TPM) and decrypts the content.
    pub fn finish(&self, shared_x: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let kek = self.kek(shared_x)?;
        let mut cek = Zeroizing::new(vec![0u8; self.cipher_len]);
        let unwrapped = match self.wrap_len {
            16 => aes_kw::KekAes128::try_from(kek.as_slice())
                .map_err(|_| malformed("KEK length"))?
                .unwrap(&self.wrapped, &mut cek),
            24 => aes_kw::KekAes192::try_from(kek.as_slice())
                .map_err(|_| malformed("KEK length"))?
                .unwrap(&self.wrapped, &mut cek),
            _ => aes_kw::KekAes256::try_from(kek.as_slice())
                .map_err(|_| malformed("KEK length"))?
                .unwrap(&self.wrapped, &mut cek),
        };
        unwrapped.map_err(|_| UnsealError::Undecryptable("the key unwrap check failed".into()))?;
        let bad_padding = |_| UnsealError::Undecryptable("the content padding is wrong".into());
        let iv = (&self.iv).into();
        let plain = match self.cipher_len {
            16 => cbc::Decryptor::<aes::Aes128>::new(cek.as_slice().into(), iv)
                .decrypt_padded_vec_mut::<Pkcs7>(&self.ciphertext)
                .map_err(bad_padding)?,
            24 => cbc::Decryptor::<aes::Aes192>::new(cek.as_slice().into(), iv)
                .decrypt_padded_vec_mut::<Pkcs7>(&self.ciphertext)
                .map_err(bad_padding)?,
            _ => cbc::Decryptor::<aes::Aes256>::new(cek.as_slice().into(), iv)
                .decrypt_padded_vec_mut::<Pkcs7>(&self.ciphertext)
                .map_err(bad_padding)?,
        };
        Ok(Zeroizing::new(plain))
    }
}

/// Opens an envelope with a private key held in memory (tests, the software housing's
/// equivalent): [`prepare`], ECDH, [`Prepared::finish`].
pub fn open_with_key(
    der_or_pem: &[u8],
    recipient: &Certificate,
    key: &p384::SecretKey,
    max_content: usize,
) -> Result<Zeroizing<Vec<u8>>> {
    let p = prepare(der_or_pem, recipient, max_content)?;
    let eph = p384::PublicKey::from_sec1_bytes(&p.ephemeral_sec1)
        .map_err(|_| malformed("originator key is not a P-384 point"))?;
    let shared = p384::ecdh::diffie_hellman(key.to_nonzero_scalar(), eph.as_affine());
    p.finish(shared.raw_secret_bytes())
}

#[cfg(test)]
#[path = "unseal_tests.rs"]
mod tests;
