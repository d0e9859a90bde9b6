//! A housing in software, for fast in-process tests. **It protects nothing.**
//!
//! [`SoftwareHousing`] implements [`Housing`] with P-384 secrets, NV counters
//! and a TPM-like clock held in the process's memory. Anyone who can read
//! the process can take the keys, rewrite the counters and move the clock:
//! there is no secure housing here, which is the whole point of a meter. It
//! exists so that the services can be tested through `bus::serve` in
//! milliseconds, without swtpm, and so that tests can make the "TPM" fail
//! or jump in time on purpose ([`SoftwareHousingControl`]).
//!
//! It is `pub` because integration tests are another crate, but meterd's
//! configuration cannot select it: the daemon (`main.rs`) always opens a
//! [`super::tpm::TpmHousing`] from the configured TCTI, and nothing in
//! [`crate::config::Config`] names a housing kind. Keep it that way.
//!
//! Faithful to the TPM housing where services could notice:
//!
//! * key names follow the same rule (`[a-z0-9-]{1,64}`), creating an
//!   existing name is `Io(AlreadyExists)`, an absent one is `NoSuchKey`;
//!   `has_key` works while the "TPM" is unavailable (the TPM housing reads
//!   its blob directory for it);
//! * NV indices must be in the NV range; a defined counter has a value only
//!   after its first increment, which `counter_define` does;
//! * the clock runs in real time from creation (unless paused), survives a
//!   "reset" (the reset count grows, the restart count goes back to 0), as
//!   a TPM's clock does.
//!
//! The state lives behind an `Arc` shared with the control handle, so a test
//! can also "restart meterd on the same TPM": [`SoftwareHousingControl::housing`]
//! makes another housing over the same keys, counters and clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use p384::ecdsa::signature::hazmat::PrehashSigner;
use p384::ecdsa::{Signature, SigningKey};
use sha2::{Digest as _, Sha384};
use zeroize::Zeroizing;

use super::{
    check_key_name, check_nv_index, Housing, HousingError, RawSignature, Result, TpmClock,
};

/// Options of a new [`SoftwareHousing`].
#[derive(Debug, Clone, Default)]
pub struct SoftwareOptions {
    /// Derive every key from this seed (and the key's name and how many keys
    /// of that name were created before), so a test run is reproducible.
    /// `None`: fresh random keys.
    pub seed: Option<[u8; 32]>,
    /// Clock value (ms) at creation.
    pub clock_start_ms: u64,
    /// Start with the clock paused: it then moves only by
    /// [`SoftwareHousingControl::advance`].
    pub clock_paused: bool,
}

/// One software "TPM": what the housing and its control handles share.
#[derive(Debug)]
struct State {
    seed: Option<[u8; 32]>,
    keys: BTreeMap<String, SigningKey>,
    /// Names of the keys in `keys` that are key-agreement keys (they do not sign).
    agreement: std::collections::BTreeSet<String>,
    /// Keys ever created per name, so a re-created seeded key differs.
    generations: HashMap<String, u64>,
    /// Defined NV counters; `None` until the first increment.
    counters: BTreeMap<u32, Option<u64>>,
    clock: Clock,
    faults: Faults,
    stats: Stats,
}

#[derive(Debug, Default, Clone, Copy)]
struct Faults {
    unavailable: bool,
    fail_sign: bool,
    fail_increment: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    signs: u64,
    increments: u64,
    shutdowns: u64,
}

/// A TPM-like clock: milliseconds that advance in real time unless paused.
#[derive(Debug)]
struct Clock {
    /// Clock value at `since` (or the value, when paused).
    base_ms: u64,
    /// When `base_ms` was taken; `None` while paused.
    since: Option<Instant>,
    reset_count: u32,
    restart_count: u32,
    safe: bool,
}

impl Clock {
    fn now_ms(&self) -> u64 {
        let running = self.since.map(|s| s.elapsed()).unwrap_or_default();
        self.base_ms
            .saturating_add(u64::try_from(running.as_millis()).unwrap_or(u64::MAX))
    }

    fn read(&self) -> TpmClock {
        TpmClock {
            clock_ms: self.now_ms(),
            reset_count: self.reset_count,
            restart_count: self.restart_count,
            safe: self.safe,
        }
    }

    fn set_paused(&mut self, paused: bool) {
        let now = self.now_ms();
        self.base_ms = now;
        self.since = (!paused).then(Instant::now);
    }

