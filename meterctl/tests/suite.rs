//! `meterctl`'s integration tests, as ONE test binary: each file beside this one
//! is a module (`tests/cli.rs` is `suite::cli`). One binary instead of one per file
//! saves CI minutes: each would link the whole dependency tree again and compile the
//! shared helpers again. Run one file's tests with
//! `cargo nextest run --release -p meterctl --test suite -E 'test(/^cli::/)'`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli;
mod verify_indicium;
