//! The meter ledger's chain format: canonical row bytes, row hashes, the
//! genesis link and the seal digest.
//!
//! Everything that decides whether a ledger verifies is here, in one fixed
//! byte layout, shared by the meter (its writer and its audit) and the
//! authority (which re-derives every row of a report segment), so that they
//! cannot disagree. Layout: see meterd's `ledger` module doc.

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
    }
}
