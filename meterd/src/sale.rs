//! The one path every recorded operation takes: sales (postmark, validate,
//! sign, postage, pay, credit line, certificates, agent certificates,
//! reports, revocations) and the meter's own records (vouchers, orders,
//! acknowledgements, settlements).
//!
//! A service describes its operation as a [`Spec`] — what row it makes,
//! under which [`Key`], guarded how, priced how — and hands [`sell`] the
//! work. The walk is the same for all, in this order, each step answering
//! one threat:
//!
//! 1. **Provisioned**: identity and ledger exist.
//! 2. **Key**: a key already in the ledger returns the stored product when
//!    the row is the same operation with the same input (a retry after a
//!    crash or a lost reply: nothing is charged again, whatever the funds or
//!    the lock now); the same key with other input is [`ServiceError::Conflict`].
//!    Keys are scoped ([`Key`]): a caller cannot name the meter's own keys
//!    nor another caller's.
//! 3. **Guard**: a sale needs an unlocked meter, an open billing period and
//!    a sane clock (checked against the monotonic clock at every sale, so a
//!    clock set back is caught at the next sale, not at the next tick; a
//!    bad clock locks the meter). Records the authority orders take place
//!    whatever the lock.
//! 4. **Price** from the table in force at the checked time; an unpriced
//!    service is refused ([`ServiceError::Unpriced`]) unless the spec says
//!    it is free then (reports, revocations).
//! 5. **Reserve** the price before any TPM work, so a request the funds
//!    cannot cover is refused before anything is made (claims 3, 18). A
//!    revocation fee the funds cannot cover is held as owed instead
//!    ([`Price::RateOrDue`]): the key is destroyed now, the fee collected at
//!    the next recharge.
//! 6. **Work**: the product (TPM signatures); or a [`Finisher`] that makes
//!    it inside the commit from the row's own registers (postage).
//! 7. **Commit** the row with its product; only then does the product
//!    leave. The ledger re-checks funds and the key inside its transaction.
//!
//! Checks that need no TPM and no ledger (argument syntax, a certificate's
//! state) are the service's own, before it calls [`sell`]; anything a
//! service must serialize (a credit line's gate) it holds around the call.

use std::sync::Arc;

use crate::clock;
use crate::error::{Result, ServiceError};
use crate::identity::Identity;
use crate::ledger::{Digest, Entry, EntryKind, Finisher, Fund, Key, Ledger, Outcome, Stored};
use crate::meter::Meter;
use crate::money::Amount;
use crate::service::Service;
use crate::tariff::RateBook;

/// What must hold before the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Unlocked, billing period open, clock sane: every sale. A clock found
    /// set back locks the meter here, which takes the regime's mutex: the
    /// caller must not hold it.
    Selling,
    /// Provisioned, whatever the lock: the authority's business (orders,
    /// acknowledgements, settlements, revocations, vouchers) and status
    /// reports (a locked meter must report its way out of an inspection
    /// lock). Never takes the regime's mutex, so a caller holding it may
    /// record; the time is never earlier than the last row.
    Recording,
}

/// Prices a piece from the rate book at the sale's time (postage prices by
/// class and weight, not by service).
pub type Quote = Arc<dyn Fn(&RateBook, i64) -> Result<Amount> + Send + Sync>;

/// How the operation is priced.
#[derive(Clone)]
pub enum Price {
    /// Nothing to pay (records, credits).
    Free,
    /// The table's rate for the service; unpriced is refused.
    Rate(Service),
    /// The table's rate, but nothing while the meter is locked or when the
    /// table does not price it (status reports).
    RateUnlessLocked(Service),
    /// The table's rate (nothing when unpriced); when the funds cannot cover
    /// it the operation still happens, debits nothing and the fee is held
    /// as owed ([`Sale::due`]; revocation, Fig. 6, 618–620).
    RateOrDue(Service),
    /// The funds must cover the rate, but nothing is charged now (a
    /// certificate request: Fig. 5 checks the funds before the key is made;
    /// the install charges).
    Afford(Service),
    /// Quoted from the rate book in force at the sale's time.
    Quoted(Quote),
    /// What the meter owes (a revocation fee due): reserved against the
    /// funds less live reservations, not less the owed hold, which exists
    /// for it.
    Owed(Amount),
}

impl std::fmt::Debug for Price {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Price::Free => f.write_str("Free"),
            Price::Rate(s) => write!(f, "Rate({s})"),
            Price::RateUnlessLocked(s) => write!(f, "RateUnlessLocked({s})"),
            Price::RateOrDue(s) => write!(f, "RateOrDue({s})"),
            Price::Afford(s) => write!(f, "Afford({s})"),
            Price::Quoted(_) => f.write_str("Quoted"),
            Price::Owed(a) => write!(f, "Owed({a})"),
        }
    }
}

