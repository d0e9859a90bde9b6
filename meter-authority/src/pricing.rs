//! Re-pricing every sale of a report's segment (issue 12, item 5).
//!
//! A root who lowers what a sale debited and recomputes the chain keeps the
//! registers consistent (AR + DR = CT still holds); only the price tells.
//! The rate tables are in the rows (each signed by this authority, checked
//! in `reconcile`), and the book keeps the ones acknowledged segments held;
//! the table in force at a row is the highest version whose `effective` has
//! come by the row's time. What each row must have debited, as meterd
//! prices it (`meterd/src/sale.rs`, `Price`):
//!
//! * **postmark, validate, sign, certificate-install, agent-certificate**:
//!   the service's rate (`Price::Rate`), one piece per row; a table that
//!   does not price it is a finding (meterd refuses to sell it).
//! * **postage**: the band of the indicium's class that holds its weight
//!   (the lightest whose `max_grams` is at least the weight), of the table in
//!   force. The row does not carry class and weight: the indicium does, and
//!   it travels in the segment (`meter_pki::segment::product_required`). The
//!   indicium must verify with the meter's identity key (the certificate that
//!   signed the report), name this meter and the row, and state the row's
//!   debit and registers: a root who lowers a debit must also re-sign an
//!   indicium with the lower amount, and that amount must still be the band
//!   price of what it says (so he must say a lighter piece or a cheaper class
//!   than the one printed on the envelope, whose indicium then answers
//!   "reported with another digest" to `lookup`).
//! * **status-report** (`Price::RateUnlessLocked`): its rate (0 when the
//!   table does not price it), or 0 while the meter is locked. The lock
//!   state is the rows' (a Lock row locks, an Unlock row clears, as in the
//!   meter's ledger); before the segment's first Lock or Unlock row it is
//!   inferred at the end: locked if that first row is an Unlock, unknown
//!   (accepted) if it is a Lock, and the report's own lock state if the
//!   segment has neither.
//! * **revoke** (`Price::RateOrDue`): its rate (0 when unpriced); or 0 with
//!   note `revoke-due` when the funds could not cover it, and then a
//!   `revoke-settle` Debit row (key `m/settle/<due row>`) later debits that
//!   rate. A settle row is checked when its due row is in the same segment.
//! * **every row that is not a Debit** debits nothing: records, credits,
//!   locks, and the certificate *request* (an Event row: `Price::Afford`,
//!   the funds must cover an install's rate, nothing is charged then).
//!
//! Not re-priced: credit-line and payment-certificate rows, a settle row
//! whose due row was in an earlier segment, and any sale when neither the
//! book nor the segment holds a rate table at all.

use std::collections::BTreeMap;

use meter_pki::cert::Certificate;
use meter_pki::indicium;
use meter_pki::payload::RateTable;
use meter_pki::segment::{self, kind, service, SegmentRow};

use crate::findings::Findings;

/// Services always debited at their rate, one piece per row.
const AT_RATE: [u8; 5] = [service::POSTMARK, 2, 3, service::CERTIFICATE_INSTALL, 5];
/// Note of a revoke row whose fee was left owed (meterd `NOTE_REVOKE_DUE`).
const NOTE_REVOKE_DUE: &[u8] = b"revoke-due";
/// Note of the row that settles it (meterd `NOTE_REVOKE_SETTLE`).
const NOTE_REVOKE_SETTLE: &[u8] = b"revoke-settle";
/// Key prefix of a settle row (`m/settle/<due row>`).
const SETTLE_KEY: &[u8] = b"m/settle/";
/// A free report this soon after an Unlock row was priced while locked
/// (the unlock committed between its pricing and its row).
const UNLOCK_SLACK_MS: i64 = 5_000;

/// Rate tables known at a point of the walk, ascending by version, and
/// what the walk has seen of locks and owed fees.
#[derive(Debug, Default)]
pub(crate) struct Pricing {
    tables: Vec<RateTable>,
    /// Tables first seen in this segment (the book keeps them after an ack).
    pub learned: Vec<RateTable>,
    meter_id: String,
    /// The identity certificate the report was signed with (verifies
    /// indicia; `None` in unit tests: decoded, not verified).
    meter_cert: Option<Certificate>,
    /// Locked after the rows so far (`None`: before the first Lock or Unlock row).
    locked: Option<bool>,
    /// Kind of the segment's first Lock or Unlock row.
    first_lock_row: Option<u8>,
    /// Time of the last Unlock row (ms).
    unlocked_ms: Option<i64>,
    /// Reports that debited 0 before any Lock or Unlock row: (seq, what
    /// the table said).
    free_reports: Vec<(u64, String)>,
    /// Revoke rows of this segment whose fee was left owed: seq → fee.
    dues: BTreeMap<u64, u64>,
}

