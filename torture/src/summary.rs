//! One row of the torture summary table, printed as a tab-separated
//! `ROW` line that `tests/torture` collects into its table.

use std::time::Instant;

/// The figures of one torture test.
#[derive(Debug, Default)]
pub struct Tally {
    /// Iterations (crash loops, tamper cases, users, ...).
    pub iterations: u64,
    /// Calls made against the meter.
    pub operations: u64,
    /// Products a client received that the ledger does not hold (or holds
    /// differently), or products handed out with no charge.
    pub losses: u64,
    /// Charges twice for one request id, or a second product for one id.
    pub doubles: u64,
    /// Debits whose product cannot be retrieved by request id; tamper
    /// cases not detected.
    pub missed: u64,
    /// Calls that succeeded (or moved registers) for a caller not allowed.
    pub unauthorized: u64,
    /// Other failed checks (audit, AR + DR = CT, unexpected error kinds, a
    /// service that did not resume); each has a note.
    pub faults: u64,
    /// What went wrong, for the log.
    pub notes: Vec<String>,
}

impl Tally {
    /// Records a failed check of kind `faults` with a note.
    pub fn fault(&mut self, note: impl Into<String>) {
        self.faults += 1;
        self.note(note);
    }

    /// Keeps a note (bounded, so a flood of failures stays readable).
    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        if self.notes.len() < 50 {
            eprintln!("torture: {note}");
            self.notes.push(note);
        }
    }

    /// Adds another tally's counts and notes.
    pub fn absorb(&mut self, other: Tally) {
        self.operations += other.operations;
        self.losses += other.losses;
        self.doubles += other.doubles;
        self.missed += other.missed;
        self.unauthorized += other.unauthorized;
        self.faults += other.faults;
        for n in other.notes {
            if self.notes.len() < 50 {
                self.notes.push(n);
            }
        }
    }

    /// Zero tolerance: any loss, double, miss, unauthorized success or fault.
    pub fn failed(&self) -> bool {
        self.losses + self.doubles + self.missed + self.unauthorized + self.faults > 0
    }

    /// Prints the `ROW` line: name, figures, seconds since `start`, verdict;
    /// then, when the test failed, one `NOTE` line per kept note, so that
    /// `tests/torture` can repeat them under its table (a CI log is often
    /// read from its tail, far below the moment a note was printed).
    pub fn print_row(&self, name: &str, start: Instant) {
        println!(
            "ROW\t{name}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.1}\t{}",
            self.iterations,
            self.operations,
            self.losses,
            self.doubles,
            self.missed,
            self.unauthorized,
            self.faults,
            start.elapsed().as_secs_f64(),
            if self.failed() { "FAIL" } else { "ok" }
        );
        if self.failed() {
            for n in &self.notes {
                println!("NOTE\t{name}\t{}", one_line(n));
            }
        }
    }
}

/// `note` on one line of at most 400 characters (a note may quote a
/// daemon's message, which may hold newlines or be long).
fn one_line(note: &str) -> String {
    let flat: String = note
        .chars()
        .map(|c| if c == '\n' || c == '\t' { ' ' } else { c })
        .collect();
    match flat.char_indices().nth(400) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_note_is_flattened_and_bounded() {
        assert_eq!(one_line("a\nb\tc"), "a b c");
        let long = "é".repeat(500);
        let short = one_line(&long);
        assert_eq!(short.chars().count(), 401);
        assert!(short.ends_with('…'));
        assert_eq!(one_line(&"x".repeat(400)), "x".repeat(400));
    }
}
