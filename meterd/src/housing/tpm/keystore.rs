//! The key blob store: `<dir>/<name>.pub` and `<dir>/<name>.priv`, and
//! the object authorization of the keys in it ([`ObjectAuth`]: the secret
//! in `<dir>/auth` or a credential, see `housing/auth.rs`).
//!
//! A TPM key never leaves the TPM in the clear; what we keep on disk are
//! the marshalled `TPM2B_PUBLIC` and `TPM2B_PRIVATE` that `TPM2_Create`
//! returned (the private part wrapped under the primary storage key). They
//! are written atomically (temp file, fsync, rename, fsync of the directory)
//! so a crash never leaves half a key behind, and read back with strict
//! size bounds because the directory is outside the TPM's protection.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use tss_esapi::structures::{Private, Public, PublicBuffer};
use tss_esapi::traits::{Marshall, UnMarshall};

use crate::housing::auth::{AuthOptions, ObjectAuth};
use crate::housing::{check_key_name, HousingError, Result};

/// Largest blob file we accept; real blobs are a few hundred bytes.
const MAX_BLOB: u64 = 4096;

/// The directory holding the key blobs, and their authorization.
#[derive(Debug)]
pub(crate) struct KeyStore {
    dir: PathBuf,
    auth: ObjectAuth,
}

impl KeyStore {
    /// Opens (creating if needed, mode 0700) the blob directory and finds
    /// the object secret (see [`ObjectAuth::open`]).
    pub(crate) fn open(dir: &Path, options: &AuthOptions) -> Result<KeyStore> {
        fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        let auth = ObjectAuth::open(dir, options, has_any_key(dir)?)?;
        Ok(KeyStore {
            dir: dir.to_path_buf(),
            auth,
        })
    }

    /// The keys' (and the NV counter's) authorization.
    pub(crate) fn auth(&self) -> &ObjectAuth {
        &self.auth
    }

    /// The same, to create the secret before a first object.
    pub(crate) fn auth_mut(&mut self) -> &mut ObjectAuth {
        &mut self.auth
    }

    fn path(&self, name: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{name}.{ext}"))
    }

    /// Whether both blobs of `name` exist.
    pub(crate) fn exists(&self, name: &str) -> Result<bool> {
        check_key_name(name)?;
        Ok(self.path(name, "pub").is_file() && self.path(name, "priv").is_file())
    }

    /// Stores the blobs of a freshly created key; the private blob first so
    /// that a key "exists" (its `.pub` is present) only when complete.
    pub(crate) fn store(&self, name: &str, public: &Public, private: &Private) -> Result<()> {
        check_key_name(name)?;
        let pub_bytes = PublicBuffer::try_from(public.clone())
            .and_then(|b| b.marshall())
            .map_err(|e| invalid_data(format!("cannot marshal public blob: {e}")))?;
        let priv_value = private.value();
        let len = u16::try_from(priv_value.len())
            .map_err(|_| invalid_data("private blob too large".into()))?;
        let mut priv_bytes = Vec::with_capacity(priv_value.len() + 2);
        priv_bytes.extend_from_slice(&len.to_be_bytes());
        priv_bytes.extend_from_slice(priv_value);
        self.write_atomic(&self.path(name, "priv"), &priv_bytes)?;
        self.write_atomic(&self.path(name, "pub"), &pub_bytes)?;
        Ok(())
    }

    /// Loads the blobs of `name`; `NoSuchKey` if absent.
    pub(crate) fn load(&self, name: &str) -> Result<(Public, Private)> {
        check_key_name(name)?;
        let pub_bytes = read_bounded(&self.path(name, "pub"), name)?;
        let priv_bytes = read_bounded(&self.path(name, "priv"), name)?;
        let public = PublicBuffer::unmarshall(&pub_bytes)
            .and_then(Public::try_from)
            .map_err(|e| invalid_data(format!("key {name}: bad public blob: {e}")))?;
        let private = parse_tpm2b(&priv_bytes)
            .and_then(|body| Private::try_from(body.to_vec()).ok())
            .ok_or_else(|| invalid_data(format!("key {name}: bad private blob")))?;
        Ok((public, private))
    }

    /// Deletes the blobs of `name` (public first, so it stops "existing").
    pub(crate) fn remove(&self, name: &str) -> Result<()> {
        check_key_name(name)?;
        if !self.exists(name)? {
            return Err(HousingError::NoSuchKey(name.to_owned()));
        }
        for ext in ["pub", "priv"] {
            match fs::remove_file(self.path(name, ext)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        sync_dir(&self.dir)
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let result = (|| -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        sync_dir(&self.dir)
    }
}

/// Whether `dir` holds at least one key (a `<name>.pub` with a valid name).
fn has_any_key(dir: &Path) -> Result<bool> {
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".pub") {
            if check_key_name(stem).is_ok() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Body of a `TPM2B` (big-endian u16 size, then exactly that many bytes).
fn parse_tpm2b(bytes: &[u8]) -> Option<&[u8]> {
    let (size, body) = bytes.split_first_chunk::<2>()?;
    (usize::from(u16::from_be_bytes(*size)) == body.len()).then_some(body)
}

fn read_bounded(path: &Path, name: &str) -> Result<Vec<u8>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(HousingError::NoSuchKey(name.to_owned()))
        }
        Err(e) => return Err(e.into()),
    };
    let mut buf = Vec::new();
    file.take(MAX_BLOB + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_BLOB {
        return Err(invalid_data(format!(
            "key {name}: blob larger than {MAX_BLOB} bytes"
        )));
    }
    Ok(buf)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn invalid_data(msg: String) -> HousingError {
    HousingError::Io(io::Error::new(io::ErrorKind::InvalidData, msg))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn tpm2b() {
        assert_eq!(parse_tpm2b(&[0, 2, 7, 8]), Some(&[7u8, 8][..]));
        assert_eq!(parse_tpm2b(&[0, 3, 7, 8]), None);
        assert_eq!(parse_tpm2b(&[0, 1, 7, 8]), None);
        assert_eq!(parse_tpm2b(&[0]), None);
        assert_eq!(parse_tpm2b(&[0, 0]), Some(&[][..]));
    }

    #[test]
    fn missing_key_is_no_such_key() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyStore::open(dir.path(), &AuthOptions::default()).unwrap();
        assert!(!ks.exists("k").unwrap());
        assert!(matches!(ks.load("k"), Err(HousingError::NoSuchKey(_))));
        assert!(matches!(ks.remove("k"), Err(HousingError::NoSuchKey(_))));
    }

    #[test]
    fn oversized_blob_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyStore::open(dir.path(), &AuthOptions::default()).unwrap();
        fs::write(dir.path().join("k.pub"), vec![0u8; 5000]).unwrap();
        fs::write(dir.path().join("k.priv"), [0u8, 1, 2]).unwrap();
        assert!(matches!(ks.load("k"), Err(HousingError::Io(_))));
    }

    #[test]
    fn blobs_without_secret_make_a_legacy_store() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!KeyStore::open(dir.path(), &AuthOptions::default())
            .unwrap()
            .auth()
            .legacy());
        fs::write(dir.path().join("identity.pub"), [0u8; 4]).unwrap();
        assert!(KeyStore::open(dir.path(), &AuthOptions::default())
            .unwrap()
            .auth()
            .legacy());
    }
}
