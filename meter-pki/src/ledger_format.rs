//! The meter ledger's chain format: canonical row bytes, row hashes, the
//! genesis link, the batch seal digests (v1: one per counter value; v2: one
//! per epoch), the row link that a seal-bearing product signs, and the
//! ledger-seal attribute that carries it.
//!
//! Everything that decides whether a ledger verifies is here, in one fixed
//! byte layout, shared by the meter (its writer and its audit) and the
//! authority (which re-derives every row of a report segment), so that they
//! cannot disagree. Layout: see meterd's `ledger` module doc.
//!
//! A *seal-bearing product* (a postmark token, a CMS the meter signs with its
//! identity key) carries [`LedgerSeal`] `(epoch, seq, link)` as a signed
//! attribute ([`LedgerSeal::attribute_der`], OID [`crate::oid::ATTR_LEDGER_SEAL`]),
//! so its one TPM signature also seals its row and, through `link`, every
//! row before it. [`verify_product_seal`] is the whole check, given the
//! bytes the signature covers (the DER signedAttrs) and the signer's key.

use p384::ecdsa::signature::hazmat::PrehashVerifier;
use p384::ecdsa::{Signature, VerifyingKey};
use sha2::{Digest as _, Sha384};

/// SHA-384 digest.
pub type Digest = [u8; 48];

/// Longest stored request key accepted, in bytes (a scoped caller key is
/// `c/<uid>/` plus up to 128 bytes; the length is one byte in the layout).
pub const MAX_REQUEST_ID: usize = 200;
/// Longest note accepted, in bytes.
pub const MAX_NOTE: usize = 64;

/// The hashed fields of one journal row, borrowed (the audit reads them
/// straight out of SQLite without copying).
#[derive(Debug, Clone, Copy)]
pub struct RowFields<'a> {
    pub seq: u64,
    pub time: i64,
    pub kind: u8,
    /// Service code, 0 for none.
    pub service: u8,
    pub request_id: Option<&'a [u8]>,
    pub credit: u64,
    pub debit: u64,
    pub ascending: u64,
    pub descending: u64,
    pub control_total: u64,
    pub pieces: u64,
    pub service_count: u64,
    pub product_digest: &'a [u8; 48],
    pub note: &'a [u8],
    /// Register pair the row's ascending, descending, control total and
    /// pieces belong to: 0 the services register (the one combined pool of
    /// a meter not split, and every row of a ledger older than the split),
    /// 1 the postage register. Encoded only when not 0, as one byte after
    /// the note, so the rows of every existing ledger keep their bytes.
    pub register: u8,
}

/// Register ids of [`RowFields::register`].
pub mod register {
    /// Services: every service but postage, or everything in combined mode.
    pub const SERVICES: u8 = 0;
    /// Postage (indicia), once the meter is split.
    pub const POSTAGE: u8 = 1;
    /// Register pairs a ledger may hold.
    pub const COUNT: usize = 2;
}

/// A field is too long to have a canonical encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

impl RowFields<'_> {
    /// Writes the canonical bytes (layout v1) into `buf`, replacing its content.
    pub fn encode(&self, buf: &mut Vec<u8>) -> Result<(), TooLong> {
        if self.note.len() > MAX_NOTE || self.request_id.is_some_and(|r| r.len() > MAX_REQUEST_ID) {
            return Err(TooLong);
        }
        buf.clear();
        buf.extend_from_slice(&self.seq.to_be_bytes());
        buf.extend_from_slice(&self.time.to_be_bytes());
        buf.push(self.kind);
        buf.push(self.service);
        match self.request_id {
            None => buf.push(0),
            Some(id) => {
                buf.push(1);
                // Bounded by MAX_REQUEST_ID above.
                buf.push(id.len() as u8);
                buf.extend_from_slice(id);
            }
        }
        for v in [
            self.credit,
            self.debit,
            self.ascending,
            self.descending,
            self.control_total,
            self.pieces,
            self.service_count,
        ] {
            buf.extend_from_slice(&v.to_be_bytes());
        }
        buf.extend_from_slice(self.product_digest);
        // Bounded by MAX_NOTE above.
        buf.push(self.note.len() as u8);
        buf.extend_from_slice(self.note);
        if self.register != register::SERVICES {
            buf.push(self.register);
        }
        Ok(())
    }
}