/// One operation as the pipeline sees it.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Row kind (Debit for sales).
    pub kind: EntryKind,
    /// Service counted (a piece), if any.
    pub service: Option<Service>,
    /// Idempotency key (`None`: every call is new, e.g. Validate).
    pub key: Option<Key>,
    /// Digest of the input, domain-separated by operation.
    pub input: Digest,
    /// What must hold first.
    pub guard: Guard,
    /// How it is priced.
    pub price: Price,
    /// Funds brought in (vouchers).
    pub credit: Amount,
    /// Row note (at most 64 bytes).
    pub note: String,
    /// Register the row pays from or credits (split mode; services in
    /// combined mode): postage for postage sales, services for the rest,
    /// a voucher's own register for its credit.
    pub fund: Fund,
    /// The work makes nothing before the commit (its product is a
    /// [`Finisher`]'s), so a key already in the ledger is caught by the
    /// commit itself, before any TPM work: step 2 is skipped and made only
    /// if step 3, 4 or 5 refuses ([`Spec::keyed_at_commit`]).
    pub key_at_commit: bool,
}

impl Spec {
    /// A sale of one piece of `service` at its rate: the common case.
    pub fn sale(service: Service, key: Option<Key>, input: Digest) -> Spec {
        Spec {
            kind: EntryKind::Debit,
            service: Some(service),
            key,
            input,
            guard: Guard::Selling,
            price: Price::Rate(service),
            credit: Amount::ZERO,
            note: String::new(),
            fund: Fund::of_service(Some(service)),
            key_at_commit: false,
        }
    }

    /// A record of `kind` that moves no money, whatever the lock.
    pub fn record(kind: EntryKind, key: Key, input: Digest, note: impl Into<String>) -> Spec {
        Spec {
            kind,
            service: None,
            key: Some(key),
            input,
            guard: Guard::Recording,
            price: Price::Free,
            credit: Amount::ZERO,
            note: note.into(),
            fund: Fund::Services,
            key_at_commit: false,
        }
    }

    /// With a note on the row.
    pub fn noted(mut self, note: impl Into<String>) -> Spec {
        self.note = note.into();
        self
    }

    /// With another price.
    pub fn priced(mut self, price: Price) -> Spec {
        self.price = price;
        self
    }

    /// Its work only returns a [`Made::AtCommit`] finisher: the retry check
    /// moves into the commit (the ledger answers a key it holds with the
    /// stored product, or a conflict, before the finisher runs), which
    /// spares a lone sale a read of the ledger on another thread (issue 14).
    /// A retry that step 3, 4 or 5 would refuse (the meter locked since,
    /// the funds spent, the rate withdrawn) is still looked up then and
    /// gets its stored product. While a retry waits for its batch it holds
    /// a reservation of its price, released when the ledger answers.
    pub fn keyed_at_commit(mut self) -> Spec {
        self.key_at_commit = true;
        self
    }

    /// With another guard.
    pub fn guarded(mut self, guard: Guard) -> Spec {
        self.guard = guard;
        self
    }

    /// Whether a stored row is this very operation (a retry).
    fn same(&self, s: &Stored) -> bool {
        s.kind == self.kind && s.service == self.service && s.input_digest == self.input
    }

    /// Whether a stored row is one this spec could have written at all; a
    /// meter key found in its schema-1 form under another kind of row is an
    /// old caller's row that happened to use the same text.
    fn could_be(&self, s: &Stored) -> bool {
        s.kind == self.kind && s.service == self.service
    }
}

/// What the work of a fresh sale is given.
pub struct Sale {
    /// The meter's identity (certificates, anchors).
    pub identity: Arc<Identity>,
    /// The ledger the row goes to.
    pub ledger: Ledger,
    /// Time of the sale (Unix ms): checked against the monotonic clock and
    /// never earlier than the ledger's last row. Products carry this time.
    pub now_ms: i64,
    /// The price being charged (or, when [`Sale::due`], owed).
    pub price: Amount,
    /// The funds could not cover a [`Price::RateOrDue`] fee: nothing is
    /// debited and `price` is held as owed.
    pub due: bool,
    /// The rate book the price came from (the work quotes from it again,
    /// never from a table installed meanwhile).
    pub rates: Arc<RateBook>,
}

impl Sale {
    /// Time of the sale, Unix seconds.
    pub fn now(&self) -> i64 {
        self.now_ms.div_euclid(1000)
    }
}

