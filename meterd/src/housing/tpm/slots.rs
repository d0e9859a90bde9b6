//! The TPM's transient slots: the storage primary, the small LRU of loaded
//! signing keys, and listing (or flushing) the handles the TPM holds.
//!
//! swtpm and many TPMs have three transient slots, so the primary lives only
//! while a key is created or loaded, at most [`MAX_LOADED_KEYS`] keys stay
//! loaded, and a reset that emptied the TPM behind our back is detected
//! before any load (see [`ensure_loaded`]).

use std::collections::HashMap;

use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, TpmHandle, TransientTpmHandle};
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Auth, CapabilityData};
use tss_esapi::Context;

use super::conn::{tpm_error, Attempt, Conn, LoadedKey, Tag};
use super::errors::map_tss;
use super::keystore::KeyStore;
use super::{templates, tpm_auth, TpmHousing, MAX_LOADED_KEYS};
use crate::housing::auth::HierarchyAuth;
use crate::housing::{HousingError, Result, AK_KEY, POSTAL_KEY};

/// First handle of the transient-object range.
pub(super) const TRANSIENT_FIRST: u32 = 0x8000_0000;
/// First handle of the loaded-session range (HMAC and policy sessions).
pub(super) const LOADED_SESSION_FIRST: u32 = 0x0200_0000;

/// Creates the storage primary from the fixed template.
pub(super) fn create_primary(ctx: &mut Context) -> Attempt<KeyHandle> {
    create_primary_in(ctx, Hierarchy::Owner)
}

/// Creates the storage primary of `hierarchy` (the AK's is in the endorsement one).
/// The command's tag names the hierarchy, so that a refused password names
/// the right credential (`Conn::final_error`).
pub(super) fn create_primary_in(ctx: &mut Context, hierarchy: Hierarchy) -> Attempt<KeyHandle> {
    let template = templates::primary_template().tag("primary_template")?;
    let command = match hierarchy {
        Hierarchy::Endorsement => "endorsement_primary",
        _ => "create_primary",
    };
    let primary = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.create_primary(hierarchy, template, None, None, None, None)
        })
        .tag(command)?;
    Ok(primary.key_handle)
}

/// Flushes least recently used keys until one more fits.
pub(super) fn make_room(conn: &mut Conn) -> Attempt<()> {
    while conn.keys.len() >= MAX_LOADED_KEYS {
        let victim = conn.keys.remove(0);
        conn.ctx
            .flush_context(victim.handle.into())
            .tag("flush_context")?;
    }
    Ok(())
}

/// Loads key `name` (or finds it loaded), marking it most recently used.
pub(super) fn ensure_loaded(conn: &mut Conn, store: &KeyStore, name: &str) -> Attempt<KeyHandle> {
    if let Some(pos) = conn.keys.iter().position(|k| k.name == name) {
        let key = conn.keys.remove(pos);
        let handle = key.handle;
        conn.keys.push(key);
        return Ok(handle);
    }
    let (public, private) = store.load(name)?;
    let point = templates::signing_key_point(&public)
        .or_else(|| {
            (name == AK_KEY)
                .then(|| templates::ak_point(&public))
                .flatten()
        })
        .or_else(|| templates::ecdh_key_point(&public))
        // The postal HMAC key has no point: an empty one marks it loaded.
        .or_else(|| (name == POSTAL_KEY && templates::hmac_key_ok(&public)).then(Vec::new));
    let point = point.ok_or_else(|| {
        tpm_error(
            "load",
            format!("blob of {name:?} is not a P-384 signing or key-agreement key"),
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
    let primary = create_primary_in(&mut conn.ctx, templates::parent_hierarchy(name))?;
    let loaded = conn
        .ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.load(primary, private, public)
        });
    let flushed = conn.ctx.flush_context(primary.into());
    let handle = loaded.tag("load")?;
    // The key's auth value lives on this ESAPI handle only: set it at every
    // load, so a reload after a TPM reset re-supplies it.
    let auth = tpm_auth(store.auth().key(name).as_ref()).and_then(|auth| match auth {
        Some(a) => conn.ctx.tr_set_auth(handle.into(), a).tag("tr_set_auth"),
        None => Ok(()),
    });
    if let Err(e) = auth {
        let _ = conn.ctx.flush_context(handle.into());
        return Err(e);
    }
    conn.keys.push(LoadedKey {
        name: name.to_owned(),
        handle,
        point,
    });
    flushed.tag("flush_context")?;
    Ok(handle)
}

/// Counts the handles in the range starting at `first` (same top byte,
/// or the policy-session byte for the loaded-session range).
pub(super) fn count_handles(ctx: &mut Context, first: u32) -> Attempt<usize> {
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
pub(super) fn flush_leftovers(ctx: &mut Context) -> Attempt<usize> {
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

/// Sets a hierarchy's password (from its credential) on the context.
fn set_hierarchy_auth(ctx: &mut Context, handle: ObjectHandle, h: &HierarchyAuth) -> Result<()> {
    let Some(value) = &h.value else {
        return Ok(());
    };
    let auth = Auth::try_from(value.to_vec()).map_err(|e| map_tss("tr_set_auth", e))?;
    ctx.tr_set_auth(handle, auth)
        .map_err(|e| map_tss("tr_set_auth", e))
}

impl TpmHousing {
    /// Opens the context if there is none.
    pub(super) fn connect(&mut self) -> Result<&mut Conn> {
        match self.conn {
            Some(ref mut conn) => Ok(conn),
            None => {
                let mut ctx = Context::new(self.tcti.clone()).map_err(|e| {
                    // A device node we cannot open says why (group tss, no TPM).
                    match self.device.as_deref().and_then(super::device::diagnose) {
                        Some(why) => HousingError::Unavailable(format!("open TCTI: {why}")),
                        None => HousingError::Unavailable(format!("open TCTI: {e}")),
                    }
                })?;
                // The hierarchy passwords live in the context: set them on
                // every new one (after a reset as at start).
                set_hierarchy_auth(&mut ctx, ObjectHandle::Owner, &self.owner)?;
                set_hierarchy_auth(&mut ctx, ObjectHandle::Endorsement, &self.endorsement)?;
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
}
