//! Rows that lock, unlock and change the terms: Lock rows (a known reason,
//! a nonce never used before), Unlock rows (only with the authority's
//! clear order for the lock in force, or its acknowledgement of the report
//! that lock waited for), acknowledgements (of a report this meter made,
//! newer than the last) and account orders.

use meter_pki::account::AccountOrder;
use meter_pki::ledger_format::split_lock_product;
use meter_pki::payload::{self, ClearLockOrder};
use meter_pki::postal::PostalKeyDelivery;
use meter_pki::report::{report_digest, LockOrder, ReportAck, StatusReport};
use meter_proto::lock_reason;

use super::objects::{open, require_detail};
use super::walk::{at, product, AccountInForce, Judged, Lock, Walk};
use crate::ledger::FilteredRow;

/// Reasons the meter writes in Lock rows.
const REASONS: [&str; 6] = [
    lock_reason::TAMPER,
    lock_reason::ROLLBACK,
    lock_reason::CLOCK,
    lock_reason::FORCED,
    lock_reason::INSPECTION_OVERDUE,
    lock_reason::PERIOD_CLOSED,
];

impl Walk {
    /// A postal-key Event row: the authority's delivery, for this meter, under the delivery
    /// id its key names (so each delivery is recorded once).
    pub(super) fn postal_key(&mut self, r: &FilteredRow, verify: bool) -> Judged {
        let delivery = open::<PostalKeyDelivery>(product(r)?, &self.anchors, at(r), verify)?.body;
        self.count(verify);
        if delivery.meter_id != self.meter_id {
            return Err(format!(
                "the postal key delivery is for meter {}",
                delivery.meter_id
            ));
        }
        if require_detail(r.key.as_deref(), "postal-key")? != delivery.delivery_id {
            return Err("its key does not name the delivery".into());
        }
        Ok(())
    }

    /// A Lock row: it engages the lock whatever else is wrong with it.
    pub(super) fn lock_row(&mut self, r: &FilteredRow, verify: bool) -> Judged {
        let (nonce, order) = split_lock_product(product(r)?);
        let nonce = String::from_utf8_lossy(nonce).into_owned();
        self.lock = Some(Lock {
            reason: r.note.clone(),
            nonce: nonce.clone(),
        });
        if !REASONS.contains(&r.note.as_str()) {
            return Err(format!("a lock for unknown reason {:?}", r.note));
        }
        if nonce.is_empty() || !self.lock_nonces.insert(nonce.clone()) {
            return Err(format!(
                "a lock whose nonce {nonce:?} is empty or was used by an earlier lock"
            ));
        }
        if r.key.is_some() {
            let detail = require_detail(r.key.as_deref(), "lock-order")?;
            if r.note != lock_reason::FORCED {
                return Err("a lock order's row is not a forced lock".into());
            }
            // The authority's signed order, for this meter, under its own
            // nonce (the key makes it good once).
            let order = order.ok_or(
                "a forced lock that keeps no authority lock order (rows written before lock rows kept the order read so too: the authority can clear it)",
            )?;
            let order = open::<LockOrder>(order, &self.anchors, at(r), verify)?.body;
            self.count(verify);
            if order.meter_id != self.meter_id {
                return Err(format!("the lock order is for meter {}", order.meter_id));
            }
            if order.nonce != detail {
                return Err(format!(
                    "the lock order's nonce {} is not the one its key names ({detail})",
                    order.nonce
                ));
            }
        } else if order.is_some() {
            return Err("a lock the meter engaged itself that keeps an order".into());
        }
        Ok(())
    }

    /// An Unlock row: it clears the lock (as the ledger does) whatever it
    /// carries, and checks out only with the authority's word for the lock
    /// that was in force.
    pub(super) fn unlock(&mut self, r: &FilteredRow, verify: bool) -> Judged {
        let lock = self.lock.take();
        match r.note.as_str() {
            super::NOTE_CLEAR | super::NOTE_REANCHOR => {
                let lock = lock.ok_or("an Unlock row with no lock in force")?;
                let order = open::<ClearLockOrder>(product(r)?, &self.anchors, at(r), verify)?.body;
                self.count(verify);
                if order.meter_id != self.meter_id {
                    return Err(format!("the clear order is for meter {}", order.meter_id));
                }
                if order.nonce != lock.nonce {
                    return Err(format!(
                        "the clear order is for lock {}, the lock in force is {} ({})",
                        order.nonce, lock.nonce, lock.reason
                    ));
                }
                if require_detail(r.key.as_deref(), "clear-lock")? != order.nonce {
                    return Err("its key does not name the order's lock".into());
                }
                let reanchor = lock.reason == lock_reason::TAMPER;
                if reanchor != (r.note == super::NOTE_REANCHOR) {
                    return Err(format!("a {} lock cleared as {:?}", lock.reason, r.note));
                }
                if reanchor {
                    self.forgive();
                }
                Ok(())
            }
            super::NOTE_REPORT_ACK => self.ack(r, verify, Some(lock)),
            other => Err(format!("an Unlock row noted {other:?}")),
        }
    }

