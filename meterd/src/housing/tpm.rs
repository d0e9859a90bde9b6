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
//! * **Authorization.** Every key is created with its auth value and the NV
//!   counter is defined with its own (see `housing/auth.rs`); the values are
//!   set on each ESAPI handle when it is loaded or looked up (`tr_set_auth`),
//!   so a fresh context after a reset re-supplies them with the reload. The
//!   owner and endorsement hierarchy passwords (systemd credentials) are set
//!   on every new context. A refused authorization is a final error that
//!   names its cause (the credential to set, or the secret file).
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
//!
//! Files: this one holds [`TpmHousing`] and its [`Housing`] operations;
//! `conn.rs` the context, the retry-once rule and the error plumbing;
//! `slots.rs` the transient slots (primary, LRU of loaded keys, handle
//! listing); `nv.rs` the NV counter commands; `clock.rs`, `errors.rs`,
//! `keystore.rs` and `templates.rs` as their docs say.

mod attest;
mod clock;
mod conn;
mod device;
mod errors;
mod keystore;
mod nv;
mod nvcertify;
mod postal;
mod slots;
mod templates;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use tss_esapi::constants::StartupType;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Auth, Digest};
use tss_esapi::TctiNameConf;
use zeroize::Zeroizing;

use super::auth::{AuthOptions, AuthValue, HierarchyAuth};
use super::{
    check_key_name, AttestIdentity, Attestation, Housing, HousingError, RawSignature, Result,
    TpmClock, AK_KEY,
};
use conn::{object_failure, tpm_error, Attempt, Conn, Fail, Tag};
use errors::{is_link_failure, map_tss};
use keystore::KeyStore;
use nv::{
    check_counter_public, check_nv_index, nv_define_counter, nv_handle, nv_increment, nv_value,
};
use slots::{
    count_handles, create_primary, ensure_loaded, make_room, LOADED_SESSION_FIRST, TRANSIENT_FIRST,
};

/// Signing keys kept loaded at once (one slot stays free for the primary).
pub const MAX_LOADED_KEYS: usize = 2;

/// What [`TpmHousing::open_with`] needs.
#[derive(Debug, Clone)]
pub struct TpmOptions {
    /// TCTI: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, ...
    pub tcti: String,
    /// Key blob directory (created, mode 0700, if missing); the object
    /// secret `auth` lives there unless a credential holds it.
    pub key_dir: PathBuf,
    /// Where the object secret and the hierarchy passwords come from.
    pub auth: AuthOptions,
}

/// The TPM housing: keys, NV counter and clock over one ESAPI context.
pub struct TpmHousing {
    tcti: TctiNameConf,
    store: KeyStore,
    conn: Option<Conn>,
    owner: HierarchyAuth,
    endorsement: HierarchyAuth,
    /// The device node of a `device:` TCTI, to explain a failed open.
    device: Option<PathBuf>,
    /// The second connection the clock is read on (TPM2_ReadClock).
    clock_conn: nvcertify::ClockConn,
}

impl TpmHousing {
    /// Opens the TPM at `tcti` (`device:/dev/tpmrm0`,
    /// `swtpm:host=127.0.0.1,port=2321`, ...) with key blobs in `key_dir`
    /// and no credentials: empty hierarchy passwords, the object secret in
    /// `key_dir/auth` (see [`Self::open_with`]).
    pub fn open(tcti: &str, key_dir: &Path) -> Result<TpmHousing> {
        TpmHousing::open_with(&TpmOptions {
            tcti: tcti.to_owned(),
            key_dir: key_dir.to_path_buf(),
            auth: AuthOptions::default(),
        })
    }

