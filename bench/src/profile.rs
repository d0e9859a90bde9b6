//! How long a discrete TPM takes per command, for the delaying proxy
//! (`meterbench tpm-proxy`): the pace of a real chip put in front of swtpm.
//!
//! Sources (wolfTPM's `examples/bench` results in its README, wolfSSL,
//! Raspberry Pi over SPI at 33–43 MHz; REFERENCES.md "TPMs"):
//!
//! | chip            | ECDSA P-256 sign | ECC-256 key gen | RNG (32-byte GetRandom)      |
//! |-----------------|------------------|-----------------|------------------------------|
//! | Infineon SLB9670 | 68.865 ms       | 231.350 ms      | 16 KB in 1.140 s → 2.23 ms   |
//! | Infineon SLB9672 | 35.621 ms       | 135.956 ms      | 24 KB in 1.070 s → 1.39 ms   |
//! | ST ST33KTPM2X    | 25.251 ms       |  89.172 ms      | 24 KB in 1.042 s → 1.36 ms   |
//! | Nuvoton NPCT750  | 56.399 ms       |  84.020 ms      | 16 KB in 1.114 s → 2.18 ms   |
//!
//! wolfTPM asks for random bytes 32 at a time (`MAX_RNG_REQ_SIZE`), so the
//! RNG figure gives the time of one small command, transport included: it is
//! what every command not listed below costs here.
//!
//! (The same README's SLB9670 and NPCT750 runs are in its stored version
//! 0495c707; the SLB9672 and ST33KTPM runs in later versions of the file.)
//!
//! Not measured by any source we found, hence assumptions, stated as such
//! and each one a knob:
//! * **P-384 sign** = the chip's published P-256 time × `p384_factor`, by
//!   default 1.0: a lower bound (no published P-384 figure; a fixed-width
//!   coprocessor's modular multiplication grows with the square of the
//!   operand, so (384/256)² = 2.25 is the pessimistic setting). meterd's keys are P-384; with 1.0 the default profile signs
//!   in 56 ms, inside the 40–70 ms range of the chips above.
//! * **NV write** (NV_Increment, NV_Write, NV_Extend, NV_SetBits,
//!   NV_DefineSpace, NV_UndefineSpace, EvictControl, Shutdown): 25 ms by
//!   default (`--nv-ms`), a flash page program plus the command (no vendor
//!   publishes it; the data sheets give endurance instead, e.g. ST's
//!   ST33GTPMISPI data brief DB4278: 500,000 flash cycles). The *count* of
//!   NV writes, the figure that matters for wear, does not depend on it.
//!
//! A TPM2_Sign over a 32-byte digest is taken as P-256, any other as P-384;
//! the other signing commands (Certify, Quote, GetTime, NV_Certify,
//! CertifyCreation) as P-384 signs, unless their signing key is TPM_RH_NULL:
//! then the chip signs nothing (meterd reads its clock with such a GetTime,
//! every check interval and once an epoch) and the command is "other".
//! Key creation (Create, CreatePrimary,
//! CreateLoaded) costs the ECC key generation time.

use std::time::Duration;

/// TPM command codes the proxy tells apart (TPM 2.0 Part 2, TPM_CC).
pub mod cc {
    /// TPM2_NV_UndefineSpaceSpecial.
    pub const NV_UNDEFINE_SPACE_SPECIAL: u32 = 0x11F;
    /// TPM2_EvictControl.
    pub const EVICT_CONTROL: u32 = 0x120;
    /// TPM2_NV_UndefineSpace.
    pub const NV_UNDEFINE_SPACE: u32 = 0x122;
    /// TPM2_NV_DefineSpace.
    pub const NV_DEFINE_SPACE: u32 = 0x12A;
    /// TPM2_CreatePrimary.
    pub const CREATE_PRIMARY: u32 = 0x131;
    /// TPM2_NV_Increment.
    pub const NV_INCREMENT: u32 = 0x134;
    /// TPM2_NV_SetBits.
    pub const NV_SET_BITS: u32 = 0x135;
    /// TPM2_NV_Extend.
    pub const NV_EXTEND: u32 = 0x136;
    /// TPM2_NV_Write.
    pub const NV_WRITE: u32 = 0x137;
    /// TPM2_Shutdown.
    pub const SHUTDOWN: u32 = 0x145;
    /// TPM2_Certify.
    pub const CERTIFY: u32 = 0x148;
    /// TPM2_CertifyCreation.
    pub const CERTIFY_CREATION: u32 = 0x14A;
    /// TPM2_GetTime.
    pub const GET_TIME: u32 = 0x14C;
    /// TPM2_Create.
    pub const CREATE: u32 = 0x153;
    /// TPM2_Load.
    pub const LOAD: u32 = 0x157;
    /// TPM2_Quote.
    pub const QUOTE: u32 = 0x158;
    /// TPM2_Sign.
    pub const SIGN: u32 = 0x15D;
    /// TPM2_ContextLoad.
    pub const CONTEXT_LOAD: u32 = 0x161;
    /// TPM2_ContextSave.
    pub const CONTEXT_SAVE: u32 = 0x162;
    /// TPM2_FlushContext.
    pub const FLUSH_CONTEXT: u32 = 0x165;
    /// TPM2_GetRandom.
    pub const GET_RANDOM: u32 = 0x17B;
    /// TPM2_ReadClock.
    pub const READ_CLOCK: u32 = 0x181;
    /// TPM2_NV_Certify.
    pub const NV_CERTIFY: u32 = 0x184;
    /// TPM2_CreateLoaded.
    pub const CREATE_LOADED: u32 = 0x191;
    /// TPM2_NV_Read.
    pub const NV_READ: u32 = 0x14E;
    /// TPM2_StartAuthSession.
    pub const START_AUTH_SESSION: u32 = 0x176;
}

