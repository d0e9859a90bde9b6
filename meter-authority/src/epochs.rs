//! Epoch continuity in a report's segment (issue 12, "Roll back").
//!
//! The meter moves its TPM counter only together with an epoch row (start,
//! every `epoch_rows` rows, orderly stop, TPM reset), written and sealed
//! before the increment; so the epoch rows of an honest ledger open
//! consecutive counter values, across reports too. A restored copy
//! re-sealed at the counter's current value by one forged epoch row jumps
//! over the values the lost rows used: the jump is named here. The one
//! legitimate jump is the `cleared` epoch row after this authority cleared
//! a `rollback` lock (its clear-lock order is in the same segment).
//!
//! A root who forges one epoch row for every skipped value keeps this check
//! quiet; the products of the lost rows then collide with the forged rows'
//! serials, which `lookup` answers "reported with another digest".

use meter_pki::ledger_format::{epoch_of, epoch_reason, EpochRecord};

use crate::findings::Findings;

/// The epoch rows seen so far, from the acknowledged head on.
#[derive(Debug, Default)]
pub(crate) struct EpochRun {
    /// Epoch in force (None: no epoch row known yet).
    pub epoch: Option<u64>,
    /// Jumps made by `cleared` rows: (row, from, to), judged at the end.
    cleared: Vec<(u64, u64, u64)>,
}

impl EpochRun {
    pub fn new(epoch: Option<u64>) -> EpochRun {
        EpochRun {
            epoch,
            cleared: Vec::new(),
        }
    }

    /// Follows row `seq`; an epoch row must open the epoch after the one in force.
    pub fn row(
        &mut self,
        seq: u64,
        kind: u8,
        note: &[u8],
        request_id: Option<&[u8]>,
        product: Option<&[u8]>,
        f: &mut Findings,
    ) {
        let counter = match epoch_of(kind, note, request_id) {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(()) => {
                f.add(format!("row {seq}: a malformed epoch row"));
                return;
            }
        };
        let record = product.and_then(EpochRecord::decode);
        if record.as_ref().is_some_and(|r| r.counter != counter) {
            f.add(format!(
                "row {seq}: epoch row keyed {counter} whose record says another counter"
            ));
        }
        if let Some(before) = self.epoch {
            if counter <= before {
                f.add(format!(
                    "row {seq}: epoch {counter} does not follow epoch {before}"
                ));
            } else if counter != before + 1 {
                if record.is_some_and(|r| r.reason == epoch_reason::CLEARED) {
                    self.cleared.push((seq, before, counter));
                } else {
                    f.add(skipped(seq, before, counter));
                }
            }
        }
        self.epoch = Some(counter);
    }

    /// Judges the `cleared` jumps: each needs a clear-lock order of this
    /// authority applied in the segment (`applied` keys).
    pub fn finish(&self, applied: &[(String, u64)], f: &mut Findings) {
        let cleared = applied.iter().any(|(k, _)| k.starts_with("clear-lock/"));
        for &(seq, before, counter) in &self.cleared {
            if !cleared {
                f.add(skipped(seq, before, counter));
            }
        }
    }
}

fn skipped(seq: u64, before: u64, counter: u64) -> String {
    format!(
        "row {seq}: epoch {counter} follows epoch {before}: the TPM counter skips counter values \
         {}..={} that no row accounts for (a restored copy re-sealed at a later counter?)",
        before + 1,
        counter - 1
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(run: &mut EpochRun, seq: u64, counter: u64, reason: &str, f: &mut Findings) {
        let key = format!("m/epoch/{counter}");
        let rec = EpochRecord {
            counter,
            reason: reason.into(),
            previous: String::new(),
            tpm_clock_ms: 0,
            reset_count: 0,
            restart_count: 0,
        };
        run.row(
            seq,
            8,
            b"epoch",
            Some(key.as_bytes()),
            Some(&rec.encode()),
            f,
        );
    }

    #[test]
    fn consecutive_epochs_pass_and_a_jump_is_named() {
        let mut f = Findings::default();
        let mut run = EpochRun::new(Some(4));
        row(&mut run, 10, 5, "stop", &mut f);
        row(&mut run, 11, 6, "start", &mut f);
        run.row(12, 5, b"", None, None, &mut f);
        assert!(f.0.is_empty(), "{:?}", f.0);
        row(&mut run, 13, 9, "stop", &mut f);
        assert_eq!(f.0.len(), 1, "{:?}", f.0);
        assert!(f.0[0].contains("skips counter values 7..=8"), "{:?}", f.0);
        assert_eq!(run.epoch, Some(9));
        row(&mut run, 14, 9, "start", &mut f);
        assert!(f.0[1].contains("does not follow"), "{:?}", f.0);
    }

    #[test]
    fn a_cleared_jump_needs_a_clear_lock_order() {
        let mut f = Findings::default();
        let mut run = EpochRun::new(Some(4));
        row(&mut run, 10, 8, "cleared", &mut f);
        run.finish(&[("clear-lock/ab".into(), 9)], &mut f);
        assert!(f.0.is_empty(), "{:?}", f.0);
        run.finish(&[("voucher/2".into(), 9)], &mut f);
        assert_eq!(f.0.len(), 1, "{:?}", f.0);
        // No epoch known before (a book older than the field): nothing to compare.
        let mut f = Findings::default();
        let mut run = EpochRun::new(None);
        row(&mut run, 3, 40, "start", &mut f);
        assert!(f.0.is_empty(), "{:?}", f.0);
    }
}