impl Pricing {
    pub fn new(
        known: impl IntoIterator<Item = RateTable>,
        meter_id: &str,
        meter_cert: Option<Certificate>,
    ) -> Pricing {
        let mut tables: Vec<RateTable> = known.into_iter().collect();
        tables.sort_by_key(|t| t.version);
        Pricing {
            tables,
            meter_id: meter_id.to_owned(),
            meter_cert,
            ..Pricing::default()
        }
    }

    /// A verified rate table installed at this row.
    pub fn installed(&mut self, t: RateTable) {
        if self.tables.iter().all(|k| k.version != t.version) {
            self.learned.push(t.clone());
            self.tables.push(t);
            self.tables.sort_by_key(|t| t.version);
        }
    }

    /// The table in force at `time_ms`.
    fn in_force(&self, time_ms: i64) -> Option<&RateTable> {
        let at = time_ms.div_euclid(1000);
        self.tables.iter().rev().find(|t| t.effective <= at)
    }

    /// Re-prices row `r` (see the module doc).
    pub fn row(&mut self, r: &SegmentRow<'_>, f: &mut Findings) {
        let x = &r.fields;
        let seq = x.seq;
        match x.kind {
            kind::DEBIT => {}
            kind::LOCK | kind::UNLOCK => {
                self.first_lock_row.get_or_insert(x.kind);
                self.locked = Some(x.kind == kind::LOCK);
                if x.kind == kind::UNLOCK {
                    self.unlocked_ms = Some(x.time);
                }
                self.nothing_debited(seq, x.kind, x.debit, f);
                return;
            }
            k => {
                self.nothing_debited(seq, k, x.debit, f);
                return;
            }
        }
        // As before rate tables were re-priced: a segment and book with no
        // table at all (unit ledgers, meters older than tables) are not priced.
        if self.tables.is_empty() {
            return;
        }
        match x.service {
            s if AT_RATE.contains(&s) => self.at_rate(seq, s, x.debit, x.time, f),
            service::POSTAGE => self.postage(r, f),
            service::STATUS_REPORT => self.report(seq, x.debit, x.time, f),
            service::REVOKE => self.revoke(seq, x.debit, x.note, x.time, f),
            0 if x.note == NOTE_REVOKE_SETTLE => self.settle(seq, x.debit, x.request_id, f),
            _ => {}
        }
    }

    /// Ends the walk: the free reports made before any Lock or Unlock row
    /// (`report_locked`: the report's own lock state, at the last row).
    pub fn finish(&self, report_locked: bool, f: &mut Findings) {
        // Locked from the start if the first such row is an Unlock; not known
        // if it is a Lock (locked again?); the report's state if none.
        if self.first_lock_row.is_some() || report_locked {
            return;
        }
        for (seq, said) in &self.free_reports {
            f.add(format!(
                "row {seq}: a status-report debited 0 while the meter was not locked ({said})"
            ));
        }
    }

    fn nothing_debited(&self, seq: u64, k: u8, debit: u64, f: &mut Findings) {
        if debit != 0 {
            f.add(format!(
                "row {seq}: a row of kind {k} (not a sale) debited {debit}; only sales debit (a certificate request is afforded, not charged)"
            ));
        }
    }

    fn at_rate(&self, seq: u64, svc: u8, debit: u64, time_ms: i64, f: &mut Findings) {
        let Some(name) = segment::service_name(svc) else {
            return;
        };
        let Some(table) = self.in_force(time_ms) else {
            f.add(format!(
                "row {seq}: a {name} sold at {} when no rate table of this authority was in force",
                time_ms.div_euclid(1000)
            ));
            return;
        };
        match table.rates.get(name) {
            Some(&rate) if rate == debit => {}
            Some(&rate) => f.add(format!(
                "row {seq}: a {name} debited {debit}, rate table v{} in force then says {rate}",
                table.version
            )),
            None => f.add(format!(
                "row {seq}: a {name} debited {debit}, rate table v{} in force then does not price it",
                table.version
            )),
        }
    }

    /// The rate of `name` in force at `time_ms`, 0 when unpriced; `None`
    /// (with a finding) when no table is in force.
    fn rate_or_zero(&self, seq: u64, name: &str, time_ms: i64, f: &mut Findings) -> Option<u64> {
        match self.in_force(time_ms) {
            Some(t) => Some(t.rates.get(name).copied().unwrap_or(0)),
            None => {
                f.add(format!(
                    "row {seq}: a {name} made at {} when no rate table of this authority was in force",
                    time_ms.div_euclid(1000)
                ));
                None
            }
        }
    }

