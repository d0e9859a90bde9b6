//! Errors of the service layer, one kind per named D-Bus error.
//!
//! Services return [`ServiceError`]; the bus module maps each variant to the
//! matching `org.meterd.Meter1.Error.*` name. Housing and storage failures
//! keep their cause for the log while the caller gets a message to act on.

use crate::housing::HousingError;
use crate::ledger::{fund_word, Fund, LedgerError};
use crate::money::Amount;

/// Why a service call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The funds cannot cover the charge.
    #[error("{}", funds_text(.fund, &minor(.needed), &minor(.available)))]
    InsufficientFunds {
        /// Price of the service.
        needed: Amount,
        /// Funds available.
        available: Amount,
        /// The register that refused (split mode; `None`: the one pool).
        fund: Option<Fund>,
    },
    /// Current-account mode: the charge would pass the period's credit limit.
    #[error("{}", limit_text(&minor(.needed), &minor(.available), &minor(.limit)))]
    CreditLimit {
        /// Price of the service.
        needed: Amount,
        /// Left in the period.
        available: Amount,
        /// Credit limit per period.
        limit: Amount,
    },
    /// The line of credit cannot cover the payment.
    #[error("{}", credit_text(.serial, &minor(.needed), &minor(.remaining)))]
    InsufficientCredit {
        /// Line serial.
        serial: String,
        /// Payment asked.
        needed: Amount,
        /// Credit remaining (less payments in flight).
        remaining: Amount,
    },
    /// The meter is locked.
    #[error("meter locked ({reason}): it sells nothing until the authority clears the lock (meter-authority clear-lock --meter ID --nonce NONCE, then meterctl clear-lock ORDER)")]
    Locked {
        /// Lock reason.
        reason: String,
    },
    /// Not provisioned (or no rate table).
    #[error("{0}")]
    NotProvisioned(String),
    /// The caller may not do this.
    #[error("{0}")]
    AccessDenied(String),
    /// Bad argument.
    #[error("{0}")]
    InvalidInput(String),
    /// The request key was used before with different input.
    #[error("request id {id:?} was already used with different input; choose a new request id")]
    Conflict {
        /// The id as the caller gave it (or the meter's own key).
        id: String,
    },
    /// The rate table in force does not price the service.
    #[error("service {service} has no rate in table version {version}; the authority must issue a table that prices it")]
    Unpriced {
        /// The service.
        service: crate::service::Service,
        /// Version of the table in force.
        version: u32,
    },
    /// A signed object does not verify.
    #[error("{0}")]
    BadSignature(String),
    /// An envelope is not addressed to the certificate, or does not decrypt
    /// (a key unwrap or padding check failed): altered, or for someone else.
    #[error("{0}")]
    NotDecryptable(String),
    /// A single-use object was used before.
    #[error("{0}")]
    Replay(String),
    /// An object older than the one in force.
    #[error("{0}")]
    Stale(String),
    /// The TPM failed.
    #[error("the TPM failed: {0}{hint}", hint = housing_hint(.0))]
    Housing(#[from] HousingError),
    /// The ledger failed.
    #[error("the ledger could not be written: {0}; check the state directory (space, permissions), then retry")]
    Storage(String),
    /// Too many calls in flight from this caller, or the meter is stopping.
    #[error("{0}")]
    Busy(String),
    /// The message was not read within the configured time.
    #[error("{0}")]
    TimedOut(String),
    /// The caller left the bus (or the meter is stopping) before the call
    /// was done; nobody waits for a reply.
    #[error("the call was cancelled: the caller left the bus before it was done")]
    Cancelled,
    /// A fault on the meter's side (a task that died, an unexpected system error).
    #[error("internal error in meterd: {0}; see the meter's log")]
    Internal(String),
}

