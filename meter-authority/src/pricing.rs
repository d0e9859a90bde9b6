//! Re-pricing every sale of a report's segment (issue 12, item 5).
//!
//! A root who lowers what a sale debited and recomputes the chain keeps the
//! registers consistent (AR + DR = CT still holds); only the price tells.
//! The rate tables are in the rows (each signed by this authority, checked
//! in `reconcile`), and the book keeps the ones acknowledged segments held,
//! so each sale of a service sold at its plain rate (postmark, validate,
//! sign) must have debited the rate of the table in force at its row's time
//! (highest version whose `effective` has come), one piece per row.
//!
//! Not re-priced: postage (priced by class and weight, which the row does
//! not carry), status reports and revokes (free while locked, or owed), and
//! certificate installs (afforded, not charged).

use meter_pki::payload::RateTable;
use meter_pki::segment::{self, kind, service};

use crate::findings::Findings;

/// Services always debited at their rate, one piece per row.
const AT_RATE: [u8; 3] = [service::POSTMARK, 2, 3];

/// Rate tables known at a point of the walk, ascending by version.
#[derive(Debug, Default)]
pub(crate) struct Pricing {
    tables: Vec<RateTable>,
    /// Tables first seen in this segment (the book keeps them after an ack).
    pub learned: Vec<RateTable>,
}

impl Pricing {
    pub fn new(known: impl IntoIterator<Item = RateTable>) -> Pricing {
        let mut tables: Vec<RateTable> = known.into_iter().collect();
        tables.sort_by_key(|t| t.version);
        Pricing {
            tables,
            learned: Vec::new(),
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

    /// Re-prices row `seq` (kind, service, debit, time in ms).
    pub fn row(
        &self,
        seq: u64,
        kind_code: u8,
        svc: u8,
        debit: u64,
        time_ms: i64,
        f: &mut Findings,
    ) {
        if kind_code != kind::DEBIT || !AT_RATE.contains(&svc) || self.tables.is_empty() {
            return;
        }
        let Some(name) = segment::SERVICES
            .iter()
            .find(|(c, _)| *c == svc)
            .map(|(_, n)| *n)
        else {
            return;
        };
        let at = time_ms.div_euclid(1000);
        let Some(table) = self.tables.iter().rev().find(|t| t.effective <= at) else {
            f.add(format!(
                "row {seq}: a {name} sold at {at} when no rate table of this authority was in force"
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn table(version: u32, effective: i64, postmark: u64) -> RateTable {
        RateTable {
            version,
            effective,
            currency: "USD".into(),
            digits: 3,
            rates: [("postmark".to_owned(), postmark)].into_iter().collect(),
            postage: Vec::new(),
        }
    }

    #[test]
    fn each_sale_at_the_rate_in_force_at_its_row() {
        let mut f = Findings::default();
        let mut p = Pricing::new([table(1, 0, 500)]);
        p.installed(table(2, 100, 700));
        p.row(5, kind::DEBIT, service::POSTMARK, 500, 99_999, &mut f);
        p.row(6, kind::DEBIT, service::POSTMARK, 700, 100_000, &mut f);
        // Not a plain-rate service, or not a sale: not re-priced.
        p.row(7, kind::DEBIT, service::STATUS_REPORT, 1, 100_000, &mut f);
        p.row(8, kind::EVENT, service::POSTMARK, 1, 100_000, &mut f);
        assert!(f.0.is_empty(), "{:?}", f.0);
        p.row(9, kind::DEBIT, service::POSTMARK, 1, 100_000, &mut f);
        assert_eq!(f.0.len(), 1);
        assert!(
            f.0[0].contains("row 9: a postmark debited 1, rate table v2"),
            "{:?}",
            f.0
        );
        assert_eq!(p.learned.len(), 1);
        // Validate is priced by no table here.
        p.row(10, kind::DEBIT, 2, 100, 100_000, &mut f);
        assert!(f.0[1].contains("does not price it"), "{:?}", f.0);
    }
}
