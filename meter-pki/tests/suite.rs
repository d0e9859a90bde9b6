//! `meter-pki`'s integration tests, as ONE test binary: each file beside this one
//! is a module (`tests/fuzz.rs` is `suite::fuzz`). One binary instead of one per file
//! saves CI minutes: each would link the whole dependency tree again and compile the
//! shared helpers again. Run one file's tests with
//! `cargo nextest run --release --workspace -E 'binary_id(meter-pki::suite) & test(/^fuzz::/)'`
//! (`--workspace`, not `-p`: the features of the whole workspace, so the dependencies
//! are not compiled again).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod envelope_openssl;
mod fuzz;
mod openssl_interop;
mod user_certs;
