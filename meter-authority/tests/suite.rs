//! `meter-authority`'s integration tests, as ONE test binary: each file beside this one
//! is a module (`tests/serve.rs` is `suite::serve`). One binary instead of one per file
//! saves CI minutes: each would link the whole dependency tree again and compile the
//! shared helpers again. Run one file's tests with
//! `cargo nextest run --release --workspace -E 'binary_id(meter-authority::suite) & test(/^serve::/)'`
//! (`--workspace`, not `-p`: the features of the whole workspace, so the dependencies
//! are not compiled again).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod serve_support;
mod support;

mod cli;
mod cli_amounts;
mod cli_database;
mod enrol;
mod serve;
mod serve_auth;
mod serve_register;
mod serve_settle;
