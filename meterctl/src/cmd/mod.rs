//! One module per subcommand, each with `pub async fn run(ctx, args)`, plus
//! the context they share (how to reach the meter) and local file helpers.
//!
//! Commands only build an [`Output`](crate::output::Output); printing and exit
//! codes are decided by `main`, so every command behaves alike in both modes.

pub mod account;
pub mod agent;
pub mod audit;
pub mod cert;
pub mod certs;
pub mod clear_lock;
pub mod completions;
pub mod credit;
pub mod lock;
pub mod man;
pub mod postage;
pub mod postmark;
pub mod provision;
pub mod rates;
pub mod recharge;
pub mod report;
pub mod revoke;
pub mod sign;
pub mod status;
pub mod trust_anchor;
pub mod validate;
pub mod verify_indicium;
pub mod watch;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use meter_proto::Meter1Proxy;
use zbus::proxy::CacheProperties;
use zbus::Connection;

use crate::error::CtlError;

/// Largest signed object (certificate, rate table, voucher, order, token)
/// meterctl sends: far above any valid one, well below the bus message limit.
pub const MAX_OBJECT: u64 = 1024 * 1024;

/// Address the system bus is at when `DBUS_SYSTEM_BUS_ADDRESS` is unset.
const DEFAULT_SYSTEM_BUS: &str = "unix:path=/var/run/dbus/system_bus_socket";

/// What every command needs: output mode and how to reach the meter.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// `--json` was given.
    pub json: bool,
    /// `--bus ADDRESS`, overriding the system bus.
    pub bus: Option<String>,
    /// Reply timeout for each D-Bus call.
    pub timeout: Duration,
}

impl Ctx {
    /// The bus address meterctl will use, for messages.
    pub fn address(&self) -> String {
        match &self.bus {
            Some(a) => a.clone(),
            None => std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
                .unwrap_or_else(|_| DEFAULT_SYSTEM_BUS.to_string()),
        }
    }

    /// Connects to the bus (`--bus`, else the system bus).
    pub async fn connection(&self) -> Result<Connection, CtlError> {
        let connect_err = |source| CtlError::Connect {
            address: self.address(),
            source: Box::new(source),
        };
        let builder = match &self.bus {
            Some(addr) => zbus::connection::Builder::address(addr.as_str()),
            None => zbus::connection::Builder::system(),
        }
        .map_err(connect_err)?;
        builder
            .method_timeout(self.timeout)
            .build()
            .await
            .map_err(connect_err)
    }

    /// The typed proxy of the meter, without a property cache (one-shot calls).
    pub async fn meter(&self) -> Result<Meter1Proxy<'static>, CtlError> {
        let conn = self.connection().await?;
        let proxy = Meter1Proxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(meter_proto::MeterError::from)?;
        Ok(proxy)
    }
}

/// Reads a local input file of at most `limit` bytes.
pub fn read_input(path: &Path, limit: u64) -> Result<Vec<u8>, CtlError> {
    let file_err = |source| CtlError::File {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(file_err)?;
    let mut buf = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(file_err)?;
    let size = buf.len() as u64;
    if size > limit {
        return Err(CtlError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    Ok(buf)
}

/// Opens a message file to pass as a descriptor (any size: the meter streams it).
pub fn open_message(path: &Path) -> Result<File, CtlError> {
    File::open(path).map_err(|source| CtlError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader never sees half a token and a crash leaves the old file intact.
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<(), CtlError> {
    let file_err = |p: &Path, source| CtlError::File {
        path: p.to_path_buf(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut f = File::create(&tmp).map_err(|e| file_err(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_input_enforces_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.cms");
        std::fs::write(&p, [7u8; 10]).unwrap();
        assert_eq!(read_input(&p, 10).unwrap(), vec![7u8; 10]);
        match read_input(&p, 9) {
            Err(CtlError::TooLarge { size, limit, .. }) => {
                assert_eq!((size, limit), (10, 9));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(matches!(
            read_input(&dir.path().join("absent"), 9),
            Err(CtlError::File { .. })
        ));
    }

    #[test]
    fn write_output_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.tsr");
        write_output(&p, b"one").unwrap();
        write_output(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!dir.path().join("m.tsr.tmp").exists());
    }
}