    /// Opens the TPM with the authorizations of `options`.
    ///
    /// Sets `TSS2_LOG=all+NONE` if unset, to silence the TSS C logger; the
    /// environment is process-wide, so call this early, before other
    /// threads read the environment.
    pub fn open_with(options: &TpmOptions) -> Result<TpmHousing> {
        if std::env::var_os("TSS2_LOG").is_none() {
            std::env::set_var("TSS2_LOG", "all+NONE");
        }
        let tcti = &options.tcti;
        let conf = TctiNameConf::from_str(tcti)
            .map_err(|e| HousingError::Unavailable(format!("bad TCTI {tcti:?}: {e}")))?;
        let store = KeyStore::open(&options.key_dir, &options.auth)?;
        let owner = HierarchyAuth::load("owner", &options.auth, &options.auth.owner_credential)?;
        let endorsement = HierarchyAuth::load(
            "endorsement",
            &options.auth,
            &options.auth.endorsement_credential,
        )?;
        if store.auth().legacy() {
            tracing::warn!(
                key_dir = %options.key_dir.display(),
                "legacy TPM objects without authorization: this meter was provisioned before \
                 TPM authorization, so anyone who can reach the TPM can use its keys and move \
                 its counter; re-provision it"
            );
        }
        tracing::info!(
            secret = %store.auth().source(),
            owner_password = owner.value.is_some(),
            endorsement_password = endorsement.value.is_some(),
            legacy = store.auth().legacy(),
            "TPM authorization"
        );
        let mut housing = TpmHousing {
            tcti: conf,
            store,
            conn: None,
            owner,
            endorsement,
            device: device::device_path(tcti),
            clock_conn: nvcertify::ClockConn::default(),
        };
        housing.connect()?;
        Ok(housing)
    }

    /// Auth value of NV counter `index` (empty for a legacy meter's counter,
    /// made before TPM authorization).
    fn counter_auth(&self, index: u32) -> Vec<u8> {
        self.store
            .auth()
            .nv(index)
            .map(|v| v.to_vec())
            .unwrap_or_default()
    }

    /// Creates a key of `kind` that never leaves the TPM and stores its blobs.
    fn create_resident(&mut self, name: &str, kind: KeyKind) -> Result<Vec<u8>> {
        check_key_name(name)?;
        if self.store.exists(name)? {
            return Err(HousingError::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("key {name:?} already exists"),
            )));
        }
        // The secret exists before the first object that uses it.
        self.store.auth_mut().ensure_secret()?;
        let name_owned = name.to_owned();
        self.run(move |conn, store| {
            let template = match kind {
                KeyKind::Signing => templates::signing_key_template(),
                KeyKind::Agreement => templates::ecdh_key_template(),
            }
            .tag("key_template")?;
            let auth = tpm_auth(store.auth().key(&name_owned).as_ref())?;
            make_room(conn)?;
            let primary = create_primary(&mut conn.ctx)?;
            let created = conn
                .ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.create(primary, template, auth, None, None, None)
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
            let point = match kind {
                KeyKind::Signing => templates::signing_key_point(&created.out_public),
                KeyKind::Agreement => templates::ecdh_key_point(&created.out_public),
            }
            .ok_or_else(|| tpm_error("create", "TPM returned an unexpected public area"))?;
            store.store(&name_owned, &created.out_public, &created.out_private)?;
            Ok(point)
        })
    }

    /// Names of the keys loaded right now, least recently used first.
    pub fn loaded_keys(&self) -> Vec<String> {
        self.conn
            .as_ref()
            .map(|c| c.keys.iter().map(|k| k.name.clone()).collect())
            .unwrap_or_default()
    }
}

impl Housing for TpmHousing {
    fn create_key(&mut self, name: &str) -> Result<Vec<u8>> {
        self.create_resident(name, KeyKind::Signing)
    }

    fn has_key(&mut self, name: &str) -> Result<bool> {
        self.store.exists(name)
    }

