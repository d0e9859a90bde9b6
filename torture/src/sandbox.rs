//! The driver's view of a sandbox made by `tests/sandbox up DIR`: its bus,
//! its state directory, the script's verbs (crash, restart, TPM reset), and
//! read-only looks at the meter (Status, Audit, the ledger file itself).
//!
//! The ledger is read with a separate read-only SQLite connection so that
//! the cross-check ("every token has its row") does not trust the daemon's
//! own answers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use meter_proto::keys::{audit as akey, status as skey};
use meter_proto::Meter1Proxy;
use rusqlite::{Connection, OpenFlags};
use zbus::zvariant::{OwnedValue, Value};

use crate::error::{io, Result, TortureError};
use crate::ops::{Mix, PAYMENT_SERVICE_CODE};
pub use crate::regs::Registers;

/// A sandbox directory and the script that manages it.
#[derive(Clone)]
pub struct Sandbox {
    /// The sandbox directory (`tests/sandbox up DIR`).
    pub dir: PathBuf,
    /// Path of `tests/sandbox`.
    pub script: PathBuf,
    /// Bus address of the private bus.
    pub bus: String,
    /// meterd's state directory.
    pub state: PathBuf,
    /// TCTI string of the sandbox's swtpm (for tpm2-tools).
    pub tcti: String,
    /// Directory of meterctl and meter-authority.
    pub bin_dir: PathBuf,
    /// The sandbox authority's directory.
    pub authority: PathBuf,
    /// The operations the load sends ([`Mix::basic`] until [`crate::setup`]).
    pub mix: Mix,
}

/// A debit row of the ledger with its stored product.
#[derive(Clone, Debug)]
pub struct Row {
    /// Amount debited.
    pub debit: u64,
    /// The stored product (what a retry must return).
    pub product: Vec<u8>,
}

impl Sandbox {
    /// Reads `DIR/env` (written by `tests/sandbox up`).
    pub fn open(dir: &Path, script: &Path) -> Result<Sandbox> {
        let env_path = dir.join("env");
        let text = std::fs::read_to_string(&env_path).map_err(io(&env_path))?;
        let mut vars = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("export ") {
                if let Some((k, v)) = rest.split_once('=') {
                    vars.insert(k.to_string(), v.trim_matches('\'').to_string());
                }
            }
        }
        let get = |k: &str| {
            vars.get(k)
                .cloned()
                .ok_or_else(|| TortureError::Setup(format!("{} lacks {k}", env_path.display())))
        };
        Ok(Sandbox {
            dir: dir.to_path_buf(),
            script: script.to_path_buf(),
            bus: get("DBUS_SYSTEM_BUS_ADDRESS")?,
            state: PathBuf::from(get("METERD_STATE_DIR")?),
            tcti: get("METERD_TCTI")?,
            bin_dir: PathBuf::from(get("METERD_BIN_DIR")?),
            authority: PathBuf::from(get("METER_AUTHORITY_DIR")?),
            mix: Mix::basic(),
        })
    }

    /// Runs `tests/sandbox VERB DIR ARGS...`; `Ok(false)` when it failed.
    pub fn try_script(&self, verb: &str, args: &[&str]) -> Result<bool> {
        Ok(self.run_script(verb, args)?.status.success())
    }

    fn run_script(&self, verb: &str, args: &[&str]) -> Result<std::process::Output> {
        Command::new("bash")
            .arg(&self.script)
            .arg(verb)
            .arg(&self.dir)
            .args(args)
            .output()
            .map_err(io(&self.script))
    }

    /// Runs `tests/sandbox VERB DIR ARGS...`, failing if it fails.
    pub fn script(&self, verb: &str, args: &[&str]) -> Result<()> {
        let out = self.run_script(verb, args)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(TortureError::Setup(format!(
                "tests/sandbox {verb} failed:\n{}\nmeterd.log ends with:\n{}",
                strip_ansi(String::from_utf8_lossy(&out.stderr).trim()),
                strip_ansi(&self.log_tail(6))
            )))
        }
    }

    /// SIGKILL meterd (a crash), without restarting it.
    pub fn kill_meterd(&self) -> Result<()> {
        let pid_path = self.dir.join("meterd.pid");
        let text = std::fs::read_to_string(&pid_path).map_err(io(&pid_path))?;
        let pid: i32 = text
            .trim()
            .parse()
            .map_err(|_| TortureError::Setup(format!("bad pid in {}", pid_path.display())))?;
        // SAFETY: kill(2) has no memory preconditions; the pid is meterd's,
        // recorded by tests/sandbox which started it.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            return Err(TortureError::Setup(format!("kill -9 {pid} failed")));
        }
        // Let the kernel reap it (tests/sandbox started it in the background,
        // so it is not our child): wait until the pid is gone.
        for _ in 0..500 {
            if !alive(pid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = std::fs::remove_file(&pid_path);
        Ok(())
    }

    /// The last `n` lines of meterd's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("meterd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Length of meterd's log, to read only what a start added.
    pub fn log_len(&self) -> usize {
        std::fs::metadata(self.dir.join("meterd.log"))
            .map(|m| usize::try_from(m.len()).unwrap_or(usize::MAX))
            .unwrap_or(0)
    }

    /// meterd's log from byte `from` on.
    pub fn log_since(&self, from: usize) -> String {
        let bytes = std::fs::read(self.dir.join("meterd.log")).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(
            bytes.get(from..).unwrap_or_default(),
        ))
    }

    /// A new bus connection and proxy (one per client, as mail programs do).
    pub async fn connect(&self) -> Result<Meter1Proxy<'static>> {
        let conn = zbus::connection::Builder::address(self.bus.as_str())?
            .build()
            .await?;
        // Properties are never cached: the driver reads state through Status.
        Ok(Meter1Proxy::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?)
    }

    /// Path of the ledger database.
    pub fn ledger_path(&self) -> PathBuf {
        self.state.join("ledger.sqlite")
    }

    /// Every journal row of this process's uid whose request id starts with
    /// `prefix`, keyed by that request id, with its product, read straight
    /// from the database file. (The meter stores a caller's id scoped to
    /// its uid, as `c/<uid>/<id>`.)
    pub fn ledger_rows(&self, prefix: &str) -> Result<HashMap<String, Row>> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let scope = format!("c/{}/", unsafe { libc::geteuid() });
        let conn = Connection::open_with_flags(
            self.ledger_path(),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let mut stmt = conn.prepare(
            "SELECT j.request_id, j.debit, p.product FROM journal j
             LEFT JOIN products p ON p.seq = j.seq
             WHERE j.request_id >= ?1 AND j.request_id < ?2",
        )?;
        let lower = format!("{scope}{prefix}");
        let upper = format!("{scope}{prefix}\u{7f}");
        let rows = stmt.query_map([lower.as_str(), upper.as_str()], |r| {
            let id: String = r.get(0)?;
            let debit: i64 = r.get(1)?;
            let product: Option<Vec<u8>> = r.get(2)?;
            Ok((id, debit, product))
        })?;
        let mut out = HashMap::new();
        for row in rows {
            let (id, debit, product) = row?;
            let id = id.strip_prefix(&scope).unwrap_or(&id).to_owned();
            out.insert(
                id,
                Row {
                    debit: u64::try_from(debit).unwrap_or(0),
                    product: product.unwrap_or_default(),
                },
            );
        }
        Ok(out)
    }
}

