//! Money as people read and type it: the one formatter and parser shared by
//! meterd's messages, meterctl and meter-authority.
//!
//! Registers, wire values and JSON stay integer minor units; only
//! human-facing text goes through here, so every program shows the same
//! `12.345 USD` for the same amount and accepts the same input.

/// Formats minor units with the currency's digits: `12345, 3, "USD"` → `12.345 USD`.
/// Done on the decimal string, so no digit count can overflow. An empty
/// currency code gives the bare number.
pub fn format_amount(minor: u64, digits: u8, currency: &str) -> String {
    let digits = usize::from(digits);
    let mut s = minor.to_string();
    if digits > 0 {
        if s.len() <= digits {
            s = format!("{}{s}", "0".repeat(digits + 1 - s.len()));
        }
        s.insert(s.len() - digits, '.');
    }
    if currency.is_empty() {
        s
    } else {
        format!("{s} {currency}")
    }
}

/// Why typed money was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Not a number of the accepted shape.
    #[error("{0:?} is not an amount: give minor units (500) or a decimal amount (0.500)")]
    Malformed(String),
    /// More decimal places than the currency has.
    #[error("{text:?} has more decimal places than the currency's {digits}")]
    TooPrecise {
        /// The input.
        text: String,
        /// The currency's digits.
        digits: u8,
    },
    /// Does not fit a register.
    #[error("{0:?} is too large an amount")]
    TooLarge(String),
}

/// Parses typed money: `1.50` (currency units, at most `digits` decimal
/// places; fewer are padded) or `150` (minor units, no point). A trailing
/// currency code equal to `currency` is allowed (`1.50 USD`). Signs,
/// exponents, separators, empty parts (`1.`, `.5`) and extra places are
/// refused rather than rounded.
pub fn parse_amount(text: &str, digits: u8, currency: &str) -> Result<u64, AmountError> {
    let malformed = || AmountError::Malformed(text.to_string());
    let mut body = text.trim();
    if !currency.is_empty() {
        if let Some(rest) = body.strip_suffix(currency) {
            body = rest.trim_end();
        }
    }
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let too_large = || AmountError::TooLarge(text.to_string());
    match body.split_once('.') {
        None if all_digits(body) => body.parse().map_err(|_| too_large()),
        None => Err(malformed()),
        Some((int, frac)) => {
            if !all_digits(int) || !all_digits(frac) {
                return Err(malformed());
            }
            if frac.len() > usize::from(digits) {
                return Err(AmountError::TooPrecise {
                    text: text.to_string(),
                    digits,
                });
            }
            let pad = "0".repeat(usize::from(digits) - frac.len());
            format!("{int}{frac}{pad}").parse().map_err(|_| too_large())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_use_the_currency_digits() {
        assert_eq!(format_amount(12_345, 3, "USD"), "12.345 USD");
        assert_eq!(format_amount(5, 3, "USD"), "0.005 USD");
        assert_eq!(format_amount(0, 2, "EUR"), "0.00 EUR");
        assert_eq!(format_amount(1_000, 3, ""), "1.000");
        assert_eq!(format_amount(42, 0, "JPY"), "42 JPY");
        assert_eq!(format_amount(u64::MAX, 3, "X"), "18446744073709551.615 X");
        assert_eq!(format_amount(7, 25, ""), format!("0.{}7", "0".repeat(24)));
    }

    #[test]
    fn typed_amounts() {
        assert_eq!(parse_amount("1.50", 3, "USD"), Ok(1_500));
        assert_eq!(parse_amount("1.500", 3, "USD"), Ok(1_500));
        assert_eq!(parse_amount("1500", 3, "USD"), Ok(1_500));
        assert_eq!(parse_amount("1.50 USD", 3, "USD"), Ok(1_500));
        assert_eq!(parse_amount("0.005", 3, ""), Ok(5));
        assert_eq!(parse_amount("42", 0, "JPY"), Ok(42));
        for bad in [
            "", "1.", ".5", "-1", "1e3", "1,50", "1.5.0", "abc", "1.50 EUR", "+1",
        ] {
            assert!(
                matches!(parse_amount(bad, 3, "USD"), Err(AmountError::Malformed(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_amount("1.5005", 3, "USD"),
            Err(AmountError::TooPrecise { digits: 3, .. })
        ));
        assert!(matches!(
            parse_amount("1.5", 0, ""),
            Err(AmountError::TooPrecise { .. })
        ));
        assert!(matches!(
            parse_amount("18446744073709551616", 0, ""),
            Err(AmountError::TooLarge(_))
        ));
        assert!(matches!(
            parse_amount("18446744073709552.000", 3, ""),
            Err(AmountError::TooLarge(_))
        ));
    }
}
