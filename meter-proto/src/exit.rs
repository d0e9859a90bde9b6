//! `meterctl` exit codes: scripts tell failure kinds apart by these numbers.
//!
//! Documented in `meterctl --help` and the README; never renumber one.

/// Success.
pub const OK: i32 = 0;
/// Internal error in meterctl itself (unexpected reply, no runtime).
pub const INTERNAL: i32 = 1;
/// Bad command line (clap's own code).
pub const USAGE: i32 = 2;
/// Access denied by the bus policy or the daemon.
pub const ACCESS: i32 = 3;
/// Insufficient funds or credit.
pub const FUNDS: i32 = 4;
/// The meter is locked.
pub const LOCKED: i32 = 5;
/// Invalid input (malformed argument, request-id conflict).
pub const INVALID: i32 = 6;
/// A signed object was refused: bad signature, replay, stale.
pub const REFUSED: i32 = 7;
/// The meter is not provisioned.
pub const NOT_PROVISIONED: i32 = 8;
/// The TPM (housing) failed.
pub const HOUSING: i32 = 9;
/// The ledger (storage) failed.
pub const STORAGE: i32 = 10;
/// The bus or the daemon could not be reached.
pub const BUS: i32 = 11;
/// A verification that meterctl ran locally failed (e.g. `validate` said not valid, `audit` found damage).
pub const NOT_VALID: i32 = 12;
/// The meter is busy: too many calls from this caller in flight, or it is
/// shutting down. Retrying later may succeed.
pub const BUSY: i32 = 13;
/// The daemon failed internally (a bug on the meter's side; see its log).
pub const DAEMON_INTERNAL: i32 = 14;
/// A local file given on the command line could not be read or written
/// (missing input, unwritable output). Checked before anything is charged.
pub const FILE: i32 = 15;

/// The provider (`meterctl sync`) could not be reached, timed out, failed
/// (5xx) or refused the request (4xx); its text is in the message.
pub const PROVIDER: i32 = 16;
/// Table for `--help` and docs: (code, meaning).
pub const TABLE: &[(i32, &str)] = &[
    (OK, "success"),
    (INTERNAL, "internal error in meterctl"),
    (USAGE, "bad command line"),
    (ACCESS, "access denied"),
    (FUNDS, "insufficient funds"),
    (LOCKED, "meter locked"),
    (INVALID, "invalid input"),
    (
        REFUSED,
        "signed object refused (bad signature, replay, stale)",
    ),
    (NOT_PROVISIONED, "meter not provisioned"),
    (HOUSING, "TPM failure"),
    (STORAGE, "ledger failure"),
    (BUS, "bus or daemon unreachable"),
    (
        NOT_VALID,
        "verification negative (token not valid, audit found damage)",
    ),
    (
        BUSY,
        "meter busy (too many calls in flight from this caller); retry later",
    ),
    (DAEMON_INTERNAL, "internal error in meterd (see its log)"),
    (
        FILE,
        "a local file could not be read or written (nothing was charged)",
    ),
    (
        PROVIDER,
        "the provider could not be reached or refused (meterctl sync)",
    ),
];
