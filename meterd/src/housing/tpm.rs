//! TPM 2.0 implementation of the housing over tss-esapi 7.7.
//!
//! [`TpmHousing`] owns the one ESAPI `Context` of the process. Its rules:
//!
//! * **Slots.** swtpm (and many real TPMs) have three transient slots. The
//!   storage primary is created only when a key must be created or loaded
//!   and is flushed right after (a loaded child outlives its parent's
//!   flush). At most [`MAX_LOADED_KEYS`] signing keys stay loaded, in a
//!   small LRU; the least recently used is flushed before another loads.
//! * **Sessions.** Only the password pseudo-session is used (no TPM session
//!   slot, and an HMAC session costs 3.5× per sign in libtss2 3.2.1).
//! * **Outages.** A TCTI/link failure (swtpm restarted or gone, device
//!   error) drops the context; the next command opens a fresh one, forgets
//!   every loaded handle (they died with the reset) and is retried once.
//!   Keys reload from their blobs under the recreated primary, which the
//!   TPM derives again from the owner seed. While the TPM is unreachable
//!   every call fails with [`HousingError::Unavailable`]. Some TCTIs
//!   (swtpm's) reconnect by themselves, so a reset can also show up as
//!   `TPM_RC_REFERENCE_H*` (a handle we hold is not loaded): it is handled
//!   the same way. A retried
//!   `counter_increment` whose first attempt reached the TPM may skip one
//!   value; the counter stays monotonic.
//! * **Clock.** tss-esapi 7.7 has no `ReadClock` and does not expose its
//!   raw `ESYS_CONTEXT`, so [`Housing::clock`] uses TPM2_GetTime instead,
//!   see `clock.rs`.

mod clock;
mod errors;
mod keystore;
mod templates;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::{CapabilityType, NvIndexType, StartupType, Tss2ResponseCodeKind};
use tss_esapi::handles::{
    KeyHandle, NvIndexHandle, NvIndexTpmHandle, TpmHandle, TransientTpmHandle,
};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{CapabilityData, Digest, NvPublicBuilder};
use tss_esapi::{Context, Error as TssError, TctiNameConf};

use super::{Housing, HousingError, RawSignature, Result, TpmClock};
use errors::{is_link_failure, map_tss, tpm_kind};
use keystore::KeyStore;

/// Signing keys kept loaded at once (one slot stays free for the primary).
pub const MAX_LOADED_KEYS: usize = 2;

/// The NV index range usable for counters (TPM_HT_NV_INDEX).
const NV_FIRST: u32 = 0x0100_0000;
const NV_LAST: u32 = 0x01FF_FFFF;

/// First handle of the transient-object range.
const TRANSIENT_FIRST: u32 = 0x8000_0000;
/// First handle of the loaded-session range (HMAC and policy sessions).
const LOADED_SESSION_FIRST: u32 = 0x0200_0000;

/// One signing key loaded in the TPM.
struct LoadedKey {
    name: String,
    handle: KeyHandle,
    /// Uncompressed SEC1 point, from the blob the TPM accepted.
    point: Vec<u8>,
}

/// A live connection: the context and what is loaded through it.
struct Conn {
    ctx: Context,
    /// LRU of loaded signing keys, most recently used last.
    keys: Vec<LoadedKey>,
    /// ESAPI handles of NV indices (no TPM slot; saves a ReadPublic each).
    nv: HashMap<u32, NvIndexHandle>,
    /// Clock de-obfuscation offsets, see `clock.rs`; reset with the context.
    clock_offsets: Option<clock::Offsets>,
    /// Last value read or produced per NV counter on this connection.
    counters: HashMap<u32, u64>,
}

