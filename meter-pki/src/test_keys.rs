//! Fixed keys and a fixed "now" for the unit tests of this crate: deterministic, so that
//! a failure reproduces byte for byte, and shared, so that each module does not grow its
//! own copy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use p384::ecdsa::SigningKey;

/// 2026-01-01T00:00:00Z.
pub(crate) const T0: i64 = 1_767_225_600;

/// The P-384 key whose scalar is 48 bytes of `b` (any `b` from 1 on is a valid scalar).
pub(crate) fn key(b: u8) -> SigningKey {
    SigningKey::from_slice(&[b; 48]).unwrap()
}

/// The uncompressed SEC1 point of `k`.
pub(crate) fn sec1(k: &SigningKey) -> Vec<u8> {
    k.verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec()
}
