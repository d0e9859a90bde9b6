//! Signed checkpoints: the state of a ledger a full audit found clean,
//! signed with the meter's key, so that a start re-verifies only the rows
//! after the last checkpoint instead of the whole journal (a 10^6-row
//! ledger takes seconds to audit; start must stay well under a second).
//!
//! A checkpoint row holds `body` = seq u64 | head [48] | ascending u64 |
//! descending u64 | control_total u64 | pieces u64 | n u8 | n × per-service
//! u64 | lock_seq u64 (0 = no lock) [| postage ascending u64 | postage
//! descending u64 | postage control_total u64 | postage pieces u64 | split
//! u8, since issue 17: a body without them is a combined-mode checkpoint],
//! all big-endian, and `sig` = raw r‖s
//! ECDSA P-384 over SHA-384("meterd-checkpoint-v1" ‖ meter_id ‖ body), made
//! by the sealer (the TPM identity key), so it cannot be forged from the
//! file alone. The domain string keeps it apart from batch seals.
//!
//! What a start with a checkpoint still verifies: its signature, that the
//! journal row at its seq still has the checkpointed hash, every row after
//! it (hash, link, registers from the checkpointed ones, epochs, batches),
//! the last batch seal and the TPM counter. The epoch in force at the
//! checkpoint is read from the last epoch row before it (a forged one
//! cannot help: the last seal signs the epoch). What it does not: rows before the
//! checkpoint. Editing them cannot change the registers (they continue
//! from the signed ones) and the full audit (`meterctl audit`, the Audit
//! method) still walks the whole chain from genesis and reports them.

use p384::ecdsa::signature::hazmat::PrehashVerifier;
use p384::ecdsa::{Signature, VerifyingKey};
use rusqlite::{Connection, OptionalExtension};
use sha2::{Digest as _, Sha384};

use super::epoch::EpochTrack;
use super::schema::storage;
use super::sealer::sign;
use super::{Digest, Registers, Result, Sealer};
use crate::service::Service;

/// Where a scan starts: after row `seq`, whose hash is `prev`, with its
/// registers and the lock in force.
pub(crate) struct Start {
    pub seq: u64,
    pub prev: Digest,
    pub regs: Registers,
    pub lock_at: Option<(u64, String)>,
    /// Epochs as of row `seq`.
    pub track: EpochTrack,
}

impl Start {
    /// Before row 1.
    pub fn genesis(meter_id: &str) -> Self {
        Start {
            seq: 0,
            prev: super::chain::genesis_prev(meter_id),
            regs: Registers::default(),
            lock_at: None,
            track: EpochTrack::default(),
        }
    }
}

/// A checkpoint made and signed, to be stored by the writer.
#[derive(Debug, Clone)]
pub(crate) struct Signed {
    pub seq: u64,
    pub body: Vec<u8>,
    pub sig: Vec<u8>,
}

const N: usize = Service::ALL.len();
const BODY_LEN: usize = 8 + 48 + 4 * 8 + 1 + N * 8 + 8;
/// With the postage register and the mode (issue 17).
const BODY_LEN_SPLIT: usize = BODY_LEN + 4 * 8 + 1;

