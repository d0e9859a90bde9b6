//! Sealers: the TPM-backed [`HousingSealer`] used by the daemon, and a
//! software [`SoftwareSealer`] (a [`SoftwareHousing`] on its own thread,
//! with a known key) for tests and benchmarks of code that needs a ledger
//! but not a TPM; with it, the [`SoftwareSealReader`] of its test products.
//!
//! The blocking helpers at the bottom call the housing from the ledger's
//! own thread or an audit thread, never from the housing thread (the
//! sequencing job uses the housing it is given).

use std::sync::Arc;

use super::chain::sha384;
use super::{Digest, ProductSeal, RowContext, SealReader, Sealer};
use crate::housing::soft::{SoftwareHousing, SoftwareHousingControl, SoftwareOptions};
use crate::housing::{Housing, HousingError, HousingHandle, RawSignature};

/// [`Sealer`] over the daemon's housing: seals with a named TPM key,
/// counts epochs on an NV counter, reads product seals with `reader`.
pub struct HousingSealer {
    handle: HousingHandle,
    key: String,
    nv_index: u32,
    public_sec1: Vec<u8>,
    reader: Arc<dyn SealReader>,
}

impl HousingSealer {
    /// A sealer signing with key `key` (public point `public_sec1`,
    /// uncompressed SEC1) and counting on NV index `nv_index`.
    pub fn new(
        handle: HousingHandle,
        key: &str,
        nv_index: u32,
        public_sec1: Vec<u8>,
        reader: Arc<dyn SealReader>,
    ) -> Self {
        HousingSealer {
            handle,
            key: key.to_owned(),
            nv_index,
            public_sec1,
            reader,
        }
    }
}

impl Sealer for HousingSealer {
    fn housing(&self) -> &HousingHandle {
        &self.handle
    }
    fn key(&self) -> &str {
        &self.key
    }
    fn nv_index(&self) -> u32 {
        self.nv_index
    }
    fn public_key(&self) -> &[u8] {
        &self.public_sec1
    }
    fn reader(&self) -> Arc<dyn SealReader> {
        Arc::clone(&self.reader)
    }
}

/// Key name of a [`SoftwareSealer`]'s sealing key.
pub const SOFTWARE_SEAL_KEY: &str = "identity";
/// NV index of a [`SoftwareSealer`]'s counter.
pub const SOFTWARE_NV_INDEX: u32 = 0x0150_0001;

/// A software sealer: a [`SoftwareHousing`] of its own (its thread stops
/// when the sealer is dropped) holding the sealing key and the counter.
/// For tests and benchmarks only — it protects nothing.
pub struct SoftwareSealer {
    handle: HousingHandle,
    public: Vec<u8>,
    reader: Arc<dyn SealReader>,
}

/// Test controls of a [`SoftwareSealer`] (shared with it).
#[derive(Debug, Clone)]
pub struct SoftwareSealerControl {
    tpm: SoftwareHousingControl,
}

impl SoftwareSealer {
    /// A sealer whose key is the scalar `secret` (48 bytes, big-endian,
    /// non-zero and below the group order), with its counter at `counter`.
    pub fn new(
        secret: &[u8; 48],
        counter: u64,
    ) -> Result<(Self, SoftwareSealerControl), HousingError> {
        let (housing, tpm) = SoftwareHousing::new(SoftwareOptions::default());
        let public = tpm.import_key(SOFTWARE_SEAL_KEY, secret)?;
        tpm.set_counter(SOFTWARE_NV_INDEX, counter);
        let handle = HousingHandle::spawn(housing)?;
        Ok((
            SoftwareSealer {
                handle,
                public,
                reader: Arc::new(SoftwareSealReader),
            },
            SoftwareSealerControl { tpm },
        ))
    }
}

impl Drop for SoftwareSealer {
    fn drop(&mut self) {
        self.handle.close();
    }
}

impl Sealer for SoftwareSealer {
    fn housing(&self) -> &HousingHandle {
        &self.handle
    }
    fn key(&self) -> &str {
        SOFTWARE_SEAL_KEY
    }
    fn nv_index(&self) -> u32 {
        SOFTWARE_NV_INDEX
    }
    fn public_key(&self) -> &[u8] {
        &self.public
    }
    fn reader(&self) -> Arc<dyn SealReader> {
        Arc::clone(&self.reader)
    }
}

