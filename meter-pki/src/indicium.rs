//! Postage indicium (claims 17–31): a compact, fixed-width binary record of
//! one mail piece's postage, signed by the meter, small enough for one
//! DataMatrix symbol.
//!
//! Why binary and fixed-width rather than CMS/JSON: the record is printed on
//! an envelope and read back by a scanner, so every byte costs symbol area
//! (USPS IBI indicia are 89 bytes). The layout (see `docs/INDICIUM.md`) is
//! [`LEN`] = 221 bytes: a 125-byte body and a raw `r‖s` ECDSA P-384
//! signature over SHA-384(body) made by the meter's identity key in the TPM,
//! so `openssl dgst -sha384 -verify` checks it with the meter certificate's
//! public key once the signature is put into DER.
//!
//! Version 2 (a meter holding the postal secret key, claim 21) is the same body with
//! version byte 2, the same signature, then a [`MAC_LEN`]-byte MAC: HMAC-SHA-256 of the
//! body under the postal key, made in the TPM, truncated ([`LEN_MAC`] = 237 bytes). The
//! post checks it with the shared key alone (`meter_pki::postal::verify_indicium_mac`).
//! Version 1 indicia still decode.
//!
//! [`decode`] takes untrusted bytes (a scan): exact length, magic, version,
//! printable ASCII text fields padded with NUL only, bounded digits; every
//! failure is a named [`PkiError::Malformed`], never a panic.

use sha2::{Digest as _, Sha384};

use crate::{PkiError, Result};

/// Magic at the start of every indicium: `MI` (meter indicium).
pub const MAGIC: [u8; 2] = *b"MI";
/// Layout version of an indicium without a MAC.
pub const VERSION: u8 = 1;
/// Layout version of an indicium with the postal-key MAC after the signature.
pub const VERSION_MAC: u8 = 2;
/// Length of the MAC of a version-2 indicium.
pub const MAC_LEN: usize = crate::postal::MAC_LEN;
/// Key code: the meter's identity key (certificate `meter.pem`).
pub const KEY_METER_IDENTITY: u8 = 1;
/// Width of the meter id field.
pub const METER_ID_LEN: usize = 16;
/// Width of the currency field.
pub const CURRENCY_LEN: usize = 4;
/// Width (and longest value) of the class, origin and destination fields.
pub const TEXT_LEN: usize = 16;
/// Largest currency digits accepted.
pub const MAX_DIGITS: u8 = 6;
/// Length of the signed body.
pub const BODY_LEN: usize = 125;
/// Length of the raw signature.
pub const SIG_LEN: usize = 96;
/// Total length of an encoded version-1 indicium.
pub const LEN: usize = BODY_LEN + SIG_LEN;
/// Total length of an encoded version-2 indicium (with MAC).
pub const LEN_MAC: usize = LEN + MAC_LEN;

// Field offsets in the body (all integers big-endian).
const O_MAGIC: usize = 0;
const O_VERSION: usize = 2;
const O_KEY: usize = 3;
const O_METER: usize = 4;
const O_DATE: usize = O_METER + METER_ID_LEN; // 20
const O_SEQ: usize = O_DATE + 4; // 24
const O_AMOUNT: usize = O_SEQ + 8; // 32
const O_AR: usize = O_AMOUNT + 8; // 40
const O_DR: usize = O_AR + 8; // 48
const O_PIECES: usize = O_DR + 8; // 56
const O_RATES: usize = O_PIECES + 8; // 64
const O_CURRENCY: usize = O_RATES + 4; // 68
const O_DIGITS: usize = O_CURRENCY + CURRENCY_LEN; // 72
const O_CLASS: usize = O_DIGITS + 1; // 73
const O_GRAMS: usize = O_CLASS + TEXT_LEN; // 89
const O_ORIGIN: usize = O_GRAMS + 4; // 93
const O_DEST: usize = O_ORIGIN + TEXT_LEN; // 109
const O_END: usize = O_DEST + TEXT_LEN; // 125

const _: () = assert!(O_END == BODY_LEN);
const _: () = assert!(O_MAGIC == 0);

