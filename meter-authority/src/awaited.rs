//! Products relying parties showed before the meter reported them (issue 12).
//!
//! Why this exists: root on the workstation holds every secret meterd holds, so a sale
//! deleted from the ledger, or a ledger rolled back to a copy taken after the last
//! acknowledgement and re-sealed with the derived auth at the counter's own value, leaves
//! a segment that is consistent in itself: `inspect` alone has nothing to refuse. The
//! products of those sales are out in the world, though. When a relying party looks one
//! up (`lookup` answers anything but "reported"), the authority keeps its digest in the
//! meter's book; the next inspection whose acknowledged point covers the product (its
//! time, or the row its serial names) must find it among the reported rows, or it names
//! the product and refuses (forced lock). A product shown before the report that should
//! hold it is thus named by that report's inspection; one first shown after it (which
//! `lookup` flags at once) by the next one.
//!
//! Only authenticated products are kept — a token that verifies to this authority's
//! roots, an indicium whose postal MAC verifies with a key the authority made — so no
//! one can plant a discrepancy by looking up forgeries. The list is bounded per meter
//! (the oldest beyond [`MAX_AWAITED`] are dropped and counted). An entry is forgotten
//! once an inspection covered it, whatever that inspection's outcome: a refusal has
//! already named it, and the meter must be able to report again after the provider's
//! investigation.

use crate::book::{Awaited, Book, IndexRow, Point};
use crate::findings::Findings;

/// Products kept per meter at most.
pub const MAX_AWAITED: usize = 100_000;

impl Awaited {
    /// Whether an acknowledged point at `p` must hold this product's row.
    fn covered_by(&self, p: &Point) -> bool {
        self.latest_ms < p.row_time_ms || self.serial_row.is_some_and(|s| s <= p.rows)
    }
}

/// Keeps `a` (once per digest), dropping the oldest beyond [`MAX_AWAITED`].
pub fn remember(book: &mut Book, a: Awaited) {
    remember_within(book, a, MAX_AWAITED);
}

fn remember_within(book: &mut Book, a: Awaited, max: usize) {
    if book.awaited.iter().any(|x| x.digest == a.digest) {
        return;
    }
    book.awaited.push(a);
    if book.awaited.len() > max {
        let extra = book.awaited.len() - max;
        book.awaited.drain(..extra);
        book.awaited_dropped = book.awaited_dropped.saturating_add(extra as u64);
    }
}

/// Names in `f` every awaited product that `point` covers and no row of `rows` (every
/// reported row, the new segment's included) holds; returns the digests of all the
/// covered ones, for [`forget`] once the inspection is over.
pub fn check(book: &Book, point: &Point, rows: &[IndexRow], f: &mut Findings) -> Vec<String> {
    let mut covered = Vec::new();
    for a in book.awaited.iter().filter(|a| a.covered_by(point)) {
        let found = hex::decode(&a.digest)
            .ok()
            .is_some_and(|d| rows.iter().any(|r| r.digest[..] == d[..]));
        if !found {
            f.add(format!(
                "a {} a relying party showed (lookup at {}, SHA-384 {}…) is in no reported row \
                 up to row {}: a sale deleted, or the ledger rolled back, after it was sold",
                a.what,
                a.seen_at,
                a.digest.get(..16).unwrap_or(&a.digest),
                point.rows
            ));
        }
        covered.push(a.digest.clone());
    }
    covered
}

/// Forgets the products an inspection covered.
pub fn forget(book: &mut Book, covered: &[String]) {
    book.awaited.retain(|a| !covered.contains(&a.digest));
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn point(rows: u64, row_time_ms: i64) -> Point {
        Point {
            rows,
            head: String::new(),
            row_time_ms,
            registers: Default::default(),
            report_sequence: 1,
            report_time: 0,
            nv_counter: 1,
            report_digest: String::new(),
            epoch: None,
        }
    }

    fn awaited(d: u8, serial_row: Option<u64>, latest_ms: i64) -> Awaited {
        Awaited {
            what: "token".into(),
            digest: hex::encode([d; 48]),
            serial_row,
            latest_ms,
            seen_at: 7,
        }
    }

    #[test]
    fn a_covered_product_must_be_in_a_reported_row() {
        let mut book = Book::default();
        remember(&mut book, awaited(1, Some(5), 50_000)); // reported at row 5
        remember(&mut book, awaited(2, Some(6), 50_000)); // lost: row 6 holds another
        remember(&mut book, awaited(3, None, 10_000)); // lost: dated before the point
        remember(&mut book, awaited(4, Some(99), 90_000)); // not covered yet
        remember(&mut book, awaited(1, Some(5), 50_000)); // once per digest
        assert_eq!(book.awaited.len(), 4);
        let rows = [
            IndexRow {
                seq: 5,
                time_ms: 9_000,
                service: 1,
                digest: [1; 48],
            },
            IndexRow {
                seq: 6,
                time_ms: 9_500,
                service: 1,
                digest: [9; 48],
            },
        ];
        let mut f = Findings::default();
        let covered = check(&book, &point(8, 20_000), &rows, &mut f);
        assert_eq!(covered.len(), 3);
        assert_eq!(f.0.len(), 2, "{:?}", f.0);
        assert!(f
            .0
            .iter()
            .all(|m| m.contains("in no reported row up to row 8")));
        forget(&mut book, &covered);
        assert_eq!(book.awaited, vec![awaited(4, Some(99), 90_000)]);
    }

    #[test]
    fn the_list_is_bounded() {
        let mut book = Book::default();
        for i in 0..8u8 {
            remember_within(&mut book, awaited(i, None, 0), 5);
        }
        assert_eq!(book.awaited.len(), 5);
        assert_eq!(book.awaited_dropped, 3);
        assert_eq!(
            book.awaited[0],
            awaited(3, None, 0),
            "the oldest went first"
        );
    }
}
