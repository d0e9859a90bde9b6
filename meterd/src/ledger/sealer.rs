//! Sealers: the TPM-backed [`HousingSealer`] used by the daemon, and a
//! software [`SoftwareSealer`] for tests and benchmarks of code that needs a
//! ledger but not a TPM.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use p384::ecdsa::signature::hazmat::PrehashSigner;
use p384::ecdsa::{Signature, SigningKey};

use super::{Digest, Sealer};
use crate::housing::{HousingError, HousingHandle, RawSignature};

/// [`Sealer`] over the housing thread: seals with a named TPM key, counts
/// with an NV counter. Calls go through the urgent lane and block, so it must
/// only be used from the ledger's own thread (which is what the ledger does).
pub struct HousingSealer {
    handle: HousingHandle,
    key: String,
    nv_index: u32,
    public_sec1: Vec<u8>,
}

impl HousingSealer {
    /// A sealer signing with key `key` and counting on NV index `nv_index`;
    /// `public_sec1` is that key's public point (uncompressed SEC1).
    pub fn new(handle: HousingHandle, key: &str, nv_index: u32, public_sec1: Vec<u8>) -> Self {
        HousingSealer {
            handle,
            key: key.to_owned(),
            nv_index,
            public_sec1,
        }
    }
}

impl Sealer for HousingSealer {
    fn sign(&mut self, digest: &Digest) -> Result<RawSignature, HousingError> {
        let key = self.key.clone();
        let digest = *digest;
        self.handle
            .call_urgent_blocking(move |h| h.sign_digest(&key, &digest))
    }

    fn counter_read(&mut self) -> Result<Option<u64>, HousingError> {
        let index = self.nv_index;
        self.handle
            .call_urgent_blocking(move |h| h.counter_read(index))
    }

    fn counter_increment(&mut self) -> Result<u64, HousingError> {
        let index = self.nv_index;
        self.handle
            .call_urgent_blocking(move |h| h.counter_increment(index))
    }

    fn public_key(&self) -> &[u8] {
        &self.public_sec1
    }
}

#[derive(Debug, Default)]
struct SoftShared {
    counter: AtomicU64,
    fail_sign: AtomicBool,
    fail_increment: AtomicBool,
    signs: AtomicU64,
}

/// A software sealer: a P-384 key in memory and a counter in memory. For
/// tests and benchmarks only — it protects nothing.
pub struct SoftwareSealer {
    key: SigningKey,
    public: Vec<u8>,
    shared: Arc<SoftShared>,
}

/// Test controls of a [`SoftwareSealer`] (shared with it).
#[derive(Debug, Clone)]
pub struct SoftwareSealerControl {
    shared: Arc<SoftShared>,
}

impl SoftwareSealer {
    /// A sealer whose key is the scalar `secret` (48 bytes, big-endian,
    /// non-zero and below the group order), with its counter at `counter`.
    pub fn new(
        secret: &[u8; 48],
        counter: u64,
    ) -> Result<(Self, SoftwareSealerControl), HousingError> {
        let key = SigningKey::from_slice(secret).map_err(|_| HousingError::Tpm {
            command: "software-key",
            message: "invalid P-384 scalar".into(),
        })?;
        let public = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let shared = Arc::new(SoftShared::default());
        shared.counter.store(counter, Ordering::SeqCst);
        let control = SoftwareSealerControl {
            shared: Arc::clone(&shared),
        };
        Ok((
            SoftwareSealer {
                key,
                public,
                shared,
            },
            control,
        ))
    }
}

impl SoftwareSealerControl {
    /// Current counter value.
    pub fn counter(&self) -> u64 {
        self.shared.counter.load(Ordering::SeqCst)
    }
    /// Sets the counter (simulates a TPM that moved on without this ledger).
    pub fn set_counter(&self, v: u64) {
        self.shared.counter.store(v, Ordering::SeqCst);
    }
    /// Makes `sign` fail (TPM down) while set.
    pub fn fail_sign(&self, on: bool) {
        self.shared.fail_sign.store(on, Ordering::SeqCst);
    }
    /// Makes `counter_increment` fail while set.
    pub fn fail_increment(&self, on: bool) {
        self.shared.fail_increment.store(on, Ordering::SeqCst);
    }
    /// Number of seals signed so far.
    pub fn signs(&self) -> u64 {
        self.shared.signs.load(Ordering::SeqCst)
    }
}

fn down(command: &'static str) -> HousingError {
    HousingError::Unavailable(format!("software sealer: {command} disabled by test"))
}

impl Sealer for SoftwareSealer {
    fn sign(&mut self, digest: &Digest) -> Result<RawSignature, HousingError> {
        if self.shared.fail_sign.load(Ordering::SeqCst) {
            return Err(down("sign"));
        }
        let sig: Signature = self
            .key
            .sign_prehash(digest)
            .map_err(|e| HousingError::Tpm {
                command: "sign",
                message: e.to_string(),
            })?;
        self.shared.signs.fetch_add(1, Ordering::SeqCst);
        let mut raw = [0u8; 96];
        raw.copy_from_slice(&sig.to_bytes());
        Ok(raw)
    }

    fn counter_read(&mut self) -> Result<Option<u64>, HousingError> {
        Ok(Some(self.shared.counter.load(Ordering::SeqCst)))
    }

    fn counter_increment(&mut self) -> Result<u64, HousingError> {
        if self.shared.fail_increment.load(Ordering::SeqCst) {
            return Err(down("counter_increment"));
        }
        Ok(self.shared.counter.fetch_add(1, Ordering::SeqCst) + 1)
    }

    fn public_key(&self) -> &[u8] {
        &self.public
    }
}