/// Failure of one attempt: a TSS error (classified later) or a final one.
#[derive(Debug)]
enum Fail {
    Tss(&'static str, TssError),
    Housing(HousingError),
}

impl From<HousingError> for Fail {
    fn from(e: HousingError) -> Self {
        Fail::Housing(e)
    }
}

type Attempt<T> = std::result::Result<T, Fail>;

/// Tags a tss-esapi result with the command name.
trait Tag<T> {
    fn tag(self, command: &'static str) -> Attempt<T>;
}

impl<T> Tag<T> for tss_esapi::Result<T> {
    fn tag(self, command: &'static str) -> Attempt<T> {
        self.map_err(|e| Fail::Tss(command, e))
    }
}

fn tpm_error(command: &'static str, message: impl Into<String>) -> Fail {
    Fail::Housing(HousingError::Tpm {
        command,
        message: message.into(),
    })
}

/// The TPM housing: keys, NV counter and clock over one ESAPI context.
pub struct TpmHousing {
    tcti: TctiNameConf,
    store: KeyStore,
    conn: Option<Conn>,
}

impl TpmHousing {
    /// Opens the TPM at `tcti` (`device:/dev/tpmrm0`,
    /// `swtpm:host=127.0.0.1,port=2321`, ...) with key blobs in `key_dir`
    /// (created, mode 0700, if missing).
    ///
    /// Sets `TSS2_LOG=all+NONE` if unset, to silence the TSS C logger; the
    /// environment is process-wide, so call this early, before other
    /// threads read the environment.
    pub fn open(tcti: &str, key_dir: &Path) -> Result<TpmHousing> {
        if std::env::var_os("TSS2_LOG").is_none() {
            std::env::set_var("TSS2_LOG", "all+NONE");
        }
        let conf = TctiNameConf::from_str(tcti)
            .map_err(|e| HousingError::Unavailable(format!("bad TCTI {tcti:?}: {e}")))?;
        let store = KeyStore::open(key_dir)?;
        let mut housing = TpmHousing {
            tcti: conf,
            store,
            conn: None,
        };
        housing.connect()?;
        Ok(housing)
    }

    /// Opens the context if there is none.
    fn connect(&mut self) -> Result<&mut Conn> {
        match self.conn {
            Some(ref mut conn) => Ok(conn),
            None => {
                let mut ctx = Context::new(self.tcti.clone())
                    .map_err(|e| HousingError::Unavailable(format!("open TCTI: {e}")))?;
                match flush_leftovers(&mut ctx) {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(objects = n, "flushed transient objects left in the TPM")
                    }
                    Err(e) => tracing::warn!(error = ?e, "could not list leftover TPM objects"),
                }
                Ok(self.conn.insert(Conn {
                    ctx,
                    keys: Vec::new(),
                    nv: HashMap::new(),
                    clock_offsets: None,
                    counters: HashMap::new(),
                }))
            }
        }
    }

    /// Runs `op` on the connection; on a link failure drops the context and
    /// retries once on a fresh one (a TPM needing TPM2_Startup gets one).
    fn run<T>(&mut self, mut op: impl FnMut(&mut Conn, &KeyStore) -> Attempt<T>) -> Result<T> {
        let mut retried = false;
        loop {
            self.connect()?;
            let (Some(conn), store) = (self.conn.as_mut(), &self.store) else {
                return Err(HousingError::Unavailable("no TPM context".into()));
            };
            let err = match op(conn, store) {
                Ok(v) => return Ok(v),
                Err(Fail::Housing(e)) => return Err(e),
                Err(Fail::Tss(command, e)) => (command, e),
            };
            let (command, e) = err;
            if is_link_failure(&e) {
                tracing::warn!(command, error = %e, "TPM link failure; reopening the context");
                self.conn = None;
            } else if errors::is_stale_handle(&e) {
                // The TCTI may reconnect by itself: a handle we hold that
                // the TPM does not know means the TPM was reset under us.
                tracing::warn!(command, error = %e, "TPM lost our handles (reset?); reopening");
                self.conn = None;
            } else if tpm_kind(&e) == Some(Tss2ResponseCodeKind::Initialize) && !retried {
                tracing::warn!("TPM not started; sending TPM2_Startup(CLEAR)");
                conn.keys.clear();
                conn.nv.clear();
                conn.ctx
                    .startup(StartupType::Clear)
                    .map_err(|e| map_tss("startup", e))?;
            } else {
                return Err(map_tss(command, e));
            }
            if retried {
                return Err(map_tss(command, e));
            }
            retried = true;
        }
    }