fn encode(seq: u64, head: &Digest, regs: &Registers, lock_seq: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(BODY_LEN);
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(head);
    for v in [
        regs.ascending.0,
        regs.descending.0,
        regs.control_total.0,
        regs.pieces,
    ] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.push(N as u8);
    for v in regs.per_service {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend_from_slice(&lock_seq.to_be_bytes());
    let p = &regs.postage;
    for v in [p.ascending.0, p.descending.0, p.control_total.0, p.pieces] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.push(u8::from(regs.split));
    b
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// (seq, head, registers, lock_seq) of a well-formed body.
fn decode(b: &[u8]) -> Option<(u64, Digest, Registers, u64)> {
    if !matches!(b.len(), BODY_LEN | BODY_LEN_SPLIT) || usize::from(*b.get(88)?) != N {
        return None;
    }
    let head: Digest = b.get(8..56)?.try_into().ok()?;
    let mut regs = Registers::default();
    regs.ascending.0 = u64_at(b, 56)?;
    regs.descending.0 = u64_at(b, 64)?;
    regs.control_total.0 = u64_at(b, 72)?;
    regs.pieces = u64_at(b, 80)?;
    for (i, c) in regs.per_service.iter_mut().enumerate() {
        *c = u64_at(b, 89 + 8 * i)?;
    }
    if b.len() == BODY_LEN_SPLIT {
        let at = BODY_LEN;
        regs.postage.ascending.0 = u64_at(b, at)?;
        regs.postage.descending.0 = u64_at(b, at + 8)?;
        regs.postage.control_total.0 = u64_at(b, at + 16)?;
        regs.postage.pieces = u64_at(b, at + 24)?;
        regs.split = match b.get(at + 32)? {
            0 => false,
            1 => true,
            _ => return None,
        };
    }
    Some((u64_at(b, 0)?, head, regs, u64_at(b, 89 + 8 * N)?))
}

fn digest(meter_id: &str, body: &[u8]) -> Digest {
    Sha384::new()
        .chain_update(b"meterd-checkpoint-v1")
        .chain_update(meter_id.as_bytes())
        .chain_update(body)
        .finalize()
        .into()
}

/// The latest checkpoint, if it verifies with `public_sec1` and the journal
/// still holds its row with its hash; `None` sends the caller to a full audit.
pub(crate) fn load(conn: &Connection, meter_id: &str, public_sec1: &[u8]) -> Result<Option<Start>> {
    // A column of the wrong type is a checkpoint that does not verify, not
    // a storage failure.
    let blob = |r: &rusqlite::Row<'_>, i| -> Option<Vec<u8>> {
        r.get_ref(i).ok()?.as_blob().ok().map(<[u8]>::to_vec)
    };
    let row = conn
        .query_row(
            "SELECT body, sig FROM checkpoints ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok(blob(r, 0).zip(blob(r, 1))),
        )
        .optional()
        .map_err(storage)?;
    let Some(Some((body, sig))) = row else {
        return Ok(None);
    };
    let (Ok(key), Ok(sig)) = (
        VerifyingKey::from_sec1_bytes(public_sec1),
        Signature::from_slice(&sig),
    ) else {
        return Ok(None);
    };
    if key.verify_prehash(&digest(meter_id, &body), &sig).is_err() {
        return Ok(None);
    }
    let Some((seq, head, regs, lock_seq)) = decode(&body) else {
        return Ok(None);
    };
    let at = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
    let stored: Option<Vec<u8>> = conn
        .query_row("SELECT hash FROM journal WHERE seq=?1", [at(seq)], |r| {
            r.get(0)
        })
        .optional()
        .map_err(storage)?;
    if stored.as_deref() != Some(head.as_slice()) {
        return Ok(None);
    }
    let lock_at = if lock_seq == 0 {
        None
    } else {
        let note: Option<String> = conn
            .query_row(
                "SELECT note FROM journal WHERE seq=?1",
                [at(lock_seq)],
                |r| r.get(0),
            )
            .optional()
            .map_err(storage)?;
        match note {
            Some(n) => Some((lock_seq, n)),
            None => return Ok(None),
        }
    };
    let Some(track) = EpochTrack::at(conn, seq)? else {
        return Ok(None);
    };
    Ok(Some(Start {
        seq,
        prev: head,
        regs,
        lock_at,
        track,
    }))
}

/// Whether the latest checkpoint already covers row `seq`.
fn covered(conn: &Connection, seq: u64) -> Result<bool> {
    let latest: Option<i64> = conn
        .query_row("SELECT MAX(seq) FROM checkpoints", [], |r| r.get(0))
        .map_err(storage)?;
    Ok(latest.is_some_and(|l| u64::try_from(l).is_ok_and(|l| l >= seq)))
}

/// Makes and signs (one TPM signature) a checkpoint of a state an audit
/// just found clean.
pub(crate) fn make(
    meter_id: &str,
    sealer: &dyn Sealer,
    seq: u64,
    head: &Digest,
    regs: &Registers,
    lock_seq: u64,
) -> Result<Signed> {
    let body = encode(seq, head, regs, lock_seq);
    let sig = sign(sealer, &digest(meter_id, &body))?;
    Ok(Signed {
        seq,
        body,
        sig: sig.to_vec(),
    })
}

/// Stores a signed checkpoint, unless the latest one already covers its row.
pub(crate) fn insert(conn: &Connection, c: &Signed) -> Result<()> {
    if covered(conn, c.seq)? {
        return Ok(());
    }
    conn.execute(
        "INSERT INTO checkpoints(seq, body, sig) VALUES (?1, ?2, ?3)",
        rusqlite::params![i64::try_from(c.seq).unwrap_or(i64::MAX), c.body, c.sig],
    )
    .map_err(storage)?;
    Ok(())
}

/// Records a checkpoint of a state a full or incremental audit just found
/// clean, unless the latest one already covers row `seq`. One TPM signature.
pub(crate) fn write(
    conn: &Connection,
    meter_id: &str,
    sealer: &dyn Sealer,
    seq: u64,
    head: &Digest,
    regs: &Registers,
    lock_seq: u64,
) -> Result<()> {
    if covered(conn, seq)? {
        return Ok(());
    }
    insert(conn, &make(meter_id, sealer, seq, head, regs, lock_seq)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trips_and_rejects_other_lengths() {
        let mut regs = Registers::default();
        regs.ascending.0 = 5;
        regs.descending.0 = 7;
        regs.control_total.0 = 12;
        regs.pieces = 3;
        regs.per_service[0] = 2;
        let b = encode(42, &[9; 48], &regs, 17);
        assert_eq!(b.len(), BODY_LEN_SPLIT);
        assert_eq!(decode(&b), Some((42, [9; 48], regs.clone(), 17)));
        // A combined-mode body written before issue 17 still decodes.
        assert_eq!(
            decode(&b[..BODY_LEN]),
            Some((42, [9; 48], regs.clone(), 17))
        );
        assert_eq!(decode(&b[..BODY_LEN - 1]), None);
        assert_eq!(decode(&b[..BODY_LEN_SPLIT - 1]), None);
        assert_ne!(digest("m1", &b), digest("m2", &b));
        regs.split = true;
        regs.postage.ascending.0 = 4;
        regs.postage.descending.0 = 6;
        regs.postage.control_total.0 = 10;
        regs.postage.pieces = 2;
        let b = encode(43, &[8; 48], &regs, 0);
        assert_eq!(decode(&b), Some((43, [8; 48], regs, 0)));
        let mut bad = b.clone();
        *bad.last_mut().unwrap() = 2;
        assert_eq!(decode(&bad), None);
    }
}
