//! The one mapping from service errors to named D-Bus errors.
//!
//! Details that help an operator (TPM response codes, SQLite messages) go to
//! the log; the caller gets the error name and a message it can act on.

use meter_proto::MeterError;

use crate::error::ServiceError;

/// Maps a service error to its named D-Bus error, logging the details.
/// Amounts in the message are shown in `currency` (code, digits).
pub fn to_dbus(member: &str, e: ServiceError, currency: &(String, u8)) -> MeterError {
    let message = e.message_in(currency.1, &currency.0);
    match e {
        ServiceError::InsufficientFunds { .. } => MeterError::InsufficientFunds(message),
        ServiceError::CreditLimit { .. } => MeterError::InsufficientFunds(message),
        ServiceError::InsufficientCredit { .. } => MeterError::InsufficientFunds(message),
        ServiceError::Locked { .. } => MeterError::Locked(message),
        ServiceError::NotProvisioned(_) => MeterError::NotProvisioned(message),
        ServiceError::AccessDenied(_) => MeterError::AccessDenied(message),
        ServiceError::InvalidInput(_) | ServiceError::Conflict { .. } => {
            MeterError::InvalidInput(message)
        }
        ServiceError::Unpriced { .. } => MeterError::NotProvisioned(message),
        ServiceError::BadSignature(_) => MeterError::BadSignature(message),
        ServiceError::NotDecryptable(_) => MeterError::NotDecryptable(message),
        ServiceError::Replay(_) => MeterError::Replay(message),
        ServiceError::Stale(_) => MeterError::Stale(message),
        ServiceError::Housing(ref cause) => {
            tracing::error!(member, error = %cause, "housing failure");
            MeterError::Housing(message)
        }
        ServiceError::Storage(ref cause) => {
            tracing::error!(member, error = %cause, "storage failure");
            MeterError::Storage(message)
        }
        ServiceError::Busy(_) => MeterError::Busy(message),
        // A read past its deadline is the caller's input that never ended.
        ServiceError::TimedOut(_) => MeterError::InvalidInput(message),
        // Nobody waits for this reply; Busy is the closest kind if one does
        // (a peer-to-peer caller when the meter stops).
        ServiceError::Cancelled => {
            tracing::info!(member, "call cancelled: the caller left");
            MeterError::Busy(message)
        }
        ServiceError::Internal(ref cause) => {
            tracing::error!(member, error = %cause, "internal failure");
            MeterError::Internal(message)
        }
    }
}