/// What the work makes.
pub enum Made {
    /// The product, ready.
    Product(Vec<u8>),
    /// The product, and the row's note decided by the work (a revocation
    /// paid or due).
    Noted(Vec<u8>, String),
    /// The product is made inside the commit from the row's own sequence,
    /// time and registers (a postage indicium).
    AtCommit(Finisher),
}

/// The result of [`sell`].
#[derive(Debug, Clone)]
pub struct Sold {
    /// The product delivered.
    pub product: Vec<u8>,
    /// Its row.
    pub seq: u64,
    /// Made now (`false`: the stored product of an earlier call with this key).
    pub fresh: bool,
    /// Nothing was debited; the price is owed ([`Price::RateOrDue`]).
    pub due: bool,
    /// Amount debited.
    pub charged: Amount,
}

/// Runs `spec` through the pipeline (see the module doc) with `work` as
/// step 6.
pub async fn sell<W>(meter: &Meter, spec: Spec, work: W) -> Result<Sold>
where
    W: AsyncFnOnce(&Sale) -> Result<Made>,
{
    let (identity, ledger) = meter.provisioned()?;
    if !spec.key_at_commit {
        if let Some(stored) = found(&ledger, &spec).await? {
            return Ok(stored);
        }
    }
    let Priced {
        now_ms,
        rates,
        price,
        reservation,
        due,
        charge,
    } = match priced(meter, &ledger, &spec).await {
        Ok(p) => p,
        // A retry of a sale keyed at commit: its stored product, whatever
        // refuses a new sale now.
        Err(refused) if spec.key_at_commit => match found(&ledger, &spec).await? {
            Some(stored) => return Ok(stored),
            None => return Err(refused),
        },
        Err(refused) => return Err(refused),
    };
    let sale = Sale {
        identity,
        ledger: ledger.clone(),
        now_ms,
        price,
        due,
        rates,
    };
    let made = work(&sale).await?;
    let debit = if charge { price } else { Amount::ZERO };
    let entry = Entry {
        kind: spec.kind,
        service: spec.service,
        key: spec.key.clone(),
        input_digest: spec.input,
        credit: spec.credit,
        debit,
        product: Vec::new(),
        note: spec.note,
        fund: spec.fund,
    };
    if due {
        // Held before the row exists, so no sale slips in between; the
        // service recomputes the hold from the ledger after the commit.
        ledger.hold_owed(price)?;
    }
    let committed = match made {
        Made::Product(product) => commit(&ledger, Entry { product, ..entry }, reservation).await,
        Made::Noted(product, note) => {
            commit(
                &ledger,
                Entry {
                    product,
                    note,
                    ..entry
                },
                reservation,
            )
            .await
        }
        Made::AtCommit(finish) => ledger
            .commit_finishing(entry, reservation, finish)
            .await
            .map(|(o, p)| (o, Some(p))),
    };
    let (outcome, product) = match committed {
        Ok(c) => c,
        Err(e) => {
            if due {
                ledger.release_owed(price)?;
            }
            return Err(e.into());
        }
    };
    match outcome {
        Outcome::Committed { seq, registers } => {
            // The journal's line per sale (one, formatted only if emitted):
            // the key names the caller's uid and request id.
            tracing::info!(
                seq,
                service = spec.service.map(|s| s.name()).unwrap_or("-"),
                kind = ?spec.kind,
                key = %ShownKey(spec.key.as_ref()),
                price_minor = debit.0,
                ascending_minor = registers.ascending.0,
                descending_minor = registers.descending.0,
                "sold"
            );
            Ok(Sold {
                product: product.unwrap_or_default(),
                seq,
                fresh: true,
                due,
                charged: debit,
            })
        }
        // A concurrent call with the same key and input committed first.
        Outcome::Existing { seq, product } => {
            if due {
                ledger.release_owed(price)?;
            }
            Ok(Sold {
                product,
                seq,
                fresh: false,
                due: false,
                charged: Amount::ZERO,
            })
        }
    }
}

/// Steps 3 to 5: what a fresh sale is charged, and its funds held.
struct Priced {
    now_ms: i64,
    rates: Arc<RateBook>,
    price: Amount,
    reservation: Option<crate::ledger::Reservation>,
    due: bool,
    charge: bool,
}