/// What a command costs on the emulated chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// ECDSA P-256 signature.
    SignP256,
    /// ECDSA P-384 signature (TPM2_Sign or an attestation).
    SignP384,
    /// A command that writes NV.
    NvWrite,
    /// Key generation.
    KeyGen,
    /// Anything else.
    Other,
}

/// Per-class latencies of one chip.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Name (`--profile`).
    pub name: &'static str,
    /// ECDSA P-256 sign.
    pub sign_p256: Duration,
    /// ECDSA P-384 sign (estimate: P-256 × the factor, default 1).
    pub sign_p384: Duration,
    /// NV-writing commands (assumption, `--nv-ms`).
    pub nv_write: Duration,
    /// Key generation.
    pub keygen: Duration,
    /// Every other command.
    pub other: Duration,
}

/// Default NV write time (assumption; see the module docs).
pub const NV_WRITE_MS: f64 = 25.0;

fn ms(v: f64) -> Duration {
    Duration::from_secs_f64(v / 1000.0)
}

/// The profile `tpm-proxy` emulates unless told otherwise: Nuvoton's
/// NPCT750, a common PC TPM, signing in the middle of the published range.
pub const DEFAULT: &str = "npct750";

fn chip(name: &'static str, sign_p256: f64, keygen: f64, rng_kib: f64, rng_s: f64) -> Profile {
    // One 32-byte GetRandom per 32 bytes of the RNG figure.
    let other = rng_s * 1000.0 / (rng_kib * 1024.0 / 32.0);
    Profile {
        name,
        sign_p256: ms(sign_p256),
        sign_p384: ms(sign_p256),
        nv_write: ms(NV_WRITE_MS),
        keygen: ms(keygen),
        other: ms(other),
    }
}

/// The profiles `--profile` accepts.
pub const NAMES: [&str; 5] = ["slb9670", "slb9672", "st33ktpm", "npct750", "zero"];

/// The profile called `name`; `zero` holds nothing (transparency check).
pub fn by_name(name: &str) -> Option<Profile> {
    Some(match name {
        "slb9670" => chip("slb9670", 68.865, 231.350, 16.0, 1.140),
        "slb9672" => chip("slb9672", 35.621, 135.956, 24.0, 1.070),
        "st33ktpm" => chip("st33ktpm", 25.251, 89.172, 24.0, 1.042),
        "npct750" => chip("npct750", 56.399, 84.020, 16.0, 1.114),
        "zero" => Profile {
            name: "zero",
            sign_p256: Duration::ZERO,
            sign_p384: Duration::ZERO,
            nv_write: Duration::ZERO,
            keygen: Duration::ZERO,
            other: Duration::ZERO,
        },
        _ => return None,
    })
}

impl Profile {
    /// The same chip with its P-384 sign at `factor` × its P-256 sign.
    pub fn with_p384_factor(mut self, factor: f64) -> Profile {
        self.sign_p384 = self.sign_p256.mul_f64(factor);
        self
    }

    /// The time the chip takes for a command of class `class`.
    pub fn latency(&self, class: Class) -> Duration {
        match class {
            Class::SignP256 => self.sign_p256,
            Class::SignP384 => self.sign_p384,
            Class::NvWrite => self.nv_write,
            Class::KeyGen => self.keygen,
            Class::Other => self.other,
        }
    }

