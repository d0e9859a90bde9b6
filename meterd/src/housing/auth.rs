//! Authorization of the meter's TPM objects (issue 12, item 3): what a
//! process needs, besides TPM access and the key blobs, to use the meter's
//! keys and NV counter, and the hierarchy passwords meterd needs to create
//! them.
//!
//! * **The object secret.** One random 32-byte secret per meter. Every key
//!   meterd creates gets the auth value `HMAC-SHA256(secret,
//!   "meterd-tpm-auth-v1:key:<name>")` and the NV counter
//!   `HMAC-SHA256(secret, "meterd-tpm-auth-v1:nv:<index as 8 hex digits>")`
//!   (32 bytes: the most a SHA-256-named object takes). Distinct values per
//!   object, so that an auth value seen on the wire (a password session
//!   sends it in the clear to the TPM) authorizes that object only. The
//!   secret lives in the systemd credential `meterd-auth` when meterd is
//!   given one (`$CREDENTIALS_DIRECTORY/meterd-auth`), otherwise in
//!   `<state>/keys/auth` (mode 0600, created just before the first key, so
//!   at provisioning). It is never written into a blob: `keys/*.priv` holds
//!   the auth value sealed under the storage primary, which the TPM alone
//!   can open, and nobody can turn a blob back into its auth value.
//! * **Legacy meters.** A meter provisioned before this (key blobs and no
//!   secret) keeps working: its keys and counter were made with an empty
//!   auth, so the housing uses an empty auth for every object, creates no
//!   secret, and says so ([`ObjectAuth::legacy`], logged at every start and
//!   shown by Status): anyone who can reach the TPM can use such a meter's
//!   objects; re-provision it.
//! * **Hierarchy passwords.** The owner hierarchy's (for the storage
//!   primary and the NV define) and the endorsement hierarchy's (for the
//!   clock's calibration key and GetTime's privacy check) come from systemd
//!   credentials named in the configuration (`owner-auth`,
//!   `endorsement-auth`), never from a plain configuration value: a file in
//!   /etc is world-readable by habit and ends up in backups and bug reports.
//!   The content is the password as `tpm2_changeauth` takes it: bytes,
//!   `str:` + bytes or `hex:` + hex digits; one trailing newline is dropped.
//!
//! This module is used by both housings (the software one models the same
//! auth values) and does no TPM I/O.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{HousingError, Result};

/// Name of the secret file in the key directory.
pub const AUTH_FILE: &str = "auth";
/// Default name of the systemd credential holding the object secret.
pub const DEFAULT_AUTH_CREDENTIAL: &str = "meterd-auth";
/// Default name of the systemd credential holding the owner-hierarchy password.
pub const DEFAULT_OWNER_CREDENTIAL: &str = "owner-auth";
/// Default name of the systemd credential holding the endorsement-hierarchy password.
pub const DEFAULT_ENDORSEMENT_CREDENTIAL: &str = "endorsement-auth";
/// Size of a secret meterd generates.
pub const SECRET_LEN: usize = 32;
/// Shortest secret accepted from a file or a credential.
const MIN_SECRET: usize = 32;
/// Longest secret or password file read.
const MAX_FILE: u64 = 1024;
/// Longest hierarchy password (TPM2B_AUTH holds at most a SHA-512 digest).
const MAX_PASSWORD: usize = 64;
/// Prefix of every derivation label.
pub const LABEL_PREFIX: &str = "meterd-tpm-auth-v1:";

/// A 32-byte auth value of one object.
pub type AuthValue = Zeroizing<[u8; 32]>;

/// The meter's object secret. Never printed.
#[derive(Clone)]
pub struct AuthSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for AuthSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthSecret(..)")
    }
}

impl AuthSecret {
    /// A fresh random secret (the OS's CSPRNG).
    pub fn generate() -> Result<AuthSecret> {
        let mut bytes = Zeroizing::new(vec![0u8; SECRET_LEN]);
        getrandom::getrandom(&mut bytes)
            .map_err(|e| HousingError::Io(io::Error::other(format!("getrandom: {e}"))))?;
        Ok(AuthSecret(bytes))
    }

