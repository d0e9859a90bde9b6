//! What an inspection found wrong: one sentence per discrepancy, naming the row or field.
//!
//! Its own leaf module because every check (the segment walk in `reconcile`, the epoch
//! run, the re-pricing, the attested TPM values) adds to it: kept in `reconcile`, it
//! tied those checks and the book into an import circle.

/// Findings listed at most (the first ones say enough).
const MAX_FINDINGS: usize = 50;

/// Discrepancies, each one sentence naming the row or field.
#[derive(Debug, Clone, Default)]
pub struct Findings(pub Vec<String>);

impl Findings {
    pub(crate) fn add(&mut self, f: String) {
        if self.0.len() < MAX_FINDINGS {
            self.0.push(f);
        }
    }
}