    fn public_key(&mut self, name: &str) -> Result<Vec<u8>> {
        // The blob pair is bound together by the TPM's integrity check on
        // load, so load it (cheap when cached) before trusting the .pub.
        check_key_name(name)?;
        self.run(|conn, store| {
            ensure_loaded(conn, store, name)?;
            conn.keys
                .last()
                .map(|k| k.point.clone())
                .ok_or_else(|| tpm_error("public_key", "key not loaded"))
        })
    }

    fn sign_digest(&mut self, name: &str, digest: &[u8; 48]) -> Result<RawSignature> {
        check_key_name(name)?;
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
                .map_err(|e| object_failure(store, &format!("key {name:?}"), "sign", e))?;
            templates::raw_signature(&sig)
                .ok_or_else(|| tpm_error("sign", "TPM returned a non-ECDSA signature"))
        })
    }

    fn destroy_key(&mut self, name: &str) -> Result<()> {
        check_key_name(name)?;
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

    fn create_ecdh_key(&mut self, name: &str) -> Result<Vec<u8>> {
        self.create_resident(name, KeyKind::Agreement)
    }

    fn ecdh_z_gen(&mut self, name: &str, peer_sec1: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        check_key_name(name)?;
        let peer = templates::ecc_point(peer_sec1)
            .ok_or_else(|| tpm_error_final("ecdh_z_gen", "peer point is not uncompressed P-384"))?;
        // Only a key-agreement key of ours: its blob says so before the TPM is asked.
        let (public, _) = self.store.load(name)?;
        if templates::ecdh_key_point(&public).is_none() {
            return Err(tpm_error_final(
                "ecdh_z_gen",
                &format!("key {name:?} is not a key-agreement key"),
            ));
        }
        self.run(|conn, store| {
            let handle = ensure_loaded(conn, store, name)?;
            let z = conn
                .ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.ecdh_z_gen(handle, peer.clone())
                })
                .map_err(|e| object_failure(store, &format!("key {name:?}"), "ecdh_z_gen", e))?;
            templates::shared_x(&z)
                .map(|x| Zeroizing::new(x.to_vec()))
                .ok_or_else(|| tpm_error("ecdh_z_gen", "TPM returned an oversized point"))
        })
    }

    fn counter_define(&mut self, index: u32) -> Result<u64> {
        let raw = index;
        let index = check_nv_index(index)?;
        self.store.auth_mut().ensure_secret()?;
        self.run(|conn, store| {
            let auth = store.auth().nv(raw);
            let handle = match nv_handle(conn, index, auth.as_ref())? {
                Some(h) => h,
                None => {
                    nv_define_counter(conn, index, tpm_auth(auth.as_ref())?)?;
                    nv_handle(conn, index, auth.as_ref())?
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
        self.run(|conn, store| {
            let Some(handle) = nv_handle(conn, index, store.auth().nv(raw).as_ref())? else {
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
        self.run(|conn, store| {
            attempts += 1;
            let handle = nv_handle(conn, index, store.auth().nv(raw).as_ref())?
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
        // TPM2_ReadClock first: no authorization, no hierarchy, no slot.
        // GetTime (below) is the way where a second connection cannot be
        // opened (`/dev/tpm0` without a resource manager is exclusive).
        let direct = self.clock_conn.read(&self.tcti).map_err(Fail::into_housing);
        match direct {
            Ok(clock) => return Ok(clock),
            Err(e) => tracing::debug!(error = %e, "TPM2_ReadClock failed; reading through GetTime"),
        }
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

    fn attest_identity(&mut self) -> Result<AttestIdentity> {
        let ek_cert = self.run(|conn, _| attest::read_ek_cert(&mut conn.ctx))?;
        if !self.store.exists(AK_KEY)? {
            // The AK gets its own auth value, as every key: a `tss` member
            // holding its blob cannot make GetTime/NV_Certify over a digest
            // of its choosing.
            self.store.auth_mut().ensure_secret()?;
            self.run(attest::create_ak)?;
            tracing::info!("attestation key created in the TPM");
        }
        // Load it once: the TPM checks the blob pair before we publish its public area.
        self.run(|conn, store| slots::ensure_loaded(conn, store, AK_KEY).map(|_| ()))?;
        let ak_public = self.run(|_, store| attest::public_area(store, AK_KEY))?;
        Ok(AttestIdentity { ek_cert, ak_public })
    }

    fn key_public_area(&mut self, name: &str) -> Result<Vec<u8>> {
        check_key_name(name)?;
        self.run(|_, store| attest::public_area(store, name))
    }

    fn certify_key(&mut self, name: &str, qualifying: &[u8]) -> Result<Attestation> {
        check_key_name(name)?;
        self.run(|conn, store| attest::certify(conn, store, name, qualifying))
    }

    fn activate_credential(&mut self, credential_blob: &[u8], secret: &[u8]) -> Result<Vec<u8>> {
        self.run(|conn, store| attest::activate(conn, store, credential_blob, secret))
    }

    fn attest_time(&mut self, qualifying: &[u8]) -> Result<Attestation> {
        self.run(|conn, store| attest::time(conn, store, qualifying))
    }

    fn certify_counter(&mut self, index: u32, qualifying: &[u8]) -> Result<Attestation> {
        let raw_index = index;
        check_nv_index(index)?;
        let (public, private) = self.store.load(AK_KEY)?;
        // swtpm serves one connection: close ours (every handle flushed) for the raw one.
        if self.flush_all().is_err() {
            tracing::warn!("flush before NV_Certify failed; reconnecting anyway");
        }
        self.conn = None;
        let nv_auth = self.counter_auth(raw_index);
        let ak_auth = self
            .store
            .auth()
            .key(AK_KEY)
            .map(|v| v.to_vec())
            .unwrap_or_default();
        nvcertify::certify_counter(
            &self.tcti, public, private, &ak_auth, raw_index, &nv_auth, qualifying,
        )
        .map_err(Fail::into_housing)
    }

    fn shutdown(&mut self) -> Result<()> {
        self.flush_all()?;
        self.run(|conn, _| {
            conn.ctx
                .execute_without_session(|c| c.shutdown(StartupType::State))
                .tag("shutdown")
        })
    }

    fn legacy_auth(&self) -> bool {
        self.store.auth().legacy()
    }

    fn storage_parent_public(&mut self) -> Result<Vec<u8>> {
        self.run(|conn, _| postal::storage_parent_public(conn))
    }

    fn import_hmac_key(
        &mut self,
        name: &str,
        public: &[u8],
        duplicate: &[u8],
        seed: &[u8],
    ) -> Result<()> {
        check_key_name(name)?;
        let wrapped = postal::parse(public, duplicate, seed).map_err(Fail::into_housing)?;
        // The secret exists before the first object that uses it.
        self.store.auth_mut().ensure_secret()?;
        self.run(|conn, store| postal::import(conn, store, name, &wrapped))
    }

    fn hmac(&mut self, name: &str, data: &[u8]) -> Result<[u8; 32]> {
        check_key_name(name)?;
        self.run(|conn, store| postal::hmac(conn, store, name, data))
    }
}

/// What kind of resident key to create.
#[derive(Debug, Clone, Copy)]
enum KeyKind {
    /// ECDSA P-384 / SHA-384 signing key.
    Signing,
    /// P-384 key-agreement (ECDH) key.
    Agreement,
}

/// A refusal before the TPM is asked.
fn tpm_error_final(command: &'static str, message: &str) -> HousingError {
    HousingError::Tpm {
        command,
        message: message.to_owned(),
    }
}

/// An auth value as ESAPI takes it; `None` is the empty auth.
fn tpm_auth(value: Option<&AuthValue>) -> Attempt<Option<Auth>> {
    value
        .map(|v| Auth::try_from(v.to_vec()))
        .transpose()
        .tag("auth_value")
}
