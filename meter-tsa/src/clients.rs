//! Who may spend the meter's funds through the endpoint: a file of salted
//! SHA-256 hashes of per-client secrets, one client a line:
//!
//! ```text
//! # name:sha256:SALT_HEX:HASH_HEX   HASH = SHA-256(SALT || secret)
//! signer1:sha256:6f1c…:9ab2…
//! ```
//!
//! A client presents its secret as HTTP Basic (`name:secret`) or as a bearer
//! token (the secret alone). Secrets are long random strings the admin
//! generates (`meter-tsa hash-secret NAME` makes the line), so a salted
//! SHA-256 is enough: there is nothing to brute-force as with passwords.
//! Comparisons are constant-time.

use std::path::Path;

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A client name: what the request ids are scoped by.
pub const MAX_NAME: usize = 48;

/// One allowed client.
#[derive(Debug, Clone)]
struct Client {
    name: String,
    salt: Vec<u8>,
    hash: [u8; 32],
}

/// The allowed clients.
#[derive(Debug, Clone, Default)]
pub struct Clients {
    all: Vec<Client>,
}

/// A credential file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientsError {
    /// Unreadable.
    #[error("cannot read the client file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line that is not `name:sha256:SALT_HEX:HASH_HEX`.
    #[error("{path} line {line}: expected name:sha256:SALT_HEX:HASH_HEX (name [A-Za-z0-9._-], at most 48)")]
    Syntax {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
    },
}

/// Whether `name` may name a client (it becomes part of request ids).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn digest(salt: &[u8], secret: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(secret);
    h.finalize().into()
}

/// The file line for `name` with `secret` and a fresh salt.
pub fn line(name: &str, secret: &str) -> String {
    let mut salt = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut salt);
    format!(
        "{name}:sha256:{}:{}",
        hex::encode(salt),
        hex::encode(digest(&salt, secret.as_bytes()))
    )
}

impl Clients {
    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<Clients, ClientsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ClientsError::Read {
            path: shown.clone(),
            source,
        })?;
        Clients::parse(&text).map_err(|line| ClientsError::Syntax { path: shown, line })
    }

    /// Parses the file's text; `Err(line)` names the bad line.
    pub fn parse(text: &str) -> Result<Clients, usize> {
        let mut all = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = l.split(':').collect();
            let client = match parts.as_slice() {
                [name, "sha256", salt, hash] if valid_name(name) => {
                    let salt = hex::decode(salt).map_err(|_| i + 1)?;
                    let hash: [u8; 32] = hex::decode(hash)
                        .ok()
                        .and_then(|h| h.try_into().ok())
                        .ok_or(i + 1)?;
                    Client {
                        name: (*name).to_owned(),
                        salt,
                        hash,
                    }
                }
                _ => return Err(i + 1),
            };
            all.push(client);
        }
        Ok(Clients { all })
    }

    /// How many clients are allowed.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The client an `Authorization` header value names, if its secret matches.
    pub fn authenticate(&self, authorization: &str) -> Option<&str> {
        let (scheme, value) = authorization.trim().split_once(' ')?;
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value)
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (name, secret) = text.split_once(':')?;
            let c = self.all.iter().find(|c| c.name == name)?;
            return matches(c, secret).then_some(c.name.as_str());
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            // Every entry is checked, so the time does not tell which matched.
            let mut found = None;
            for c in &self.all {
                if matches(c, value) && found.is_none() {
                    found = Some(c.name.as_str());
                }
            }
            return found;
        }
        None
    }
}

fn matches(c: &Client, secret: &str) -> bool {
    bool::from(digest(&c.salt, secret.as_bytes()).ct_eq(&c.hash))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn basic(s: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }

    #[test]
    fn basic_and_bearer_match_only_the_right_secret() {
        let text = format!(
            "# clients\n{}\n{}\n",
            line("alice", "s3cret"),
            line("bob", "other")
        );
        let c = Clients::parse(&text).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.authenticate(&basic("alice:s3cret")), Some("alice"));
        assert_eq!(c.authenticate(&basic("alice:other")), None);
        assert_eq!(c.authenticate(&basic("carol:s3cret")), None);
        assert_eq!(c.authenticate("Bearer other"), Some("bob"));
        assert_eq!(c.authenticate("Bearer nope"), None);
        assert_eq!(c.authenticate("Digest x"), None);
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(Clients::parse("ok\n").unwrap_err(), 1);
        assert_eq!(Clients::parse("\na b:sha256:00:00\n").unwrap_err(), 2);
        assert!(Clients::parse(&line("x", "y")).is_ok());
    }
}
