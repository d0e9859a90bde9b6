//! Admission control: funds reserved in memory before any TPM work.
//!
//! A service reserves its price before it signs anything; a reservation is
//! refused when the descending register, less what is already reserved,
//! cannot cover it. The commit thread updates the descending register and
//! releases the batch's reservations under the same lock, so there is no
//! moment where the funds are counted neither as reserved nor as spent.
//!
//! In current-account mode ([`AccountTerms`]) the meter holds no prepaid
//! funds: a request is admitted when what the period has used (ascending
//! register less its value at the period start), plus what is reserved,
//! plus its price stays within the credit limit. Such a reservation is
//! marked, and the writer books its row as credit = debit = price (AR and CT
//! rise together, DR stays put), re-checking the limit inside the
//! transaction.
//!
//! Split funds (issue 17): the postage register has its own descending
//! register and reservations; a reservation names the register it holds
//! ([`Fund`], mapped to services in combined mode), so postage never takes
//! services funds nor the reverse. Owed funds and current-account terms
//! concern the services register only.

use std::sync::{Arc, Mutex};

use super::{Fund, LedgerError, Registers, Result};
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
    /// Ascending register after the last commit.
    pub ascending: Amount,
    /// Current-account terms in force (`None`: prepaid mode).
    pub account: Option<AccountTerms>,
    /// Whether the funds are split (then the postage fields below count).
    pub split: bool,
    /// Postage descending register after the last commit (split mode).
    pub postage_descending: Amount,
    /// Sum of live postage reservations.
    pub postage_reserved: Amount,
}

impl Funds {
    /// Takes the committed registers (both pairs and the mode).
    pub fn set_registers(&mut self, r: &Registers) {
        self.descending = r.descending;
        self.ascending = r.ascending;
        self.split = r.split;
        self.postage_descending = r.postage.descending;
    }
}

/// Current-account terms: the admission check counts against a credit
/// limit per billing period instead of the descending register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountTerms {
    /// Most that may be charged in the current period.
    pub limit: Amount,
    /// Ascending register at the start of the period.
    pub baseline: Amount,
}

impl AccountTerms {
    /// Charged in the period when the ascending register is `ascending`.
    pub fn used(&self, ascending: Amount) -> Amount {
        ascending.checked_sub(self.baseline).unwrap_or(Amount::ZERO)
    }

    /// What may still be charged, less `reserved`.
    pub fn available(&self, ascending: Amount, reserved: Amount) -> Amount {
        self.limit
            .checked_sub(self.used(ascending))
            .and_then(|a| a.checked_sub(reserved))
            .unwrap_or(Amount::ZERO)
    }
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

/// Reserves `debit` against the register `fund` pays from (services in
/// combined mode). Postage in split mode is prepaid: neither owed funds nor
/// account terms touch it.
pub(crate) fn reserve_in(funds: &SharedFunds, fund: Fund, debit: Amount) -> Result<Reservation> {
    {
        let mut f = funds.lock().map_err(poisoned)?;
        if f.split && fund == Fund::Postage {
            let available = f
                .postage_descending
                .checked_sub(f.postage_reserved)
                .unwrap_or(Amount::ZERO);
            if debit > available {
                return Err(LedgerError::InsufficientFunds {
                    needed: debit,
                    available,
                    fund: Some(Fund::Postage),
                });
            }
            f.postage_reserved = f.postage_reserved.checked_add(debit)?;
            f.holders += 1;
            return Ok(Reservation {
                funds: Arc::clone(funds),
                amount: debit,
                live: true,
                account: false,
                fund: Fund::Postage,
            });
        }
    }
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
    match f.account {
        None => {
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
                    fund: f.split.then_some(Fund::Services),
                });
            }
        }
        Some(terms) => {
            let available = terms.available(f.ascending, f.reserved);
            if debit > available {
                return Err(LedgerError::CreditLimit {
                    needed: debit,
                    available,
                    limit: terms.limit,
                });
            }
        }
    }
    f.reserved = f.reserved.checked_add(debit)?;
    f.holders += 1;
    Ok(Reservation {
        funds: Arc::clone(funds),
        amount: debit,
        live: true,
        account: f.account.is_some(),
        fund: Fund::Services,
    })
}

/// Funds held for one request until it commits or gives up; released on drop.
#[derive(Debug)]
pub struct Reservation {
    funds: SharedFunds,
    amount: Amount,
    live: bool,
    account: bool,
    fund: Fund,
}

impl Reservation {
    /// Amount held.
    pub fn amount(&self) -> Amount {
        self.amount
    }

    /// Whether it was admitted against a current-account credit limit (its
    /// row is then booked as credit = debit).
    pub fn is_account(&self) -> bool {
        self.account
    }

    /// The register it holds funds in.
    pub fn fund(&self) -> Fund {
        self.fund
    }

    /// Releases the hold while the caller already holds the funds lock.
    pub(crate) fn release_locked(mut self, funds: &mut Funds) {
        release(funds, self.fund, self.amount);
        self.live = false;
    }
}

fn release(f: &mut Funds, fund: Fund, amount: Amount) {
    let held = match fund {
        Fund::Services => &mut f.reserved,
        Fund::Postage => &mut f.postage_reserved,
    };
    *held = held.checked_sub(amount).unwrap_or(Amount::ZERO);
    f.holders = f.holders.saturating_sub(1);
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
        release(&mut f, self.fund, self.amount);
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
            ..Funds::default()
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
            ..Funds::default()
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

    #[test]
    fn account_mode_counts_against_the_limit() {
        let funds: SharedFunds = Arc::new(Mutex::new(Funds {
            ascending: Amount(700),
            account: Some(AccountTerms {
                limit: Amount(500),
                baseline: Amount(400),
            }),
            ..Funds::default()
        }));
        // 300 used of 500: 200 left, whatever the descending register says.
        let a = reserve(&funds, Amount(150)).unwrap();
        assert!(a.is_account());
        assert!(matches!(
            reserve(&funds, Amount(51)),
            Err(LedgerError::CreditLimit {
                available: Amount(50),
                limit: Amount(500),
                ..
            })
        ));
        let b = reserve(&funds, Amount(50)).unwrap();
        drop(a);
        drop(b);
        assert_eq!(funds.lock().unwrap().reserved, Amount::ZERO);
        let prepaid: SharedFunds = Arc::new(Mutex::new(Funds::default()));
        assert!(matches!(
            reserve(&prepaid, Amount(1)),
            Err(LedgerError::InsufficientFunds { .. })
        ));
        assert!(!reserve(&prepaid, Amount::ZERO).unwrap().is_account());
    }
}
