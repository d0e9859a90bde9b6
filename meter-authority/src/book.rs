//! The authority's book of one meter (`meters/<id>/`): what it issued to
//! the meter and what the meter's acknowledged reports have shown it.
//!
//! `inspect --segment` reconciles a report against this book and, when it
//! holds, extends it; `voucher` records every voucher it issues here;
//! `lookup` answers from it. Two processes may do any of these at once for
//! the same meter (two inspects, an inspect and a voucher), so every change
//! is one read-modify-write under an exclusive lock on `meters/<id>/lock`
//! (`flock`, released when the process ends, even on a crash), written as a
//! temporary file that is fsynced and renamed over `book.json`: a crash
//! leaves the old book or the new one, and nothing one writer did is lost
//! by the other.
//!
//! The rows a lookup needs (every postmark and postage row: seq, time,
//! product digest) are too many for JSON; each acknowledged segment adds
//! an index file `rows-<first>-<last>.idx` (written and renamed before the
//! book names it, so a book never names a missing or half file).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::{read_json, write_json_atomic};
use crate::{check_meter_id, AuthorityError, Result};

/// Registers and counts at an acknowledged row, as re-derived from rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registers {
    /// Ascending register (all sold).
    pub ascending: u64,
    /// Descending register (funds left).
    pub descending: u64,
    /// Control total (all credited).
    pub control_total: u64,
    /// Pieces sold, all services.
    pub pieces: u64,
    /// Pieces per service code.
    pub per_service: BTreeMap<u8, u64>,
    /// Sales booked on current account (credit = debit), in the control total.
    #[serde(default)]
    pub billed: u64,
    /// The postage pair of a split meter (issue 17): rows naming register 1.
    /// The fields above are the services pair (the one pool before a split);
    /// `per_service` counts both. Absent in a book written before: zero.
    #[serde(default)]
    pub postage: PostagePair,
}

/// A postage register pair (AR, DR, CT, pieces) as re-derived from rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostagePair {
    /// Ascending register.
    pub ascending: u64,
    /// Descending register.
    pub descending: u64,
    /// Control total.
    pub control_total: u64,
    /// Pieces sold from it.
    pub pieces: u64,
}

/// A point of the meter's ledger the authority acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    /// Rows covered (the report's `ledger_rows`).
    pub rows: u64,
    /// Hex hash of row `rows`, as re-derived.
    pub head: String,
    /// Time of row `rows` (Unix ms).
    pub row_time_ms: i64,
    /// Registers after row `rows`.
    pub registers: Registers,
    /// The report acknowledged there.
    pub report_sequence: u64,
    /// Its time (Unix s).
    pub report_time: i64,
    /// Its NV counter value.
    pub nv_counter: u64,
    /// Hex SHA-384 of its JSON (as in the acknowledgement).
    pub report_digest: String,
    /// Epoch in force at row `rows`: the counter of the last epoch row the
    /// acknowledged segments held (absent: none seen yet, or a book older
    /// than this field). The next epoch row must open the one after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// One index file of reported rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexFile {
    /// First row it covers.
    pub first: u64,
    /// Last row it covers.
    pub last: u64,
    /// File name inside the meter's directory.
    pub file: String,
}