    fn advance(&mut self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.base_ms = self.base_ms.saturating_add(by);
    }
}

/// The software housing. **Tests only; it protects nothing** (see the module doc).
pub struct SoftwareHousing {
    state: Arc<Mutex<State>>,
}

/// Test controls of a [`SoftwareHousing`]: faults, clock, counters. Cloneable;
/// every clone and every housing made from it share one software "TPM".
#[derive(Clone)]
pub struct SoftwareHousingControl {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SoftwareHousingControl {
    // Never print the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareHousingControl")
            .field("keys", &self.key_names())
            .field("clock", &self.clock())
            .finish()
    }
}

impl SoftwareHousing {
    /// A fresh software "TPM" with no keys and no counters, and its control.
    pub fn new(options: SoftwareOptions) -> (SoftwareHousing, SoftwareHousingControl) {
        let state = Arc::new(Mutex::new(State {
            seed: options.seed,
            keys: BTreeMap::new(),
            agreement: Default::default(),
            generations: HashMap::new(),
            counters: BTreeMap::new(),
            clock: Clock {
                base_ms: options.clock_start_ms,
                since: (!options.clock_paused).then(Instant::now),
                reset_count: 0,
                restart_count: 0,
                safe: true,
            },
            faults: Faults::default(),
            stats: Stats::default(),
        }));
        let control = SoftwareHousingControl {
            state: Arc::clone(&state),
        };
        (SoftwareHousing { state }, control)
    }

    /// A software housing whose keys derive from `seed` (see [`SoftwareOptions::seed`]).
    pub fn seeded(seed: [u8; 32]) -> (SoftwareHousing, SoftwareHousingControl) {
        SoftwareHousing::new(SoftwareOptions {
            seed: Some(seed),
            ..SoftwareOptions::default()
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        lock(&self.state)
    }

    /// The state, unless the test made the "TPM" unreachable.
    fn reachable(&self) -> Result<MutexGuard<'_, State>> {
        let state = self.lock()?;
        if state.faults.unavailable {
            return Err(disabled("the software TPM is unavailable"));
        }
        Ok(state)
    }
}

fn lock(state: &Mutex<State>) -> Result<MutexGuard<'_, State>> {
    state
        .lock()
        .map_err(|_| HousingError::Unavailable("software housing state poisoned".into()))
}

fn disabled(what: &str) -> HousingError {
    HousingError::Unavailable(format!("{what} (fault injected by a test)"))
}

fn point(key: &SigningKey) -> Vec<u8> {
    key.verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec()
}

/// Key `generation` of `name` under `seed`: SHA-384 of a label, the seed,
/// the name and the generation, re-hashed in the (2^-190) case that the
/// result is not a valid scalar.
fn derive_key(seed: &[u8; 32], name: &str, generation: u64) -> Result<SigningKey> {
    let mut block = Sha384::new()
        .chain_update(b"meterd software housing key v1\0")
        .chain_update(seed)
        .chain_update(name.as_bytes())
        .chain_update([0])
        .chain_update(generation.to_be_bytes())
        .finalize();
    for _ in 0..16 {
        if let Ok(key) = SigningKey::from_slice(&block) {
            return Ok(key);
        }
        block = Sha384::digest(block);
    }
    Err(HousingError::Tpm {
        command: "create",
        message: "could not derive a P-384 key from the seed".into(),
    })
}