    /// A secret from bytes (at least 32).
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<AuthSecret, String> {
        if bytes.len() < MIN_SECRET || bytes.len() as u64 > MAX_FILE {
            return Err(format!(
                "a secret of {} bytes: expected {MIN_SECRET} to {MAX_FILE}",
                bytes.len()
            ));
        }
        Ok(AuthSecret(Zeroizing::new(bytes.to_vec())))
    }

    fn derive(&self, label: &str) -> AuthValue {
        let mut out = Zeroizing::new([0u8; 32]);
        // HMAC takes a key of any length; this cannot fail.
        if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) {
            mac.update(LABEL_PREFIX.as_bytes());
            mac.update(label.as_bytes());
            out.copy_from_slice(&mac.finalize().into_bytes());
        }
        out
    }

    /// Auth value of the key named `name`.
    pub fn key_auth(&self, name: &str) -> AuthValue {
        self.derive(&format!("key:{name}"))
    }

    /// Auth value of the NV index `index`.
    pub fn nv_auth(&self, index: u32) -> AuthValue {
        self.derive(&format!("nv:{index:08x}"))
    }

    /// Whether two secrets are the same (for the "file and credential
    /// differ" warning).
    fn same(&self, other: &AuthSecret) -> bool {
        self.0.as_slice() == other.0.as_slice()
    }
}

/// Where meterd looks for its TPM authorizations.
#[derive(Debug, Clone)]
pub struct AuthOptions {
    /// `$CREDENTIALS_DIRECTORY`, when systemd passed credentials.
    pub credentials_dir: Option<PathBuf>,
    /// Credential holding the object secret (`meterd-auth`; empty: none).
    pub auth_credential: String,
    /// Credential holding the owner-hierarchy password (`owner-auth`; empty: none).
    pub owner_credential: String,
    /// Credential holding the endorsement-hierarchy password (`endorsement-auth`; empty: none).
    pub endorsement_credential: String,
}

impl Default for AuthOptions {
    /// The defaults, with no credentials directory (tests, examples).
    fn default() -> Self {
        AuthOptions {
            credentials_dir: None,
            auth_credential: DEFAULT_AUTH_CREDENTIAL.into(),
            owner_credential: DEFAULT_OWNER_CREDENTIAL.into(),
            endorsement_credential: DEFAULT_ENDORSEMENT_CREDENTIAL.into(),
        }
    }
}

impl AuthOptions {
    /// Path of credential `name`, if there is a credentials directory and a name.
    fn credential(&self, name: &str) -> Option<PathBuf> {
        let dir = self.credentials_dir.as_ref()?;
        (!name.is_empty()).then(|| dir.join(name))
    }
}

/// Where the object secret comes from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// A systemd credential.
    Credential { name: String, path: PathBuf },
    /// The file in the state directory.
    File(PathBuf),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Credential { name, path } => {
                write!(f, "the systemd credential {name} ({})", path.display())
            }
            SecretSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The object secret of a TPM housing and the meter's auth mode.
#[derive(Debug)]
pub struct ObjectAuth {
    secret: Option<AuthSecret>,
    source: SecretSource,
    legacy: bool,
}

impl ObjectAuth {
    /// Finds the secret: the credential if given, else `<key_dir>/auth`.
    /// `has_keys`: the key directory already holds key blobs (with no
    /// secret anywhere, that is a legacy meter).
    pub fn open(key_dir: &Path, options: &AuthOptions, has_keys: bool) -> Result<ObjectAuth> {
        let file = key_dir.join(AUTH_FILE);
        let from_file = read_secret_file(&file)?;
        if let Some(path) = options.credential(&options.auth_credential) {
            if let Some(bytes) = read_bounded(&path)? {
                let secret = AuthSecret::from_bytes(&bytes).map_err(|e| {
                    invalid(format!(
                        "credential {} ({}): {e}",
                        options.auth_credential,
                        path.display()
                    ))
                })?;
                if from_file.as_ref().is_some_and(|f| !f.same(&secret)) {
                    tracing::warn!(
                        file = %file.display(),
                        credential = %options.auth_credential,
                        "the TPM auth secret file differs from the credential and is ignored; \
                         objects created with the file's secret will refuse meterd"
                    );
                }
                return Ok(ObjectAuth {
                    secret: Some(secret),
                    source: SecretSource::Credential {
                        name: options.auth_credential.clone(),
                        path,
                    },
                    legacy: false,
                });
            }
        }
        let legacy = from_file.is_none() && has_keys;
        Ok(ObjectAuth {
            secret: from_file,
            source: SecretSource::File(file),
            legacy,
        })
    }

