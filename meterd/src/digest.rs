//! Digests of requests' inputs, for the ledger's idempotency checks.
//!
//! Messages handed over as file descriptors are hashed by `intake`
//! (bounded in size and time, cancellable).

use sha2::{Digest as _, Sha384};

use crate::ledger::Digest;

/// Domain-separated digest of a request's input, for idempotency checks.
pub fn input_digest(service: &str, parts: &[&[u8]]) -> Digest {
    let mut h = Sha384::new();
    h.update(service.as_bytes());
    h.update([0u8]);
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_digest_separates_fields() {
        assert_ne!(
            input_digest("a", &[b"bc", b""]),
            input_digest("a", &[b"b", b"c"])
        );
    }
}
