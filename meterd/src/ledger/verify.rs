//! The last seal: the one signature an audit checks, because it covers
//! the whole chain (through the head, or through the last row's link).
//!
//! * a layout-v1 batch: "meterd-seal-v1" over its counter value and head;
//! * a layout-v2 batch with a seal: "meterd-seal-v2" over the epoch and head;
//! * a layout-v2 batch without one: the last row's product carries the seal
//!   attribute `(epoch, seq, link)`; the [`super::SealReader`] says which
//!   housing key signed and what, the link is recomputed from the row as
//!   stored, and the signature is checked under that key's public key as
//!   the housing (the TPM) reports it — never a key the product names.

use rusqlite::{Connection, OptionalExtension};

use super::chain::{self, verify_product_seal, verify_seal, verify_seal_v2, LedgerSeal};
use super::epoch::EpochTrack;
use super::scan::{blob48, int, row_fields};
use super::schema::storage;
use super::sealer::public_key_of;
use super::{Digest, Result, Sealer};

/// The last batch row as stored.
pub(crate) struct LastBatch {
    pub last_seq: Option<u64>,
    pub nv: Option<u64>,
    pub head: Option<Digest>,
    pub seal: Option<Vec<u8>>,
}

/// The last batch row, if any.
pub(crate) fn last_batch(conn: &Connection) -> Result<Option<LastBatch>> {
    conn.query_row(
        "SELECT last_seq, nv, head, seal FROM batches ORDER BY batch DESC LIMIT 1",
        [],
        |r| {
            Ok(LastBatch {
                last_seq: int(r, 0),
                nv: int(r, 1),
                head: blob48(r, 2).copied(),
                seal: r
                    .get_ref(3)
                    .ok()
                    .and_then(|v| v.as_blob().ok().map(<[u8]>::to_vec)),
            })
        },
    )
    .optional()
    .map_err(storage)
}

/// Verifies the last batch's seal. `Ok(Ok(epoch))`: the seal holds and
/// binds the ledger to this counter value or epoch; `Ok(Err(why))`: it does
/// not (tamper); `Err`: storage or housing failure.
pub(crate) fn last_seal(
    conn: &Connection,
    meter_id: &str,
    sealer: &dyn Sealer,
    track: &EpochTrack,
    b: &LastBatch,
) -> Result<std::result::Result<u64, String>> {
    let (Some(last), Some(nv), Some(head), Some(seal)) = (b.last_seq, b.nv, b.head, &b.seal) else {
        return Ok(Err("last batch row is malformed".into()));
    };
    if !track.v2_at(last) {
        return Ok(
            match verify_seal(sealer.public_key(), meter_id, nv, &head, seal) {
                true => Ok(nv),
                false => Err("last batch seal does not verify with this meter's key".into()),
            },
        );
    }
    let epoch = track.epoch;
    if !seal.is_empty() {
        return Ok(
            match verify_seal_v2(sealer.public_key(), meter_id, epoch, &head, seal) {
                true => Ok(epoch),
                false => Err("last batch seal does not verify with this meter's key".into()),
            },
        );
    }
    let Some((link, product, product_ok)) = last_row(conn, meter_id, epoch, last)? else {
        return Ok(Err(format!("row {last}, the last sealed row, is missing")));
    };
    if !product_ok {
        return Ok(Err(format!(
            "row {last}: product does not match its digest"
        )));
    }
    let Some(ps) = sealer.reader().read(&product) else {
        return Ok(Err(format!(
            "row {last}: the batch has no seal and its product carries none"
        )));
    };
    let public = public_key_of(sealer, ps.key)?;
    let expected = LedgerSeal {
        epoch,
        seq: last,
        link,
    };
    Ok(
        match verify_product_seal(&public, &expected, &ps.signed, &ps.signature) {
            true => Ok(epoch),
            false => Err(format!(
                "row {last}: its product's seal does not verify for this row"
            )),
        },
    )
}

/// Row `seq`'s link (its prev: the hash of row `seq - 1`, which the scan
/// checked; rows store no copy of it since issue 14), product, and whether
/// the product matches the row's digest.
fn last_row(
    conn: &Connection,
    meter_id: &str,
    epoch: u64,
    seq: u64,
) -> Result<Option<(Digest, Vec<u8>, bool)>> {
    conn.query_row(
        "SELECT j.seq, j.time, j.kind, j.service, j.request_id, j.credit, j.debit, j.ascending,
         j.descending, j.control_total, j.pieces, j.service_count, j.product_digest, j.note,
         pj.hash, p.product, j.register
         FROM journal j JOIN products p ON p.seq = j.seq
         LEFT JOIN journal pj ON pj.seq = j.seq - 1 WHERE j.seq = ?1",
        [i64::try_from(seq).unwrap_or(i64::MAX)],
        |r| {
            let product: Vec<u8> = r.get(15)?;
            let parsed = (|| {
                let fields = row_fields(r, 16)?;
                let genesis = chain::genesis_prev(meter_id);
                let prev = match fields.seq {
                    1 => &genesis,
                    _ => blob48(r, 14)?,
                };
                Some((
                    chain::link_digest(meter_id, epoch, prev, &fields),
                    chain::sha384(&product) == *fields.product_digest,
                ))
            })();
            Ok(parsed.map(|(link, ok)| (link, product, ok)))
        },
    )
    .optional()
    .map(Option::flatten)
    .map_err(storage)
}