/// The data of an indicium, without its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndiciumBody {
    /// Meter id (`MTR-` and 12 hex digits), at most 16 ASCII characters.
    pub meter_id: String,
    /// Date of the debit: Unix seconds (the ledger row's time).
    pub date: u32,
    /// Sequence number of the ledger row that debited this piece.
    pub seq: u64,
    /// Postage paid, in minor units.
    pub amount: u64,
    /// Ascending register after this debit.
    pub ascending: u64,
    /// Descending register after this debit.
    pub descending: u64,
    /// Postage pieces counted by the meter, this one included.
    pub pieces: u64,
    /// Version of the rate table that priced the piece.
    pub rates_version: u32,
    /// Currency code, at most 4 ASCII characters.
    pub currency: String,
    /// Minor-unit digits of the currency.
    pub digits: u8,
    /// Mail class (a rate-table class name).
    pub class: String,
    /// Weight in grams.
    pub grams: u32,
    /// Origin data (e.g. postal code).
    pub origin: String,
    /// Destination data (e.g. postal code).
    pub destination: String,
}

/// An indicium as read back: body, raw signature and the exact signed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indicium {
    /// The fields.
    pub body: IndiciumBody,
    /// Key that signed (see [`KEY_METER_IDENTITY`]).
    pub key: u8,
    /// Raw ECDSA P-384 `r‖s`.
    pub signature: [u8; SIG_LEN],
    /// The signed body bytes, as scanned.
    pub body_bytes: [u8; BODY_LEN],
    /// The postal-key MAC over `body_bytes` (version 2), `None` for version 1.
    pub mac: Option<[u8; MAC_LEN]>,
}

/// Checks a text field: 1..=`max` printable ASCII characters (space allowed, not leading).
pub fn check_text(what: &str, s: &str, max: usize) -> Result<()> {
    if s.is_empty() || s.len() > max {
        return Err(PkiError::Malformed(format!(
            "{what} must be 1 to {max} characters, got {}",
            s.len()
        )));
    }
    if !s.bytes().all(|b| (0x20..=0x7e).contains(&b)) || s.starts_with(' ') {
        return Err(PkiError::Malformed(format!(
            "{what} must be printable ASCII not starting with a space"
        )));
    }
    Ok(())
}

fn put_text(out: &mut [u8], what: &str, s: &str, width: usize) -> Result<()> {
    check_text(what, s, width)?;
    let field = out
        .get_mut(..width)
        .ok_or_else(|| PkiError::Malformed("field out of range".into()))?;
    field.fill(0);
    field[..s.len()].copy_from_slice(s.as_bytes());
    Ok(())
}

fn get_text(bytes: &[u8], what: &str) -> Result<String> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    if bytes[end..].iter().any(|&b| b != 0) {
        return Err(PkiError::Malformed(format!(
            "{what}: padding must be NUL bytes only"
        )));
    }
    let s = std::str::from_utf8(&bytes[..end])
        .map_err(|_| PkiError::Malformed(format!("{what} is not ASCII")))?;
    check_text(what, s, bytes.len())?;
    Ok(s.to_owned())
}

