//! The meterd D-Bus contract, shared by the daemon, `meterctl` and the tests.
//!
//! Mail software codes against `org.meterd.Meter1`; keeping the names, the
//! error set and the exit codes in one crate means the daemon and its
//! clients cannot drift apart. A breaking change means `org.meterd.Meter2`.

pub mod blob;
pub mod error;
pub mod exit;
pub mod keys;
pub mod money;
pub mod proxy;

pub use blob::Blob;
pub use error::MeterError;
pub use proxy::{Meter1Proxy, TimeStamp1Proxy};

/// Well-known bus name of the meter on the system bus.
pub const BUS_NAME: &str = "org.meterd.Meter1";
/// Object path of the meter.
pub const OBJECT_PATH: &str = "/org/meterd/Meter1";
/// Interface name.
pub const INTERFACE: &str = "org.meterd.Meter1";

/// The RFC 3161 HTTP endpoint (meter-tsa) on the bus, so that `meterctl
/// status` can say where it listens: a well-known name of its own, owned
/// only while it runs, with read-only properties `Urls` (as) and
/// `AnonymousLoopback` (b).
pub mod timestamp {
    /// Well-known bus name of meter-tsa.
    pub const BUS_NAME: &str = "org.meterd.TimeStamp1";
    /// Object path of its status object.
    pub const OBJECT_PATH: &str = "/org/meterd/TimeStamp1";
    /// Interface name.
    pub const INTERFACE: &str = "org.meterd.TimeStamp1";
}

/// Meter states as exposed by the `State` property.
pub mod state {
    /// No identity yet: the meter sells nothing.
    pub const UNPROVISIONED: &str = "unprovisioned";
    /// Provisioned and not locked.
    pub const READY: &str = "ready";
    /// Locked; `LockReason` says why, and only an authority order clears it.
    pub const LOCKED: &str = "locked";
}

/// Inspection standings as exposed by `Status()` (`inspection_state`).
pub mod inspection_state {
    /// Before the warning deadline.
    pub const OK: &str = "ok";
    /// Past the warning deadline: a status report is due before the lock.
    pub const DUE: &str = "due";
    /// Past the lock deadline (the meter locks `inspection-overdue`).
    pub const OVERDUE: &str = "overdue";
}

/// Lock reasons as exposed by `LockReason` and the `Locked` signal.
pub mod lock_reason {
    /// A ledger row was edited, deleted, reordered, or the seal does not verify.
    pub const TAMPER: &str = "tamper";
    /// An older copy of the ledger was restored (NV counter ahead of the ledger).
    pub const ROLLBACK: &str = "rollback";
    /// The system clock went backwards against the TPM clock.
    pub const CLOCK: &str = "clock";
    /// The authority locked the meter.
    pub const FORCED: &str = "forced";
    /// No acknowledged inspection report within the period.
    pub const INSPECTION_OVERDUE: &str = "inspection-overdue";
    /// A current-account billing period closed unreported.
    pub const PERIOD_CLOSED: &str = "period-closed";
}

/// Steps reported by `Validate` in the `step` key.
pub mod step {
    /// Every check passed.
    pub const OK: &str = "ok";
    /// The token is not a well-formed RFC 3161 token / CMS SignedData.
    pub const MALFORMED: &str = "malformed";
    /// The signer's certificate does not chain to a trust anchor.
    pub const CHAIN: &str = "chain";
    /// The signature does not verify with the signer's key.
    pub const SIGNATURE: &str = "signature";
    /// The message digest differs from the one in the token.
    pub const DIGEST: &str = "digest";
    /// The time in the token (genTime, or a signature's signingTime) lies in
    /// the future, or outside the signer certificate's validity.
    pub const TIME: &str = "time";
}
