//! `lookup`: may a relying party trust this postmark token or indicium
//! (issue 12, item 6)?
//!
//! The authority knows every postmark and postage row its inspections
//! reconciled (the meter's book, `book`): row, time and the SHA-384 of the
//! product. A token or an indicium is:
//!
//! * **reported**: a reconciled row holds exactly this product;
//! * **not reported yet**: made after the meter's last acknowledged report
//!   (its next report will say);
//! * **unreported**: dated at or before the last acknowledged report's last
//!   row, yet no reported row holds it: it was made outside the meter's
//!   ledger (keys used behind meterd's back, a forgotten row of a restored
//!   copy);
//! * **another digest**: the row its serial names (an indicium's sequence;
//!   a token's serial once tokens carry their row, ledger layout v2) holds
//!   another product: a duplicate serial.
//!
//! A product that is authentic (a token verified to this authority's roots, an
//! indicium with a valid postal MAC) and not reported is kept in the meter's
//! book, and the next inspection that covers it must find it (`awaited`): a
//! sale deleted, or a ledger rolled back after it, is named by `inspect` — the
//! report that should hold it when the product was shown before it, the next
//! report when it was first shown later (and flagged by `lookup` at once).

use meter_pki::{indicium, pem, tsp};
use sha2::{Digest as _, Sha384};

use crate::awaited;
use crate::book::Rows;
use crate::book::{Awaited, Book, IndexRow, Shelf};
use crate::{Authority, AuthorityError, Result};

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A reported row holds exactly this object.
    Reported {
        /// Row.
        seq: u64,
        /// Row time (Unix ms).
        time_ms: i64,
    },
    /// Made after the last acknowledged report.
    NotReportedYet {
        /// Rows acknowledged so far.
        acknowledged_rows: u64,
    },
    /// Dated before the last acknowledged report's rows, in none of them.
    Unreported {
        /// Rows acknowledged so far.
        acknowledged_rows: u64,
        /// Time of the last acknowledged row (Unix ms).
        acknowledged_time_ms: i64,
    },
    /// The row its serial names holds another product.
    AnotherDigest {
        /// Row.
        seq: u64,
        /// Row time (Unix ms).
        time_ms: i64,
    },
}

/// The object looked up, as parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Looked {
    /// `token` or `indicium`.
    pub what: &'static str,
    /// The meter that made it.
    pub meter_id: String,
    /// Its time (Unix s; an indicium's date at midnight UTC).
    pub time: i64,
    /// The row its serial names, if it names one.
    pub serial_row: Option<u64>,
    /// The answer.
    pub answer: Answer,
}

/// An object shown for a lookup, verified and parsed, before any book is read.
#[derive(Debug, Clone)]
pub struct Shown {
    what: &'static str,
    meter_id: String,
    time: i64,
    serial_row: Option<u64>,
    digest: [u8; 48],
    /// The object is the meter's own (a token verified to our roots, an
    /// indicium whose postal MAC verifies), so it may be kept as awaited.
    authentic: bool,
    /// The latest time its row can have.
    latest_ms: i64,
}

impl Shown {
    /// The meter that made the object.
    pub fn meter_id(&self) -> &str {
        &self.meter_id
    }

    /// The answer from the meter's book and indexed rows, and what to keep
    /// as awaited (an authentic object not reported).
    pub fn look(&self, rows: &[IndexRow], book: &Book, now: i64) -> (Looked, Option<Awaited>) {
        let answer = answer(rows, &self.digest, self.serial_row, self.latest_ms, book);
        // The next inspection that covers it must find it (`awaited`): one not
        // reported yet is checked when a report covers it; one already flagged is
        // covered by the next report, which then refuses, naming it.
        let awaited =
            (self.authentic && !matches!(answer, Answer::Reported { .. })).then(|| Awaited {
                what: self.what.to_owned(),
                digest: hex::encode(self.digest),
                serial_row: self.serial_row,
                latest_ms: self.latest_ms,
                seen_at: now,
            });
        let looked = Looked {
            what: self.what,
            meter_id: self.meter_id.clone(),
            time: self.time,
            serial_row: self.serial_row,
            answer,
        };
        (looked, awaited)
    }

    /// [`Shown::look`] under the meter's lock, keeping what is awaited in `book`.
    pub fn look_in(&self, book: &mut Book, rows: &mut dyn Rows, now: i64) -> Result<Looked> {
        let all = rows.index_rows(book)?;
        let (looked, awaited) = self.look(&all, book, now);
        if let Some(a) = awaited {
            awaited::remember(book, a);
        }
        Ok(looked)
    }
}

impl Authority {
    /// Looks up a postmark token (DER or PEM) or an indicium (221 bytes, 237 with a MAC).
    pub fn lookup(&self, object: &[u8], now: i64) -> Result<Looked> {
        let shown = self.shown(object, now)?;
        let shelf = Shelf::of(self.dir(), &shown.meter_id)?;
        let book = shelf.read()?;
        let rows = shelf.index_rows(&book)?;
        let (looked, awaited) = shown.look(&rows, &book, now);
        if let Some(a) = awaited {
            shelf.update(|book, _| {
                awaited::remember(book, a);
                Ok(())
            })?;
        }
        Ok(looked)
    }