fn be<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N]> {
    b.get(at..at + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or_else(|| PkiError::Malformed("indicium truncated".into()))
}

impl IndiciumBody {
    /// The signed body bytes of a version-1 indicium; refuses fields that do not fit.
    pub fn encode(&self) -> Result<[u8; BODY_LEN]> {
        self.encode_version(VERSION)
    }

    /// The body bytes with layout version `version` ([`VERSION`] or [`VERSION_MAC`]).
    pub fn encode_version(&self, version: u8) -> Result<[u8; BODY_LEN]> {
        if version != VERSION && version != VERSION_MAC {
            return Err(PkiError::Malformed(format!(
                "indicium version {version} is not one this module writes"
            )));
        }
        if self.digits > MAX_DIGITS {
            return Err(PkiError::Malformed(format!(
                "currency digits must be <= {MAX_DIGITS}"
            )));
        }
        let mut b = [0u8; BODY_LEN];
        b[O_MAGIC..O_VERSION].copy_from_slice(&MAGIC);
        b[O_VERSION] = version;
        b[O_KEY] = KEY_METER_IDENTITY;
        put_text(&mut b[O_METER..], "meter id", &self.meter_id, METER_ID_LEN)?;
        b[O_DATE..O_SEQ].copy_from_slice(&self.date.to_be_bytes());
        b[O_SEQ..O_AMOUNT].copy_from_slice(&self.seq.to_be_bytes());
        b[O_AMOUNT..O_AR].copy_from_slice(&self.amount.to_be_bytes());
        b[O_AR..O_DR].copy_from_slice(&self.ascending.to_be_bytes());
        b[O_DR..O_PIECES].copy_from_slice(&self.descending.to_be_bytes());
        b[O_PIECES..O_RATES].copy_from_slice(&self.pieces.to_be_bytes());
        b[O_RATES..O_CURRENCY].copy_from_slice(&self.rates_version.to_be_bytes());
        put_text(
            &mut b[O_CURRENCY..],
            "currency",
            &self.currency,
            CURRENCY_LEN,
        )?;
        b[O_DIGITS] = self.digits;
        put_text(&mut b[O_CLASS..], "class", &self.class, TEXT_LEN)?;
        b[O_GRAMS..O_ORIGIN].copy_from_slice(&self.grams.to_be_bytes());
        put_text(&mut b[O_ORIGIN..], "origin", &self.origin, TEXT_LEN)?;
        put_text(&mut b[O_DEST..], "destination", &self.destination, TEXT_LEN)?;
        Ok(b)
    }

    /// SHA-384 of the encoded body: the digest the meter signs.
    pub fn digest(&self) -> Result<[u8; 48]> {
        Ok(body_digest(&self.encode()?))
    }
}

/// SHA-384 of body bytes.
pub fn body_digest(body: &[u8; BODY_LEN]) -> [u8; 48] {
    Sha384::digest(body).into()
}

/// The complete indicium: body followed by the raw signature.
pub fn assemble(body: &[u8; BODY_LEN], signature: &[u8; SIG_LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LEN);
    out.extend_from_slice(body);
    out.extend_from_slice(signature);
    out
}

/// A version-2 indicium: body (version byte [`VERSION_MAC`]), signature, MAC.
pub fn assemble_with_mac(
    body: &[u8; BODY_LEN],
    signature: &[u8; SIG_LEN],
    mac: &[u8; MAC_LEN],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(LEN_MAC);
    out.extend_from_slice(body);
    out.extend_from_slice(signature);
    out.extend_from_slice(mac);
    out
}

/// Parses an indicium strictly (does not verify the signature; see [`verify`]): version 1
/// ([`LEN`] bytes) or version 2 ([`LEN_MAC`] bytes, with the postal-key MAC).
pub fn decode(bytes: &[u8]) -> Result<Indicium> {
    if bytes.len() != LEN && bytes.len() != LEN_MAC {
        return Err(PkiError::Malformed(format!(
            "an indicium is {LEN} bytes ({LEN_MAC} with a postal MAC), got {}",
            bytes.len()
        )));
    }
    let body_bytes: [u8; BODY_LEN] = be(bytes, 0)?;
    let signature: [u8; SIG_LEN] = be(bytes, BODY_LEN)?;
    let b = &body_bytes;
    if b[O_MAGIC..O_VERSION] != MAGIC {
        return Err(PkiError::Malformed("not a meter indicium (magic)".into()));
    }
    let mac = match (b[O_VERSION], bytes.len()) {
        (VERSION, LEN) => None,
        (VERSION_MAC, LEN_MAC) => Some(be::<MAC_LEN>(bytes, LEN)?),
        (VERSION | VERSION_MAC, n) => {
            return Err(PkiError::Malformed(format!(
                "indicium version {} is not {n} bytes long",
                b[O_VERSION]
            )))
        }
        (v, _) => {
            return Err(PkiError::Malformed(format!(
                "indicium version {v} is not supported (expected {VERSION} or {VERSION_MAC})"
            )))
        }
    };
    let key = b[O_KEY];
    if key != KEY_METER_IDENTITY {
        return Err(PkiError::Malformed(format!(
            "unknown signing key code {key}"
        )));
    }
    let digits = b[O_DIGITS];
    if digits > MAX_DIGITS {
        return Err(PkiError::Malformed(format!(
            "currency digits {digits} > {MAX_DIGITS}"
        )));
    }
    let body = IndiciumBody {
        meter_id: get_text(&b[O_METER..O_DATE], "meter id")?,
        date: u32::from_be_bytes(be(b, O_DATE)?),
        seq: u64::from_be_bytes(be(b, O_SEQ)?),
        amount: u64::from_be_bytes(be(b, O_AMOUNT)?),
        ascending: u64::from_be_bytes(be(b, O_AR)?),
        descending: u64::from_be_bytes(be(b, O_DR)?),
        pieces: u64::from_be_bytes(be(b, O_PIECES)?),
        rates_version: u32::from_be_bytes(be(b, O_RATES)?),
        currency: get_text(&b[O_CURRENCY..O_DIGITS], "currency")?,
        digits,
        class: get_text(&b[O_CLASS..O_GRAMS], "class")?,
        grams: u32::from_be_bytes(be(b, O_GRAMS)?),
        origin: get_text(&b[O_ORIGIN..O_DEST], "origin")?,
        destination: get_text(&b[O_DEST..O_END], "destination")?,
    };
    Ok(Indicium {
        body,
        key,
        signature,
        body_bytes,
        mac,
    })
}

/// Decodes and verifies an indicium against the meter certificate `meter_cert`
/// (its public key; the CN must be the indicium's meter id).
pub fn verify(bytes: &[u8], meter_cert: &x509_cert::Certificate) -> Result<Indicium> {
    let ind = decode(bytes)?;
    if let Some(cn) = crate::cert::subject_cn(meter_cert) {
        if cn != ind.body.meter_id {
            return Err(PkiError::WrongType(format!(
                "indicium is from meter {} but the certificate is for {cn}",
                ind.body.meter_id
            )));
        }
    }
    let public = crate::cert::public_key_sec1(meter_cert)?;
    crate::sig::verify_prehash(&public, &body_digest(&ind.body_bytes), &ind.signature)?;
    Ok(ind)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use p384::ecdsa::SigningKey;
    use proptest::prelude::*;

    fn sample() -> IndiciumBody {
        IndiciumBody {
            meter_id: "MTR-0123456789ab".into(),
            date: 1_790_000_000,
            seq: 42,
            amount: 730,
            ascending: 1_230,
            descending: 98_770,
            pieces: 3,
            rates_version: 2,
            currency: "USD".into(),
            digits: 3,
            class: "letter".into(),
            grams: 20,
            origin: "10115".into(),
            destination: "SW1A 1AA".into(),
        }
    }

    fn sign(body: &IndiciumBody, key: &SigningKey) -> Vec<u8> {
        let bytes = body.encode().unwrap();
        let sig = crate::sig::sign_prehash_raw(key, &body_digest(&bytes)).unwrap();
        assemble(&bytes, &sig)
    }

    #[test]
    fn round_trip_and_signature() {
        let key = SigningKey::from_slice(&[7u8; 48]).unwrap();
        let bytes = sign(&sample(), &key);
        assert_eq!(bytes.len(), LEN);
        let ind = decode(&bytes).unwrap();
        assert_eq!(ind.body, sample());
        let public = key.verifying_key().to_encoded_point(false);
        crate::sig::verify_prehash(
            public.as_bytes(),
            &body_digest(&ind.body_bytes),
            &ind.signature,
        )
        .unwrap();
        // Any flipped body bit breaks the signature or the parse.
        for i in 0..BODY_LEN {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let ok = decode(&bad).and_then(|d| {
                crate::sig::verify_prehash(
                    public.as_bytes(),
                    &body_digest(&d.body_bytes),
                    &d.signature,
                )
            });
            assert!(ok.is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn refuses_bad_fields() {
        for f in [
            |b: &mut IndiciumBody| b.origin = "x".repeat(17),
            |b: &mut IndiciumBody| b.origin = String::new(),
            |b: &mut IndiciumBody| b.destination = "ab\ncd".into(),
            |b: &mut IndiciumBody| b.class = "é".into(),
            |b: &mut IndiciumBody| b.currency = "EUROS".into(),
            |b: &mut IndiciumBody| b.digits = 7,
        ] {
            let mut b = sample();
            f(&mut b);
            assert!(b.encode().is_err(), "{b:?}");
        }
        let key = SigningKey::from_slice(&[7u8; 48]).unwrap();
        let good = sign(&sample(), &key);
        assert!(decode(&good[..LEN - 1]).is_err());
        let mut pad = good.clone();
        pad[O_ORIGIN + TEXT_LEN - 1] = b'Z'; // text after the NUL padding
        assert!(decode(&pad).is_err());
        let mut ver = good.clone();
        ver[O_VERSION] = 2;
        assert!(decode(&ver).is_err(), "version 2 without its MAC");
        ver[O_VERSION] = 3;
        assert!(decode(&ver).is_err());
        // A version-1 indicium with 16 bytes appended is not a version-2 one.
        let mut long = good;
        long.extend_from_slice(&[0u8; MAC_LEN]);
        assert!(decode(&long).is_err());
    }

    #[test]
    fn version_2_carries_a_mac_over_the_body() {
        let key = SigningKey::from_slice(&[7u8; 48]).unwrap();
        let postal = [0x11u8; 32];
        let body = sample().encode_version(VERSION_MAC).unwrap();
        assert_eq!(body[O_VERSION], VERSION_MAC);
        let sig = crate::sig::sign_prehash_raw(&key, &body_digest(&body)).unwrap();
        let mac = crate::postal::indicium_mac(&postal, &body).unwrap();
        let bytes = assemble_with_mac(&body, &sig, &mac);
        assert_eq!(bytes.len(), LEN_MAC);
        let ind = decode(&bytes).unwrap();
        assert_eq!(ind.body, sample());
        assert_eq!(ind.mac, Some(mac));
        crate::postal::verify_indicium_mac(&postal, &ind.body_bytes, &mac).unwrap();
        // The version is signed and MACed: a version-2 body cut down to version 1 fails both.
        let mut cut = bytes[..LEN].to_vec();
        assert!(decode(&cut).is_err());
        cut[O_VERSION] = VERSION;
        let d = decode(&cut).unwrap();
        assert!(crate::postal::verify_indicium_mac(&postal, &d.body_bytes, &mac).is_err());
        // Every flipped body byte breaks the MAC.
        for i in 0..BODY_LEN {
            let mut bad = body;
            bad[i] ^= 1;
            assert!(crate::postal::verify_indicium_mac(&postal, &bad, &mac).is_err());
        }
        // Version 1 still decodes, without a MAC.
        assert_eq!(decode(&sign(&sample(), &key)).unwrap().mac, None);
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&data);
        }

        #[test]
        fn decode_never_panics_near_valid(pos in 0..LEN, val in any::<u8>(), cut in 0..=LEN_MAC) {
            static SIGNED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            let mut bytes = SIGNED
                .get_or_init(|| sign(&sample(), &SigningKey::from_slice(&[9u8; 48]).unwrap()))
                .clone();
            bytes[pos] = val;
            let _ = decode(&bytes);
            let _ = decode(&bytes[..cut.min(LEN)]);
            bytes.extend_from_slice(&[val; MAC_LEN]);
            bytes[O_VERSION] = val;
            let _ = decode(&bytes);
            let _ = decode(&bytes[..cut]);
        }

        #[test]
        fn encode_decode_round_trip(
            amount in any::<u64>(), ar in any::<u64>(), dr in any::<u64>(),
            date in any::<u32>(), grams in 1u32.., origin in "[0-9A-Z][0-9A-Z -]{0,15}",
        ) {
            let mut b = sample();
            b.amount = amount; b.ascending = ar; b.descending = dr;
            b.date = date; b.grams = grams; b.origin = origin;
            let bytes = b.encode().unwrap();
            let back = decode(&assemble(&bytes, &[1u8; SIG_LEN])).unwrap();
            prop_assert_eq!(back.body, b);
        }
    }
}
