//! Money typed on meterctl's command line: `1.50`, `1.50 USD` or `1500`
//! (minor units), as `meter_proto::money::parse_amount` accepts it.
//!
//! The shape is checked while clap parses, so `--amount 1,5` is a usage
//! error (exit 2) before anything is asked of the meter; the decimal point is
//! placed once the meter's currency is known (its `Status()`), since only the
//! meter knows how many digits its currency has.

use std::collections::HashMap;

use meter_proto::keys::status as key;
use meter_proto::money::{format_amount, parse_amount};
use zbus::zvariant::OwnedValue;

use crate::error::CtlError;
use crate::output::Dict;

/// Most decimal places any currency may have here (a register is a u64).
const MAX_DIGITS: u8 = 18;

/// An amount as typed, its shape already checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedAmount(String);

impl TypedAmount {
    /// Checks the shape; for clap's `value_parser`.
    pub fn parse(text: &str) -> Result<TypedAmount, String> {
        // A trailing currency code is compared with the meter's later.
        let body = text
            .trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .trim();
        parse_amount(body, MAX_DIGITS, "").map_err(|e| e.to_string())?;
        Ok(TypedAmount(text.to_string()))
    }

    /// Minor units in `currency` with `digits` decimal places.
    pub fn minor(&self, currency: &Currency) -> Result<u64, CtlError> {
        parse_amount(&self.0, currency.digits, &currency.code)
            .map_err(|e| CtlError::Usage(format!("amount: {e}")))
    }

    /// Minor units without asking the meter, when the text has no point.
    pub fn plain(&self) -> Option<u64> {
        parse_amount(&self.0, 0, "").ok()
    }
}

/// The meter's currency, from its `Status()`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Currency {
    /// Code, e.g. `USD` (empty before any rate table).
    pub code: String,
    /// Minor-unit digits.
    pub digits: u8,
}

impl Currency {
    /// Reads `currency` and `currency_digits` of a `Status()` reply.
    pub fn of(status: &HashMap<String, OwnedValue>) -> Currency {
        let d = Dict(status);
        Currency {
            code: d.str(key::CURRENCY).unwrap_or_default(),
            digits: d
                .u64(key::CURRENCY_DIGITS)
                .and_then(|n| u8::try_from(n).ok())
                .unwrap_or(0),
        }
    }

    /// Asks the meter; a meter that does not answer gives the bare number.
    pub async fn query(meter: &meter_proto::Meter1Proxy<'_>) -> Currency {
        match meter.status().await {
            Ok(s) => Currency::of(&s),
            Err(_) => Currency::default(),
        }
    }

    /// `1500` → `1.500 USD`.
    pub fn show(&self, minor: u64) -> String {
        format_amount(minor, self.digits, &self.code)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn usd() -> Currency {
        Currency {
            code: "USD".into(),
            digits: 3,
        }
    }

    #[test]
    fn decimal_and_minor_units_give_the_same_amount() {
        for text in ["1.50", "1500", "1.5", "1.500 USD", "1.50USD"] {
            let a = TypedAmount::parse(text).unwrap();
            assert_eq!(a.minor(&usd()).unwrap(), 1500, "{text}");
        }
        assert_eq!(TypedAmount::parse("1500").unwrap().plain(), Some(1500));
        assert_eq!(TypedAmount::parse("1.5").unwrap().plain(), None);
        assert_eq!(usd().show(1500), "1.500 USD");
    }

    #[test]
    fn malformed_amounts_are_refused_with_a_reason() {
        for text in ["", "1,50", "-1", "1.", ".5", "1e3", "abc", "1.2.3"] {
            let e = TypedAmount::parse(text).unwrap_err();
            assert!(e.contains("is not an amount"), "{text}: {e}");
        }
        let a = TypedAmount::parse("1.5000").unwrap();
        assert!(matches!(a.minor(&usd()), Err(CtlError::Usage(_))));
        let a = TypedAmount::parse("1.50 EUR").unwrap();
        assert!(a.minor(&usd()).is_err(), "another currency");
    }
}