/// Row hash: SHA-384(prev ‖ canonical bytes).
pub fn row_hash(prev: &Digest, canonical: &[u8]) -> Digest {
    Sha384::new()
        .chain_update(prev)
        .chain_update(canonical)
        .finalize()
        .into()
}

/// SHA-384 of arbitrary bytes.
pub fn sha384(bytes: &[u8]) -> Digest {
    Sha384::digest(bytes).into()
}

/// The link before row 1: SHA-384("meterd-ledger-v1" ‖ meter_id).
pub fn genesis_prev(meter_id: &str) -> Digest {
    Sha384::new()
        .chain_update(b"meterd-ledger-v1")
        .chain_update(meter_id.as_bytes())
        .finalize()
        .into()
}

/// The digest a batch seal signs: SHA-384("meterd-seal-v1" ‖ meter_id ‖ nv (u64 BE) ‖ head).
pub fn seal_digest(meter_id: &str, nv: u64, head: &Digest) -> Digest {
    Sha384::new()
        .chain_update(b"meterd-seal-v1")
        .chain_update(meter_id.as_bytes())
        .chain_update(nv.to_be_bytes())
        .chain_update(head)
        .finalize()
        .into()
}

/// Whether `seal` (raw r‖s) is a valid signature by `public_sec1` over the
/// seal digest of (`meter_id`, `nv`, `head`).
pub fn verify_seal(
    public_sec1: &[u8],
    meter_id: &str,
    nv: u64,
    head: &Digest,
    seal: &[u8],
) -> bool {
    let Ok(key) = VerifyingKey::from_sec1_bytes(public_sec1) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(seal) else {
        return false;
    };
    key.verify_prehash(&seal_digest(meter_id, nv, head), &sig)
        .is_ok()
}

/// The row link a seal-bearing product signs: SHA-384("meterd-link-v2" ‖
/// meter_id ‖ epoch (u64 BE) ‖ prev ‖ canonical row bytes with the product
/// digest replaced by 48 zero bytes). The product cannot sign its own
/// digest; the row hash (which does include it) binds the product to the row.
pub fn link_digest(meter_id: &str, epoch: u64, prev: &Digest, fields: &RowFields<'_>) -> Digest {
    const ZERO: [u8; 48] = [0; 48];
    let zeroed = RowFields {
        product_digest: &ZERO,
        ..*fields
    };
    let mut canonical = Vec::with_capacity(256);
    // Fields too long have no canonical bytes; their link is over none (the
    // writer refuses such rows before any link is made).
    let _ = zeroed.encode(&mut canonical);
    Sha384::new()
        .chain_update(b"meterd-link-v2")
        .chain_update(meter_id.as_bytes())
        .chain_update(epoch.to_be_bytes())
        .chain_update(prev)
        .chain_update(&canonical)
        .finalize()
        .into()
}

/// The digest an explicit batch seal of layout v2 signs (a batch whose last
/// row carries no product seal): SHA-384("meterd-seal-v2" ‖ meter_id ‖
/// epoch (u64 BE) ‖ head).
pub fn seal_digest_v2(meter_id: &str, epoch: u64, head: &Digest) -> Digest {
    Sha384::new()
        .chain_update(b"meterd-seal-v2")
        .chain_update(meter_id.as_bytes())
        .chain_update(epoch.to_be_bytes())
        .chain_update(head)
        .finalize()
        .into()
}

/// Whether `seal` (raw r‖s) is a valid explicit v2 seal by `public_sec1`.
pub fn verify_seal_v2(
    public_sec1: &[u8],
    meter_id: &str,
    epoch: u64,
    head: &Digest,
    seal: &[u8],
) -> bool {
    let Ok(raw) = <&[u8; 96]>::try_from(seal) else {
        return false;
    };
    crate::sig::verify_prehash(public_sec1, &seal_digest_v2(meter_id, epoch, head), raw).is_ok()
}