impl Housing for SoftwareHousing {
    fn create_key(&mut self, name: &str) -> Result<Vec<u8>> {
        check_key_name(name)?;
        let mut state = self.reachable()?;
        if state.keys.contains_key(name) {
            return Err(HousingError::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("key {name:?} already exists"),
            )));
        }
        let generation = state.generations.entry(name.to_owned()).or_insert(0);
        let this = *generation;
        *generation += 1;
        let key = match state.seed {
            Some(seed) => derive_key(&seed, name, this)?,
            None => SigningKey::random(&mut rand_core::OsRng),
        };
        let public = point(&key);
        state.keys.insert(name.to_owned(), key);
        Ok(public)
    }

    fn has_key(&mut self, name: &str) -> Result<bool> {
        check_key_name(name)?;
        Ok(self.lock()?.keys.contains_key(name))
    }

    fn public_key(&mut self, name: &str) -> Result<Vec<u8>> {
        check_key_name(name)?;
        let state = self.reachable()?;
        let key = state
            .keys
            .get(name)
            .ok_or_else(|| HousingError::NoSuchKey(name.to_owned()))?;
        Ok(point(key))
    }

    fn sign_digest(&mut self, name: &str, digest: &[u8; 48]) -> Result<RawSignature> {
        check_key_name(name)?;
        let mut state = self.reachable()?;
        if state.faults.fail_sign {
            return Err(disabled("sign"));
        }
        if state.agreement.contains(name) {
            return Err(HousingError::Tpm {
                command: "sign",
                message: "Attributes: key-agreement key cannot sign".into(),
            });
        }
        let key = state
            .keys
            .get(name)
            .ok_or_else(|| HousingError::NoSuchKey(name.to_owned()))?;
        let sig: Signature = key.sign_prehash(digest).map_err(|e| HousingError::Tpm {
            command: "sign",
            message: e.to_string(),
        })?;
        state.stats.signs += 1;
        let mut raw = [0u8; 96];
        raw.copy_from_slice(&sig.to_bytes());
        Ok(raw)
    }

    fn destroy_key(&mut self, name: &str) -> Result<()> {
        check_key_name(name)?;
        // Like the TPM housing, which deletes blob files: works while the
        // TPM is unreachable.
        let mut state = self.lock()?;
        state.agreement.remove(name);
        match state.keys.remove(name) {
            Some(_) => Ok(()),
            None => Err(HousingError::NoSuchKey(name.to_owned())),
        }
    }

    fn create_ecdh_key(&mut self, name: &str) -> Result<Vec<u8>> {
        let public = self.create_key(name)?;
        self.lock()?.agreement.insert(name.to_owned());
        Ok(public)
    }

    fn ecdh_z_gen(&mut self, name: &str, peer_sec1: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        check_key_name(name)?;
        let state = self.reachable()?;
        let key = state
            .keys
            .get(name)
            .ok_or_else(|| HousingError::NoSuchKey(name.to_owned()))?;
        let refused = |message: &str| HousingError::Tpm {
            command: "ecdh_z_gen",
            message: message.to_owned(),
        };
        if !state.agreement.contains(name) {
            return Err(refused("Attributes: a signing key does no key agreement"));
        }
        let peer = p384::PublicKey::from_sec1_bytes(peer_sec1)
            .map_err(|_| refused("EccPoint: not a P-384 point"))?;
        let shared = p384::ecdh::diffie_hellman(key.as_nonzero_scalar(), peer.as_affine());
        Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
    }

    fn counter_define(&mut self, index: u32) -> Result<u64> {
        check_nv_index(index)?;
        let mut guard = self.reachable()?;
        let state = &mut *guard;
        let value = state.counters.entry(index).or_insert(None);
        match *value {
            Some(v) => Ok(v),
            None => {
                *value = Some(1);
                state.stats.increments += 1;
                Ok(1)
            }
        }
    }

    fn counter_read(&mut self, index: u32) -> Result<Option<u64>> {
        check_nv_index(index)?;
        let state = self.reachable()?;
        match state.counters.get(&index) {
            None => Ok(None),
            Some(Some(v)) => Ok(Some(*v)),
            Some(None) => Err(HousingError::Tpm {
                command: "counter_read",
                message: "counter defined but never incremented (call counter_define)".into(),
            }),
        }
    }

    fn counter_increment(&mut self, index: u32) -> Result<u64> {
        check_nv_index(index)?;
        let mut guard = self.reachable()?;
        let state = &mut *guard;
        if state.faults.fail_increment {
            return Err(disabled("counter_increment"));
        }
        let value = state
            .counters
            .get_mut(&index)
            .ok_or_else(|| HousingError::Tpm {
                command: "counter_increment",
                message: "counter not defined".into(),
            })?;
        let next = value.unwrap_or(0).checked_add(1).ok_or(HousingError::Tpm {
            command: "counter_increment",
            message: "counter at its maximum".into(),
        })?;
        *value = Some(next);
        state.stats.increments += 1;
        Ok(next)
    }

    fn clock(&mut self) -> Result<TpmClock> {
        Ok(self.reachable()?.clock.read())
    }

    fn transient_objects(&mut self) -> Result<usize> {
        self.reachable().map(|_| 0)
    }

    fn loaded_sessions(&mut self) -> Result<usize> {
        self.reachable().map(|_| 0)
    }

    fn shutdown(&mut self) -> Result<()> {
        let mut state = self.reachable()?;
        state.stats.shutdowns += 1;
        Ok(())
    }
}