    /// One line for logs: the latencies in ms.
    pub fn describe(&self) -> String {
        let f = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        format!(
            "profile={} sign_p256_ms={} sign_p384_ms={} nv_write_ms={} keygen_ms={} other_ms={}",
            self.name,
            f(self.sign_p256),
            f(self.sign_p384),
            f(self.nv_write),
            f(self.keygen),
            f(self.other)
        )
    }
}

/// Command code of a whole command (header: tag u16, size u32, code u32).
/// The null hierarchy handle: as a signing key, "do not sign".
const TPM_RH_NULL: u32 = 0x4000_0007;

/// The signing-key handle of an attestation command (TPM 2.0 Part 3: the
/// second handle of GetTime and Certify, the first of the others).
fn signer(cmd: &[u8], code: u32) -> Option<u32> {
    let at = match code {
        cc::GET_TIME | cc::CERTIFY => 14,
        _ => 10,
    };
    Some(u32::from_be_bytes(cmd.get(at..at + 4)?.try_into().ok()?))
}

pub fn command_code(cmd: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(cmd.get(6..10)?.try_into().ok()?))
}

/// Size of the digest a TPM2_Sign command signs, if it parses: after the
/// header and the key handle come (with sessions) the authorization area's
/// size and the area, then the TPM2B_DIGEST.
fn sign_digest_len(cmd: &[u8]) -> Option<usize> {
    let tag = u16::from_be_bytes(cmd.get(0..2)?.try_into().ok()?);
    let mut at = 14; // header 10 + keyHandle 4
    if tag == 0x8002 {
        let auth = u32::from_be_bytes(cmd.get(at..at + 4)?.try_into().ok()?);
        at = at
            .checked_add(4)?
            .checked_add(usize::try_from(auth).ok()?)?;
    }
    Some(usize::from(u16::from_be_bytes(
        cmd.get(at..at + 2)?.try_into().ok()?,
    )))
}

/// The class of a whole command.
pub fn classify(cmd: &[u8]) -> Class {
    match command_code(cmd) {
        Some(cc::SIGN) => match sign_digest_len(cmd) {
            Some(32) => Class::SignP256,
            _ => Class::SignP384,
        },
        Some(
            code @ (cc::CERTIFY | cc::CERTIFY_CREATION | cc::GET_TIME | cc::QUOTE | cc::NV_CERTIFY),
        ) => {
            if signer(cmd, code) == Some(TPM_RH_NULL) {
                // An unsigned attestation (meterd's clock reads): the chip
                // fills in a structure and signs nothing.
                Class::Other
            } else {
                Class::SignP384
            }
        }
        Some(
            cc::NV_INCREMENT
            | cc::NV_WRITE
            | cc::NV_EXTEND
            | cc::NV_SET_BITS
            | cc::NV_DEFINE_SPACE
            | cc::NV_UNDEFINE_SPACE
            | cc::NV_UNDEFINE_SPACE_SPECIAL
            | cc::EVICT_CONTROL
            | cc::SHUTDOWN,
        ) => Class::NvWrite,
        Some(cc::CREATE | cc::CREATE_PRIMARY | cc::CREATE_LOADED) => Class::KeyGen,
        _ => Class::Other,
    }
}

