//! Admission control: funds reserved in memory before any TPM work.
//!
//! A service reserves its price before it signs anything; a reservation is
//! refused when the descending register, less what is already reserved,
//! cannot cover it. The commit thread updates the descending register and
//! releases the batch's reservations under the same lock, so there is no
//! moment where the funds are counted neither as reserved nor as spent.

use std::sync::{Arc, Mutex};

use super::{LedgerError, Result};
use crate::money::Amount;

/// Funds as the admission check sees them.
#[derive(Debug, Default)]
pub(crate) struct Funds {
    /// Descending register after the last commit.
    pub descending: Amount,
    /// Sum of live reservations.
    pub reserved: Amount,
    /// Funds owed (a revocation fee due, see `revoke`): held out of every
    /// reservation so that no sale spends them; only the unreserved
    /// settlement debit takes them.
    pub owed: Amount,
    /// Reservations alive: requests between their funds check and their
    /// commit. The commit thread waits for them to fill a batch.
    pub holders: usize,
}

/// Shared funds state.
pub(crate) type SharedFunds = Arc<Mutex<Funds>>;

fn poisoned<T>(_: T) -> LedgerError {
    LedgerError::Storage("funds lock poisoned".into())
}

/// Reserves `debit` against `funds`, less what is owed.
pub(crate) fn reserve(funds: &SharedFunds, debit: Amount) -> Result<Reservation> {
    reserve_with(funds, debit, true)
}

/// Reserves `debit` to pay what is owed: against the funds less live
/// reservations only (the owed hold exists for this debit), so a settlement
/// never takes money an in-flight sale already holds.
pub(crate) fn reserve_owed(funds: &SharedFunds, debit: Amount) -> Result<Reservation> {
    reserve_with(funds, debit, false)
}

fn reserve_with(funds: &SharedFunds, debit: Amount, hold_owed: bool) -> Result<Reservation> {
    let mut f = funds.lock().map_err(poisoned)?;
    let owed = if hold_owed { f.owed } else { Amount::ZERO };
    let available = f
        .descending
        .checked_sub(f.reserved)
        .and_then(|a| a.checked_sub(owed))
        .unwrap_or(Amount::ZERO);
    if debit > available {
        return Err(LedgerError::InsufficientFunds {
            needed: debit,
            available,
        });
    }
    f.reserved = f.reserved.checked_add(debit)?;
    f.holders += 1;
    Ok(Reservation {
        funds: Arc::clone(funds),
        amount: debit,
        live: true,
    })
}

/// Funds held for one request until it commits or gives up; released on drop.
#[derive(Debug)]
pub struct Reservation {
    funds: SharedFunds,
    amount: Amount,
    live: bool,
}

impl Reservation {
    /// Amount held.
    pub fn amount(&self) -> Amount {
        self.amount
    }

    /// Releases the hold while the caller already holds the funds lock.
    pub(crate) fn release_locked(mut self, funds: &mut Funds) {
        funds.reserved = funds
            .reserved
            .checked_sub(self.amount)
            .unwrap_or(Amount::ZERO);
        funds.holders = funds.holders.saturating_sub(1);
        self.live = false;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.live {
            return;
        }
        // A poisoned lock means a thread panicked while holding it; the
        // counts in it are still valid integers, so release anyway.
        let mut f = match self.funds.lock() {
            Ok(f) => f,
            Err(p) => p.into_inner(),
        };
        f.reserved = f.reserved.checked_sub(self.amount).unwrap_or(Amount::ZERO);
        f.holders = f.holders.saturating_sub(1);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reservations_hold_and_release() {
        let funds: SharedFunds = Arc::new(Mutex::new(Funds {
            descending: Amount(100),
            reserved: Amount::ZERO,
            owed: Amount::ZERO,
            holders: 0,
        }));
        let a = reserve(&funds, Amount(60)).unwrap();
        assert!(matches!(
            reserve(&funds, Amount(50)),
            Err(LedgerError::InsufficientFunds {
                available: Amount(40),
                ..
            })
        ));
        let b = reserve(&funds, Amount(40)).unwrap();
        drop(a);
        assert_eq!(funds.lock().unwrap().reserved, Amount(40));
        let mut f = funds.lock().unwrap();
        b.release_locked(&mut f);
        assert_eq!(f.reserved, Amount::ZERO);
    }

    #[test]
    fn owed_funds_are_not_reservable() {
        let funds: SharedFunds = Arc::new(Mutex::new(Funds {
            descending: Amount(100),
            reserved: Amount::ZERO,
            owed: Amount(70),
            holders: 0,
        }));
        assert!(matches!(
            reserve(&funds, Amount(31)),
            Err(LedgerError::InsufficientFunds {
                available: Amount(30),
                ..
            })
        ));
        let a = reserve(&funds, Amount(30)).unwrap();
        assert!(reserve(&funds, Amount(1)).is_err());
        drop(a);
        let settle = reserve_owed(&funds, Amount(70)).unwrap();
        assert!(
            reserve_owed(&funds, Amount(31)).is_err(),
            "70 reserved, 30 left"
        );
        drop(settle);
        funds.lock().unwrap().owed = Amount(200);
        assert!(matches!(
            reserve(&funds, Amount(1)),
            Err(LedgerError::InsufficientFunds {
                available: Amount::ZERO,
                ..
            })
        ));
    }
}
