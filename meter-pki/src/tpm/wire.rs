//! The few TPM 2.0 structures an attestation verifier reads (TPM 2.0 Part 2), parsed
//! strictly from their big-endian marshalled form: `TPMT_PUBLIC` (RSA and ECC),
//! `TPMS_ATTEST` with the certify, time and NV bodies, and object names.
//!
//! Written by hand rather than taken from a TSS because the authority must not link a TSS
//! (it has no TPM) and because only what the checks need is decoded; anything else is
//! refused rather than skipped, so a structure cannot smuggle a field we ignore.

use sha2::{Digest, Sha256, Sha384};

use crate::{PkiError, Result};

/// `TPM_GENERATED_VALUE`: what a TPM puts first in every `TPMS_ATTEST` it signs, and what
/// a restricted signing key refuses to sign from outside.
pub const TPM_GENERATED: u32 = 0xFF54_4347;
/// `TPM_ST_ATTEST_CERTIFY`.
pub const ST_ATTEST_CERTIFY: u16 = 0x8017;
/// `TPM_ST_ATTEST_TIME`.
pub const ST_ATTEST_TIME: u16 = 0x8019;
/// `TPM_ST_ATTEST_NV`.
pub const ST_ATTEST_NV: u16 = 0x8014;

/// `TPM_ALG_RSA`.
pub const ALG_RSA: u16 = 0x0001;
/// `TPM_ALG_ECC`.
pub const ALG_ECC: u16 = 0x0023;
/// `TPM_ALG_SHA256`.
pub const ALG_SHA256: u16 = 0x000B;
/// `TPM_ALG_SHA384`.
pub const ALG_SHA384: u16 = 0x000C;
/// `TPM_ALG_NULL`.
pub const ALG_NULL: u16 = 0x0010;
/// `TPM_ALG_ECDSA`.
pub const ALG_ECDSA: u16 = 0x0018;
/// `TPM_ALG_AES`.
pub const ALG_AES: u16 = 0x0006;
/// `TPM_ALG_CFB`.
pub const ALG_CFB: u16 = 0x0043;
/// `TPM_ECC_NIST_P384`.
pub const ECC_NIST_P384: u16 = 0x0004;

/// `TPMA_OBJECT` bits.
pub mod attr {
    /// fixedTPM: the object cannot be duplicated out of this TPM.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// stClear.
    pub const ST_CLEAR: u32 = 1 << 2;
    /// fixedParent: the object cannot be duplicated to another parent.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// sensitiveDataOrigin: the TPM generated the private part.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// userWithAuth: USER role by auth value (or policy).
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// adminWithPolicy: ADMIN role only by policy.
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    /// noDA.
    pub const NO_DA: u32 = 1 << 10;
    /// encryptedDuplication.
    pub const ENCRYPTED_DUPLICATION: u32 = 1 << 11;
    /// restricted.
    pub const RESTRICTED: u32 = 1 << 16;
    /// decrypt.
    pub const DECRYPT: u32 = 1 << 17;
    /// sign.
    pub const SIGN: u32 = 1 << 18;
}

/// A big-endian cursor that refuses reading past the end.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

fn short(what: &str) -> PkiError {
    PkiError::Malformed(format!("TPM structure truncated at {what}"))
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(short(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(a))
    }

    /// A `TPM2B_*`: u16 size then that many bytes.
    pub(crate) fn tpm2b(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }

    /// Fails unless every byte was read.
    pub(crate) fn end(&self, what: &str) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(PkiError::Malformed(format!(
                "{} trailing bytes after {what}",
                self.buf.len()
            )))
        }
    }
}

/// Appends a `TPM2B` (u16 size then bytes); `Malformed` past 65535 bytes.
pub(crate) fn put_tpm2b(out: &mut Vec<u8>, bytes: &[u8]) -> Result<()> {
    let n = u16::try_from(bytes.len())
        .map_err(|_| PkiError::Malformed("TPM2B larger than 65535 bytes".into()))?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// The key of a public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA: modulus (big-endian) and exponent (0 means the default 65537).
    Rsa {
        /// Modulus.
        modulus: Vec<u8>,
        /// Exponent as stored (0 = 2^16 + 1).
        exponent: u32,
        /// Key size in bits.
        bits: u16,
    },
    /// ECC: curve and point coordinates (left-padded to the curve size by the parser).
    Ecc {
        /// `TPM_ECC_CURVE`.
        curve: u16,
        /// X coordinate.
        x: Vec<u8>,
        /// Y coordinate.
        y: Vec<u8>,
    },
}