impl ServiceError {
    /// The message for a person: amounts in the currency (`0.500 USD`), not
    /// the minor units of [`std::fmt::Display`]. Every path from a refusal
    /// to a person goes through here (the bus door, `TimeStamp`'s
    /// statusString); Display names its unit (`500 minor units`) so that a
    /// raw figure is never mistaken for money.
    pub fn message_in(&self, digits: u8, currency: &str) -> String {
        let m = |a: &Amount| a.shown(digits, currency);
        match self {
            ServiceError::InsufficientFunds {
                needed,
                available,
                fund,
            } => funds_text(fund, &m(needed), &m(available)),
            ServiceError::CreditLimit {
                needed,
                available,
                limit,
            } => limit_text(&m(needed), &m(available), &m(limit)),
            ServiceError::InsufficientCredit {
                serial,
                needed,
                remaining,
            } => credit_text(serial, &m(needed), &m(remaining)),
            other => other.to_string(),
        }
    }
}

/// An amount where no currency is at hand: its unit named.
fn minor(a: &Amount) -> String {
    format!("{a} minor units")
}

fn funds_text(fund: &Option<Fund>, needed: &str, available: &str) -> String {
    let (word, voucher) = match fund {
        Some(f) => (fund_word(fund), format!(" for the {} register", f.name())),
        None => (String::new(), String::new()),
    };
    format!("insufficient {word}funds: the charge is {needed}, {available} available; recharge with an authority voucher{voucher} (meterctl recharge)")
}

fn limit_text(needed: &str, available: &str, limit: &str) -> String {
    format!("credit limit reached: the charge is {needed}, {available} left of the credit limit {limit} for this billing period; wait for the next period (send the report: meterctl report) or ask the authority for a higher limit")
}

fn credit_text(serial: &str, needed: &str, remaining: &str) -> String {
    format!("insufficient credit on line {serial}: the payment is {needed}, {remaining} remaining; ask the creditor for a new line (meterctl credit request)")
}

/// Result of a service call.
pub type Result<T> = std::result::Result<T, ServiceError>;

/// What to check after a housing error. A refused authorization is no
/// reachability problem: its message already names the password or secret.
fn housing_hint(e: &HousingError) -> &'static str {
    match e {
        HousingError::Tpm { message, .. }
            if message.starts_with("BadAuth") || message.starts_with("AuthFail") =>
        {
            ""
        }
        // Only DA-protected objects are refused in lockout, and meterd's are
        // all noDA: another program's failed authorizations caused it.
        HousingError::Tpm { message, .. } if message.starts_with("Lockout") => {
            "; the TPM is in dictionary-attack lockout, caused by another program's failed \
             authorizations: wait for its recovery time or reset it with the lockout \
             authorization (tpm2_dictionarylockout --clear-lockout)"
        }
        _ => "; check that the TPM (or swtpm) is reachable, then retry",
    }
}

impl From<LedgerError> for ServiceError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::InsufficientFunds {
                needed,
                available,
                fund,
            } => ServiceError::InsufficientFunds {
                needed,
                available,
                fund,
            },
            LedgerError::CreditLimit {
                needed,
                available,
                limit,
            } => ServiceError::CreditLimit {
                needed,
                available,
                limit,
            },
            LedgerError::Overflow(_) => ServiceError::InvalidInput(
                "the amount would overflow a register; nothing was changed".into(),
            ),
            LedgerError::Conflict(key) => ServiceError::Conflict { id: key.shown() },
            LedgerError::Invalid(m) => ServiceError::InvalidInput(m),
            LedgerError::Housing(h) => ServiceError::Housing(h),
            LedgerError::Storage(m) => ServiceError::Storage(m),
            LedgerError::Stopped => ServiceError::Storage("the ledger is shutting down".into()),
        }
    }
}

impl From<meter_pki::PkiError> for ServiceError {
    fn from(e: meter_pki::PkiError) -> Self {
        use meter_pki::PkiError as P;
        match e {
            P::Malformed(m) => ServiceError::InvalidInput(format!("malformed object: {m}")),
            P::TooLarge(n) => {
                ServiceError::InvalidInput(format!("object of {n} bytes is larger than accepted"))
            }
            P::WrongType(m) => ServiceError::InvalidInput(format!("wrong kind of object: {m}")),
            P::BadSignature(m) => {
                ServiceError::BadSignature(format!("signature does not verify: {m}"))
            }
            P::Untrusted(m) => {
                ServiceError::BadSignature(format!("not signed by the meter's trust anchor: {m}"))
            }
            P::Expired(m) => ServiceError::Stale(format!("expired: {m}")),
        }
    }
}
