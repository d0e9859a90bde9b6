//! The driver's own failures (not the meter's): a torture test that cannot
//! set itself up must say so, not report "0 losses".

use std::path::PathBuf;

/// Why the driver could not run a test to its end.
#[derive(Debug, thiserror::Error)]
pub enum TortureError {
    /// The bus could not be reached or a proxy not built.
    #[error("bus: {0}")]
    Bus(#[from] zbus::Error),
    /// A call the driver needs for its bookkeeping (Status, Audit) failed.
    #[error("meter: {0}")]
    Meter(String),
    /// A local file or a child process failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or program.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The ledger database could not be read (for the cross-check).
    #[error("ledger read: {0}")]
    Ledger(#[from] rusqlite::Error),
    /// A `tests/sandbox` verb or another helper program failed.
    #[error("{0}")]
    Setup(String),
    /// A client task panicked or was cancelled.
    #[error("client task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl From<meter_proto::MeterError> for TortureError {
    fn from(e: meter_proto::MeterError) -> Self {
        TortureError::Meter(format!("{}: {}", e.kind(), e.message()))
    }
}

/// Result with the driver's error.
pub type Result<T> = std::result::Result<T, TortureError>;

/// Maps an I/O error on `path` to [`TortureError::Io`].
pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TortureError {
    let path = path.into();
    move |source| TortureError::Io { path, source }
}
