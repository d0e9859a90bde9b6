//! Formats shared by `meterd` and the authority: X.509 certificates, PKCS#10 requests,
//! CMS SignedData (RFC 5652), RFC 3161 time-stamp tokens ("postmarks") and the strict JSON
//! payloads the authority signs (vouchers, rate tables, clear-lock orders).
//!
//! Why a crate of its own: the meter (which signs with a TPM) and the authority (which signs
//! with a software key) must produce and accept byte-identical structures, and every artifact
//! must verify with stock OpenSSL 3. Nothing here does I/O or touches a TPM: signing is
//! two-phase (`prepare` → `digest()` → external signer → `finish(raw r||s)`), so the TPM
//! stays behind the housing door.
//!
//! Algorithms are fixed: ECDSA P-384 with SHA-384 everywhere. Untrusted input is bounded by
//! [`MAX_OBJECT`] and parsed strictly; every failure is a named [`PkiError`], never a panic.

pub mod account;
pub mod agent;
pub mod cert;
pub mod certreq;
pub mod cms;
pub mod credit;
pub mod crl;
pub mod csr;
pub mod detached;
pub mod envelope;
pub mod funds;
pub mod indicium;
pub mod issue;
pub mod ledger_format;
pub mod oid;
pub mod payload;
pub mod pem;
pub mod postal;
pub mod report;
pub mod revoke;
pub mod segment;
pub mod sig;
pub mod tpm;
pub mod tsp;
pub mod tsq;
pub mod unseal;

#[cfg(test)]
mod test_keys;
mod util;

pub use der::asn1::ObjectIdentifier;

/// Largest DER or PEM object accepted from outside (64 KiB).
pub const MAX_OBJECT: usize = 64 * 1024;

/// What went wrong with a PKI object; each message says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkiError {
    /// The bytes are not the expected structure.
    #[error("malformed object: {0}; check that the file is the right DER/PEM object")]
    Malformed(String),
    /// A signature (or a digest bound by one) does not match.
    #[error("bad signature: {0}; the object was altered or signed by another key")]
    BadSignature(String),
    /// The signer does not chain to a trusted anchor.
    #[error("untrusted signer: {0}; check the authority root certificate in use")]
    Untrusted(String),
    /// A certificate is outside its validity period.
    #[error("expired or not yet valid: {0}; check the clock or renew the certificate")]
    Expired(String),
    /// A signed object of another type than the one expected.
    #[error("wrong object type: {0}; pass the object meant for this operation")]
    WrongType(String),
    /// Input larger than [`MAX_OBJECT`].
    #[error("object too large: {0} bytes (limit 65536); this is not a meter object")]
    TooLarge(usize),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, PkiError>;

impl From<der::Error> for PkiError {
    fn from(e: der::Error) -> Self {
        PkiError::Malformed(format!("DER: {e}"))
    }
}
