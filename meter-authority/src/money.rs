//! The authority's money as people type and read it: `1.50` or `1500`
//! (minor units) on the command line, `1.500 USD` in what it prints.
//!
//! The authority has no currency of its own: it is the currency of the last
//! rate table it signed (`meter-authority rates`), remembered in
//! `currency.json`, since its meters sell in that table's currency. Before any
//! table is signed only minor units are accepted and shown, with the unit
//! named, rather than a guess at the decimal point.

use std::path::Path;

use meter_proto::money::{format_amount, parse_amount, AmountError};
use serde::{Deserialize, Serialize};

use crate::state::{read_json, write_json_atomic};
use crate::Result;

/// File in the authority directory holding the currency.
const FILE: &str = "currency.json";

/// The currency amounts are typed and shown in; `None` before a rate table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Money {
    /// Currency code and minor-unit digits of the last table signed.
    pub currency: Option<(String, u8)>,
}

impl Money {
    /// Reads the authority's currency (none before a rate table).
    pub fn load(dir: &Path) -> Result<Money> {
        Ok(read_json(&dir.join(FILE))?.unwrap_or_default())
    }

    /// Remembers the currency of a rate table just signed.
    pub fn remember(dir: &Path, currency: &str, digits: u8) -> Result<()> {
        let m = Money {
            currency: Some((currency.to_owned(), digits)),
        };
        write_json_atomic(&dir.join(FILE), &m, "currency")
    }

    /// Parses typed money: `1.50`, `1.50 USD` or `1500` (minor units).
    pub fn parse(&self, text: &str) -> std::result::Result<u64, AmountError> {
        match &self.currency {
            Some((code, digits)) => parse_amount(text, *digits, code),
            // Unknown digits: a decimal point cannot be placed.
            None => match parse_amount(text, 0, "") {
                Err(AmountError::TooPrecise { text, .. }) => Err(AmountError::Malformed(format!(
                    "{text} (no rate table signed yet, so the currency's decimal places are \
                     unknown: give minor units)"
                ))),
                other => other,
            },
        }
    }

    /// Shows an amount in currency (`1.500 USD`), or `1500 minor units`
    /// before any rate table.
    pub fn show(&self, minor: u64) -> String {
        match &self.currency {
            Some((code, digits)) => format_amount(minor, *digits, code),
            None => format!("{minor} minor units"),
        }
    }
}

/// Unix seconds as an RFC 3339 UTC time, as meterd and meterctl print them;
/// a value outside the calendar's range is shown as `@secs`.
pub fn show_time(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn decimal_and_minor_units_agree() {
        let m = Money {
            currency: Some(("USD".into(), 3)),
        };
        assert_eq!(m.parse("1.50").unwrap(), 1500);
        assert_eq!(m.parse("1500").unwrap(), 1500);
        assert_eq!(m.parse("1.50 USD").unwrap(), 1500);
        assert!(m.parse("1.5000").is_err());
        assert!(m.parse("-1").is_err());
        assert_eq!(m.show(1500), "1.500 USD");
    }

    #[test]
    fn without_a_table_only_minor_units() {
        let m = Money::default();
        assert_eq!(m.parse("1500").unwrap(), 1500);
        let e = m.parse("1.50").unwrap_err().to_string();
        assert!(e.contains("give minor units"), "{e}");
        assert_eq!(m.show(1500), "1500 minor units");
    }

    #[test]
    fn remembered_currency_is_loaded() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Money::load(d.path()).unwrap(), Money::default());
        Money::remember(d.path(), "EUR", 2).unwrap();
        assert_eq!(Money::load(d.path()).unwrap().show(150), "1.50 EUR");
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(show_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(show_time(i64::MAX), format!("@{}", i64::MAX));
    }
}