/// The book of one meter (`book.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Book {
    /// Vouchers issued: sequence → amount.
    pub vouchers: BTreeMap<u64, u64>,
    /// Acknowledged points, ascending by rows.
    pub acknowledged: Vec<Point>,
    /// Authority objects the meter applied (`voucher/3`, `clear-lock/<nonce>`,
    /// ...) → the row that applied each: used once.
    pub applied: BTreeMap<String, u64>,
    /// Index files of reported rows, ascending.
    pub index: Vec<IndexFile>,
    /// Reports refused so far.
    pub refused: u64,
    /// Unclean starts seen in acknowledged segments (epoch rows whose
    /// previous run wrote no stop row), and the last row counted.
    #[serde(default)]
    pub unclean_starts: u64,
    /// The last row counted in `unclean_starts` (a segment re-inspected does
    /// not count twice).
    #[serde(default)]
    pub unclean_counted_to: u64,
    /// What the last accepted TPM attestation showed (counter, clock, reset
    /// and restart counts; `attested`); none for a meter that does not attest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<crate::attested::TpmState>,
    /// Rate tables the acknowledged segments installed (version → table):
    /// the prices `inspect` re-prices later sales with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rates: BTreeMap<u32, meter_pki::payload::RateTable>,
    /// Products relying parties showed before the meter reported them: the next
    /// inspection that covers each must find it (`awaited`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub awaited: Vec<Awaited>,
    /// Awaited products dropped beyond the bound (`awaited::MAX_AWAITED`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub awaited_dropped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Book {
    /// The acknowledged point at exactly `rows`, if any.
    pub fn point_at(&self, rows: u64) -> Option<&Point> {
        self.acknowledged.iter().find(|p| p.rows == rows)
    }

    /// The latest acknowledged point.
    pub fn last(&self) -> Option<&Point> {
        self.acknowledged.iter().max_by_key(|p| p.rows)
    }

    /// Sum of the vouchers issued.
    pub fn issued_total(&self) -> u64 {
        self.vouchers
            .values()
            .fold(0u64, |a, v| a.saturating_add(*v))
    }

    /// Voucher sequences applied, from `applied`.
    pub fn credited(&self) -> BTreeSet<u64> {
        self.applied
            .keys()
            .filter_map(|k| k.strip_prefix("voucher/")?.parse().ok())
            .collect()
    }
}

/// One product a relying party showed before the meter reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Awaited {
    /// `token` or `indicium`.
    pub what: String,
    /// Hex SHA-384 of the object (as the index rows hold it).
    pub digest: String,
    /// The row its serial names, if it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_row: Option<u64>,
    /// The latest time its row can have (Unix ms).
    pub latest_ms: i64,
    /// When it was looked up (Unix s).
    pub seen_at: i64,
}

/// A row a lookup can find: a postmark or a postage row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRow {
    /// Row number.
    pub seq: u64,
    /// Row time (Unix ms).
    pub time_ms: i64,
    /// Service code.
    pub service: u8,
    /// SHA-384 of the row's product (the token or the indicium).
    pub digest: [u8; 48],
}

/// Bytes per index record: seq u64 | time i64 | service u8 | digest [48].
pub const INDEX_RECORD: usize = 8 + 8 + 1 + 48;

impl IndexRow {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        out.push(self.service);
        out.extend_from_slice(&self.digest);
    }

    fn read(b: &[u8]) -> Option<IndexRow> {
        if b.len() != INDEX_RECORD {
            return None;
        }
        Some(IndexRow {
            seq: u64::from_be_bytes(b[0..8].try_into().ok()?),
            time_ms: i64::from_be_bytes(b[8..16].try_into().ok()?),
            service: b[16],
            digest: b[17..65].try_into().ok()?,
        })
    }
}

/// The directory of one meter's book; changes go through [`Shelf::update`].
pub struct Shelf {
    dir: PathBuf,
}

impl Shelf {
    /// The book of `meter_id` in the authority directory `authority_dir`.
    pub fn of(authority_dir: &Path, meter_id: &str) -> Result<Shelf> {
        check_meter_id(meter_id)?;
        Ok(Shelf {
            dir: authority_dir.join("meters").join(meter_id),
        })
    }

    fn book_path(&self) -> PathBuf {
        self.dir.join("book.json")
    }

    /// Reads the book (empty when the meter has none yet), without the lock:
    /// a rename makes every read see a whole book.
    pub fn read(&self) -> Result<Book> {
        Ok(read_json(&self.book_path())?.unwrap_or_default())
    }

    /// Runs `change` on the book under the meter's lock and saves what it
    /// returns `Ok` for (nothing is saved on `Err`). Index files `change`
    /// adds are written through [`Locked::add_index`] before the book.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut Book, &mut Locked<'_>) -> Result<T>,
    ) -> Result<T> {
        std::fs::create_dir_all(&self.dir).map_err(|e| AuthorityError::io(&self.dir, e))?;
        let lock_path = self.dir.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| AuthorityError::io(&lock_path, e))?;
        lock.lock().map_err(|e| AuthorityError::io(&lock_path, e))?;
        let mut book = self.read()?;
        let mut locked = Locked { shelf: self };
        let out = change(&mut book, &mut locked)?;
        write_json_atomic(&self.book_path(), &book, "meter book")?;
        drop(lock);
        Ok(out)
    }

    /// Every indexed row, file by file as the book lists them.
    pub fn index_rows(&self, book: &Book) -> Result<Vec<IndexRow>> {
        let mut all = Vec::new();
        for f in &book.index {
            let path = self.dir.join(&f.file);
            let bytes = std::fs::read(&path).map_err(|e| AuthorityError::io(&path, e))?;
            if bytes.len() % INDEX_RECORD != 0 {
                return Err(AuthorityError::Corrupt(format!(
                    "{}: not whole records",
                    path.display()
                )));
            }
            all.extend(bytes.chunks(INDEX_RECORD).filter_map(IndexRow::read));
        }
        Ok(all)
    }
}

