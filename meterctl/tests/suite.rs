//! `meterctl`'s integration tests, as ONE test binary: each file beside this one
//! is a module (`tests/cli.rs` is `suite::cli`). One binary instead of one per file
//! saves CI minutes: each would link the whole dependency tree again and compile the
//! shared helpers again. Run one file's tests with
//! `cargo nextest run --release --workspace -E 'binary_id(meterctl::suite) & test(/^cli::/)'`
//! (`--workspace`, not `-p`: the features of the whole workspace, so the dependencies
//! are not compiled again).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli;
mod verify_indicium;
