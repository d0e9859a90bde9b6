//! Hashing of messages handed over as file descriptors.
//!
//! Mails can be large: they are streamed through SHA-384 in 64 KiB chunks
//! on a blocking thread, never read whole into memory, and refused past the
//! configured size.

use std::io::Read;

use sha2::{Digest as _, Sha384};

use crate::error::{Result, ServiceError};
use crate::ledger::Digest;

/// SHA-384 of everything readable from `file`, at most `limit` bytes.
pub async fn sha384_file(file: std::fs::File, limit: u64) -> Result<Digest> {
    tokio::task::spawn_blocking(move || sha384_reader(file, limit))
        .await
        .map_err(|e| ServiceError::Internal(format!("hashing task: {e}")))?
}

/// SHA-384 of a reader, refusing more than `limit` bytes.
pub fn sha384_reader(mut reader: impl Read, limit: u64) -> Result<Digest> {
    let mut hasher = Sha384::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ServiceError::InvalidInput(format!(
                    "cannot read the message from its file descriptor: {e}"
                )))
            }
        };
        total = total.saturating_add(n as u64);
        if total > limit {
            return Err(ServiceError::InvalidInput(format!(
                "message larger than the {limit}-byte limit; postmark its SHA-384 with PostmarkDigest instead"
            )));
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// Domain-separated digest of a request's input, for idempotency checks.
pub fn input_digest(service: &str, parts: &[&[u8]]) -> Digest {
    let mut h = Sha384::new();
    h.update(service.as_bytes());
    h.update([0u8]);
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_limits() {
        let data = vec![7u8; 200_000];
        let d = sha384_reader(&data[..], 200_000).expect("within limit");
        assert_eq!(d.to_vec(), Sha384::digest(&data).to_vec());
        assert!(matches!(
            sha384_reader(&data[..], 199_999),
            Err(ServiceError::InvalidInput(_))
        ));
    }

    #[test]
    fn input_digest_separates_fields() {
        assert_ne!(
            input_digest("a", &[b"bc", b""]),
            input_digest("a", &[b"b", b"c"])
        );
    }
}