/// What [`Shelf::update`]'s change may do besides editing the book.
pub struct Locked<'a> {
    shelf: &'a Shelf,
}

impl Locked<'_> {
    /// Writes the index file of rows `first..=last` (fsync + rename) and
    /// lists it in `book`.
    pub fn add_index(
        &mut self,
        book: &mut Book,
        first: u64,
        last: u64,
        rows: &[IndexRow],
    ) -> Result<()> {
        let name = format!("rows-{first}-{last}.idx");
        let path = self.shelf.dir.join(&name);
        let tmp = self.shelf.dir.join(format!("{name}.tmp"));
        let mut bytes = Vec::with_capacity(rows.len() * INDEX_RECORD);
        for r in rows {
            r.write(&mut bytes);
        }
        let mut f = File::create(&tmp).map_err(|e| AuthorityError::io(&tmp, e))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| AuthorityError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| AuthorityError::io(&path, e))?;
        book.index.retain(|i| i.file != name);
        book.index.push(IndexFile {
            first,
            last,
            file: name,
        });
        book.index.sort_by_key(|i| i.first);
        Ok(())
    }
}

/// Where the reported rows a lookup finds are kept: index files next to the
/// book ([`crate::book::Locked`]) or a database table.
pub trait Rows {
    /// Every row already indexed for the meter.
    fn index_rows(&mut self, book: &Book) -> Result<Vec<IndexRow>>;
    /// Adds the rows `first..=last` of an acknowledged segment.
    fn add_index(
        &mut self,
        book: &mut Book,
        first: u64,
        last: u64,
        rows: &[IndexRow],
    ) -> Result<()>;
}

impl Rows for Locked<'_> {
    fn index_rows(&mut self, book: &Book) -> Result<Vec<IndexRow>> {
        self.shelf.index_rows(book)
    }

    fn add_index(
        &mut self,
        book: &mut Book,
        first: u64,
        last: u64,
        rows: &[IndexRow],
    ) -> Result<()> {
        Locked::add_index(self, book, first, last, rows)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// Many writers at once, each in its own thread with its own lock
    /// descriptor (as two processes would have): every change is kept.
    #[test]
    fn concurrent_updates_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let d = dir.path().to_owned();
                std::thread::spawn(move || {
                    for i in 0..25u64 {
                        Shelf::of(&d, "MTR-1")
                            .unwrap()
                            .update(|b, _| {
                                b.vouchers.insert(t * 1000 + i, i + 1);
                                b.refused += 1;
                                Ok(())
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let book = Shelf::of(dir.path(), "MTR-1").unwrap().read().unwrap();
        assert_eq!(book.vouchers.len(), 200);
        assert_eq!(book.refused, 200);
    }

    #[test]
    fn a_failed_change_saves_nothing_and_index_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let shelf = Shelf::of(dir.path(), "MTR-1").unwrap();
        let r: Result<()> = shelf.update(|b, _| {
            b.refused = 9;
            Err(AuthorityError::Invalid("no".into()))
        });
        assert!(r.is_err());
        assert_eq!(shelf.read().unwrap().refused, 0);
        let rows = [IndexRow {
            seq: 4,
            time_ms: 5,
            service: 1,
            digest: [7; 48],
        }];
        shelf.update(|b, l| l.add_index(b, 1, 4, &rows)).unwrap();
        let book = shelf.read().unwrap();
        assert_eq!(shelf.index_rows(&book).unwrap(), rows);
        assert!(Shelf::of(dir.path(), "../x").is_err());
    }
}
