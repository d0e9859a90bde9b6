//! What the `meter-authority` command-line tests share (cli.rs, cli_amounts.rs): the
//! binary run against an authority directory, and its stdout when it succeeded.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_meter-authority");

/// `meter-authority ARGS` with `METER_AUTHORITY_DIR=dir`.
pub fn authority(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .env("METER_AUTHORITY_DIR", dir)
        .args(args)
        .output()
        .unwrap()
}

/// The stdout of a run that must have succeeded (else its status and output).
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