    /// Flushes every loaded signing key and closes the NV handles, leaving
    /// the TPM with no transient object or session of ours.
    pub fn flush_all(&mut self) -> Result<()> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let mut first_err = None;
        for key in conn.keys.drain(..) {
            if let Err(e) = conn.ctx.flush_context(key.handle.into()) {
                first_err.get_or_insert(map_tss("flush_context", e));
            }
        }
        for (_, handle) in conn.nv.drain() {
            let mut object = handle.into();
            if let Err(e) = conn.ctx.tr_close(&mut object) {
                first_err.get_or_insert(map_tss("tr_close", e));
            }
        }
        if let Some(e) = first_err {
            if matches!(e, HousingError::Unavailable(_)) {
                self.conn = None;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Names of the keys loaded right now, least recently used first.
    pub fn loaded_keys(&self) -> Vec<String> {
        self.conn
            .as_ref()
            .map(|c| c.keys.iter().map(|k| k.name.clone()).collect())
            .unwrap_or_default()
    }
}

/// Creates the storage primary from the fixed template.
fn create_primary(ctx: &mut Context) -> Attempt<KeyHandle> {
    let template = templates::primary_template().tag("primary_template")?;
    let primary = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.create_primary(Hierarchy::Owner, template, None, None, None, None)
        })
        .tag("create_primary")?;
    Ok(primary.key_handle)
}

/// Flushes least recently used keys until one more fits.
fn make_room(conn: &mut Conn) -> Attempt<()> {
    while conn.keys.len() >= MAX_LOADED_KEYS {
        let victim = conn.keys.remove(0);
        conn.ctx
            .flush_context(victim.handle.into())
            .tag("flush_context")?;
    }
    Ok(())
}

/// Loads key `name` (or finds it loaded), marking it most recently used.
fn ensure_loaded(conn: &mut Conn, store: &KeyStore, name: &str) -> Attempt<KeyHandle> {
    if let Some(pos) = conn.keys.iter().position(|k| k.name == name) {
        let key = conn.keys.remove(pos);
        let handle = key.handle;
        conn.keys.push(key);
        return Ok(handle);
    }
    let (public, private) = store.load(name)?;
    let point = templates::signing_key_point(&public).ok_or_else(|| {
        tpm_error(
            "load",
            format!("blob of {name:?} is not a P-384 signing key"),
        )
    })?;
    make_room(conn)?;
    // A TPM reset empties the TPM without telling us (the swtpm TCTI
    // reconnects by itself), and the TPM then hands out the same handle
    // numbers again: a cached handle could name another key. Before any
    // load, the TPM must still hold every key we think is loaded.
    if count_handles(&mut conn.ctx, TRANSIENT_FIRST)? < conn.keys.len() {
        tracing::warn!("TPM reset detected (our keys are gone); reloading from blobs");
        conn.keys.clear();
        conn.clock_offsets = None;
    }
    let primary = create_primary(&mut conn.ctx)?;
    let loaded = conn
        .ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.load(primary, private, public)
        });
    let flushed = conn.ctx.flush_context(primary.into());
    let handle = loaded.tag("load")?;
    conn.keys.push(LoadedKey {
        name: name.to_owned(),
        handle,
        point,
    });
    flushed.tag("flush_context")?;
    Ok(handle)
}

fn check_nv_index(index: u32) -> Result<NvIndexTpmHandle> {
    if !(NV_FIRST..=NV_LAST).contains(&index) {
        return Err(HousingError::Tpm {
            command: "nv",
            message: format!("{index:#010x} is not an NV index handle"),
        });
    }
    NvIndexTpmHandle::new(index).map_err(|e| map_tss("nv", e))
}