    fn report(&mut self, seq: u64, debit: u64, time_ms: i64, f: &mut Findings) {
        let name = "status-report";
        let just_unlocked = self
            .unlocked_ms
            .is_some_and(|u| time_ms.saturating_sub(u) <= UNLOCK_SLACK_MS);
        // A locked meter reports for nothing, with or without a table.
        if debit == 0 && (self.locked == Some(true) || just_unlocked) {
            return;
        }
        let table = self.in_force(time_ms);
        let rate = table.map(|t| t.rates.get(name).copied().unwrap_or(0));
        let said = match (table, rate) {
            (Some(t), Some(r)) => format!("rate table v{} in force then says {r}", t.version),
            _ => "no rate table of this authority was in force".to_owned(),
        };
        match (rate, debit, self.locked) {
            (Some(r), d, _) if d == r => {}
            (_, 0, None) => self.free_reports.push((seq, said)),
            (_, 0, _) => f.add(format!(
                "row {seq}: a {name} debited 0 while the meter was not locked ({said})"
            )),
            _ => f.add(format!("row {seq}: a {name} debited {debit}, {said}")),
        }
    }

    fn revoke(&mut self, seq: u64, debit: u64, note: &[u8], time_ms: i64, f: &mut Findings) {
        let name = "revoke";
        let Some(rate) = self.rate_or_zero(seq, name, time_ms, f) else {
            return;
        };
        if note == NOTE_REVOKE_DUE {
            if debit != 0 {
                f.add(format!(
                    "row {seq}: a revoke whose fee was left due debited {debit}"
                ));
            }
            self.dues.insert(seq, rate);
        } else if debit != rate {
            f.add(format!(
                "row {seq}: a {name} debited {debit}, the rate in force then is {rate}"
            ));
        }
    }

    fn settle(&self, seq: u64, debit: u64, key: Option<&[u8]>, f: &mut Findings) {
        let due_row = key
            .and_then(|k| k.strip_prefix(SETTLE_KEY))
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| d.parse::<u64>().ok());
        let Some(due_row) = due_row else {
            f.add(format!(
                "row {seq}: a revoke-settle row that names no due revoke row"
            ));
            return;
        };
        match self.dues.get(&due_row) {
            Some(&fee) if fee != debit => f.add(format!(
                "row {seq}: settles the fee of {fee} due at row {due_row} with a debit of {debit}"
            )),
            _ => {}
        }
    }

    fn postage(&self, r: &SegmentRow<'_>, f: &mut Findings) {
        let x = &r.fields;
        let seq = x.seq;
        let Some(product) = r.product else {
            f.add(format!("row {seq}: a postage row without its indicium"));
            return;
        };
        let read = match &self.meter_cert {
            Some(cert) => indicium::verify(product, cert),
            None => indicium::decode(product),
        };
        let ind = match read {
            Ok(i) => i.body,
            Err(e) => {
                f.add(format!(
                    "row {seq}: its indicium does not verify with the meter's identity key: {e}"
                ));
                return;
            }
        };
        let said = (
            ind.meter_id.as_str(),
            ind.seq,
            ind.amount,
            ind.ascending,
            ind.descending,
            ind.pieces,
        );
        let row = (
            self.meter_id.as_str(),
            seq,
            x.debit,
            x.ascending,
            x.descending,
            x.service_count,
        );
        if said != row {
            f.add(format!(
                "row {seq}: its indicium says (meter, row, amount, AR, DR, pieces) {said:?}, the row {row:?}"
            ));
        }
        let Some(table) = self.in_force(x.time) else {
            f.add(format!(
                "row {seq}: a postage sold at {} when no rate table of this authority was in force",
                x.time.div_euclid(1000)
            ));
            return;
        };
        let band = table
            .postage
            .iter()
            .filter(|b| b.class == ind.class && ind.grams <= b.max_grams)
            .min_by_key(|b| b.max_grams);
        match band {
            Some(b) if b.amount == x.debit => {}
            Some(b) => f.add(format!(
                "row {seq}: a postage {} of {} g debited {}, rate table v{} in force then says {}",
                ind.class, ind.grams, x.debit, table.version, b.amount
            )),
            None => f.add(format!(
                "row {seq}: a postage {} of {} g, which rate table v{} in force then does not price",
                ind.class, ind.grams, table.version
            )),
        }
    }
}

#[cfg(test)]
#[path = "pricing_tests.rs"]
mod tests;
