//! Money: an integer count of the currency's smallest unit, never a float.
//!
//! Every arithmetic step is checked; an overflow is an error the caller must
//! handle, so the registers can never wrap.

use std::fmt;

/// An amount in minor units (e.g. 1/1000 of the currency unit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(pub u64);

/// An arithmetic step would leave the range of a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("amount out of range")]
pub struct Overflow;

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(0);

    /// `self + rhs`, or [`Overflow`].
    pub fn checked_add(self, rhs: Amount) -> Result<Amount, Overflow> {
        self.0.checked_add(rhs.0).map(Amount).ok_or(Overflow)
    }

    /// `self - rhs`, or [`Overflow`] when `rhs > self`.
    pub fn checked_sub(self, rhs: Amount) -> Result<Amount, Overflow> {
        self.0.checked_sub(rhs.0).map(Amount).ok_or(Overflow)
    }

    /// As people read it, with the shared formatter: `12.345 USD` for
    /// 12345, 3 digits and "USD".
    pub fn shown(self, digits: u8, currency: &str) -> String {
        meter_proto::money::format_amount(self.0, digits, currency)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_arithmetic() {
        assert_eq!(Amount(2).checked_add(Amount(3)), Ok(Amount(5)));
        assert_eq!(Amount(u64::MAX).checked_add(Amount(1)), Err(Overflow));
        assert_eq!(Amount(2).checked_sub(Amount(3)), Err(Overflow));
        assert_eq!(Amount(12345).shown(3, "USD"), "12.345 USD");
        assert_eq!(Amount(5).shown(3, ""), "0.005");
        assert_eq!(Amount(5).shown(0, ""), "5");
    }
}