    /// An acknowledgement: the authority's, for this meter, of a report
    /// made before it (request id, sequence, time and digest those of the
    /// stored report), newer than the last one. `unlocking`: the row is an
    /// Unlock, and this was the lock in force: it must be the
    /// `inspection-overdue` lock the report was made under, or a
    /// `period-closed` lock with a current account the report belongs to.
    pub(super) fn ack(
        &mut self,
        r: &FilteredRow,
        verify: bool,
        unlocking: Option<Option<Lock>>,
    ) -> Judged {
        let ack = open::<ReportAck>(product(r)?, &self.anchors, at(r), verify)?.body;
        self.count(verify);
        if ack.meter_id != self.meter_id {
            return Err(format!("the acknowledgement is for meter {}", ack.meter_id));
        }
        if require_detail(r.key.as_deref(), "report-ack")? != ack.report_sequence.to_string() {
            return Err("its key does not name the report acknowledged".into());
        }
        if ack.report_sequence <= self.acked {
            return Err(format!(
                "it acknowledges report {}, not newer than report {} acknowledged before",
                ack.report_sequence, self.acked
            ));
        }
        let stored = self.reports.get(&ack.report_sequence).ok_or_else(|| {
            format!(
                "it acknowledges report {}, which the meter had not made",
                ack.report_sequence
            )
        })?;
        // The report is the meter's own, chained: read, not verified.
        let content = meter_pki::cms::peek(stored)
            .map_err(|e| format!("report {}: {e}", ack.report_sequence))?
            .content;
        let report: StatusReport = payload::decode(&content).map_err(|e| e.to_string())?;
        if report.sequence != ack.report_sequence
            || report.request_id != ack.report_request_id
            || report.time != ack.report_time
            || !report_digest(&content).eq_ignore_ascii_case(&ack.report_digest)
        {
            return Err(format!(
                "the acknowledgement is not for report {} as the meter made it",
                ack.report_sequence
            ));
        }
        if let Some(lock) = unlocking {
            let lock = lock.ok_or("an Unlock row with no lock in force")?;
            let ends = (lock.reason == lock_reason::INSPECTION_OVERDUE
                && lock.nonce == report.lock_nonce)
                || (lock.reason == lock_reason::PERIOD_CLOSED
                    && self.account.is_some_and(|a| report.ledger_rows >= a.seq));
            if !ends {
                return Err(format!(
                    "an acknowledgement cleared a {} lock it does not end",
                    lock.reason
                ));
            }
        }
        self.acked = ack.report_sequence;
        self.reports = self.reports.split_off(&(ack.report_sequence + 1));
        Ok(())
    }

    /// A status report made: kept until acknowledged.
    pub(super) fn report(&mut self, r: &FilteredRow) -> Judged {
        self.report_count += 1;
        self.reports.insert(self.report_count, product(r)?.to_vec());
        Ok(())
    }

    /// An account order: the authority's, for this meter, its nonce the
    /// row's key and new, not older than the order in force, applied with
    /// no prepaid funds.
    pub(super) fn account_order(&mut self, r: &FilteredRow, verify: bool) -> Judged {
        let order = open::<AccountOrder>(product(r)?, &self.anchors, at(r), verify)?.body;
        self.count(verify);
        if order.meter_id != self.meter_id {
            return Err(format!("the account order is for meter {}", order.meter_id));
        }
        if require_detail(r.key.as_deref(), "account-order")? != order.nonce {
            return Err("its key does not name the order's nonce".into());
        }
        if !self.account_nonces.insert(order.nonce.clone()) {
            return Err(format!(
                "account order {} applied a second time",
                order.nonce
            ));
        }
        if self.account.is_some_and(|a| order.issued_at < a.issued_at) {
            return Err("an account order older than the one in force".into());
        }
        if r.descending != 0 {
            return Err(format!(
                "an account order applied with {} of prepaid funds",
                r.descending
            ));
        }
        self.account = Some(AccountInForce {
            seq: r.seq,
            issued_at: order.issued_at,
        });
        Ok(())
    }
}