/// ESAPI handle of NV index `index`, `None` if the TPM has no such index.
fn nv_handle(conn: &mut Conn, index: NvIndexTpmHandle) -> Attempt<Option<NvIndexHandle>> {
    let raw = u32::from(TpmHandle::NvIndex(index));
    if let Some(h) = conn.nv.get(&raw) {
        return Ok(Some(*h));
    }
    match conn
        .ctx
        .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(index)))
    {
        Ok(object) => {
            let handle = NvIndexHandle::from(object);
            conn.nv.insert(raw, handle);
            Ok(Some(handle))
        }
        Err(e) if tpm_kind(&e) == Some(Tss2ResponseCodeKind::Handle) => Ok(None),
        Err(e) => Err(Fail::Tss("nv_read_public", e)),
    }
}

/// Reads the counter value; `None` if it was never incremented.
fn nv_value(ctx: &mut Context, handle: NvIndexHandle) -> Attempt<Option<u64>> {
    let read = ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.nv_read(NvAuth::NvIndex(handle), handle, 8, 0)
    });
    match read {
        Ok(buf) => {
            let bytes: [u8; 8] = buf
                .value()
                .try_into()
                .map_err(|_| tpm_error("nv_read", "counter is not 8 bytes"))?;
            Ok(Some(u64::from_be_bytes(bytes)))
        }
        Err(e) if tpm_kind(&e) == Some(Tss2ResponseCodeKind::NvUninitialized) => Ok(None),
        Err(e) => Err(Fail::Tss("nv_read", e)),
    }
}

fn nv_increment(ctx: &mut Context, handle: NvIndexHandle) -> Attempt<()> {
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.nv_increment(NvAuth::NvIndex(handle), handle)
    })
    .tag("nv_increment")
}

/// Defines a non-orderly counter with empty auth at `index`.
fn nv_define_counter(conn: &mut Conn, index: NvIndexTpmHandle) -> Attempt<()> {
    let attributes = NvIndexAttributesBuilder::new()
        .with_nv_index_type(NvIndexType::Counter)
        .with_auth_write(true)
        .with_auth_read(true)
        .with_no_da(true)
        .build()
        .tag("nv_attributes")?;
    let public = NvPublicBuilder::new()
        .with_nv_index(index)
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attributes)
        .with_data_area_size(8)
        .build()
        .tag("nv_public")?;
    let defined = conn
        .ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.nv_define_space(Provision::Owner, None, public)
        });
    match defined {
        Ok(handle) => {
            conn.nv.insert(u32::from(TpmHandle::NvIndex(index)), handle);
            Ok(())
        }
        // Defined meanwhile: fine, the caller looks it up.
        Err(e) if tpm_kind(&e) == Some(Tss2ResponseCodeKind::NvDefined) => Ok(()),
        Err(e) => Err(Fail::Tss("nv_define_space", e)),
    }
}

/// Refuses an existing index that is not a plain, non-orderly counter.
fn check_counter_public(ctx: &mut Context, handle: NvIndexHandle) -> Attempt<()> {
    let (public, _) = ctx
        .execute_without_session(|c| c.nv_read_public(handle))
        .tag("nv_read_public")?;
    let attrs = public.attributes();
    let is_counter = attrs.index_type().ok() == Some(NvIndexType::Counter);
    if !is_counter || attrs.orderly() || !attrs.auth_read() || !attrs.auth_write() {
        return Err(tpm_error(
            "counter_define",
            "the NV index exists but is not an auth-read/write, non-orderly counter",
        ));
    }
    Ok(())
}

/// Counts the handles in the range starting at `first` (same top byte,
/// or the policy-session byte for the loaded-session range).
fn count_handles(ctx: &mut Context, first: u32) -> Attempt<usize> {
    list_handles(ctx, first).map(|l| l.len())
}