/// What a seal-bearing product signs about its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerSeal {
    /// The epoch (NV counter value) the row was written in.
    pub epoch: u64,
    /// The row's sequence number.
    pub seq: u64,
    /// The row's [`link_digest`].
    pub link: Digest,
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let b = len.to_be_bytes();
        let start = b.iter().position(|&x| x != 0).unwrap_or(b.len() - 1);
        out.push(0x80 | (b.len() - start) as u8);
        out.extend_from_slice(&b[start..]);
    }
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 4);
    out.push(tag);
    der_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

fn der_uint(v: u64) -> Vec<u8> {
    let b = v.to_be_bytes();
    let start = b.iter().position(|&x| x != 0).unwrap_or(7);
    let mut content = Vec::with_capacity(9);
    if b[start] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(&b[start..]);
    tlv(0x02, &content)
}

impl LedgerSeal {
    /// DER of the attribute value: `SEQUENCE { epoch INTEGER, seq INTEGER,
    /// link OCTET STRING (48) }`.
    pub fn value_der(&self) -> Vec<u8> {
        let mut content = der_uint(self.epoch);
        content.extend_from_slice(&der_uint(self.seq));
        content.extend_from_slice(&tlv(0x04, &self.link));
        tlv(0x30, &content)
    }

    /// DER of the whole signed attribute: `SEQUENCE { attrType OID
    /// (ATTR_LEDGER_SEAL), attrValues SET { value } }`. The signed
    /// attributes of a sealed product contain these exact bytes.
    pub fn attribute_der(&self) -> Vec<u8> {
        let mut content = tlv(0x06, crate::oid::ATTR_LEDGER_SEAL.as_bytes());
        content.extend_from_slice(&tlv(0x31, &self.value_der()));
        tlv(0x30, &content)
    }

