//! The housing: the TPM 2.0 that keeps the meter's keys, its monotonic
//! counter and its clock (the patent's secure housing, key generator and
//! secure clock).
//!
//! This module is the only door to the TPM. [`Housing`] is the synchronous
//! operation set; [`tpm::TpmHousing`] implements it over tss-esapi and is the
//! only owner of an ESAPI `Context`. A context must not be used by two
//! threads at once and swtpm serves one connection with three transient slots, so
//! [`HousingHandle::spawn`] moves the housing onto one dedicated thread and
//! everybody else talks to it through a channel. Ledger seals go through the
//! urgent lane so that a group commit is never stuck behind a queue of signs.
//! The housing sits behind a lock its thread holds for each job: one user
//! at a time, whichever thread. The ledger's thread, a blocking caller with
//! nothing else to do meanwhile, runs its job itself when the housing is
//! free ([`HousingHandle::run_here_or_spawn`]): a lone sale then costs no
//! hop to the housing thread and back (issue 14).
//!
//! [`soft::SoftwareHousing`] implements the same trait in memory for fast
//! in-process tests; it protects nothing and the daemon cannot be configured
//! to use it.

pub mod auth;
pub mod soft;
pub mod tpm;

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::oneshot;
use zeroize::Zeroizing;

/// Raw P-384 ECDSA signature: r (48 bytes, big-endian) then s (48 bytes).
pub type RawSignature = [u8; 96];

/// What the TPM says the time is, from TPM2_ReadClock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TpmClock {
    /// Milliseconds the TPM has been powered since TPM2_Clear (monotonic across reboots unless cleared).
    pub clock_ms: u64,
    /// Number of TPM resets (reboots).
    pub reset_count: u32,
    /// Number of TPM restarts/resumes.
    pub restart_count: u32,
    /// Whether the clock value is known not to have been lost.
    pub safe: bool,
}

/// Name of the attestation key's blobs (see `tpm/attest.rs`).
pub const AK_KEY: &str = "ak";
/// Name of the identity (communications) key in the housing; it also seals the ledger.
pub const IDENTITY_KEY: &str = "identity";
/// Name of the postmark (time-stamping) key.
pub const POSTMARK_KEY: &str = "postmark";
/// Name of the postal secret key (an HMAC-SHA-256 key the authority wrapped to this TPM).
pub const POSTAL_KEY: &str = "postal";

/// Something the attestation key (AK) signed: the marshalled `TPMS_ATTEST` exactly as
/// the TPM returned it, and the AK's raw P-384 signature over its SHA-384. Verified by
/// `meter_pki::tpm::{verify_time, verify_counter}` (and `verify_certify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// Marshalled `TPMS_ATTEST` (starts with `TPM_GENERATED`).
    pub attest: Vec<u8>,
    /// Raw `r || s` over SHA-384(`attest`).
    pub signature: RawSignature,
}

/// The TPM's attestation identity: what ties the AK to a genuine TPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestIdentity {
    /// The EK certificate (DER) from NV.
    pub ek_cert: Vec<u8>,
    /// Marshalled `TPMT_PUBLIC` of the AK.
    pub ak_public: Vec<u8>,
}

/// What a housing without a TPM answers to the attestation operations.
pub fn not_supported(command: &'static str) -> HousingError {
    HousingError::Tpm {
        command,
        message: "not supported by this housing (attestation needs a TPM)".into(),
    }
}

/// Failures of the housing, keeping the TPM's own kind of failure.
#[derive(Debug, thiserror::Error)]
pub enum HousingError {
    /// The TPM could not be reached (TCTI failure, swtpm down, device missing).
    #[error("TPM unreachable: {0}")]
    Unavailable(String),
    /// The TPM refused or failed a command.
    #[error("TPM command {command} failed: {message}")]
    Tpm {
        /// The command that failed, e.g. `sign`.
        command: &'static str,
        /// The decoded response code.
        message: String,
    },
    /// The TPM is rate-limiting NV writes; retry later.
    #[error("TPM NV rate limit; retry shortly")]
    NvRate,
    /// No key blob of that name in the state directory.
    #[error("no key named {0:?} in the housing")]
    NoSuchKey(String),
    /// The key blob directory could not be read or written.
    #[error("key store I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The housing thread is gone (daemon shutting down).
    #[error("housing thread stopped")]
    Stopped,
}