/// A parsed `TPMT_PUBLIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Public {
    /// `TPM_ALG_RSA` or `TPM_ALG_ECC`.
    pub alg: u16,
    /// Name algorithm.
    pub name_alg: u16,
    /// `TPMA_OBJECT`.
    pub attributes: u32,
    /// authPolicy (empty when none).
    pub auth_policy: Vec<u8>,
    /// Symmetric algorithm of a storage key (`TPM_ALG_NULL` for others).
    pub symmetric: u16,
    /// Symmetric key bits (0 when null).
    pub symmetric_bits: u16,
    /// Symmetric mode (0 when null).
    pub symmetric_mode: u16,
    /// Signing scheme (`TPM_ALG_NULL` when none).
    pub scheme: u16,
    /// Hash of the signing scheme (0 when none).
    pub scheme_hash: u16,
    /// The key.
    pub key: PublicKey,
}

impl Public {
    /// Parses exactly one marshalled `TPMT_PUBLIC` (no `TPM2B` size prefix).
    pub fn parse(bytes: &[u8]) -> Result<Public> {
        let mut r = Reader::new(bytes);
        let alg = r.u16("type")?;
        let name_alg = r.u16("nameAlg")?;
        let attributes = r.u32("objectAttributes")?;
        let auth_policy = r.tpm2b("authPolicy")?.to_vec();
        let symmetric = r.u16("symmetric")?;
        let (symmetric_bits, symmetric_mode) = if symmetric == ALG_NULL {
            (0, 0)
        } else {
            (r.u16("symmetric keyBits")?, r.u16("symmetric mode")?)
        };
        let scheme = r.u16("scheme")?;
        let scheme_hash = match (alg, scheme) {
            (_, ALG_NULL) => 0,
            // ECDAA carries a count too; nothing of ours uses it.
            (ALG_ECC, 0x001A) => {
                return Err(PkiError::Malformed("ECDAA keys are not supported".into()))
            }
            _ => r.u16("scheme hash")?,
        };
        let key = match alg {
            ALG_RSA => {
                let bits = r.u16("keyBits")?;
                let exponent = r.u32("exponent")?;
                let modulus = r.tpm2b("modulus")?.to_vec();
                PublicKey::Rsa {
                    modulus,
                    exponent,
                    bits,
                }
            }
            ALG_ECC => {
                let curve = r.u16("curveID")?;
                let kdf = r.u16("kdf")?;
                if kdf != ALG_NULL {
                    r.u16("kdf hash")?;
                }
                let x = r.tpm2b("x")?.to_vec();
                let y = r.tpm2b("y")?.to_vec();
                PublicKey::Ecc { curve, x, y }
            }
            other => {
                return Err(PkiError::Malformed(format!(
                    "public area of type {other:#06x}: only RSA and ECC keys are supported"
                )))
            }
        };
        r.end("TPMT_PUBLIC")?;
        Ok(Public {
            alg,
            name_alg,
            attributes,
            auth_policy,
            symmetric,
            symmetric_bits,
            symmetric_mode,
            scheme,
            scheme_hash,
            key,
        })
    }

    /// Whether every bit of `bits` is set.
    pub fn has(&self, bits: u32) -> bool {
        self.attributes & bits == bits
    }

    /// Uncompressed SEC1 point of a P-384 key (97 bytes), `None` otherwise.
    pub fn p384_point(&self) -> Option<Vec<u8>> {
        let PublicKey::Ecc { curve, x, y } = &self.key else {
            return None;
        };
        if *curve != ECC_NIST_P384 || x.len() > 48 || y.len() > 48 {
            return None;
        }
        let mut out = vec![0u8; 97];
        out[0] = 4;
        out[1 + 48 - x.len()..49].copy_from_slice(x);
        out[49 + 48 - y.len()..].copy_from_slice(y);
        Some(out)
    }
}