    /// Whether this meter's objects were made without authorization
    /// (provisioned before issue 12): every object is used with an empty auth.
    pub fn legacy(&self) -> bool {
        self.legacy
    }

    /// Where the secret is (or will be created).
    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// Whether a secret is loaded.
    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    /// Makes sure a secret exists before an object is created: generates
    /// and stores `keys/auth` (0600) when there is none. A legacy meter
    /// gets none (its new objects match its old ones: empty auth).
    pub fn ensure_secret(&mut self) -> Result<()> {
        if self.secret.is_some() || self.legacy {
            return Ok(());
        }
        let SecretSource::File(path) = &self.source else {
            return Ok(());
        };
        let secret = AuthSecret::generate()?;
        write_secret_file(path, &secret)?;
        tracing::info!(file = %path.display(), "created the TPM auth secret");
        self.secret = Some(secret);
        Ok(())
    }

    /// Auth value of key `name`: `None` (empty auth) on a legacy meter or
    /// while no secret exists.
    pub fn key(&self, name: &str) -> Option<AuthValue> {
        self.usable().map(|s| s.key_auth(name))
    }

    /// Auth value of NV index `index` (as [`Self::key`]).
    pub fn nv(&self, index: u32) -> Option<AuthValue> {
        self.usable().map(|s| s.nv_auth(index))
    }

    fn usable(&self) -> Option<&AuthSecret> {
        if self.legacy {
            None
        } else {
            self.secret.as_ref()
        }
    }

    /// What to tell an operator when the TPM refuses an object's auth.
    pub fn refusal_hint(&self, object: &str) -> String {
        if self.legacy {
            format!(
                "{object} refused an empty authorization. This meter has key blobs but no \
                 auth secret ({} is missing), so it was taken for one provisioned before TPM \
                 authorization; if it was provisioned with one, restore {} from a backup (or \
                 give meterd the credential {DEFAULT_AUTH_CREDENTIAL})",
                self.source, self.source
            )
        } else {
            format!(
                "{object} refused the authorization derived from {}: that secret is not the \
                 one the object was created with (replaced, restored from another meter, or \
                 a credential given to a meter provisioned with keys/auth or before TPM \
                 authorization)",
                self.source
            )
        }
    }
}

/// A hierarchy password from a systemd credential.
#[derive(Clone)]
pub struct HierarchyAuth {
    /// `owner` or `endorsement`.
    pub hierarchy: &'static str,
    /// Credential name (empty: not configured).
    pub credential: String,
    /// Where the credential was looked for.
    pub path: Option<PathBuf>,
    /// The password, if the credential was found.
    pub value: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for HierarchyAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HierarchyAuth")
            .field("hierarchy", &self.hierarchy)
            .field("credential", &self.credential)
            .field("path", &self.path)
            .field("set", &self.value.is_some())
            .finish()
    }
}

impl HierarchyAuth {
    /// Reads the credential `name` for `hierarchy`; absent means no password.
    pub fn load(hierarchy: &'static str, options: &AuthOptions, name: &str) -> Result<Self> {
        let path = options.credential(name);
        let value =
            match &path {
                Some(p) => match read_bounded(p)? {
                    Some(bytes) => Some(parse_password(&bytes).map_err(|e| {
                        invalid(format!("credential {name} ({}): {e}", p.display()))
                    })?),
                    None => None,
                },
                None => None,
            };
        Ok(HierarchyAuth {
            hierarchy,
            credential: name.to_owned(),
            path,
            value,
        })
    }

