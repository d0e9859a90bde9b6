//! The walk: rows that bring value or authority from outside, in seq
//! order, judged against what is in force at each (anchors, lock, account,
//! what was already used), and the state each leaves behind.
//!
//! The checks of each kind of row live beside this file (`authority`:
//! provisioning, trust anchors, rate tables, certificates; `funds`:
//! vouchers, revocation fees, credit lines; `orders`: locks, clear orders,
//! acknowledgements, account orders); this file holds the state they share,
//! the dispatch, the rule on money, and the findings.

use std::collections::{BTreeMap, HashMap, HashSet};

use meter_pki::cert::Certificate;

use super::{Finding, Summary};
use crate::ledger::{EntryKind, FilteredRow, SPLIT_NOTE};
use crate::service::Service;

/// The lock in force, as the Lock row that engaged it says.
#[derive(Debug, Clone)]
pub(super) struct Lock {
    pub reason: String,
    pub nonce: String,
}

/// A line of credit's registers as its rows leave them.
#[derive(Debug, Clone)]
pub(super) struct Line {
    pub remaining: u64,
    pub next_sequence: u64,
    pub digest_hex: String,
}

/// The account order in force: its row and issue time.
#[derive(Debug, Clone, Copy)]
pub(super) struct AccountInForce {
    pub seq: u64,
    pub issued_at: i64,
}

/// The state of a walk and what it found. Feed it every row
/// [`super::filter`] selects, in seq order, with [`Walk::row`]; then
/// [`Walk::finish`].
#[derive(Debug)]
pub struct Walk {
    pub(super) meter_id: String,
    verify_after: u64,
    /// Meter and postmark certificates of the provisioning in force.
    pub(super) certs: Option<(Certificate, Certificate)>,
    /// Trust anchors in force, as far as the walk verified them: every
    /// signature is checked against these.
    pub(super) anchors: Vec<Certificate>,
    /// The anchors the meter loaded from a Provision row that did not check
    /// out (see [`Walk::forgive`]).
    pub(super) unverified_anchors: Option<Vec<Certificate>>,
    pub(super) lock: Option<Lock>,
    pub(super) lock_nonces: HashSet<String>,
    pub(super) vouchers: HashSet<u64>,
    pub(super) rates_version: u32,
    pub(super) account: Option<AccountInForce>,
    pub(super) account_nonces: HashSet<String>,
    /// Sequence of the last acknowledged report.
    pub(super) acked: u64,
    /// Products of the reports not acknowledged yet, by sequence.
    pub(super) reports: BTreeMap<u64, Vec<u8>>,
    pub(super) report_count: u64,
    pub(super) revoke_orders: HashSet<String>,
    /// Revocation fees due, by their row: (amount, settled).
    pub(super) dues: HashMap<u64, (u64, bool)>,
    pub(super) lines: HashMap<String, Line>,
    /// Whether a split row was judged: from the row after it, a postage
    /// voucher funds the postage pair.
    pub(super) split: bool,
    /// Signatures verified so far.
    pub(super) verified: u64,
    rows: u64,
    damage: Option<Finding>,
    forgiven: u64,
}

/// What a check of one row concluded, besides its state changes.
pub(super) type Judged = Result<(), String>;

impl Walk {
    /// A walk of the ledger of `meter_id` that verifies signatures on rows
    /// after `verify_after` (rows up to it were verified by the audit that
    /// signed the checkpoint there; they are still decoded and checked for
    /// everything else, as they make the state later rows are judged by).
    pub fn new(meter_id: &str, verify_after: u64) -> Walk {
        Walk {
            meter_id: meter_id.to_owned(),
            verify_after,
            certs: None,
            anchors: Vec::new(),
            unverified_anchors: None,
            lock: None,
            lock_nonces: HashSet::new(),
            vouchers: HashSet::new(),
            rates_version: 0,
            account: None,
            account_nonces: HashSet::new(),
            acked: 0,
            reports: BTreeMap::new(),
            report_count: 0,
            revoke_orders: HashSet::new(),
            dues: HashMap::new(),
            lines: HashMap::new(),
            split: false,
            verified: 0,
            rows: 0,
            damage: None,
            forgiven: 0,
        }
    }

    /// Judges one row and moves the state past it. A row that does not
    /// check out is recorded (the first one not forgiven is the finding);
    /// its effects on the state are still taken as the ledger takes them
    /// (an Unlock row clears the lock whatever it carries).
    pub fn row(&mut self, r: &FilteredRow) {
        self.rows += 1;
        let verify = r.seq > self.verify_after;
        if let Err(detail) = self.judge(r, verify) {
            if self.damage.is_none() {
                self.damage = Some(Finding { seq: r.seq, detail });
            }
        }
    }