    /// Verifies and parses an object shown for a lookup.
    pub fn shown(&self, object: &[u8], now: i64) -> Result<Shown> {
        let (what, meter_id, time, serial_row, digest, authentic) =
            if (object.len() == indicium::LEN || object.len() == indicium::LEN_MAC)
                && object.starts_with(&indicium::MAGIC)
            {
                let i = indicium::decode(object)?;
                let time = i64::from(i.body.date).saturating_mul(86_400);
                let d: [u8; 48] = Sha384::digest(object).into();
                let authentic = i.mac.is_some() && self.verify_indicium_mac(object).is_ok();
                (
                    "indicium",
                    i.body.meter_id,
                    time,
                    Some(i.body.seq),
                    d,
                    authentic,
                )
            } else {
                let der = pem::decode_any(object, "TIMESTAMP TOKEN")?;
                let info =
                    tsp::verify(&der, &self.roots()?, now).map_err(|e| AuthorityError::Token {
                        step: e.step(),
                        detail: e.to_string(),
                    })?;
                let meter = info.signer_cn.clone().ok_or_else(|| {
                    AuthorityError::Invalid("the token's signer names no meter".into())
                })?;
                let serial = serial_u64(&info.serial);
                let d: [u8; 48] = Sha384::digest(&der).into();
                ("token", meter, info.gen_time, serial, d, true)
            };
        // The latest time its row can have: a token's genTime plus the
        // commit's slack, the end of an indicium's day.
        let latest_ms = match what {
            "indicium" => (time + 86_399).saturating_mul(1000) + 999,
            _ => time.saturating_mul(1000).saturating_add(TOKEN_SLACK_MS),
        };
        Ok(Shown {
            what,
            meter_id,
            time,
            serial_row,
            digest,
            authentic,
            latest_ms,
        })
    }
}

/// The serial as a row number, when it fits.
fn serial_u64(be: &[u8]) -> Option<u64> {
    let b: Vec<u8> = be.iter().copied().skip_while(|b| *b == 0).collect();
    if b.is_empty() || b.len() > 8 {
        return None;
    }
    Some(b.iter().fold(0u64, |a, x| (a << 8) | u64::from(*x)))
}

/// How late a token's row may be timed after its genTime (the sale's
/// time; the row is timed at its commit).
const TOKEN_SLACK_MS: i64 = 60_000;

fn answer(
    rows: &[IndexRow],
    digest: &[u8; 48],
    serial_row: Option<u64>,
    latest_ms: i64,
    book: &Book,
) -> Answer {
    if let Some(r) = rows.iter().find(|r| &r.digest == digest) {
        return Answer::Reported {
            seq: r.seq,
            time_ms: r.time_ms,
        };
    }
    if let Some(r) = serial_row.and_then(|s| rows.iter().find(|r| r.seq == s)) {
        return Answer::AnotherDigest {
            seq: r.seq,
            time_ms: r.time_ms,
        };
    }
    let (acknowledged_rows, acknowledged_time_ms) =
        book.last().map_or((0, 0), |p| (p.rows, p.row_time_ms));
    let before = acknowledged_rows > 0
        && (latest_ms < acknowledged_time_ms || serial_row.is_some_and(|s| s <= acknowledged_rows));
    if before {
        Answer::Unreported {
            acknowledged_rows,
            acknowledged_time_ms,
        }
    } else {
        Answer::NotReportedYet { acknowledged_rows }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::book::{Book, Point};

    #[test]
    fn answers_reported_late_duplicate_and_not_yet() {
        let rows = [IndexRow {
            seq: 5,
            time_ms: 10_000,
            service: 1,
            digest: [1; 48],
        }];
        let mut book = Book::default();
        book.acknowledged.push(Point {
            rows: 8,
            head: String::new(),
            row_time_ms: 20_000,
            registers: Default::default(),
            report_sequence: 1,
            report_time: 21,
            nv_counter: 1,
            report_digest: String::new(),
            epoch: None,
        });
        let a = |d: u8, serial, latest| answer(&rows, &[d; 48], serial, latest, &book);
        assert_eq!(
            a(1, None, 0),
            Answer::Reported {
                seq: 5,
                time_ms: 10_000
            }
        );
        assert_eq!(
            a(2, Some(5), 0),
            Answer::AnotherDigest {
                seq: 5,
                time_ms: 10_000
            }
        );
        assert!(matches!(a(2, None, 19_000), Answer::Unreported { .. }));
        assert!(matches!(a(2, Some(7), 90_000), Answer::Unreported { .. }));
        assert_eq!(
            a(2, None, 30_000),
            Answer::NotReportedYet {
                acknowledged_rows: 8
            }
        );
        assert_eq!(
            a(2, Some(9), 30_000),
            Answer::NotReportedYet {
                acknowledged_rows: 8
            }
        );
        assert_eq!(serial_u64(&[0, 1, 2]), Some(258));
        assert_eq!(serial_u64(&[1; 9]), None);
    }
}
