//! Named D-Bus errors of `org.meterd.Meter1`.
//!
//! One enum serves both ends: the daemon returns its variants, and the typed
//! proxy decodes a reply error back into the same variant, so meterctl and the
//! tests match on kinds, not on strings.

use crate::exit;

/// Every failure the meter reports; the string says what to do about it.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.meterd.Meter1.Error")]
pub enum MeterError {
    /// A transport-level failure (not sent by the meter itself).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The descending register (or credit limit) cannot cover the charge.
    InsufficientFunds(String),
    /// The meter is locked; the message carries the reason.
    Locked(String),
    /// The meter has no identity yet; run `meterctl provision`.
    NotProvisioned(String),
    /// The caller is not allowed to call this member.
    AccessDenied(String),
    /// An argument is malformed, too large, or conflicts with an earlier request.
    InvalidInput(String),
    /// A signed object does not verify against the trust anchor.
    BadSignature(String),
    /// A single-use object (voucher, order) was already used.
    Replay(String),
    /// An envelope is not addressed to the certificate, or does not decrypt
    /// (altered, or made for another key); nothing was charged.
    NotDecryptable(String),
    /// An object is older than the one in force (rate table, order).
    Stale(String),
    /// The TPM failed or is unreachable.
    Housing(String),
    /// The ledger could not be read or written.
    Storage(String),
    /// Too many calls from this caller are in flight, or the meter is
    /// shutting down; retry later.
    Busy(String),
    /// A fault on the meter's side (a bug, e.g. a task that died); the log
    /// says more.
    Internal(String),
}

impl MeterError {
    /// Short kind name, as used by `meterctl --json` (`"InsufficientFunds"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            MeterError::ZBus(_) => "Bus",
            MeterError::InsufficientFunds(_) => "InsufficientFunds",
            MeterError::Locked(_) => "Locked",
            MeterError::NotProvisioned(_) => "NotProvisioned",
            MeterError::AccessDenied(_) => "AccessDenied",
            MeterError::InvalidInput(_) => "InvalidInput",
            MeterError::BadSignature(_) => "BadSignature",
            MeterError::Replay(_) => "Replay",
            MeterError::NotDecryptable(_) => "NotDecryptable",
            MeterError::Stale(_) => "Stale",
            MeterError::Housing(_) => "Housing",
            MeterError::Storage(_) => "Storage",
            MeterError::Busy(_) => "Busy",
            MeterError::Internal(_) => "Internal",
        }
    }

    /// The human message carried by the error.
    pub fn message(&self) -> String {
        match self {
            MeterError::ZBus(e) => zbus_message(e),
            MeterError::InsufficientFunds(m)
            | MeterError::Locked(m)
            | MeterError::NotProvisioned(m)
            | MeterError::AccessDenied(m)
            | MeterError::InvalidInput(m)
            | MeterError::BadSignature(m)
            | MeterError::Replay(m)
            | MeterError::NotDecryptable(m)
            | MeterError::Stale(m)
            | MeterError::Housing(m)
            | MeterError::Storage(m)
            | MeterError::Busy(m)
            | MeterError::Internal(m) => m.clone(),
        }
    }

    /// The `meterctl` exit code for this kind of failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            MeterError::ZBus(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.DBus.Error.AccessDenied" =>
            {
                exit::ACCESS
            }
            MeterError::ZBus(_) => exit::BUS,
            MeterError::InsufficientFunds(_) => exit::FUNDS,
            MeterError::Locked(_) => exit::LOCKED,
            MeterError::NotProvisioned(_) => exit::NOT_PROVISIONED,
            MeterError::AccessDenied(_) => exit::ACCESS,
            MeterError::InvalidInput(_) => exit::INVALID,
            MeterError::BadSignature(_)
            | MeterError::Replay(_)
            | MeterError::Stale(_)
            | MeterError::NotDecryptable(_) => exit::REFUSED,
            MeterError::Housing(_) => exit::HOUSING,
            MeterError::Storage(_) => exit::STORAGE,
            MeterError::Busy(_) => exit::BUSY,
            MeterError::Internal(_) => exit::DAEMON_INTERNAL,
        }
    }
}

fn zbus_message(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, Some(msg), _) => format!("{}: {msg}", name.as_str()),
        other => other.to_string(),
    }
}
