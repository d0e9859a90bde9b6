//! NV counter commands: the monotonic counter that binds the ledger to the TPM.
//!
//! The counter is a plain, non-orderly NV counter (so an increment is
//! durable when the command returns), defined under the owner hierarchy
//! with the meter's auth value for it and `AUTHREAD|AUTHWRITE|NO_DA`: read
//! and written with that value alone, never by the owner or the platform
//! (no OWNERWRITE, PPWRITE or POLICYWRITE), so a process that can reach the
//! TPM but lacks the secret can neither move nor read it. NO_DA: the value
//! is 256 random bits, so guessing is hopeless without the dictionary-attack
//! counter, and with it any caller could send wrong values until the TPM's
//! lockout (which stops every DA-protected object on the machine). An
//! existing index of another kind is refused rather than reused.
//!
//! Deleting the index (TPM2_NV_UndefineSpace) needs the owner's
//! authorization, not the index's: on a TPM whose owner password is empty
//! any TPM user can delete it, and the meter then locks at its next start
//! (the new counter is ahead of the ledger). Setting an owner password
//! (given to meterd as the `owner-auth` credential) closes that.

use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::{NvIndexType, Tss2ResponseCodeKind};
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::NvPublicBuilder;
use tss_esapi::Context;

use tss_esapi::structures::Auth;

use super::conn::{tpm_error, Attempt, Conn, Fail, Tag};
use super::errors::{map_tss, tpm_kind};
use super::tpm_auth;
use crate::housing::auth::AuthValue;
use crate::housing::Result;

/// The ESAPI form of NV index `index`, refused outside the NV range.
pub(super) fn check_nv_index(index: u32) -> Result<NvIndexTpmHandle> {
    crate::housing::check_nv_index(index)?;
    NvIndexTpmHandle::new(index).map_err(|e| map_tss("nv", e))
}

/// ESAPI handle of NV index `index` carrying its auth value (`None`: the
/// empty one), `None` if the TPM has no such index.
pub(super) fn nv_handle(
    conn: &mut Conn,
    index: NvIndexTpmHandle,
    auth: Option<&AuthValue>,
) -> Attempt<Option<NvIndexHandle>> {
    let raw = u32::from(TpmHandle::NvIndex(index));
    if let Some(h) = conn.nv.get(&raw) {
        return Ok(Some(*h));
    }
    match conn
        .ctx
        .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(index)))
    {
        Ok(object) => {
            if let Some(auth) = tpm_auth(auth)? {
                conn.ctx.tr_set_auth(object, auth).tag("tr_set_auth")?;
            }
            let handle = NvIndexHandle::from(object);
            conn.nv.insert(raw, handle);
            Ok(Some(handle))
        }
        Err(e) if tpm_kind(&e) == Some(Tss2ResponseCodeKind::Handle) => Ok(None),
        Err(e) => Err(Fail::Tss("nv_read_public", e)),
    }
}

/// Reads the counter value; `None` if it was never incremented.
pub(super) fn nv_value(ctx: &mut Context, handle: NvIndexHandle) -> Attempt<Option<u64>> {
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

pub(super) fn nv_increment(ctx: &mut Context, handle: NvIndexHandle) -> Attempt<()> {
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.nv_increment(NvAuth::NvIndex(handle), handle)
    })
    .tag("nv_increment")
}

/// Defines a non-orderly counter with auth value `auth` at `index`.
pub(super) fn nv_define_counter(
    conn: &mut Conn,
    index: NvIndexTpmHandle,
    auth: Option<Auth>,
) -> Attempt<()> {
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
            c.nv_define_space(Provision::Owner, auth, public)
        });
    match defined {
        // ESAPI keeps the auth value on the handle it returns; the caller
        // looks the index up again (and sets it) all the same.
        Ok(handle) => {
            let mut object = handle.into();
            conn.ctx.tr_close(&mut object).tag("tr_close")?;
            Ok(())
        }
        // Defined meanwhile: fine, the caller looks it up.
        Err(e) if tpm_kind(&e) == Some(Tss2ResponseCodeKind::NvDefined) => Ok(()),
        Err(e) => Err(Fail::Tss("nv_define_space", e)),
    }
}

/// Refuses an existing index that is not a plain, non-orderly counter
/// written with its own auth value alone.
pub(super) fn check_counter_public(ctx: &mut Context, handle: NvIndexHandle) -> Attempt<()> {
    let (public, _) = ctx
        .execute_without_session(|c| c.nv_read_public(handle))
        .tag("nv_read_public")?;
    let attrs = public.attributes();
    let is_counter = attrs.index_type().ok() == Some(NvIndexType::Counter);
    let others_write = attrs.owner_write() || attrs.pp_write() || attrs.policy_write();
    if !is_counter || attrs.orderly() || !attrs.auth_read() || !attrs.auth_write() || others_write {
        return Err(tpm_error(
            "counter_define",
            "the NV index exists but is not a non-orderly counter written with its own \
             authorization alone (AUTHREAD|AUTHWRITE, no OWNERWRITE/PPWRITE/POLICYWRITE)",
        ));
    }
    Ok(())
}