/// Result of housing operations.
pub type Result<T> = std::result::Result<T, HousingError>;

/// First handle of the TPM's NV index range (TPM_HT_NV_INDEX), where counters live.
pub const NV_INDEX_FIRST: u32 = 0x0100_0000;
/// Last handle of the NV index range.
pub const NV_INDEX_LAST: u32 = 0x01FF_FFFF;

/// Checks a key name: `[a-z0-9-]{1,64}` (every housing, so that a name a
/// test housing takes is one the TPM housing takes too).
pub(crate) fn check_key_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(HousingError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("invalid key name {name:?}: expected [a-z0-9-]{{1,64}}"),
        )))
    }
}

/// Checks that `index` is an NV index handle.
pub(crate) fn check_nv_index(index: u32) -> Result<()> {
    if (NV_INDEX_FIRST..=NV_INDEX_LAST).contains(&index) {
        Ok(())
    } else {
        Err(HousingError::Tpm {
            command: "nv",
            message: format!("{index:#010x} is not an NV index handle"),
        })
    }
}

/// The TPM operations the meter needs; implemented once, for tss-esapi.
///
/// Keys are named (e.g. `identity`, `postmark`); their public and private
/// blobs live in the state directory and are loaded on demand under a
/// primary derived from a fixed template, so they survive a TPM reset.
pub trait Housing: Send + 'static {
    /// Creates a non-exportable ECDSA P-384 signing key named `name` inside
    /// the TPM, stores its blobs, and returns its public key as an
    /// uncompressed SEC1 point (97 bytes). Fails if the name exists.
    fn create_key(&mut self, name: &str) -> Result<Vec<u8>>;
    /// Whether a key blob named `name` exists.
    fn has_key(&mut self, name: &str) -> Result<bool>;
    /// Public key (uncompressed SEC1 point) of key `name`.
    fn public_key(&mut self, name: &str) -> Result<Vec<u8>>;
    /// Signs a SHA-384 digest with key `name`.
    fn sign_digest(&mut self, name: &str, digest: &[u8; 48]) -> Result<RawSignature>;
    /// Unloads key `name` and deletes its blobs.
    fn destroy_key(&mut self, name: &str) -> Result<()>;
    /// Defines the NV counter at `index` if absent; returns its current value
    /// (a fresh counter reads its first value only after one increment).
    fn counter_define(&mut self, index: u32) -> Result<u64>;
    /// Reads the NV counter at `index`; `None` if the index is not defined.
    fn counter_read(&mut self, index: u32) -> Result<Option<u64>>;
    /// Increments the NV counter at `index` and returns the new value.
    fn counter_increment(&mut self, index: u32) -> Result<u64>;
    /// TPM2_ReadClock.
    fn clock(&mut self) -> Result<TpmClock>;
    /// Number of transient objects currently loaded (TPM_CAP_HANDLES, transient range).
    fn transient_objects(&mut self) -> Result<usize>;
    /// Number of loaded sessions (TPM_CAP_HANDLES, loaded-session range).
    fn loaded_sessions(&mut self) -> Result<usize>;
    /// Orderly stop: flush everything and send TPM2_Shutdown(STATE).
    fn shutdown(&mut self) -> Result<()>;
    /// Whether the meter's objects were made without authorization (a meter
    /// provisioned before TPM authorization, see [`auth`]): they keep
    /// working with an empty auth, and anyone who can reach the TPM can use
    /// them. Fixed for the life of the housing. The software housing has
    /// no authorization to speak of and keeps the default.
    fn legacy_auth(&self) -> bool {
        false
    }

    /// Creates a non-exportable P-384 key-agreement key named `name` inside the TPM
    /// (decrypt, not sign: usable only by [`Housing::ecdh_z_gen`]), stores its blobs,
    /// and returns its public key (uncompressed SEC1). Fails if the name exists.
    fn create_ecdh_key(&mut self, name: &str) -> Result<Vec<u8>> {
        let _ = name;
        Err(not_supported("create_ecdh_key"))
    }
    /// TPM2_ECDH_ZGen: the x-coordinate (48 bytes) of the point `d·P`, where `d` is
    /// key-agreement key `name`'s secret and `P` the peer's P-384 point
    /// (uncompressed SEC1). The secret never leaves the TPM; refused for a signing key.
    fn ecdh_z_gen(&mut self, name: &str, peer_sec1: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let _ = (name, peer_sec1);
        Err(not_supported("ecdh_z_gen"))
    }

    /// Reads the EK certificate and creates the AK if it has none; returns both.
    fn attest_identity(&mut self) -> Result<AttestIdentity> {
        Err(not_supported("attest_identity"))
    }
    /// Marshalled `TPMT_PUBLIC` of key `name` (what a TPM2_Certify names).
    fn key_public_area(&mut self, name: &str) -> Result<Vec<u8>> {
        let _ = name;
        Err(not_supported("key_public_area"))
    }
    /// TPM2_Certify of key `name` by the AK over `qualifying` (at most 64 bytes).
    fn certify_key(&mut self, name: &str, qualifying: &[u8]) -> Result<Attestation> {
        let _ = (name, qualifying);
        Err(not_supported("certify_key"))
    }
    /// TPM2_ActivateCredential: the credential made to the EK for the AK, from the
    /// `TPM2B_ID_OBJECT` and `TPM2B_ENCRYPTED_SECRET` contents.
    fn activate_credential(&mut self, credential_blob: &[u8], secret: &[u8]) -> Result<Vec<u8>> {
        let _ = (credential_blob, secret);
        Err(not_supported("activate_credential"))
    }
    /// TPM2_GetTime signed by the AK over `qualifying` (at most 64 bytes): TPM clock,
    /// reset and restart counts. About one AK signature.
    fn attest_time(&mut self, qualifying: &[u8]) -> Result<Attestation> {
        let _ = qualifying;
        Err(not_supported("attest_time"))
    }
    /// TPM2_NV_Certify of the 8-byte NV counter `index` by the AK over `qualifying` (at
    /// most 64 bytes). On a TPM this reopens the connection (tens of ms): once per report.
    fn certify_counter(&mut self, index: u32, qualifying: &[u8]) -> Result<Attestation> {
        let _ = (index, qualifying);
        Err(not_supported("certify_counter"))
    }

    /// Marshalled `TPMT_PUBLIC` of the storage primary the meter's keys live under (what
    /// the authority wraps the postal key to, `meter_pki::tpm::duplicate`).
    fn storage_parent_public(&mut self) -> Result<Vec<u8>> {
        Err(not_supported("storage_parent_public"))
    }
    /// TPM2_Import of an HMAC-SHA-256 key duplicated to the storage parent (`public`: a
    /// `TPM2B_PUBLIC`; `duplicate` and `seed`: the contents of `TPM2B_PRIVATE` and
    /// `TPM2B_ENCRYPTED_SECRET`), stored as key `name` with its own auth value; replaces a
    /// key of that name.
    fn import_hmac_key(
        &mut self,
        name: &str,
        public: &[u8],
        duplicate: &[u8],
        seed: &[u8],
    ) -> Result<()> {
        let _ = (name, public, duplicate, seed);
        Err(not_supported("import_hmac_key"))
    }
    /// TPM2_HMAC (SHA-256) with the HMAC key `name` over `data` (at most 1024 bytes).
    fn hmac(&mut self, name: &str, data: &[u8]) -> Result<[u8; 32]> {
        let _ = (name, data);
        Err(not_supported("hmac"))
    }
}