    /// What to tell an operator when the TPM refuses this hierarchy's auth.
    pub fn refusal_hint(&self) -> String {
        let h = self.hierarchy;
        let name = if self.credential.is_empty() {
            match h {
                "owner" => DEFAULT_OWNER_CREDENTIAL,
                _ => DEFAULT_ENDORSEMENT_CREDENTIAL,
            }
        } else {
            &self.credential
        };
        let how = format!(
            "give meterd the {h} password as the systemd credential {name} \
             (LoadCredential={name} in meterd.service reads /etc/credstore/{name}; \
             or LoadCredentialEncrypted= with systemd-creds)"
        );
        match (&self.path, &self.value) {
            (_, Some(_)) => format!(
                "the TPM refused the {h} hierarchy password from the credential {name}: \
                 it is not the TPM's {h} password (tpm2_changeauth -c {h} changed it?); \
                 update the credential"
            ),
            (Some(p), None) => format!(
                "the TPM's {h} hierarchy has a password and meterd has none \
                 ({} does not exist): {how}",
                p.display()
            ),
            (None, None) => format!(
                "the TPM's {h} hierarchy has a password and meterd has none (no \
                 $CREDENTIALS_DIRECTORY{}): {how}",
                if self.credential.is_empty() {
                    format!(", and {h}_auth_credential is empty in meterd.toml")
                } else {
                    String::new()
                }
            ),
        }
    }
}

/// A password as `tpm2_changeauth` takes it: `hex:` + hex digits, `str:` +
/// bytes, or bytes; one trailing `\n` (or `\r\n`) is dropped.
pub fn parse_password(raw: &[u8]) -> std::result::Result<Zeroizing<Vec<u8>>, String> {
    let mut bytes = raw;
    if let Some(b) = bytes.strip_suffix(b"\n") {
        bytes = b.strip_suffix(b"\r").unwrap_or(b);
    }
    let value = if let Some(hex_digits) = bytes.strip_prefix(b"hex:") {
        Zeroizing::new(
            hex::decode(hex_digits).map_err(|e| format!("hex: password is not hex: {e}"))?,
        )
    } else {
        Zeroizing::new(bytes.strip_prefix(b"str:").unwrap_or(bytes).to_vec())
    };
    if value.len() > MAX_PASSWORD {
        return Err(format!(
            "a password of {} bytes: at most {MAX_PASSWORD}",
            value.len()
        ));
    }
    Ok(value)
}

/// Reads a small file; `None` if it does not exist.
fn read_bounded(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(HousingError::Io(io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", path.display()),
            )))
        }
    };
    let mut buf = Zeroizing::new(Vec::new());
    file.take(MAX_FILE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_FILE {
        return Err(invalid(format!(
            "{} is larger than {MAX_FILE} bytes",
            path.display()
        )));
    }
    Ok(Some(buf))
}

/// Reads `keys/auth`, tightening its mode to 0600 if it was wider.
fn read_secret_file(path: &Path) -> Result<Option<AuthSecret>> {
    let Some(bytes) = read_bounded(path)? else {
        return Ok(None);
    };
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    if mode != 0o600 {
        tracing::warn!(file = %path.display(), mode = format!("{mode:o}"), "TPM auth secret file was not 0600; fixing");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    AuthSecret::from_bytes(&bytes)
        .map(Some)
        .map_err(|e| invalid(format!("{}: {e}", path.display())))
}

/// Writes the secret atomically (temp file 0600, fsync, rename, fsync dir).
fn write_secret_file(path: &Path, secret: &AuthSecret) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| invalid(format!("{} has no directory", path.display())))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = (|| -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&secret.0)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(())
}