/// Lists the handles in the range starting at `first`.
fn list_handles(ctx: &mut Context, first: u32) -> Attempt<Vec<u32>> {
    let top = first >> 24;
    let mut property = first;
    let mut found = Vec::new();
    loop {
        let (data, more) = ctx
            .execute_without_session(|c| c.get_capability(CapabilityType::Handles, property, 64))
            .tag("get_capability")?;
        let CapabilityData::Handles(list) = data else {
            return Err(tpm_error("get_capability", "unexpected capability data"));
        };
        let mut last = None;
        for handle in list.iter() {
            let raw = u32::from(*handle);
            let t = raw >> 24;
            if t == top || (top == 0x02 && t == 0x03) {
                found.push(raw);
            }
            last = Some(raw);
        }
        match (more, last) {
            (true, Some(l)) if l < u32::MAX => property = l + 1,
            _ => return Ok(found),
        }
    }
}

/// Flushes transient objects left by an earlier meterd that died without
/// flushing (kill -9): without a resource manager (swtpm, or /dev/tpm0)
/// they would hold the TPM's few slots forever. Under /dev/tpmrm0 the
/// kernel shows each connection only its own objects, so this finds none.
fn flush_leftovers(ctx: &mut Context) -> Attempt<usize> {
    let handles = list_handles(ctx, TRANSIENT_FIRST)?;
    for raw in &handles {
        let tpm_handle = TransientTpmHandle::new(*raw).tag("transient_handle")?;
        let object = ctx
            .tr_from_tpm_public(TpmHandle::Transient(tpm_handle))
            .tag("tr_from_tpm_public")?;
        ctx.flush_context(object).tag("flush_context")?;
    }
    Ok(handles.len())
}