type Job = Box<dyn FnOnce(&mut dyn Housing) + Send>;

/// Two job lanes behind one lock: urgent (ledger seals) before normal.
#[derive(Default)]
struct Queue {
    urgent: VecDeque<Job>,
    normal: VecDeque<Job>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    /// The housing, held by whoever runs a job: the housing thread, or a
    /// blocking caller that found it free.
    housing: Mutex<Box<dyn Housing>>,
}

impl Shared {
    /// The housing for one job, waiting for the current user. A job that
    /// panicked left no broken invariant of ours behind (the TPM answers
    /// the next command or fails it), so a poisoned lock is taken as is.
    fn hold(&self) -> std::sync::MutexGuard<'_, Box<dyn Housing>> {
        self.housing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Cloneable front of the housing thread.
#[derive(Clone)]
pub struct HousingHandle {
    shared: Arc<Shared>,
    legacy_auth: bool,
    /// The housing thread, joined by [`close_and_wait`](Self::close_and_wait).
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl HousingHandle {
    /// Moves `housing` onto its own thread and returns the handle.
    pub fn spawn<H: Housing>(housing: H) -> std::io::Result<HousingHandle> {
        let legacy_auth = housing.legacy_auth();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            housing: Mutex::new(Box::new(housing)),
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("housing".into())
            .spawn(move || {
                while let Some(job) = next_job(&worker) {
                    job(&mut **worker.hold());
                }
                let _ = worker.hold().shutdown();
            })?;
        Ok(HousingHandle {
            shared,
            legacy_auth,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Closes the handle, then waits (at most `within`) for the housing
    /// thread to run the jobs already queued and end; it flushes its
    /// objects and sends TPM2_Shutdown last. The process must not exit
    /// before: a job queued just before the close (the background audit's
    /// checkpoint signature, say) may have loaded a key after any earlier
    /// flush, and a key left loaded holds one of the TPM's three transient
    /// slots for whoever comes next. False if the thread did not end in time.
    pub async fn close_and_wait(&self, within: std::time::Duration) -> bool {
        self.close();
        let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) else {
            return true;
        };
        let joined = tokio::task::spawn_blocking(move || thread.join().is_ok());
        matches!(tokio::time::timeout(within, joined).await, Ok(Ok(true)))
    }

    /// [`Housing::legacy_auth`] of the housing, without a trip to its thread.
    pub fn legacy_auth(&self) -> bool {
        self.legacy_auth
    }

    /// Stops the housing thread after the queued jobs; it then sends TPM2_Shutdown.
    pub fn close(&self) {
        if let Ok(mut q) = self.shared.queue.lock() {
            q.closed = true;
        }
        self.shared.ready.notify_all();
    }

    fn submit<R, F>(&self, urgent: bool, f: F) -> Result<oneshot::Receiver<Result<R>>>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn Housing) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |h: &mut dyn Housing| {
            let _ = tx.send(f(h));
        });
        let mut q = self
            .shared
            .queue
            .lock()
            .map_err(|_| HousingError::Stopped)?;
        if q.closed {
            return Err(HousingError::Stopped);
        }
        if urgent {
            q.urgent.push_back(job);
        } else {
            q.normal.push_back(job);
        }
        drop(q);
        self.shared.ready.notify_one();
        Ok(rx)
    }