impl SoftwareSealerControl {
    /// Current counter value.
    pub fn counter(&self) -> u64 {
        self.tpm.counter(SOFTWARE_NV_INDEX).unwrap_or(0)
    }
    /// Sets the counter (simulates a TPM that moved on without this ledger).
    pub fn set_counter(&self, v: u64) {
        self.tpm.set_counter(SOFTWARE_NV_INDEX, v);
    }
    /// Makes every signature fail (TPM down) while set.
    pub fn fail_sign(&self, on: bool) {
        self.tpm.fail_sign(on);
    }
    /// Makes `counter_increment` fail while set.
    pub fn fail_increment(&self, on: bool) {
        self.tpm.fail_increment(on);
    }
    /// Signatures made so far (seals, checkpoints, test products).
    pub fn signs(&self) -> u64 {
        self.tpm.signs()
    }
    /// Counter increments so far.
    pub fn increments(&self) -> u64 {
        self.tpm.increments()
    }
    /// The software "TPM" itself (availability, clock).
    pub fn housing(&self) -> &SoftwareHousingControl {
        &self.tpm
    }
}

/// Reads the seals of the test products [`SoftwareSealReader::seal_product`]
/// makes: `"meterd-test-seal\n"` ‖ u32 BE length ‖ signed bytes ‖ raw
/// signature by [`SOFTWARE_SEAL_KEY`], where the signed bytes are the seal
/// attribute then the payload.
#[derive(Debug, Clone, Copy, Default)]
pub struct SoftwareSealReader;

const TEST_SEAL_MAGIC: &[u8] = b"meterd-test-seal\n";

impl SoftwareSealReader {
    /// A seal-bearing test product for `row`, signed in `h`.
    pub fn seal_product(
        h: &mut dyn Housing,
        row: &RowContext,
        payload: &[u8],
    ) -> Result<Vec<u8>, HousingError> {
        let mut signed = row.seal().attribute_der();
        signed.extend_from_slice(payload);
        let sig = h.sign_digest(SOFTWARE_SEAL_KEY, &sha384(&signed))?;
        let len = u32::try_from(signed.len()).map_err(|_| HousingError::Tpm {
            command: "sign",
            message: "test product too large".into(),
        })?;
        let mut out = TEST_SEAL_MAGIC.to_vec();
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&signed);
        out.extend_from_slice(&sig);
        Ok(out)
    }
}

impl SealReader for SoftwareSealReader {
    fn read(&self, product: &[u8]) -> Option<ProductSeal> {
        let rest = product.strip_prefix(TEST_SEAL_MAGIC)?;
        let len = usize::try_from(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)).ok()?;
        let signed = rest.get(4..4 + len)?;
        let sig = rest.get(4 + len..)?;
        Some(ProductSeal {
            key: SOFTWARE_SEAL_KEY,
            signed: signed.to_vec(),
            signature: sig.try_into().ok()?,
        })
    }
}

/// Signs `digest` with the sealing key (blocking).
pub(crate) fn sign(s: &dyn Sealer, digest: &Digest) -> Result<RawSignature, HousingError> {
    let key = s.key().to_owned();
    let digest = *digest;
    s.housing()
        .call_urgent_blocking(move |h| h.sign_digest(&key, &digest))
}

/// Reads the epoch counter (blocking; `None` when not defined).
pub(crate) fn counter_read(s: &dyn Sealer) -> Result<Option<u64>, HousingError> {
    let index = s.nv_index();
    s.housing()
        .call_urgent_blocking(move |h| h.counter_read(index))
}

/// Increments the epoch counter (blocking).
pub(crate) fn counter_increment(s: &dyn Sealer) -> Result<u64, HousingError> {
    let index = s.nv_index();
    s.housing()
        .call_urgent_blocking(move |h| h.counter_increment(index))
}

/// Public key of housing key `name`, as the housing reports it (blocking).
pub(crate) fn public_key_of(s: &dyn Sealer, name: &'static str) -> Result<Vec<u8>, HousingError> {
    if name == s.key() {
        return Ok(s.public_key().to_vec());
    }
    s.housing()
        .call_urgent_blocking(move |h| h.public_key(name))
}
