//! meterctl's own error type: a meter error as the daemon sent it, or a local
//! failure (bus unreachable, file unreadable, odd reply, bad argument).
//!
//! Every failure leaves meterctl through [`CtlError::exit_code`], so the
//! documented exit codes are decided in one place.

use std::path::PathBuf;

use meter_proto::{exit, MeterError};

/// Hint appended whenever the bus or the daemon cannot be reached.
pub const BUS_HINT: &str =
    "start meterd (systemctl start meterd), or point DBUS_SYSTEM_BUS_ADDRESS / --bus at its bus";

/// Hint appended when the bus itself (its policy) refuses a call, before meterd sees it.
pub const ACCESS_HINT: &str = "the system bus refused the call by its policy for meterd: \
     postmark, postage, sign, validate, pay, report, audit and status need group meter, \
     everything else group meteradmin; ask an administrator to add you to the group \
     (usermod -aG meter USER), then log in again";

/// Every way a meterctl command can fail.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The meter (or the bus on its behalf) answered with an error.
    /// Boxed: zbus errors are large and every `Result` here would carry one.
    #[error("{}", .0.message())]
    Meter(Box<MeterError>),
    /// No connection to the bus could be made.
    #[error("cannot connect to the bus at {address}: {source}; {BUS_HINT}")]
    Connect {
        /// The address tried (from `--bus`, the environment, or the default).
        address: String,
        /// What zbus reported.
        source: Box<zbus::Error>,
    },
    /// A local file could not be read or written.
    #[error("{}: {source}", .path.display())]
    File {
        /// The file concerned.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A local input file is larger than any valid object of its kind.
    #[error("{}: {size} bytes is more than the {limit} bytes allowed", .path.display())]
    TooLarge {
        /// The file concerned.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A command-line value clap could not check (e.g. a digest's hex).
    #[error("{0}")]
    Usage(String),
    /// The daemon answered with something the contract does not allow.
    #[error("unexpected reply from meterd: {0}")]
    Reply(String),
    /// The provider (`meterctl sync`) could not be reached, timed out, or
    /// answered an error status (its text in `message`).
    #[error("provider {url}: {message}")]
    Provider {
        /// The provider's URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A local resource other than a named file failed (runtime, buffer).
    #[error("{what}: {source}")]
    Io {
        /// What meterctl was doing.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl From<MeterError> for CtlError {
    fn from(e: MeterError) -> Self {
        CtlError::Meter(Box::new(e))
    }
}

impl CtlError {
    /// Short kind name for `--json` output and the `error: Kind: message` line.
    pub fn kind(&self) -> &'static str {
        match self {
            CtlError::Meter(e) => e.kind(),
            CtlError::Connect { .. } => "Bus",
            CtlError::File { .. } => "File",
            CtlError::TooLarge { .. } => "InvalidInput",
            CtlError::Usage(_) => "Usage",
            CtlError::Provider { .. } => "Provider",
            CtlError::Reply(_) | CtlError::Io { .. } => "Internal",
        }
    }

    /// The message shown to the user, with a hint on what to do where we know one.
    pub fn message(&self) -> String {
        match self {
            CtlError::Meter(e) if daemon_absent(e) => format!("{}; {BUS_HINT}", e.message()),
            CtlError::Meter(e) if bus_denied(e) => format!("{}; {ACCESS_HINT}", e.message()),
            other => other.to_string(),
        }
    }

    /// The documented exit code (see [`meter_proto::exit`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Meter(e) => e.exit_code(),
            CtlError::Connect { .. } => exit::BUS,
            CtlError::File { .. } => exit::FILE,
            CtlError::Reply(_) | CtlError::Io { .. } => exit::INTERNAL,
            CtlError::TooLarge { .. } => exit::INVALID,
            CtlError::Usage(_) => exit::USAGE,
            CtlError::Provider { .. } => exit::PROVIDER,
        }
    }
}

/// True when the bus daemon (not meterd) answered AccessDenied.
fn bus_denied(e: &MeterError) -> bool {
    match e {
        MeterError::ZBus(zbus::Error::MethodError(name, _, _)) => {
            name.as_str() == "org.freedesktop.DBus.Error.AccessDenied"
        }
        MeterError::ZBus(zbus::Error::FDO(fdo)) => {
            matches!(**fdo, zbus::fdo::Error::AccessDenied(_))
        }
        _ => false,
    }
}

/// True when the bus says nobody owns the meter's name (meterd not running).
fn daemon_absent(e: &MeterError) -> bool {
    const ABSENT: [&str; 2] = [
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
    ];
    match e {
        MeterError::ZBus(zbus::Error::MethodError(name, _, _)) => ABSENT.contains(&name.as_str()),
        MeterError::ZBus(zbus::Error::FDO(fdo)) => matches!(
            **fdo,
            zbus::fdo::Error::ServiceUnknown(_) | zbus::fdo::Error::NameHasNoOwner(_)
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_errors_keep_their_kind_and_code() {
        let e = CtlError::from(MeterError::InsufficientFunds("recharge first".into()));
        assert_eq!(e.kind(), "InsufficientFunds");
        assert_eq!(e.exit_code(), exit::FUNDS);
        assert_eq!(e.message(), "recharge first");
        let e = CtlError::from(MeterError::Replay("voucher 3 used".into()));
        assert_eq!(e.exit_code(), exit::REFUSED);
    }

    #[test]
    fn local_errors_map_to_documented_codes() {
        let file = CtlError::File {
            path: "x".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(file.exit_code(), exit::FILE);
        assert_eq!(CtlError::Usage("bad hex".into()).exit_code(), exit::USAGE);
        let big = CtlError::TooLarge {
            path: "v".into(),
            size: 10,
            limit: 5,
        };
        assert_eq!(big.exit_code(), exit::INVALID);
        let conn = CtlError::Connect {
            address: "unix:path=/nonexistent".into(),
            source: Box::new(zbus::Error::Unsupported),
        };
        assert_eq!(conn.exit_code(), exit::BUS);
        assert!(conn.message().contains("DBUS_SYSTEM_BUS_ADDRESS"));
    }
}