    /// Runs `f` on the housing thread and awaits its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn Housing) -> Result<R> + Send + 'static,
    {
        self.submit(false, f)?
            .await
            .map_err(|_| HousingError::Stopped)?
    }

    /// Runs `f` on the housing thread ahead of queued normal work, blocking
    /// the calling (non-async) thread; used by the ledger's thread.
    pub fn call_urgent_blocking<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn Housing) -> Result<R> + Send + 'static,
    {
        self.spawn_urgent(f)?.wait()
    }

    /// Queues `f` ahead of normal work and returns at once: the ledger
    /// hands the housing thread one sequencing job per batch this way and
    /// writes the previous batch while the TPM works.
    pub fn spawn_urgent<R, F>(&self, f: F) -> Result<Pending<R>>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn Housing) -> Result<R> + Send + 'static,
    {
        self.submit(true, f).map(Pending)
    }

    /// Runs `f` on the calling (non-async) thread when the housing is free
    /// and the handle open, else queues it ahead of normal work as
    /// [`spawn_urgent`](Self::spawn_urgent) does. Either way the answer
    /// comes through the returned [`Pending`] (at once when it ran here).
    /// For the ledger's thread when it has nothing to write meanwhile: a
    /// lone request then skips two thread hops. Never from a job (the
    /// housing is held there) nor from async code (a TPM command blocks).
    pub fn run_here_or_spawn<R, F>(&self, f: F) -> Result<Pending<R>>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn Housing) -> Result<R> + Send + 'static,
    {
        let open = self.shared.queue.lock().is_ok_and(|q| !q.closed);
        match open.then(|| self.shared.housing.try_lock().ok()).flatten() {
            Some(mut h) => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(f(&mut **h));
                Ok(Pending(rx))
            }
            None => self.spawn_urgent(f),
        }
    }

    /// Convenience: sign a digest with a named key.
    pub async fn sign_digest(&self, key: &str, digest: [u8; 48]) -> Result<RawSignature> {
        let key = key.to_owned();
        self.call(move |h| h.sign_digest(&key, &digest)).await
    }
}

/// A job queued with [`HousingHandle::spawn_urgent`], its result to come.
pub struct Pending<R>(oneshot::Receiver<Result<R>>);