/// The Name of an object or NV index: nameAlg (u16) then the hash of the marshalled
/// public area under it. SHA-256 and SHA-384 name algorithms only.
pub fn name(name_alg: u16, public_area: &[u8]) -> Result<Vec<u8>> {
    let mut out = name_alg.to_be_bytes().to_vec();
    match name_alg {
        ALG_SHA256 => out.extend_from_slice(&Sha256::digest(public_area)),
        ALG_SHA384 => out.extend_from_slice(&Sha384::digest(public_area)),
        other => {
            return Err(PkiError::Malformed(format!(
                "name algorithm {other:#06x}: only SHA-256 and SHA-384 are supported"
            )))
        }
    }
    Ok(out)
}

/// The Name of a marshalled `TPMT_PUBLIC` (its nameAlg read from it).
pub fn object_name(public_area: &[u8]) -> Result<Vec<u8>> {
    let mut r = Reader::new(public_area);
    r.u16("type")?;
    let name_alg = r.u16("nameAlg")?;
    name(name_alg, public_area)
}

/// `TPMS_CLOCK_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since its last TPM2_Clear.
    pub clock: u64,
    /// TPM resets (reboots).
    pub reset_count: u32,
    /// TPM restarts and resumes.
    pub restart_count: u32,
    /// Whether `clock` may have been lost (false) or is known good (true).
    pub safe: bool,
}

/// The body of an attestation, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attested {
    /// TPM2_Certify: the certified object's Name and qualified Name.
    Certify {
        /// Name of the certified object.
        name: Vec<u8>,
        /// Qualified name of the certified object.
        qualified_name: Vec<u8>,
    },
    /// TPM2_GetTime: the time since the last TPM reset, with the clock again.
    Time {
        /// Milliseconds since the last TPM reset or restart.
        time: u64,
        /// The clock at that time.
        clock: ClockInfo,
        /// Firmware version.
        firmware_version: u64,
    },
    /// TPM2_NV_Certify: bytes of an NV index.
    Nv {
        /// Name of the NV index.
        index_name: Vec<u8>,
        /// Offset of `contents` in the index.
        offset: u16,
        /// The bytes read.
        contents: Vec<u8>,
    },
}

/// A parsed `TPMS_ATTEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    /// `TPM_ST_ATTEST_*`.
    pub kind: u16,
    /// Qualified name of the signing key.
    pub qualified_signer: Vec<u8>,
    /// The caller's qualifying data (`extraData`).
    pub extra_data: Vec<u8>,
    /// The TPM clock when it signed.
    pub clock: ClockInfo,
    /// Firmware version.
    pub firmware_version: u64,
    /// The body.
    pub attested: Attested,
}

fn clock_info(r: &mut Reader<'_>) -> Result<ClockInfo> {
    Ok(ClockInfo {
        clock: r.u64("clock")?,
        reset_count: r.u32("resetCount")?,
        restart_count: r.u32("restartCount")?,
        safe: match r.u8("safe")? {
            0 => false,
            1 => true,
            _ => return Err(PkiError::Malformed("TPMI_YES_NO out of range".into())),
        },
    })
}

impl Attest {
    /// Parses a marshalled `TPMS_ATTEST` (no `TPM2B` size prefix); refuses anything the TPM
    /// did not mark `TPM_GENERATED` and bodies other than certify, time and NV.
    pub fn parse(bytes: &[u8]) -> Result<Attest> {
        let mut r = Reader::new(bytes);
        let magic = r.u32("magic")?;
        if magic != TPM_GENERATED {
            return Err(PkiError::BadSignature(format!(
                "attestation magic {magic:#010x} is not TPM_GENERATED"
            )));
        }
        let kind = r.u16("type")?;
        let qualified_signer = r.tpm2b("qualifiedSigner")?.to_vec();
        let extra_data = r.tpm2b("extraData")?.to_vec();
        let clock = clock_info(&mut r)?;
        let firmware_version = r.u64("firmwareVersion")?;
        let attested = match kind {
            ST_ATTEST_CERTIFY => Attested::Certify {
                name: r.tpm2b("name")?.to_vec(),
                qualified_name: r.tpm2b("qualifiedName")?.to_vec(),
            },
            ST_ATTEST_TIME => Attested::Time {
                time: r.u64("time")?,
                clock: clock_info(&mut r)?,
                firmware_version: r.u64("firmwareVersion")?,
            },
            ST_ATTEST_NV => Attested::Nv {
                index_name: r.tpm2b("indexName")?.to_vec(),
                offset: r.u16("offset")?,
                contents: r.tpm2b("nvContents")?.to_vec(),
            },
            other => {
                return Err(PkiError::WrongType(format!(
                    "attestation type {other:#06x}: expected certify, time or NV"
                )))
            }
        };
        r.end("TPMS_ATTEST")?;
        Ok(Attest {
            kind,
            qualified_signer,
            extra_data,
            clock,
            firmware_version,
            attested,
        })
    }