impl Housing for TpmHousing {
    fn create_key(&mut self, name: &str) -> Result<Vec<u8>> {
        keystore::validate_name(name)?;
        if self.store.exists(name)? {
            return Err(HousingError::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("key {name:?} already exists"),
            )));
        }
        let name_owned = name.to_owned();
        self.run(move |conn, store| {
            let template = templates::signing_key_template().tag("key_template")?;
            make_room(conn)?;
            let primary = create_primary(&mut conn.ctx)?;
            let created = conn
                .ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.create(primary, template, None, None, None, None)
                });
            let created = match created {
                Ok(c) => c,
                Err(e) => {
                    let _ = conn.ctx.flush_context(primary.into());
                    return Err(Fail::Tss("create", e));
                }
            };
            let flushed = conn.ctx.flush_context(primary.into());
            flushed.tag("flush_context")?;
            let point = templates::signing_key_point(&created.out_public)
                .ok_or_else(|| tpm_error("create", "TPM returned an unexpected public area"))?;
            store.store(&name_owned, &created.out_public, &created.out_private)?;
            Ok(point)
        })
    }

    fn has_key(&mut self, name: &str) -> Result<bool> {
        self.store.exists(name)
    }

    fn public_key(&mut self, name: &str) -> Result<Vec<u8>> {
        // The blob pair is bound together by the TPM's integrity check on
        // load, so load it (cheap when cached) before trusting the .pub.
        keystore::validate_name(name)?;
        self.run(|conn, store| {
            ensure_loaded(conn, store, name)?;
            conn.keys
                .last()
                .map(|k| k.point.clone())
                .ok_or_else(|| tpm_error("public_key", "key not loaded"))
        })
    }

    fn sign_digest(&mut self, name: &str, digest: &[u8; 48]) -> Result<RawSignature> {
        keystore::validate_name(name)?;
        let digest = Digest::try_from(digest.to_vec()).map_err(|e| map_tss("sign", e))?;
        let scheme = templates::sign_scheme();
        let ticket = templates::null_ticket().map_err(|e| map_tss("sign", e))?;
        self.run(|conn, store| {
            let handle = ensure_loaded(conn, store, name)?;
            let sig = conn
                .ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.sign(handle, digest.clone(), scheme, ticket.clone())
                })
                .tag("sign")?;
            templates::raw_signature(&sig)
                .ok_or_else(|| tpm_error("sign", "TPM returned a non-ECDSA signature"))
        })
    }

    fn destroy_key(&mut self, name: &str) -> Result<()> {
        keystore::validate_name(name)?;
        if let Some(conn) = self.conn.as_mut() {
            if let Some(pos) = conn.keys.iter().position(|k| k.name == name) {
                let key = conn.keys.remove(pos);
                if let Err(e) = conn.ctx.flush_context(key.handle.into()) {
                    if is_link_failure(&e) {
                        self.conn = None;
                    }
                }
            }
        }
        self.store.remove(name)
    }

    fn counter_define(&mut self, index: u32) -> Result<u64> {
        let index = check_nv_index(index)?;
        self.run(|conn, _| {
            let handle = match nv_handle(conn, index)? {
                Some(h) => h,
                None => {
                    nv_define_counter(conn, index)?;
                    nv_handle(conn, index)?
                        .ok_or_else(|| tpm_error("counter_define", "index vanished after define"))?
                }
            };
            check_counter_public(&mut conn.ctx, handle)?;
            if let Some(v) = nv_value(&mut conn.ctx, handle)? {
                return Ok(v);
            }
            nv_increment(&mut conn.ctx, handle)?;
            nv_value(&mut conn.ctx, handle)?
                .ok_or_else(|| tpm_error("counter_define", "counter unreadable after increment"))
        })
    }

    fn counter_read(&mut self, index: u32) -> Result<Option<u64>> {
        let raw = index;
        let index = check_nv_index(index)?;
        self.run(|conn, _| {
            let Some(handle) = nv_handle(conn, index)? else {
                return Ok(None);
            };
            match nv_value(&mut conn.ctx, handle)? {
                Some(v) => {
                    conn.counters.insert(raw, v);
                    Ok(Some(v))
                }
                None => Err(tpm_error(
                    "counter_read",
                    "counter defined but never incremented (call counter_define)",
                )),
            }
        })
    }

    fn counter_increment(&mut self, index: u32) -> Result<u64> {
        let raw = index;
        let index = check_nv_index(index)?;
        let mut attempts = 0u32;
        self.run(|conn, _| {
            attempts += 1;
            let handle = nv_handle(conn, index)?
                .ok_or_else(|| tpm_error("counter_increment", "counter not defined"))?;
            // The value this connection last saw, if the link never broke:
            // a counter moves by exactly one per increment, so reading it
            // back (a second TPM command per ledger batch) is only needed
            // after a retry, when the first increment may have landed.
            let known = conn.counters.get(&raw).copied().filter(|_| attempts == 1);
            nv_increment(&mut conn.ctx, handle)?;
            let value = match known.and_then(|v| v.checked_add(1)) {
                Some(v) => v,
                None => nv_value(&mut conn.ctx, handle)?.ok_or_else(|| {
                    tpm_error("counter_increment", "counter unreadable after increment")
                })?,
            };
            conn.counters.insert(raw, value);
            Ok(value)
        })
    }

    fn clock(&mut self) -> Result<TpmClock> {
        self.run(|conn, _| {
            if conn.keys.len() >= MAX_LOADED_KEYS && conn.clock_offsets.is_none() {
                // Calibration needs one slot for a short-lived key.
                make_room(conn)?;
            }
            clock::read(&mut conn.ctx, &mut conn.clock_offsets)
        })
    }

    fn transient_objects(&mut self) -> Result<usize> {
        self.run(|conn, _| count_handles(&mut conn.ctx, TRANSIENT_FIRST))
    }

    fn loaded_sessions(&mut self) -> Result<usize> {
        self.run(|conn, _| count_handles(&mut conn.ctx, LOADED_SESSION_FIRST))
    }

    fn shutdown(&mut self) -> Result<()> {
        self.flush_all()?;
        self.run(|conn, _| {
            conn.ctx
                .execute_without_session(|c| c.shutdown(StartupType::State))
                .tag("shutdown")
        })
    }
}