    /// Parses [`LedgerSeal::value_der`] (strict DER: minimal integers, no
    /// trailing bytes).
    pub fn from_value_der(der: &[u8]) -> Option<LedgerSeal> {
        fn take(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
            let (&t, rest) = b.split_first()?;
            let (&len, rest) = rest.split_first()?;
            if t != tag || len >= 0x80 || rest.len() < usize::from(len) {
                return None;
            }
            Some(rest.split_at(usize::from(len)))
        }
        fn uint(b: &[u8]) -> Option<u64> {
            let minimal = match b {
                [] => false,
                [0] => true,
                [0, second, ..] => second & 0x80 != 0,
                [first, ..] => first & 0x80 == 0,
            };
            let b = if b.len() > 1 && b[0] == 0 { &b[1..] } else { b };
            if !minimal || b.len() > 8 {
                return None;
            }
            Some(b.iter().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
        }
        let (seq_body, rest) = take(der, 0x30)?;
        if !rest.is_empty() {
            return None;
        }
        let (epoch, rest) = take(seq_body, 0x02)?;
        let (seq, rest) = take(rest, 0x02)?;
        let (link, rest) = take(rest, 0x04)?;
        if !rest.is_empty() {
            return None;
        }
        Some(LedgerSeal {
            epoch: uint(epoch)?,
            seq: uint(seq)?,
            link: link.try_into().ok()?,
        })
    }
}

/// Whether a product seal holds: the bytes the signature covers (`signed`,
/// the DER signedAttrs of a CMS or time-stamp token) contain `seal`'s
/// attribute exactly, and `signature` (raw r‖s) over SHA-384(`signed`)
/// verifies under `public_sec1`, the key of the signer the product names.
pub fn verify_product_seal(
    public_sec1: &[u8],
    seal: &LedgerSeal,
    signed: &[u8],
    signature: &[u8; 96],
) -> bool {
    contains_seal(seal, signed)
        && crate::sig::verify_prehash(public_sec1, &sha384(signed), signature).is_ok()
}

/// Whether `bytes` contain `seal`'s attribute (no signature check: the
/// writer's own cheap check, over the whole product, that a product it was
/// promised is sealed; the audit's, over the signed attributes).
pub fn contains_seal(seal: &LedgerSeal, bytes: &[u8]) -> bool {
    let attr = seal.attribute_der();
    // The attribute ends with the row's link (hash output): comparing its
    // last byte first makes most positions of a 2 KiB token one comparison.
    let last = attr.last();
    bytes
        .windows(attr.len())
        .any(|w| w.last() == last && w == attr.as_slice())
}

/// Note of an epoch row.
pub const EPOCH_NOTE: &str = "epoch";
/// Request-key prefix of an epoch row: the key is `m/epoch/<counter>`.
pub const EPOCH_KEY_PREFIX: &str = "m/epoch/";
/// Kind code of an epoch row (Event).
pub const EPOCH_KIND: u8 = 8;

/// Why an epoch advanced ([`EpochRecord::reason`]).
pub mod epoch_reason {
    /// The meter started (before its first sale).
    pub const START: &str = "start";
    /// `epoch_rows` rows since the last advance.
    pub const ROWS: &str = "rows";
    /// An orderly stop (the last row the run writes).
    pub const STOP: &str = "stop";
    /// The TPM was reset under the running meter.
    pub const TPM_RESET: &str = "tpm-reset";
    /// The authority cleared the lock of a ledger judged rollback at start:
    /// the ledger is bound to the counter again from this row on.
    pub const CLEARED: &str = "cleared";
}

/// How the run before a start ended ([`EpochRecord::previous`]).
pub mod epoch_previous {
    /// A new ledger: there was no previous run.
    pub const NONE: &str = "none";
    /// The previous run wrote its stop row.
    pub const STOP: &str = "stop";
    /// It did not: killed, crashed, powered off, or a copy of the ledger was
    /// restored. Counted by the authority at inspection (see the rollback
    /// window in `docs/ARCHITECTURE.md`).
    pub const UNCLEAN: &str = "unclean";
    /// The first start of a ledger written before epochs (schema 2).
    pub const UPGRADE: &str = "upgrade";
}

/// A Lock row's product: the lock's fresh nonce (what a clear order must
/// name), then, for a lock an authority ordered (`forced`, key
/// `m/lock-order/<order nonce>`), a NUL and the authority's signed lock
/// order as applied, so the audit and the authority can verify it. A nonce
/// is hex and never holds a NUL; rows written before keep the nonce alone.
pub fn lock_product(nonce: &str, order: Option<&[u8]>) -> Vec<u8> {
    let mut p = nonce.as_bytes().to_vec();
    if let Some(o) = order {
        p.push(0);
        p.extend_from_slice(o);
    }
    p
}

/// Splits a Lock row's product into the lock's nonce and the signed order
/// it keeps, if any (see [`lock_product`]).
pub fn split_lock_product(product: &[u8]) -> (&[u8], Option<&[u8]>) {
    match product.iter().position(|b| *b == 0) {
        Some(i) => (&product[..i], Some(&product[i + 1..])),
        None => (product, None),
    }
}

/// A revoke Debit row's product: the meter's signed confirmation (the
/// product its caller gets), then the authority's signed revoke order as
/// applied, so the audit verifies the order itself and not only the meter's
/// word about it. Both are DER and self-delimiting; rows written before keep
/// the confirmation alone.
pub fn revoke_product(confirmation: &[u8], order: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(confirmation.len() + order.len());
    p.extend_from_slice(confirmation);
    p.extend_from_slice(order);
    p
}

/// Splits a revoke row's product into the confirmation and the signed order
/// it keeps, if any (see [`revoke_product`]): the first DER element is the
/// confirmation.
pub fn split_revoke_product(product: &[u8]) -> crate::Result<(&[u8], Option<&[u8]>)> {
    use der::{Decode as _, Reader as _};
    let mut r = der::SliceReader::new(product)?;
    let header = der::Header::decode(&mut r)?;
    let end = usize::try_from((r.position() + header.length)?)?;
    if end > product.len() {
        return Err(crate::PkiError::Malformed(
            "a revoke row's confirmation is cut short".into(),
        ));
    }
    let (confirmation, order) = product.split_at(end);
    Ok((confirmation, (!order.is_empty()).then_some(order)))
}

/// Product of an epoch row (strict JSON): the counter value it opens, why,
/// and what the TPM's clock said when it was written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochRecord {
    /// The epoch this row opens: the NV counter value after its increment.
    pub counter: u64,
    /// [`epoch_reason`].
    pub reason: String,
    /// For a start: how the previous run ended ([`epoch_previous`]); empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub previous: String,
    /// TPM2_ReadClock: milliseconds (0 when the TPM could not be read).
    pub tpm_clock_ms: u64,
    /// TPM reset count.
    pub reset_count: u32,
    /// TPM restart count.
    pub restart_count: u32,
}