impl Sandbox {
    /// Number of payment-certificate rows in the whole ledger (each a
    /// distinct request id: the column is UNIQUE), read from the file.
    pub fn payment_rows(&self) -> Result<u64> {
        let conn = Connection::open_with_flags(
            self.ledger_path(),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let n: i64 = conn.query_row(
            "SELECT COUNT(DISTINCT request_id) FROM journal WHERE service = ?1",
            [PAYMENT_SERVICE_CODE],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// A line of credit as `ListCreditLines()` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditLine {
    /// Serial.
    pub serial: String,
    /// Amount granted.
    pub granted: u64,
    /// Amount paid out.
    pub used: u64,
    /// Amount left.
    pub remaining: u64,
    /// `open`, `expired`, ...
    pub state: String,
}

/// `ListCreditLines()` as [`CreditLine`]s.
pub async fn credit_lines(proxy: &Meter1Proxy<'_>) -> Result<Vec<CreditLine>> {
    use meter_proto::keys::credit_line as k;
    let mut out = Vec::new();
    for d in proxy.list_credit_lines().await? {
        out.push(CreditLine {
            serial: get_str(&d, k::SERIAL),
            granted: get_u64(&d, k::GRANTED)?,
            used: get_u64(&d, k::USED)?,
            remaining: get_u64(&d, k::REMAINING)?,
            state: get_str(&d, k::STATE),
        });
    }
    Ok(out)
}

/// `ListCertificates()`: (serial, state) of each user certificate.
pub async fn certificates(proxy: &Meter1Proxy<'_>) -> Result<Vec<(String, String)>> {
    use meter_proto::keys::certificate as k;
    Ok(proxy
        .list_certificates()
        .await?
        .iter()
        .map(|d| (get_str(d, k::SERIAL), get_str(d, k::STATE)))
        .collect())
}

/// The text without terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The process exists and is not a zombie (a killed meterd whose new
/// parent has not reaped it yet is dead for our purposes).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn get_u64(d: &HashMap<String, OwnedValue>, k: &str) -> Result<u64> {
    match d.get(k).map(|v| &**v) {
        Some(Value::U64(n)) => Ok(*n),
        other => Err(TortureError::Meter(format!("Status {k}: {other:?}"))),
    }
}

fn get_str(d: &HashMap<String, OwnedValue>, k: &str) -> String {
    match d.get(k).map(|v| &**v) {
        Some(Value::Str(s)) => s.as_str().to_string(),
        _ => String::new(),
    }
}

/// `Status()` as [`Registers`].
pub async fn status(proxy: &Meter1Proxy<'_>) -> Result<Registers> {
    let d = proxy.status().await?;
    let mut rates = HashMap::new();
    if let Some(v) = d.get(skey::RATES) {
        let m: HashMap<String, u64> = HashMap::try_from(v.try_clone().map_err(zbus::Error::from)?)
            .map_err(zbus::Error::from)?;
        rates = m;
    }
    Ok(Registers {
        ar: get_u64(&d, skey::ASCENDING)?,
        dr: get_u64(&d, skey::DESCENDING)?,
        ct: get_u64(&d, skey::CONTROL_TOTAL)?,
        state: get_str(&d, skey::STATE),
        lock_reason: get_str(&d, skey::LOCK_REASON),
        rates,
        postage: (
            get_u64(&d, skey::POSTAGE_ASCENDING)?,
            get_u64(&d, skey::POSTAGE_DESCENDING)?,
            get_u64(&d, skey::POSTAGE_CONTROL_TOTAL)?,
        ),
    })
}

/// `Audit()`: `Ok(None)` when clean, `Ok(Some(problem))` otherwise.
pub async fn audit(proxy: &Meter1Proxy<'_>) -> Result<Option<String>> {
    let d = proxy.audit().await?;
    match d.get(akey::OK).map(|v| &**v) {
        Some(Value::Bool(true)) => Ok(None),
        _ => Ok(Some(get_str(&d, akey::PROBLEM))),
    }
}
