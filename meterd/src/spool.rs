//! The segment of a report, kept on disk from the moment `Report` computes
//! its digest until `ReportSegment` writes it out, so that the ledger rows
//! of a report are read and encoded once, not twice (issue 12: a report of
//! 100,000 rows exported them for its digest, then again for the caller).
//!
//! One file per report sequence, `<state_dir>/segments/<sequence>.seg`,
//! written under a temporary name and renamed when the export ended; making
//! one removes the others (only the newest report's segment is asked for in
//! practice). The directory is meterd's, like the ledger: the segment holds
//! every caller's rows.
//!
//! The spool is a cache, not a record: `ReportSegment` checks its length
//! before it writes a byte and its SHA-384 as it goes (the digest the report
//! signed), and exports from the ledger when there is no spool of the right
//! length (a report made before, a spool removed, a crash mid-write).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha384};

use crate::error::{Result, ServiceError};

/// Bytes read from a spool at a time.
const CHUNK: usize = 256 * 1024;

/// Where the reports' segments are spooled.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

fn storage(what: &str, path: &Path, e: std::io::Error) -> ServiceError {
    ServiceError::Storage(format!("{what} {}: {e}", path.display()))
}

impl Spool {
    /// The spool of a meter whose state directory is `state_dir`.
    pub fn new(state_dir: &Path) -> Spool {
        Spool {
            dir: state_dir.join("segments"),
        }
    }

    /// The spooled segment of report `sequence`.
    pub fn path(&self, sequence: u64) -> PathBuf {
        self.dir.join(format!("{sequence}.seg"))
    }

    fn tmp(&self, sequence: u64) -> PathBuf {
        self.dir.join(format!("{sequence}.seg.tmp"))
    }

    /// Opens the temporary file of report `sequence`'s segment.
    pub fn create(&self, sequence: u64) -> Result<std::fs::File> {
        std::fs::create_dir_all(&self.dir).map_err(|e| storage("cannot create", &self.dir, e))?;
        let tmp = self.tmp(sequence);
        std::fs::File::create(&tmp).map_err(|e| storage("cannot create", &tmp, e))
    }

    /// Ends report `sequence`'s spool: renamed into place when `complete`
    /// (and the spools of other reports removed), removed otherwise.
    pub fn finish(&self, sequence: u64, complete: bool) -> Result<()> {
        let tmp = self.tmp(sequence);
        if !complete {
            let _ = std::fs::remove_file(&tmp);
            return Ok(());
        }
        let keep = self.path(sequence);
        std::fs::rename(&tmp, &keep).map_err(|e| storage("cannot rename", &tmp, e))?;
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p != keep {
                    if let Err(err) = std::fs::remove_file(&p) {
                        tracing::warn!(path = %p.display(), error = %err, "stale segment spool kept");
                    }
                }
            }
        }
        Ok(())
    }

    /// The spool of report `sequence` if it is there with `bytes` bytes.
    pub fn open(&self, sequence: u64, bytes: u64) -> Option<std::fs::File> {
        let f = std::fs::File::open(self.path(sequence)).ok()?;
        (f.metadata().ok()?.len() == bytes).then_some(f)
    }
}

/// A sink for `Ledger::export_segment` that writes into `file`; it stops
/// the export (returns false) at the first write that fails.
pub fn sink(mut file: std::fs::File) -> impl FnMut(Vec<u8>) -> bool + Send + 'static {
    move |chunk: Vec<u8>| match file.write_all(&chunk) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot write the segment spool");
            false
        }
    }
}

/// Sends `file` in chunks to `send` (false: stop), hashing it; returns its
/// SHA-384 and length, `None` when `send` stopped. Blocking.
pub fn stream(
    mut file: std::fs::File,
    mut send: impl FnMut(Vec<u8>) -> bool,
) -> Result<Option<([u8; 48], u64)>> {
    let mut h = Sha384::new();
    let mut n = 0u64;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let got = file
            .read(&mut buf)
            .map_err(|e| ServiceError::Storage(format!("cannot read the segment spool: {e}")))?;
        if got == 0 {
            return Ok(Some((h.finalize().into(), n)));
        }
        buf.truncate(got);
        h.update(&buf);
        n += got as u64;
        if !send(buf) {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn spooled_once_streamed_with_its_digest_others_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path());
        let mut s = sink(spool.create(1).unwrap());
        assert!(s(b"old".to_vec()));
        drop(s);
        spool.finish(1, true).unwrap();
        let data: Vec<u8> = (0..600_000u32).map(|i| i as u8).collect();
        let mut s = sink(spool.create(2).unwrap());
        assert!(s(data[..1000].to_vec()));
        assert!(s(data[1000..].to_vec()));
        drop(s);
        spool.finish(2, true).unwrap();
        assert!(!spool.path(1).exists(), "the older spool is removed");
        assert!(
            spool.open(2, 5).is_none(),
            "a spool of another length is not used"
        );
        let mut out = Vec::new();
        let (digest, n) = stream(spool.open(2, data.len() as u64).unwrap(), |c| {
            out.extend(c);
            true
        })
        .unwrap()
        .unwrap();
        assert_eq!(out, data);
        assert_eq!(n, data.len() as u64);
        assert_eq!(digest, <[u8; 48]>::from(Sha384::digest(&data)));
        // An export that failed leaves nothing.
        drop(spool.create(3).unwrap());
        spool.finish(3, false).unwrap();
        assert!(!spool.path(3).exists());
        assert!(spool.path(2).exists());
    }
}