/// A short name for the command codes worth reporting one by one.
pub fn name(code: u32) -> Option<&'static str> {
    Some(match code {
        cc::SIGN => "sign",
        cc::NV_INCREMENT => "nv_increment",
        cc::NV_WRITE => "nv_write",
        cc::NV_READ => "nv_read",
        cc::NV_DEFINE_SPACE => "nv_define",
        cc::EVICT_CONTROL => "evict_control",
        cc::SHUTDOWN => "shutdown",
        cc::CREATE => "create",
        cc::CREATE_PRIMARY => "create_primary",
        cc::CREATE_LOADED => "create_loaded",
        cc::LOAD => "load",
        cc::CONTEXT_LOAD => "context_load",
        cc::CONTEXT_SAVE => "context_save",
        cc::FLUSH_CONTEXT => "flush_context",
        cc::READ_CLOCK => "read_clock",
        cc::GET_RANDOM => "get_random",
        cc::START_AUTH_SESSION => "start_auth_session",
        cc::CERTIFY => "certify",
        cc::GET_TIME => "get_time",
        cc::QUOTE => "quote",
        cc::NV_CERTIFY => "nv_certify",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign_cmd(sessions: bool, digest_len: u16) -> Vec<u8> {
        let mut c = Vec::new();
        c.extend_from_slice(&(if sessions { 0x8002u16 } else { 0x8001 }).to_be_bytes());
        c.extend_from_slice(&0u32.to_be_bytes()); // size, fixed below
        c.extend_from_slice(&cc::SIGN.to_be_bytes());
        c.extend_from_slice(&0x8000_0001u32.to_be_bytes()); // key handle
        if sessions {
            // Password session: handle, nonce(0), attrs, hmac(0).
            let area = [0x40, 0, 0, 9, 0, 0, 1, 0, 0];
            c.extend_from_slice(&(area.len() as u32).to_be_bytes());
            c.extend_from_slice(&area);
        }
        c.extend_from_slice(&digest_len.to_be_bytes());
        c.extend(std::iter::repeat_n(0xAB, usize::from(digest_len)));
        c.extend_from_slice(&[0x00, 0x18, 0x00, 0x0C]); // ECDSA, SHA-384
        let len = c.len() as u32;
        c[2..6].copy_from_slice(&len.to_be_bytes());
        c
    }

    fn plain(code: u32) -> Vec<u8> {
        let mut c = vec![0x80, 0x01, 0, 0, 0, 10];
        c.extend_from_slice(&code.to_be_bytes());
        c
    }

    #[test]
    fn sign_curve_from_digest_size() {
        assert_eq!(classify(&sign_cmd(true, 48)), Class::SignP384);
        assert_eq!(classify(&sign_cmd(true, 32)), Class::SignP256);
        assert_eq!(classify(&sign_cmd(false, 32)), Class::SignP256);
        assert_eq!(classify(&sign_cmd(false, 48)), Class::SignP384);
        // Cut short: taken as P-384 (meterd's curve), never a panic.
        assert_eq!(classify(&sign_cmd(true, 32)[..15]), Class::SignP384);
    }

    #[test]
    fn classes_of_other_commands() {
        assert_eq!(classify(&plain(cc::NV_INCREMENT)), Class::NvWrite);
        assert_eq!(classify(&plain(cc::NV_WRITE)), Class::NvWrite);
        assert_eq!(classify(&plain(cc::CREATE_PRIMARY)), Class::KeyGen);
        assert_eq!(classify(&plain(cc::READ_CLOCK)), Class::Other);
        assert_eq!(classify(&plain(cc::NV_READ)), Class::Other);
        assert_eq!(classify(&[0x80]), Class::Other);
    }

    fn with_handles(code: u32, handles: &[u32]) -> Vec<u8> {
        let mut c = plain(code);
        for h in handles {
            c.extend_from_slice(&h.to_be_bytes());
        }
        c
    }

    #[test]
    fn an_attestation_signs_unless_its_signer_is_null() {
        const ENDORSEMENT: u32 = 0x4000_000B;
        const KEY: u32 = 0x8000_0002;
        // GetTime: privacy admin, then the signer (meterd's clock read
        // names the null signer and gets an unsigned attestation).
        let unsigned = with_handles(cc::GET_TIME, &[ENDORSEMENT, TPM_RH_NULL]);
        assert_eq!(classify(&unsigned), Class::Other);
        let signed = with_handles(cc::GET_TIME, &[ENDORSEMENT, KEY]);
        assert_eq!(classify(&signed), Class::SignP384);
        // Certify: the object, then the signer; Quote: the signer first.
        assert_eq!(
            classify(&with_handles(cc::CERTIFY, &[KEY, TPM_RH_NULL])),
            Class::Other
        );
        assert_eq!(
            classify(&with_handles(cc::CERTIFY, &[TPM_RH_NULL, KEY])),
            Class::SignP384
        );
        assert_eq!(
            classify(&with_handles(cc::QUOTE, &[TPM_RH_NULL])),
            Class::Other
        );
        assert_eq!(classify(&with_handles(cc::QUOTE, &[KEY])), Class::SignP384);
        // Cut short: taken as signing, never a panic.
        assert_eq!(classify(&plain(cc::GET_TIME)), Class::SignP384);
    }

    #[test]
    fn profiles_follow_their_sources() {
        let p = by_name("slb9670").unwrap();
        assert_eq!(p.sign_p256, ms(68.865));
        assert_eq!(p.sign_p384, ms(68.865));
        let q = p.clone().with_p384_factor(2.25);
        assert!((q.sign_p384.as_secs_f64() - 0.068865 * 2.25).abs() < 1e-9);
        assert!(by_name(DEFAULT).is_some());
        // 512 GetRandom commands in 1.140 s.
        assert!((p.other.as_secs_f64() - 1.140 / 512.0).abs() < 1e-9);
        let z = by_name("zero").unwrap();
        for class in [
            Class::SignP256,
            Class::SignP384,
            Class::NvWrite,
            Class::KeyGen,
            Class::Other,
        ] {
            assert_eq!(z.latency(class), Duration::ZERO);
        }
        for n in NAMES {
            assert!(by_name(n).is_some(), "{n}");
        }
        assert!(by_name("tpm9000").is_none());
    }
}
