//! The meter's register pairs (issue 17 item 3): the postage pair (the patent's
//! register 244) beside the services pair (its certificate register 250), and the
//! mode that says whether they are apart. Kept apart from `mod.rs` so the ledger's
//! entry types and its register arithmetic each stay readable; docs/REGISTERS.md.

use crate::money::Amount;
use crate::service::Service;

/// A register pair of the ledger (issue 17 item 3, the patent's postage
/// register 244 beside the certificate register 250): which one a row moves
/// is [`Entry::fund`], mapped to [`Fund::Services`] while the meter is not
/// split (combined mode: one pool pays everything, as every ledger did
/// before the split order existed). See docs/REGISTERS.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Fund {
    /// Every service but postage; in combined mode, everything.
    #[default]
    Services = 0,
    /// Postage (indicia), once the meter is split.
    Postage = 1,
}

impl Fund {
    /// Its register id in the row ([`meter_pki::ledger_format::register`]).
    pub fn id(self) -> u8 {
        self as u8
    }

    /// From a register id.
    pub fn from_id(id: u8) -> Option<Fund> {
        match id {
            0 => Some(Fund::Services),
            1 => Some(Fund::Postage),
            _ => None,
        }
    }

    /// Its name (`services`, `postage`), as vouchers, Status and errors say it.
    pub fn name(self) -> &'static str {
        match self {
            Fund::Services => "services",
            Fund::Postage => "postage",
        }
    }

    /// From its name.
    pub fn from_name(name: &str) -> Option<Fund> {
        match name {
            "services" => Some(Fund::Services),
            "postage" => Some(Fund::Postage),
            _ => None,
        }
    }

    /// The register a service is paid from once the meter is split.
    pub fn of_service(service: Option<Service>) -> Fund {
        match service {
            Some(Service::Postage) => Fund::Postage,
            _ => Fund::Services,
        }
    }
}

/// Note of the Event row that splits the funds (an authority order applied,
/// `crate::funds`): from the row after it on, postage is paid from the
/// postage register only. There is no way back.
pub const SPLIT_NOTE: &str = "funds-split";

/// One register pair (ascending, descending, control total) and its piece
/// count: what a row of that register stores in its register columns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pair {
    /// Total ever used from it.
    pub ascending: Amount,
    /// Funds available in it.
    pub descending: Amount,
    /// Total ever credited to it; always `ascending + descending`.
    pub control_total: Amount,
    /// Chargeable pieces ever paid from it.
    pub pieces: u64,
}

/// Funds registers and piece counts after a row.
///
/// `ascending`, `descending`, `control_total` and `pieces` are the services
/// register: in combined mode (`split` false) the one pool that pays
/// everything, as on every ledger before issue 17. `postage` is the postage
/// register, zero until the split.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registers {
    /// Total ever used (services register).
    pub ascending: Amount,
    /// Funds available (services register).
    pub descending: Amount,
    /// Total ever credited (services register); always `ascending + descending`.
    pub control_total: Amount,
    /// Chargeable pieces ever sold from the services register (all
    /// services in combined mode).
    pub pieces: u64,
    /// Pieces per service, indexed by [`Service::index`].
    pub per_service: [u64; Service::ALL.len()],
    /// The postage register (split mode).
    pub postage: Pair,
    /// Whether the funds are split (a [`SPLIT_NOTE`] row is in the ledger).
    pub split: bool,
}

impl Registers {
    /// The pair `fund` moves, as the mode maps it (services in combined mode).
    pub fn fund_of(&self, fund: Fund) -> Fund {
        if self.split {
            fund
        } else {
            Fund::Services
        }
    }

    /// One pair.
    pub fn pair(&self, fund: Fund) -> Pair {
        match fund {
            Fund::Services => Pair {
                ascending: self.ascending,
                descending: self.descending,
                control_total: self.control_total,
                pieces: self.pieces,
            },
            Fund::Postage => self.postage,
        }
    }

    /// Replaces one pair.
    pub fn set_pair(&mut self, fund: Fund, p: Pair) {
        match fund {
            Fund::Services => {
                self.ascending = p.ascending;
                self.descending = p.descending;
                self.control_total = p.control_total;
                self.pieces = p.pieces;
            }
            Fund::Postage => self.postage = p,
        }
    }

    /// The pair that pays for `service` (or takes a credit to `fund`) in
    /// the mode in force: what an indicium states, what a refusal names.
    pub fn paying(&self, fund: Fund) -> Pair {
        self.pair(self.fund_of(fund))
    }
}