    /// Marshals back (for tests and for software test housings).
    pub fn marshal(&self) -> Result<Vec<u8>> {
        let mut out = TPM_GENERATED.to_be_bytes().to_vec();
        out.extend_from_slice(&self.kind.to_be_bytes());
        put_tpm2b(&mut out, &self.qualified_signer)?;
        put_tpm2b(&mut out, &self.extra_data)?;
        put_clock(&mut out, &self.clock);
        out.extend_from_slice(&self.firmware_version.to_be_bytes());
        match &self.attested {
            Attested::Certify {
                name,
                qualified_name,
            } => {
                put_tpm2b(&mut out, name)?;
                put_tpm2b(&mut out, qualified_name)?;
            }
            Attested::Time {
                time,
                clock,
                firmware_version,
            } => {
                out.extend_from_slice(&time.to_be_bytes());
                put_clock(&mut out, clock);
                out.extend_from_slice(&firmware_version.to_be_bytes());
            }
            Attested::Nv {
                index_name,
                offset,
                contents,
            } => {
                put_tpm2b(&mut out, index_name)?;
                out.extend_from_slice(&offset.to_be_bytes());
                put_tpm2b(&mut out, contents)?;
            }
        }
        Ok(out)
    }
}

fn put_clock(out: &mut Vec<u8>, c: &ClockInfo) {
    out.extend_from_slice(&c.clock.to_be_bytes());
    out.extend_from_slice(&c.reset_count.to_be_bytes());
    out.extend_from_slice(&c.restart_count.to_be_bytes());
    out.push(u8::from(c.safe));
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn ecc_public(attrs: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&ALG_ECC.to_be_bytes());
        v.extend_from_slice(&ALG_SHA256.to_be_bytes());
        v.extend_from_slice(&attrs.to_be_bytes());
        v.extend_from_slice(&[0, 0]); // authPolicy
        v.extend_from_slice(&ALG_NULL.to_be_bytes()); // symmetric
        v.extend_from_slice(&ALG_ECDSA.to_be_bytes());
        v.extend_from_slice(&ALG_SHA384.to_be_bytes());
        v.extend_from_slice(&ECC_NIST_P384.to_be_bytes());
        v.extend_from_slice(&ALG_NULL.to_be_bytes()); // kdf
        put_tpm2b(&mut v, &[1u8; 47]).unwrap();
        put_tpm2b(&mut v, &[2u8; 48]).unwrap();
        v
    }

    #[test]
    fn parses_an_ecc_signing_key() {
        let bytes = ecc_public(attr::FIXED_TPM | attr::SIGN);
        let p = Public::parse(&bytes).unwrap();
        assert!(p.has(attr::FIXED_TPM | attr::SIGN));
        assert!(!p.has(attr::DECRYPT));
        assert_eq!(p.scheme, ALG_ECDSA);
        let point = p.p384_point().unwrap();
        assert_eq!(point[0], 4);
        assert_eq!(point[1], 0);
        assert_eq!(&point[2..49], &[1u8; 47]);
        assert_eq!(object_name(&bytes).unwrap().len(), 34);
        // Truncated or padded areas are refused.
        assert!(Public::parse(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Public::parse(&longer).is_err());
    }

    #[test]
    fn attest_round_trips_and_checks_magic() {
        let a = Attest {
            kind: ST_ATTEST_NV,
            qualified_signer: vec![0, 0xB, 9],
            extra_data: vec![7; 48],
            clock: ClockInfo {
                clock: 5,
                reset_count: 1,
                restart_count: 2,
                safe: true,
            },
            firmware_version: 3,
            attested: Attested::Nv {
                index_name: vec![1, 2],
                offset: 0,
                contents: 42u64.to_be_bytes().to_vec(),
            },
        };
        let bytes = a.marshal().unwrap();
        assert_eq!(Attest::parse(&bytes).unwrap(), a);
        let mut forged = bytes.clone();
        forged[0] = 0;
        assert!(matches!(
            Attest::parse(&forged),
            Err(PkiError::BadSignature(_))
        ));
    }
}