    /// What the walk found.
    pub fn finish(self) -> Summary {
        Summary {
            rows: self.rows,
            verified: self.verified,
            forgiven: self.forgiven,
            finding: self.damage,
            ..Summary::default()
        }
    }

    /// A verified `reanchor` (the authority cleared a `tamper` lock: it
    /// accepts the ledger as it stands) forgives what came before it,
    /// trust anchors the meter loaded included. Only an order verified with
    /// the anchors the walk verified forgives: an anchor planted by a
    /// forged row cannot sign its own pardon.
    pub(super) fn forgive(&mut self) {
        if self.damage.take().is_some() {
            self.forgiven += 1;
        }
        if let Some(anchors) = self.unverified_anchors.take() {
            self.anchors = anchors;
        }
    }

    /// Counts a verified signature when `verify`.
    pub(super) fn count(&mut self, verify: bool) {
        if verify {
            self.verified += 1;
        }
    }

    fn judge(&mut self, r: &FilteredRow, verify: bool) -> Judged {
        let kind = kind_of(r.kind);
        if !r.product_matches {
            // The products table is not chained: only the digest in the
            // row is. A product swapped behind the chain's back would be
            // read by every loader.
            return Err("its stored product is not the one the chain holds".into());
        }
        money(r, kind, self.account.is_some())?;
        let service = Service::from_code(r.service);
        match kind {
            Some(EntryKind::Provision) => self.provision(r, verify),
            Some(EntryKind::Rates) => self.rates(r, verify),
            Some(EntryKind::Credit) => self.voucher(r, verify),
            Some(EntryKind::Lock) => self.lock_row(r, verify),
            Some(EntryKind::Unlock) => self.unlock(r, verify),
            Some(EntryKind::Event) => match r.note.as_str() {
                super::NOTE_ACCOUNT_ORDER => self.account_order(r, verify),
                super::NOTE_REPORT_ACK => self.ack(r, verify, None),
                super::NOTE_AGENT_CA => self.agent_ca(r, verify),
                super::NOTE_POSTAL_KEY => self.postal_key(r, verify),
                SPLIT_NOTE => self.funds_split(r, verify),
                // Here only because it moves money, which `money` refused.
                _ => Ok(()),
            },
            Some(EntryKind::Debit) => match service {
                Some(Service::Revoke) => self.revoke(r, verify),
                Some(Service::CreditLine) => self.open_line(r, verify),
                Some(Service::PaymentCertificate) => self.pay(r),
                Some(Service::StatusReport) => self.report(r),
                Some(Service::CertificateInstall) => self.cert_install(r, verify),
                None if r.note == super::NOTE_REVOKE_SETTLE => self.settle(r),
                // A sale here for its booked credit (current account).
                _ => Ok(()),
            },
            _ => Err(format!(
                "kind {} is not a kind this meter writes here",
                r.kind
            )),
        }
    }
}

/// The rule on money: funds come in only on a voucher's Credit row (whose
/// check ties the amount to the signed voucher) and, in current-account
/// mode, as a charge booked credit = debit on a Debit row; only Debit rows
/// debit.
fn money(r: &FilteredRow, kind: Option<EntryKind>, account: bool) -> Judged {
    if r.credit != 0 {
        let booked = kind == Some(EntryKind::Debit) && r.credit == r.debit && account;
        if kind != Some(EntryKind::Credit) && !booked {
            return Err(format!(
                "a {} row credits {}: funds come in only with a voucher (or, in \
                 current-account mode, as a charge booked credit = debit)",
                kind_name(kind),
                r.credit
            ));
        }
    }
    if r.debit != 0 && kind != Some(EntryKind::Debit) {
        return Err(format!(
            "a {} row debits {}: only sales debit",
            kind_name(kind),
            r.debit
        ));
    }
    Ok(())
}

/// The kind of a row from its code.
fn kind_of(code: u8) -> Option<EntryKind> {
    use EntryKind::*;
    [
        Genesis, Provision, Rates, Credit, Debit, Lock, Unlock, Event,
    ]
    .into_iter()
    .find(|k| *k as u8 == code)
}

fn kind_name(kind: Option<EntryKind>) -> String {
    kind.map_or_else(|| "row of unknown kind".into(), |k| format!("{k:?}"))
}

/// The product a row must carry.
pub(super) fn product(r: &FilteredRow) -> Result<&[u8], String> {
    r.product
        .as_deref()
        .ok_or_else(|| "it has no stored product".to_string())
}

/// The row's time in Unix seconds (what signed objects are verified at).
pub(super) fn at(r: &FilteredRow) -> i64 {
    r.time_ms.div_euclid(1000)
}