impl EpochRecord {
    /// The row's product bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses an epoch row's product.
    pub fn decode(bytes: &[u8]) -> Option<EpochRecord> {
        serde_json::from_slice(bytes).ok()
    }
}

/// The counter of an epoch row, from the row's chained fields (kind, note,
/// request key): `Some` only for an Event row noted `epoch` whose key is
/// `m/epoch/<decimal counter>`; `Err(())` for a row noted `epoch` that is
/// malformed (damage); `Ok(None)` for any other row.
#[allow(clippy::result_unit_err)]
pub fn epoch_of(kind: u8, note: &[u8], request_id: Option<&[u8]>) -> Result<Option<u64>, ()> {
    if kind != EPOCH_KIND || note != EPOCH_NOTE.as_bytes() {
        return Ok(None);
    }
    let digits = request_id
        .and_then(|r| r.strip_prefix(EPOCH_KEY_PREFIX.as_bytes()))
        .ok_or(())?;
    let canonical = !digits.is_empty()
        && digits.iter().all(u8::is_ascii_digit)
        && (digits.len() == 1 || digits[0] != b'0');
    if !canonical {
        return Err(());
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .map(Some)
        .ok_or(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn revoke_product_splits_at_the_confirmation() {
        // Two DER elements: a long-form length first (as CMS objects have).
        let conf = [&[0x30, 0x81, 0x80][..], &[7u8; 0x80]].concat();
        let order = [0x30, 0x02, 1, 2];
        let both = revoke_product(&conf, &order);
        assert_eq!(
            split_revoke_product(&both).unwrap(),
            (&conf[..], Some(&order[..]))
        );
        assert_eq!(split_revoke_product(&conf).unwrap(), (&conf[..], None));
        assert!(split_revoke_product(&conf[..40]).is_err());
        assert!(split_revoke_product(&[]).is_err());
    }

    fn fields<'a>(digest: &'a [u8; 48], note: &'a [u8]) -> RowFields<'a> {
        RowFields {
            seq: 7,
            time: 1_700_000_000_000,
            kind: 5,
            service: 1,
            request_id: Some(b"req-1"),
            credit: 0,
            debit: 30,
            ascending: 30,
            descending: 70,
            control_total: 100,
            pieces: 1,
            service_count: 1,
            product_digest: digest,
            note,
            register: 0,
        }
    }

    #[test]
    fn encoding_is_fixed_and_field_sensitive() {
        let d = [9u8; 48];
        let mut a = Vec::new();
        fields(&d, b"").encode(&mut a).unwrap();
        // 8+8+1+1 + (1+1+5) + 7*8 + 48 + 1
        assert_eq!(a.len(), 18 + 7 + 56 + 48 + 1);
        assert_eq!(&a[..8], &7u64.to_be_bytes());
        let mut b = Vec::new();
        let mut f = fields(&d, b"");
        f.debit = 31;
        f.encode(&mut b).unwrap();
        assert_ne!(a, b);
        // Absent and empty request ids differ.
        let mut c = Vec::new();
        let mut e = Vec::new();
        let mut f = fields(&d, b"");
        f.request_id = None;
        f.encode(&mut c).unwrap();
        f.request_id = Some(b"");
        f.encode(&mut e).unwrap();
        assert_ne!(c, e);
        let long = [b'x'; MAX_NOTE + 1];
        assert_eq!(fields(&d, &long).encode(&mut c), Err(TooLong));
    }

    #[test]
    fn hashes_depend_on_link_and_meter() {
        let g1 = genesis_prev("m1");
        let g2 = genesis_prev("m2");
        assert_ne!(g1, g2);
        assert_ne!(row_hash(&g1, b"x"), row_hash(&g2, b"x"));
        assert_ne!(seal_digest("m1", 1, &g1), seal_digest("m1", 2, &g1));
        assert_ne!(seal_digest("m1", 1, &g1), seal_digest("m2", 1, &g1));
        assert_ne!(seal_digest("m1", 1, &g1), seal_digest_v2("m1", 1, &g1));
    }

    #[test]
    fn link_ignores_the_product_digest_only() {
        let g = genesis_prev("m1");
        let (d1, d2) = ([1u8; 48], [2u8; 48]);
        let l1 = link_digest("m1", 3, &g, &fields(&d1, b""));
        assert_eq!(l1, link_digest("m1", 3, &g, &fields(&d2, b"")));
        assert_ne!(l1, link_digest("m1", 4, &g, &fields(&d1, b"")));
        assert_ne!(l1, link_digest("m2", 3, &g, &fields(&d1, b"")));
        assert_ne!(l1, link_digest("m1", 3, &g, &fields(&d1, b"x")));
        assert_ne!(
            l1,
            link_digest("m1", 3, &genesis_prev("m2"), &fields(&d1, b""))
        );
    }

    #[test]
    fn seal_attribute_round_trips_and_is_strict() {
        for (epoch, seq) in [(0, 1), (127, 128), (255, u64::MAX), (1 << 40, 7)] {
            let s = LedgerSeal {
                epoch,
                seq,
                link: [0xab; 48],
            };
            assert_eq!(LedgerSeal::from_value_der(&s.value_der()), Some(s));
            let attr = s.attribute_der();
            assert!(contains_seal(&s, &attr));
            let other = LedgerSeal { seq: seq ^ 1, ..s };
            assert!(!contains_seal(&other, &attr));
        }
        // Non-minimal integer, trailing bytes.
        assert_eq!(
            LedgerSeal::from_value_der(&[0x30, 0x36, 0x02, 0x02, 0x00, 0x01]),
            None
        );
        let mut v = LedgerSeal {
            epoch: 1,
            seq: 1,
            link: [0; 48],
        }
        .value_der();
        v.push(0);
        assert_eq!(LedgerSeal::from_value_der(&v), None);
    }

    #[test]
    fn epoch_rows_are_recognised_by_their_chained_fields() {
        assert_eq!(epoch_of(8, b"epoch", Some(b"m/epoch/12")), Ok(Some(12)));
        assert_eq!(epoch_of(8, b"other", Some(b"m/epoch/12")), Ok(None));
        assert_eq!(epoch_of(5, b"epoch", Some(b"m/epoch/12")), Ok(None));
        for bad in [&b"m/epoch/"[..], b"m/epoch/012", b"m/epoch/x", b"c/0/epoch"] {
            assert_eq!(epoch_of(8, b"epoch", Some(bad)), Err(()));
        }
        assert_eq!(epoch_of(8, b"epoch", None), Err(()));
        let r = EpochRecord {
            counter: 3,
            reason: epoch_reason::START.into(),
            previous: epoch_previous::UNCLEAN.into(),
            tpm_clock_ms: 5,
            reset_count: 1,
            restart_count: 0,
        };
        assert_eq!(EpochRecord::decode(&r.encode()), Some(r));
        assert_eq!(EpochRecord::decode(b"{\"counter\":1}"), None);
    }

    #[test]
    fn attribute_der_matches_the_der_crate() {
        use der::{Decode as _, Encode as _};
        let s = LedgerSeal {
            epoch: 0x80,
            seq: 42,
            link: [7; 48],
        };
        let value = der::Any::from_der(&s.value_der()).unwrap();
        let attr = x509_cert::attr::Attribute {
            oid: crate::oid::ATTR_LEDGER_SEAL,
            values: der::asn1::SetOfVec::try_from(vec![value]).unwrap(),
        };
        assert_eq!(attr.to_der().unwrap(), s.attribute_der());
    }
}