impl<R> Pending<R> {
    /// Blocks the calling (non-async) thread until the job has run.
    pub fn wait(self) -> Result<R> {
        self.0.blocking_recv().map_err(|_| HousingError::Stopped)?
    }
}

/// Waits for the next job, urgent lane first; `None` once closed and drained.
fn next_job(shared: &Shared) -> Option<Job> {
    let mut q = shared.queue.lock().ok()?;
    loop {
        if let Some(job) = q.urgent.pop_front().or_else(|| q.normal.pop_front()) {
            return Some(job);
        }
        if q.closed {
            return None;
        }
        q = shared.ready.wait(q).ok()?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn key_names() {
        for good in ["a", "postmark", "key-1", &"x".repeat(64)] {
            assert!(check_key_name(good).is_ok(), "{good}");
        }
        for bad in ["", "A", "a_b", "a/b", "..", "é", &"x".repeat(65), "a b"] {
            assert!(check_key_name(bad).is_err(), "{bad}");
        }
    }

    /// The thread a job ran on.
    fn where_run(h: &HousingHandle) -> std::thread::ThreadId {
        h.run_here_or_spawn(|_| Ok(std::thread::current().id()))
            .unwrap()
            .wait()
            .unwrap()
    }

    #[test]
    fn a_free_housing_runs_a_blocking_callers_job_in_place() {
        let (housing, _control) = soft::SoftwareHousing::new(soft::SoftwareOptions::default());
        let h = HousingHandle::spawn(housing).unwrap();
        // Free: the job runs on this thread, no hop.
        assert_eq!(where_run(&h), std::thread::current().id());

        // Busy (a job holds the housing on its thread): the job is queued
        // and runs there, after it.
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let busy = h
            .spawn_urgent(move |_| {
                let _ = started_tx.send(());
                let _ = release_rx.recv();
                Ok(())
            })
            .unwrap();
        started_rx.recv().unwrap();
        let queued = h
            .run_here_or_spawn(|_| Ok(std::thread::current().name().map(str::to_owned)))
            .unwrap();
        release_tx.send(()).unwrap();
        busy.wait().unwrap();
        assert_eq!(queued.wait().unwrap().as_deref(), Some("housing"));

        // The housing is usable from either thread in turn: a key made in
        // place is seen by the housing thread.
        h.run_here_or_spawn(|hs| hs.create_key("k1"))
            .unwrap()
            .wait()
            .unwrap();
        let seen = h.call_urgent_blocking(|hs| hs.has_key("k1")).unwrap();
        assert!(seen);

        // Closed: refused, not run here.
        h.close();
        assert!(matches!(
            h.run_here_or_spawn(|_| Ok(())).map(|_| ()),
            Err(HousingError::Stopped)
        ));
    }

    /// A stop waits for the housing thread: a job queued before the close
    /// (here a slow one, as the background audit's checkpoint signature
    /// can be) has run, and the shutdown (flush, TPM2_Shutdown) came after
    /// it, before `close_and_wait` returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_waits_for_the_queued_job_and_the_shutdown() {
        let (housing, control) = soft::SoftwareHousing::new(soft::SoftwareOptions::default());
        let h = HousingHandle::spawn(housing).unwrap();
        let probe = control.clone();
        let queued = h
            .spawn_urgent(move |hs| {
                std::thread::sleep(std::time::Duration::from_millis(200));
                hs.create_key("late")?;
                Ok(probe.shutdowns())
            })
            .unwrap();
        assert!(h.close_and_wait(std::time::Duration::from_secs(10)).await);
        let ran = queued.0.await.unwrap().unwrap();
        assert_eq!(ran, 0, "the job ran before the shutdown");
        assert_eq!(control.shutdowns(), 1, "one shutdown, after the job");
        // A second wait (another clone of the handle) returns at once.
        assert!(h.clone().close_and_wait(std::time::Duration::ZERO).await);
    }

    #[test]
    fn nv_indices() {
        assert!(check_nv_index(NV_INDEX_FIRST).is_ok());
        assert!(check_nv_index(0x0150_4d54).is_ok());
        assert!(check_nv_index(NV_INDEX_LAST).is_ok());
        assert!(check_nv_index(NV_INDEX_LAST + 1).is_err());
        assert!(check_nv_index(NV_INDEX_FIRST - 1).is_err());
    }
}