fn invalid(msg: String) -> HousingError {
    HousingError::Io(io::Error::new(io::ErrorKind::InvalidData, msg))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_hmac_sha256_of_the_documented_labels() {
        let s = AuthSecret::from_bytes(&[7u8; 32]).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&[7u8; 32]).unwrap();
        mac.update(b"meterd-tpm-auth-v1:key:postmark");
        assert_eq!(
            s.key_auth("postmark").as_slice(),
            &mac.finalize().into_bytes()[..]
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(&[7u8; 32]).unwrap();
        mac.update(b"meterd-tpm-auth-v1:nv:01504d54");
        assert_eq!(
            s.nv_auth(0x0150_4d54).as_slice(),
            &mac.finalize().into_bytes()[..]
        );
        assert_ne!(*s.key_auth("identity"), *s.key_auth("postmark"));
        assert!(AuthSecret::from_bytes(&[1u8; 31]).is_err());
    }

    #[test]
    fn passwords_as_tpm2_tools_takes_them() {
        assert_eq!(parse_password(b"secret\n").unwrap().as_slice(), b"secret");
        assert_eq!(parse_password(b"secret\r\n").unwrap().as_slice(), b"secret");
        assert_eq!(parse_password(b"str:a b").unwrap().as_slice(), b"a b");
        assert_eq!(parse_password(b"hex:00ff\n").unwrap().as_slice(), [0, 255]);
        assert!(parse_password(b"hex:zz").is_err());
        assert!(parse_password(&[b'a'; 65]).is_err());
        assert_eq!(parse_password(b"").unwrap().len(), 0);
    }

    #[test]
    fn secret_file_created_once_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = ObjectAuth::open(dir.path(), &AuthOptions::default(), false).unwrap();
        assert!(!a.legacy() && !a.has_secret() && a.key("k").is_none());
        a.ensure_secret().unwrap();
        let path = dir.path().join(AUTH_FILE);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read(&path).unwrap().len(), SECRET_LEN);
        let k = a.key("k").unwrap();
        // Reopened: same secret, same auth values.
        let b = ObjectAuth::open(dir.path(), &AuthOptions::default(), true).unwrap();
        assert!(!b.legacy());
        assert_eq!(*b.key("k").unwrap(), *k);
    }

    #[test]
    fn keys_without_secret_are_a_legacy_meter() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = ObjectAuth::open(dir.path(), &AuthOptions::default(), true).unwrap();
        assert!(a.legacy());
        a.ensure_secret().unwrap();
        assert!(
            !dir.path().join(AUTH_FILE).exists(),
            "no secret for a legacy meter"
        );
        assert!(a.key("identity").is_none() && a.nv(0x0150_0000).is_none());
        assert!(a.refusal_hint("key identity").contains("missing"));
    }

    #[test]
    fn credential_wins_over_the_file() {
        let keys = tempfile::tempdir().unwrap();
        let creds = tempfile::tempdir().unwrap();
        fs::write(creds.path().join("meterd-auth"), [9u8; 40]).unwrap();
        let options = AuthOptions {
            credentials_dir: Some(creds.path().to_path_buf()),
            ..AuthOptions::default()
        };
        let mut a = ObjectAuth::open(keys.path(), &options, true).unwrap();
        assert!(!a.legacy());
        a.ensure_secret().unwrap();
        assert!(!keys.path().join(AUTH_FILE).exists());
        let expected = AuthSecret::from_bytes(&[9u8; 40]).unwrap().key_auth("x");
        assert_eq!(*a.key("x").unwrap(), *expected);
        assert!(matches!(a.source(), SecretSource::Credential { .. }));
        // A short credential is refused, with its name.
        fs::write(creds.path().join("meterd-auth"), [9u8; 8]).unwrap();
        let err = ObjectAuth::open(keys.path(), &options, false).unwrap_err();
        assert!(err.to_string().contains("meterd-auth"), "{err}");
    }

    #[test]
    fn hierarchy_hints_name_the_credential() {
        let creds = tempfile::tempdir().unwrap();
        let options = AuthOptions {
            credentials_dir: Some(creds.path().to_path_buf()),
            ..AuthOptions::default()
        };
        let none = HierarchyAuth::load("owner", &options, "owner-auth").unwrap();
        assert!(none.value.is_none());
        let hint = none.refusal_hint();
        assert!(
            hint.contains("owner-auth") && hint.contains("does not exist"),
            "{hint}"
        );
        fs::write(creds.path().join("owner-auth"), b"pw\n").unwrap();
        let set = HierarchyAuth::load("owner", &options, "owner-auth").unwrap();
        assert_eq!(set.value.as_deref().map(Vec::as_slice), Some(&b"pw"[..]));
        assert!(set.refusal_hint().contains("not the TPM's owner password"));
        let no_dir = HierarchyAuth::load("owner", &AuthOptions::default(), "owner-auth").unwrap();
        assert!(no_dir.refusal_hint().contains("CREDENTIALS_DIRECTORY"));
    }
}