impl SoftwareHousingControl {
    /// Another housing over the same software "TPM" (keys, counters, clock):
    /// for a meter restarted on the same TPM.
    pub fn housing(&self) -> SoftwareHousing {
        SoftwareHousing {
            state: Arc::clone(&self.state),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A poisoned lock only means a test panicked while holding it; the
        // state itself is still consistent (every update is one assignment).
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut state)
    }

    /// While set, every command fails with `Unavailable` (TPM gone), except
    /// `has_key` and `destroy_key`, which the TPM housing answers from disk.
    pub fn set_unavailable(&self, on: bool) {
        self.with(|s| s.faults.unavailable = on);
    }

    /// While set, `sign_digest` fails with `Unavailable`.
    pub fn fail_sign(&self, on: bool) {
        self.with(|s| s.faults.fail_sign = on);
    }

    /// While set, `counter_increment` fails with `Unavailable` (the ledger
    /// cannot seal a batch).
    pub fn fail_increment(&self, on: bool) {
        self.with(|s| s.faults.fail_increment = on);
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.with(|s| s.clock.advance(by));
    }

    /// Pauses the clock (it then moves only by [`Self::advance`]) or lets it run.
    pub fn pause_clock(&self, paused: bool) {
        self.with(|s| s.clock.set_paused(paused));
    }

    /// A TPM reset (reboot): the reset count grows, the restart count goes
    /// back to 0, the clock keeps its value. `orderly: false` is a power
    /// cut without TPM2_Shutdown: the clock is then not `safe` (it may have
    /// lost up to the last NV update) until [`Self::set_safe`].
    pub fn reset(&self, orderly: bool) {
        self.with(|s| {
            s.clock.reset_count = s.clock.reset_count.wrapping_add(1);
            s.clock.restart_count = 0;
            s.clock.safe = orderly;
        });
    }

    /// A TPM restart/resume (TPM2_Startup(STATE) after Shutdown(STATE)).
    pub fn restart(&self) {
        self.with(|s| s.clock.restart_count = s.clock.restart_count.wrapping_add(1));
    }

    /// Sets the clock's `safe` flag.
    pub fn set_safe(&self, safe: bool) {
        self.with(|s| s.clock.safe = safe);
    }

    /// What `Housing::clock` would answer now (faults aside).
    pub fn clock(&self) -> TpmClock {
        self.with(|s| s.clock.read())
    }

    /// Value of the counter at `index`: `None` if undefined or never incremented.
    pub fn counter(&self, index: u32) -> Option<u64> {
        self.with(|s| s.counters.get(&index).copied().flatten())
    }

    /// Sets the counter at `index`, defining it (a TPM that moved on without
    /// the ledger, or an older TPM state restored).
    pub fn set_counter(&self, index: u32, value: u64) {
        self.with(|s| {
            s.counters.insert(index, Some(value));
        });
    }

    /// Installs key `name` with the P-384 scalar `secret` (48 bytes,
    /// big-endian), replacing any key of that name; returns its public key.
    /// For tests that need a known key (the ledger's software sealer).
    pub fn import_key(&self, name: &str, secret: &[u8; 48]) -> Result<Vec<u8>> {
        check_key_name(name)?;
        let key = SigningKey::from_slice(secret).map_err(|_| HousingError::Tpm {
            command: "import",
            message: "invalid P-384 scalar".into(),
        })?;
        let public = point(&key);
        self.with(|s| s.keys.insert(name.to_owned(), key));
        Ok(public)
    }

    /// Names of the keys held, sorted.
    pub fn key_names(&self) -> Vec<String> {
        self.with(|s| s.keys.keys().cloned().collect())
    }

    /// Uncompressed SEC1 public key of `name`, if held.
    pub fn public_key(&self, name: &str) -> Option<Vec<u8>> {
        self.with(|s| s.keys.get(name).map(point))
    }

    /// Signatures made so far.
    pub fn signs(&self) -> u64 {
        self.with(|s| s.stats.signs)
    }

    /// Counter increments so far (including the one `counter_define` makes).
    pub fn increments(&self) -> u64 {
        self.with(|s| s.stats.increments)
    }

    /// `shutdown` calls so far.
    pub fn shutdowns(&self) -> u64 {
        self.with(|s| s.stats.shutdowns)
    }
}

#[cfg(test)]
mod tests;
