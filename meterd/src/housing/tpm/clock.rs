//! Reading the TPM clock where TPM2_ReadClock cannot be sent.
//!
//! The housing reads the clock with TPM2_ReadClock on a connection of its
//! own, kept between reads (`nvcertify::ClockConn`: tss-esapi 7.7 wraps neither
//! `Esys_ReadClock` nor gives access to its `ESYS_CONTEXT*`). It needs no
//! authorization and no hierarchy. Where that second connection cannot be
//! opened (`/dev/tpm0` without a resource manager is exclusive), this
//! module reads it on the housing's own context with TPM2_GetTime, which
//! returns the same `TPMS_CLOCK_INFO`, but names the endorsement hierarchy
//! as its privacy admin: it fails while that hierarchy is disabled
//! (`attack_tpm::a_disabled_endorsement_hierarchy_does_not_blind_the_clock_check`).
//!
//! * With `signHandle = TPM_RH_NULL` the TPM returns an unsigned
//!   attestation: cheap, no transient slot. `clock` and `safe` are in
//!   plain text but, because the (null) signer is not in the endorsement or
//!   platform hierarchy, `resetCount`/`restartCount` are obfuscated by
//!   adding a constant derived from the owner proof and the signer's name
//!   (TPM 2.0 Part 3, `FillInAttestInfo`). The constant changes only with
//!   TPM2_Clear.
//! * Once per context we *calibrate*: a short-lived primary in the
//!   endorsement hierarchy, of the signing keys' template, signs one
//!   GetTime (plain counts), an unsigned GetTime follows, and the wrapping
//!   difference of the counts is the offset. Later reads use the unsigned
//!   path and subtract the offset. The key is noDA like every key of ours:
//!   a DA-protected one was refused while the TPM was in dictionary-attack
//!   lockout (which any `tss` member, or a few unorderly resets, can
//!   cause), and every watchdog tick then failed: the clock check lost its
//!   TPM witness (`attack_tpm`). Its first use after a start also cost the
//!   TPM an NV write (the "DA used" state).
//!
//! A calibration happens again after every reconnect (a TPM reset changes
//! the counts, not the offset; a TPM2_Clear changes the offset and also
//! destroys our keys, so the meter would be unusable anyway).

use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{ClockInfo, Data, SignatureScheme};
use tss_esapi::Context;

use super::{templates, Attempt, Tag};
use crate::housing::TpmClock;

/// What to subtract from the obfuscated reset and restart counts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offsets {
    reset: u32,
    restart: u32,
}

const TWO_PASSWORDS: (
    Option<AuthSession>,
    Option<AuthSession>,
    Option<AuthSession>,
) = (
    Some(AuthSession::Password),
    Some(AuthSession::Password),
    None,
);

/// Reads the clock; calibrates first if `offsets` is unset. Needs one free
/// transient slot the first time.
pub(crate) fn read(ctx: &mut Context, offsets: &mut Option<Offsets>) -> Attempt<TpmClock> {
    let off = match *offsets {
        Some(o) => o,
        None => *offsets.insert(calibrate(ctx)?),
    };
    let info = unsigned_time(ctx)?;
    Ok(TpmClock {
        clock_ms: info.clock(),
        reset_count: info.reset_count().wrapping_sub(off.reset),
        restart_count: info.restart_count().wrapping_sub(off.restart),
        safe: info.safe(),
    })
}

/// TPM2_GetTime with the null signer: an unsigned attestation.
fn unsigned_time(ctx: &mut Context) -> Attempt<ClockInfo> {
    let (attest, _) = ctx
        .execute_with_sessions(TWO_PASSWORDS, |c| {
            c.get_time(KeyHandle::Null, Data::default(), SignatureScheme::Null)
        })
        .tag("get_time")?;
    Ok(*attest.clock_info())
}

/// Computes the obfuscation offsets with one signed GetTime.
fn calibrate(ctx: &mut Context) -> Attempt<Offsets> {
    let template = templates::signing_key_template().tag("clock_template")?;
    let key = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
        })
        .tag("clock_primary")?
        .key_handle;
    let signed = ctx.execute_with_sessions(TWO_PASSWORDS, |c| {
        c.get_time(key, Data::default(), SignatureScheme::Null)
    });
    let flushed = ctx.flush_context(key.into());
    let plain = *signed.tag("get_time")?.0.clock_info();
    flushed.tag("flush_context")?;
    let obfuscated = unsigned_time(ctx)?;
    Ok(Offsets {
        reset: obfuscated.reset_count().wrapping_sub(plain.reset_count()),
        restart: obfuscated
            .restart_count()
            .wrapping_sub(plain.restart_count()),
    })
}
