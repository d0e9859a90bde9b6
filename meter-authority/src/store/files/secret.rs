//! The file store's shared secrets: `<dir>/<name>.secret`, 32 bytes, mode
//! 0600, beside the authority's own keys and at their trust.
//!
//! The first server that needs one writes it to a temporary file of its own
//! and hard-links that to the final name: a link never replaces a file, so
//! of two servers starting at once on one directory the first link wins and
//! both read the winner back. A file of any other length is damage, named,
//! and the server does not start (replacing it would silently cut off every
//! meter holding a token); deleting the file and restarting rotates it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::FileStore;
use crate::store::{Result, StoreError};
use crate::AuthorityError;

impl FileStore {
    pub(super) fn shared_secret_now(&self, name: &str, fresh: [u8; 32]) -> Result<[u8; 32]> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            return Err(StoreError::Corrupt(format!(
                "shared secret name {name:?}: lowercase letters and '-' only"
            )));
        }
        let path = self.dir.join(format!("{name}.secret"));
        if let Some(secret) = read(&path)? {
            return Ok(secret);
        }
        // The temporary name is this process's alone; one left by a crashed
        // process that had the same pid is overwritten.
        let tmp = self
            .dir
            .join(format!(".{name}.secret.{}.tmp", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&fresh).and_then(|()| f.sync_all()));
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            // Another server linked its own first: read that one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(AuthorityError::io(&path, e).into()),
        }
        read(&path)?.ok_or_else(|| {
            StoreError::Corrupt(format!("{}: vanished once written", path.display()))
        })
    }
}

/// The secret at `path`, `None` if there is no file.
fn read(path: &Path) -> Result<Option<[u8; 32]>> {
    match std::fs::read(path) {
        Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice())
            .map(Some)
            .map_err(|_| {
                StoreError::Corrupt(format!(
                    "{}: {} bytes, not 32 (delete it to draw a new secret)",
                    path.display(),
                    bytes.len()
                ))
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AuthorityError::io(path, e).into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_first_secret_stays_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        let first = store.shared_secret_now("pending-token", [1; 32]).unwrap();
        assert_eq!(first, [1; 32]);
        // A second server (or a restart) draws another and gets the first.
        assert_eq!(
            store.shared_secret_now("pending-token", [2; 32]).unwrap(),
            [1; 32]
        );
        let path = dir.path().join("pending-token.secret");
        let mode = std::os::unix::fs::PermissionsExt::mode(&path.metadata().unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("pending-token.secret")]
        );
        std::fs::write(&path, b"short").unwrap();
        let e = store
            .shared_secret_now("pending-token", [3; 32])
            .unwrap_err();
        assert!(e.to_string().contains("5 bytes, not 32"), "{e}");
        assert!(store.shared_secret_now("../x", [3; 32]).is_err());
        // A temporary file left by a crash (same pid) does not stop a start.
        std::fs::remove_file(&path).unwrap();
        let stale = dir
            .path()
            .join(format!(".pending-token.secret.{}.tmp", std::process::id()));
        std::fs::write(&stale, b"left by a crash").unwrap();
        assert_eq!(
            store.shared_secret_now("pending-token", [4; 32]).unwrap(),
            [4; 32]
        );
        assert!(!stale.exists());
    }
}
