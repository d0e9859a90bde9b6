//! The registers and state as `Status()` reports them: what every load
//! test compares before and after.

use std::collections::HashMap;

/// Register snapshot and state from `Status()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registers {
    /// Ascending register.
    pub ar: u64,
    /// Descending register.
    pub dr: u64,
    /// Control total.
    pub ct: u64,
    /// `ready`, `locked`, ...
    pub state: String,
    /// Why locked, empty otherwise.
    pub lock_reason: String,
    /// Price per rate-table key.
    pub rates: HashMap<String, u64>,
    /// The postage pair (AR, DR, CT) of a split meter (issue 17): the
    /// `postage_*` Status keys; zeros in combined mode.
    pub postage: (u64, u64, u64),
}

impl Registers {
    /// AR + DR = CT (checked, no overflow).
    pub fn balanced(&self) -> bool {
        self.ar.checked_add(self.dr) == Some(self.ct)
    }

    /// What the meter has charged in all: both ascending registers (the
    /// services pair and, on a split meter, the postage pair).
    pub fn paid(&self) -> u64 {
        self.ar.saturating_add(self.postage.0)
    }

    /// Both pairs' (AR, DR): what a refused or locked call must not move.
    pub fn pairs(&self) -> (u64, u64, u64, u64) {
        (self.ar, self.dr, self.postage.0, self.postage.1)
    }

    /// AR + DR = CT for the postage pair (checked, no overflow).
    pub fn postage_balanced(&self) -> bool {
        let (ar, dr, ct) = self.postage;
        ar.checked_add(dr) == Some(ct)
    }
}
