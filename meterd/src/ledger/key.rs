//! Request keys: the ledger's idempotency keys, scoped so that no caller
//! can produce a key the meter uses for itself, and no caller can claim a
//! key another caller will use.
//!
//! A caller's request id is only ever stored as `c/<uid>/<id>`; the meter's
//! own keys (a voucher's sequence, a lock's nonce, a settlement's due row,
//! ...) as `m/<what>/<detail>`. The prefix is chosen here, never by a
//! caller, so a member of group `meter` calling `Report s voucher:2` makes
//! the key `c/1000/voucher:2`, which cannot stop the voucher's own key
//! `m/voucher/2` from being written.
//!
//! Ledgers written before keys were scoped (schema version 1) stored both
//! kinds raw (`voucher:2`, or the caller's `req-1`). Their meter keys are
//! still found through [`Key::legacy`], so a voucher credited before the
//! upgrade cannot be credited again after it; the caller must then check
//! that the row found is of the kind the meter writes (an attacker's row
//! under `voucher:2` is a Debit, a voucher's row a Credit). Caller ids of
//! such ledgers are not found again: a retry across the upgrade is a new
//! request.

use std::fmt;

use super::LedgerError;

/// Longest caller request id accepted, in bytes.
pub const MAX_CALLER_ID: usize = 128;

/// An idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A caller's request id, scoped to the caller's uid.
    Caller {
        /// The caller's uid, as the bus reported it.
        uid: u32,
        /// The id the caller chose (checked by [`Key::caller`]).
        id: String,
    },
    /// A key the meter makes for itself.
    Meter {
        /// What the key is for (`voucher`, `settle`, `clear-lock`, ...).
        what: &'static str,
        /// Which one (sequence, nonce, digest); may be empty.
        detail: String,
    },
}

impl Key {
    /// A caller's key: `id` must be 1 to [`MAX_CALLER_ID`] printable ASCII
    /// characters without spaces (checked at the door, before anything is
    /// looked up or reserved).
    pub fn caller(uid: u32, id: &str) -> Result<Key, LedgerError> {
        if id.is_empty() || id.len() > MAX_CALLER_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(LedgerError::Invalid(format!(
                "request id must be 1 to {MAX_CALLER_ID} printable ASCII characters without spaces"
            )));
        }
        Ok(Key::Caller {
            uid,
            id: id.to_owned(),
        })
    }

    /// A key of the meter's own, e.g. `Key::meter("voucher", 2)`.
    pub fn meter(what: &'static str, detail: impl fmt::Display) -> Key {
        Key::Meter {
            what,
            detail: detail.to_string(),
        }
    }

    /// The stored form: `c/<uid>/<id>` or `m/<what>/<detail>`.
    pub fn encode(&self) -> String {
        self.to_string()
    }

    /// The form a schema-1 ledger stored a meter key under (`voucher:2`,
    /// `provision`); `None` for caller keys, whose old rows are not
    /// attributable to a uid.
    pub fn legacy(&self) -> Option<String> {
        match self {
            Key::Caller { .. } => None,
            Key::Meter { what, detail } if detail.is_empty() => Some((*what).to_owned()),
            Key::Meter { what, detail } => Some(format!("{what}:{detail}")),
        }
    }

    /// The caller's own id (what it passed), or the meter's key as stored:
    /// what an error message names.
    pub fn shown(&self) -> String {
        match self {
            Key::Caller { id, .. } => id.clone(),
            Key::Meter { .. } => self.encode(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Caller { uid, id } => write!(f, "c/{uid}/{id}"),
            Key::Meter { what, detail } => write!(f, "m/{what}/{detail}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn caller_ids_cannot_reach_meter_keys() {
        for attempt in [
            "voucher:2",
            "m/voucher/2",
            "settle:7",
            "../m/x",
            "provision",
        ] {
            let k = Key::caller(1000, attempt).unwrap();
            assert!(k.encode().starts_with("c/1000/"), "{k}");
            assert_ne!(k.encode(), Key::meter("voucher", 2).encode());
            assert_eq!(k.legacy(), None);
        }
        assert_eq!(Key::meter("voucher", 2).encode(), "m/voucher/2");
        assert_eq!(Key::meter("voucher", 2).legacy().unwrap(), "voucher:2");
        assert_eq!(Key::meter("provision", "").legacy().unwrap(), "provision");
    }

    #[test]
    fn callers_do_not_share_ids() {
        let a = Key::caller(1000, "r1").unwrap();
        let b = Key::caller(1001, "r1").unwrap();
        assert_ne!(a.encode(), b.encode());
    }

    #[test]
    fn caller_ids_are_checked() {
        assert!(Key::caller(1, "").is_err());
        assert!(Key::caller(1, "a b").is_err());
        assert!(Key::caller(1, "é").is_err());
        assert!(Key::caller(1, &"x".repeat(MAX_CALLER_ID + 1)).is_err());
        assert!(Key::caller(1, &"x".repeat(MAX_CALLER_ID)).is_ok());
    }

    #[test]
    fn encoded_keys_fit_the_chain() {
        let k = Key::caller(u32::MAX, &"x".repeat(MAX_CALLER_ID)).unwrap();
        assert!(k.encode().len() <= super::super::MAX_REQUEST_ID);
    }
}
