//! The authority's persistent counters (`state.json`): next certificate serial, next voucher
//! sequence per meter, and the list of issued certificates.
//!
//! Written atomically (temporary file + rename) *before* an artifact is handed out, so a
//! crash can skip a serial or a sequence number but never reuse one.
//!
//! `serve --database` keeps its own register instead (a sequence and a
//! `certificates` table, `store::certify`), with serials from
//! [`DATABASE_SERIALS`] up, so the command line's counter here and the
//! database's never hand out the same serial. Both are a [`Register`].

use crate::{AuthorityError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// One issued certificate, for the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issued {
    /// Serial number.
    pub serial: u64,
    /// Subject common name.
    pub subject_cn: String,
    /// Profile name (`meter-identity`, `postmark`, ...).
    pub profile: String,
    /// notAfter (unix s).
    pub not_after: i64,
    /// For a user certificate: the meter whose request it was issued on,
    /// the only meter whose revoke request may name it (records made
    /// before the authority kept it have none, and only a forced order
    /// revokes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<String>,
}

/// The first serial the database register hands out (`serve --database`);
/// the counter of `state.json` stays below it, so a serial says which
/// register recorded it and the two never collide.
pub const DATABASE_SERIALS: u64 = 1 << 32;

/// Where an issued certificate takes its serial and is recorded.
pub trait Register {
    /// Takes the next serial (never handed out again, even after a crash).
    fn take_serial(&mut self) -> Result<u64>;
    /// Records an issued certificate (`der`: the certificate itself).
    fn record(&mut self, issued: Issued, der: &[u8]) -> Result<()>;
}

impl Register for State {
    fn take_serial(&mut self) -> Result<u64> {
        State::take_serial(self)
    }

    fn record(&mut self, issued: Issued, _der: &[u8]) -> Result<()> {
        self.issued.push(issued);
        Ok(())
    }
}

/// Counters of the authority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Serial of the next certificate (the root has serial 1).
    pub next_serial: u64,
    /// Next voucher sequence number per meter id (starts at 1).
    pub next_voucher_sequence: BTreeMap<String, u64>,
    /// Every certificate issued after the root.
    pub issued: Vec<Issued>,
}

impl Default for State {
    fn default() -> Self {
        State {
            next_serial: 2,
            next_voucher_sequence: BTreeMap::new(),
            issued: Vec::new(),
        }
    }
}

/// Reads a JSON state file of the authority; `None` when it does not exist.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(|e| AuthorityError::io(path, e))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| AuthorityError::Corrupt(format!("{}: {e}", path.display())))
}

/// Writes a JSON state file atomically (temporary file, fsync, rename), so a
/// crash leaves the old or the new state, never half of one.
pub(crate) fn write_json_atomic<T: serde::Serialize>(
    path: &Path,
    value: &T,
    what: &str,
) -> Result<()> {
    let json = serde_json::to_vec_pretty(value)
        .map_err(|e| AuthorityError::Corrupt(format!("{what} encoding: {e}")))?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| AuthorityError::io(&tmp, e))?;
    f.write_all(&json)
        .and_then(|()| f.sync_all())
        .map_err(|e| AuthorityError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| AuthorityError::io(path, e))
}

impl State {
    /// Reads `state.json`.
    pub fn load(path: &Path) -> Result<State> {
        let bytes = std::fs::read(path).map_err(|e| AuthorityError::io(path, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| AuthorityError::Corrupt(format!("{}: {e}", path.display())))
    }

    /// Writes `state.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_json_atomic(path, self, "state")
    }

    /// Takes the next certificate serial.
    pub fn take_serial(&mut self) -> Result<u64> {
        let s = self.next_serial;
        if s >= DATABASE_SERIALS {
            return Err(AuthorityError::Corrupt(
                "serial counter reached the database register's range".into(),
            ));
        }
        self.next_serial = s
            .checked_add(1)
            .ok_or_else(|| AuthorityError::Corrupt("serial counter exhausted".into()))?;
        Ok(s)
    }

    /// Takes the next voucher sequence number for `meter_id`.
    pub fn take_sequence(&mut self, meter_id: &str) -> Result<u64> {
        let next = self
            .next_voucher_sequence
            .entry(meter_id.to_owned())
            .or_insert(1);
        let s = *next;
        *next = s
            .checked_add(1)
            .ok_or_else(|| AuthorityError::Corrupt("sequence counter exhausted".into()))?;
        Ok(s)
    }
}