/// Steps 3 (guard, time), 4 (price) and 5 (reserve).
async fn priced(meter: &Meter, ledger: &Ledger, spec: &Spec) -> Result<Priced> {
    let now_ms = checked_time(meter, ledger, spec.guard).await?;
    let now = now_ms.div_euclid(1000);
    let rates = meter.rates();
    let locked = ledger.state().lock.is_some();
    let price = match &spec.price {
        Price::Free => Amount::ZERO,
        Price::Rate(s) | Price::Afford(s) => rates.price(*s, now)?,
        Price::RateUnlessLocked(_) if locked => Amount::ZERO,
        Price::RateUnlessLocked(s) | Price::RateOrDue(s) => match rates.price(*s, now) {
            Ok(a) => a,
            Err(ServiceError::Unpriced { .. }) => Amount::ZERO,
            Err(e) => return Err(e),
        },
        Price::Quoted(q) => q(&rates, now)?,
        Price::Owed(a) => *a,
    };
    let reserved = match spec.price {
        Price::Owed(_) => ledger.reserve_owed(price),
        _ => ledger.reserve_in(spec.fund, price),
    };
    let (mut reservation, due) = match reserved {
        Ok(r) => (Some(r), false),
        Err(
            crate::ledger::LedgerError::InsufficientFunds { .. }
            | crate::ledger::LedgerError::CreditLimit { .. },
        ) if matches!(spec.price, Price::RateOrDue(_)) => (None, true),
        Err(e) => return Err(e.into()),
    };
    let charge = !due && !matches!(spec.price, Price::Afford(_));
    if !charge {
        // Afforded, not charged: the funds were there; release them now.
        reservation = None;
    }
    Ok(Priced {
        now_ms,
        rates,
        price,
        reservation,
        due,
        charge,
    })
}

/// A row's key in a log line (`c/UID/REQUEST-ID`), `-` when it has none;
/// formatted only when the line is emitted.
struct ShownKey<'a>(Option<&'a Key>);

impl std::fmt::Display for ShownKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(k) => k.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Records `product` (a signed object from the authority: a voucher, an
/// order, an acknowledgement, a table) once under `spec`'s key: a second
/// application of the same object, or another object under the same key,
/// is refused with `refused()` (Replay or Stale, as the object's kind says).
pub async fn record_once(
    meter: &Meter,
    spec: Spec,
    product: Vec<u8>,
    refused: impl FnOnce() -> ServiceError,
) -> Result<Sold> {
    match sell(meter, spec, async move |_: &Sale| {
        Ok(Made::Product(product))
    })
    .await
    {
        Ok(sold) if sold.fresh => Ok(sold),
        Ok(_) | Err(ServiceError::Conflict { .. }) => Err(refused()),
        Err(e) => Err(e),
    }
}

async fn commit(
    ledger: &Ledger,
    entry: Entry,
    reservation: Option<crate::ledger::Reservation>,
) -> std::result::Result<(Outcome, Option<Vec<u8>>), crate::ledger::LedgerError> {
    let kept = entry.product.clone();
    ledger
        .commit(entry, reservation)
        .await
        .map(|o| (o, Some(kept)))
}

/// Step 2: the stored product of a retry, a conflict, or nothing (also
/// nothing for a spec without a key).
async fn found(ledger: &Ledger, spec: &Spec) -> Result<Option<Sold>> {
    let Some(key) = &spec.key else {
        return Ok(None);
    };
    let Some(stored) = ledger.lookup(key).await? else {
        return Ok(None);
    };
    if spec.same(&stored) {
        return Ok(Some(Sold {
            product: stored.product,
            seq: stored.seq,
            fresh: false,
            due: false,
            charged: Amount::ZERO,
        }));
    }
    if matches!(key, Key::Meter { .. }) && !spec.could_be(&stored) {
        // A schema-1 row of another kind under the same text: not ours.
        return Ok(None);
    }
    Err(ServiceError::Conflict { id: key.shown() })
}

/// Step 3: the guard and the time of the sale.
async fn checked_time(meter: &Meter, ledger: &Ledger, guard: Guard) -> Result<i64> {
    let last = ledger.state().time_ms;
    if guard == Guard::Recording {
        return Ok(clock::now_millis().max(last));
    }
    if let Some(refusal) = meter.refusal(ledger, clock::now()) {
        return Err(refusal);
    }
    let now_ms = match meter.regime().check_clock(last) {
        Ok(t) => t,
        Err(judgement) => {
            tracing::error!(?judgement, "the clock went backwards: locking");
            meter
                .regime()
                .engage(ledger, meter_proto::lock_reason::CLOCK)
                .await?;
            return Err(ServiceError::Locked {
                reason: meter_proto::lock_reason::CLOCK.into(),
            });
        }
    };
    match meter.refusal(ledger, now_ms.div_euclid(1000)) {
        Some(refusal) => Err(refusal),
        None => Ok(now_ms),
    }
}
