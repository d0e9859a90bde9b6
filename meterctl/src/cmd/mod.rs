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
pub mod decrypt;
pub mod lock;
pub mod man;
pub mod postage;
pub mod postal_key;
pub mod postmark;
pub mod provider;
pub mod provision;
pub mod rates;
pub mod recharge;
pub mod report;
pub mod revoke;
pub mod sign;
pub mod status;
pub mod sync;
pub mod trust_anchor;
pub mod validate;
pub mod verify_indicium;
pub mod watch;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The path that means stdin (inputs) or stdout (outputs).
pub const STDIO: &str = "-";

/// True when `path` is `-`.
pub fn is_stdio(path: &Path) -> bool {
    path.as_os_str() == STDIO
}

/// Set once a product went to stdout: the human text then goes to stderr so
/// that the bytes on stdout stay the product alone.
static DATA_ON_STDOUT: AtomicBool = AtomicBool::new(false);

/// Notes that a command's product went to stdout (the meter wrote it there).
pub fn mark_data_on_stdout() {
    DATA_ON_STDOUT.store(true, Ordering::Relaxed);
}

/// True when a command wrote its product to stdout (`-o -`).
pub fn data_on_stdout() -> bool {
    DATA_ON_STDOUT.load(Ordering::Relaxed)
}

/// Reads a local input file (`-` = stdin) of at most `limit` bytes.
pub fn read_input(path: &Path, limit: u64) -> Result<Vec<u8>, CtlError> {
    let file_err = |source| CtlError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut buf = Vec::new();
    if is_stdio(path) {
        std::io::stdin()
            .lock()
            .take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(file_err)?;
    } else {
        let file = File::open(path).map_err(file_err)?;
        file.take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(file_err)?;
    }
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

/// Opens a message file (`-` = stdin) to pass as a descriptor (any size: the
/// meter streams it).
pub fn open_message(path: &Path) -> Result<File, CtlError> {
    let file_err = |source| CtlError::File {
        path: path.to_path_buf(),
        source,
    };
    if is_stdio(path) {
        let fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(file_err)?;
        return Ok(File::from(fd));
    }
    File::open(path).map_err(file_err)
}

/// An output opened before anything is bought: a temporary file beside the
/// destination (renamed over it on [`Sink::commit`], removed if the command
/// fails first), the destination itself when it is not a regular file
/// (`/dev/null`, a FIFO), or stdout for `-`. Opening it first means a bad
/// path (`--png /nonexistent/x.png`) is refused before the paid call.
#[derive(Debug)]
pub struct Sink {
    dest: PathBuf,
    target: Target,
}

#[derive(Debug)]
enum Target {
    Stdout,
    Direct(File),
    Temp(PathBuf, File),
    Done,
}

impl Sink {
    /// Opens `path` for writing (creates `PATH.tmp`), or stdout for `-`.
    pub fn open(path: &Path) -> Result<Sink, CtlError> {
        let file_err = |source| CtlError::File {
            path: path.to_path_buf(),
            source,
        };
        let special = std::fs::metadata(path).is_ok_and(|m| !m.is_file());
        let target = if is_stdio(path) {
            Target::Stdout
        } else if special {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(file_err)?;
            Target::Direct(f)
        } else {
            let mut tmp_name = path.as_os_str().to_owned();
            tmp_name.push(".tmp");
            let tmp = PathBuf::from(tmp_name);
            let f = File::create(&tmp).map_err(file_err)?;
            Target::Temp(tmp, f)
        };
        Ok(Sink {
            dest: path.to_path_buf(),
            target,
        })
    }

    /// Writes `bytes` and puts them in place (fsync, then rename), so a reader
    /// never sees half a product and a crash leaves the old file intact.
    pub fn commit(mut self, bytes: &[u8]) -> Result<(), CtlError> {
        let file_err = |p: &Path, source| CtlError::File {
            path: p.to_path_buf(),
            source,
        };
        match std::mem::replace(&mut self.target, Target::Done) {
            Target::Stdout => {
                DATA_ON_STDOUT.store(true, Ordering::Relaxed);
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)
                    .and_then(|()| out.flush())
                    .map_err(|e| file_err(&self.dest, e))
            }
            Target::Direct(mut f) => f.write_all(bytes).map_err(|e| file_err(&self.dest, e)),
            Target::Temp(tmp, mut f) => {
                if let Err(e) = f.write_all(bytes).and_then(|()| f.sync_all()) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(file_err(&tmp, e));
                }
                std::fs::rename(&tmp, &self.dest).map_err(|e| file_err(&self.dest, e))
            }
            Target::Done => Ok(()),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Target::Temp(tmp, _) = &self.target {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Writes `bytes` to `path` (`-` = stdout) through a temporary file and a rename.
/// Commands that buy something open their [`Sink`]s before the call instead.
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<(), CtlError> {
    Sink::open(path)?.commit(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

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

    #[test]
    fn a_sink_is_checked_at_open_and_leaves_nothing_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Sink::open(Path::new("/nonexistent/x.png")),
            Err(CtlError::File { .. })
        ));
        let p = dir.path().join("x.png");
        let sink = Sink::open(&p).unwrap();
        drop(sink);
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
        assert!(is_stdio(Path::new("-")) && !is_stdio(Path::new("./-")));
        // A device is written in place, never replaced by a rename.
        Sink::open(Path::new("/dev/null"))
            .unwrap()
            .commit(b"x")
            .unwrap();
        assert!(std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
        assert!(!Path::new("/dev/null.tmp").exists());
    }
}
