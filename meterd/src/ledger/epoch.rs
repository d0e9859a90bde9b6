//! Epochs as the audit follows them: which epoch is in force at a row,
//! where layout v2 (epoch rows, product seals) begins, and how the run
//! before this start ended.
//!
//! An epoch row is recognised by its chained fields alone (an Event row
//! noted `epoch` under the key `m/epoch/<counter>`), so the scan needs no
//! product; a partial index over those rows lets a start from a checkpoint
//! find the epoch in force without reading the journal before it.

use rusqlite::{Connection, OptionalExtension};

use super::chain::{epoch_of, epoch_previous, epoch_reason, EpochRecord, EPOCH_NOTE};
use super::rows::Tip;
use super::schema::storage;
use super::{EntryKind, Result};

/// The epoch state of a scan, row by row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EpochTrack {
    /// Epoch in force: counter of the last epoch row.
    pub epoch: u64,
    /// Sequence number of the last epoch row (0: none yet).
    pub epoch_seq: u64,
    /// Sequence number of the first epoch row (0: none: layout v1 so far).
    pub first_seq: u64,
    /// Counter value of the last layout-v1 batch seen.
    pub v1_nv: Option<u64>,
}

impl EpochTrack {
    /// Whether a batch ending at row `seq` has layout v2.
    pub fn v2_at(&self, seq: u64) -> bool {
        self.first_seq > 0 && seq >= self.first_seq
    }

    /// Follows row `seq`; `Err` says what is wrong with it.
    pub fn row(
        &mut self,
        seq: u64,
        kind: u8,
        note: &[u8],
        request_id: Option<&[u8]>,
    ) -> std::result::Result<(), String> {
        match epoch_of(kind, note, request_id) {
            Err(()) => Err(format!("row {seq}: malformed epoch row")),
            Ok(None) => Ok(()),
            Ok(Some(counter)) => {
                let floor = match self.first_seq {
                    0 => self.v1_nv.unwrap_or(0),
                    _ => self.epoch,
                };
                self.epoch = counter;
                self.epoch_seq = seq;
                if self.first_seq == 0 {
                    self.first_seq = seq;
                }
                if counter <= floor {
                    return Err(format!(
                        "row {seq}: epoch {counter} does not follow epoch {floor}"
                    ));
                }
                Ok(())
            }
        }
    }

    /// Follows the end of a batch at row `seq` carrying counter value or
    /// epoch `nv`, its seal column empty or not.
    pub fn batch_end(
        &mut self,
        seq: u64,
        nv: u64,
        empty_seal: bool,
    ) -> std::result::Result<(), String> {
        if self.v2_at(seq) {
            if nv != self.epoch {
                return Err(format!(
                    "batch ending at row {seq} names epoch {nv}, its rows are in epoch {}",
                    self.epoch
                ));
            }
            return Ok(());
        }
        let previous = self.v1_nv.replace(nv);
        if previous.is_some_and(|p| nv <= p) {
            return Err(format!(
                "batch ending at row {seq}: counter value {nv} does not increase"
            ));
        }
        if empty_seal {
            return Err(format!("batch ending at row {seq} has no seal"));
        }
        Ok(())
    }

    /// The track as of row `seq` (a signed checkpoint's), read from the
    /// epoch rows and batches; `None` when an epoch row there is malformed
    /// (the caller then audits from genesis).
    pub fn at(conn: &Connection, seq: u64) -> Result<Option<EpochTrack>> {
        let at = i64::try_from(seq).unwrap_or(i64::MAX);
        // Literal kind and note: the partial index `journal_epochs` (schema.rs).
        let last: Option<(i64, Option<String>)> = conn
            .query_row(
                "SELECT seq, request_id FROM journal WHERE note = 'epoch' AND kind = 8 AND seq <= ?1
                 ORDER BY seq DESC LIMIT 1",
                [at],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(storage)?;
        let first: Option<i64> = conn
            .query_row(
                "SELECT seq FROM journal WHERE note = 'epoch' AND kind = 8 ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(storage)?;
        let mut track = EpochTrack::default();
        if let Some((s, key)) = last {
            let key = key.as_deref().map(str::as_bytes);
            let Ok(Some(epoch)) = epoch_of(EntryKind::Event as u8, EPOCH_NOTE.as_bytes(), key)
            else {
                return Ok(None);
            };
            track.epoch = epoch;
            track.epoch_seq = s as u64;
            track.first_seq = first.map_or(0, |f| f as u64);
        }
        // The last v1 batch at or before the checkpoint (before the first
        // epoch row): the floor of the first epoch.
        let before = match track.first_seq {
            0 => at,
            f => i64::try_from(f).unwrap_or(i64::MAX) - 1,
        };
        track.v1_nv = conn
            .query_row(
                "SELECT nv FROM batches WHERE last_seq <= ?1 ORDER BY last_seq DESC LIMIT 1",
                [before],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(storage)?
            .map(|v| v as u64);
        Ok(Some(track))
    }
}

/// How the run before this start ended, for the start's epoch row: the
/// last row is a stop row (`stop`), the ledger has no epoch row yet
/// (`upgrade`), or anything else (`unclean`).
pub(crate) fn previous_run(conn: &Connection, tip: &Tip) -> Result<&'static str> {
    if tip.epoch_seq == 0 {
        return Ok(epoch_previous::UPGRADE);
    }
    if tip.epoch_seq != tip.seq {
        return Ok(epoch_previous::UNCLEAN);
    }
    let product: Option<Vec<u8>> = conn
        .query_row(
            "SELECT product FROM products WHERE seq = ?1",
            [i64::try_from(tip.seq).unwrap_or(i64::MAX)],
            |r| r.get(0),
        )
        .optional()
        .map_err(storage)?;
    Ok(match product.as_deref().and_then(EpochRecord::decode) {
        Some(r) if r.reason == epoch_reason::STOP => epoch_previous::STOP,
        _ => epoch_previous::UNCLEAN,
    })
}
