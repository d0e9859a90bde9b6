//! One failure, told to many: a batch that fails answers every request in it (and those
//! sequenced on top of it) with the same error, but the errors are not `Clone` (a housing
//! error may hold an `io::Error`), so each gets a copy of the same kind and text.

use super::LedgerError;
use crate::housing::HousingError;

/// Copies a housing error (it is not `Clone`: it may hold an `io::Error`).
pub(super) fn copy_housing(e: &HousingError) -> HousingError {
    match e {
        HousingError::Unavailable(s) => HousingError::Unavailable(s.clone()),
        HousingError::Tpm { command, message } => HousingError::Tpm {
            command,
            message: message.clone(),
        },
        HousingError::NvRate => HousingError::NvRate,
        HousingError::NoSuchKey(s) => HousingError::NoSuchKey(s.clone()),
        HousingError::Io(io) => HousingError::Io(std::io::Error::new(io.kind(), io.to_string())),
        HousingError::Stopped => HousingError::Stopped,
    }
}

/// The same failure, for every entry of a failed batch.
pub(super) fn copy_error(e: &LedgerError) -> LedgerError {
    match e {
        LedgerError::Housing(h) => LedgerError::Housing(copy_housing(h)),
        LedgerError::Stopped => LedgerError::Stopped,
        other => LedgerError::Storage(other.to_string()),
    }
}
