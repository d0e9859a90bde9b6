//! TPM2_NV_Certify of the meter's counter by the AK, and TPM2_ReadClock, over
//! raw tss2-esys.
//!
//! tss-esapi 7.7 wraps neither `Esys_NV_Certify` nor lets us reach the `ESYS_CONTEXT*` of
//! its `Context` (see `clock.rs`), and swtpm serves one connection at a time. So the
//! caller closes its context (every handle flushed), and this module opens a connection of
//! its own through the TCTI loader, loads the AK under the endorsement storage primary,
//! certifies the index and closes again; the next housing command reconnects as after any
//! outage and reloads keys on demand. It runs once per report, never on the sale path.
//!
//! TPM2_ReadClock ([`ClockConn`]) is the other command tss-esapi 7.7 lacks. It needs no
//! authorization, no hierarchy and no object, so it runs on a connection of its own
//! *beside* the housing's (the swtpm TCTI connects per command; the kernel's resource
//! manager and tabrmd serve several connections), and the caller keeps its keys loaded.
//!
//! All `unsafe` of the housing is here: FFI calls whose pointers come from live Rust
//! values, outputs freed with `Esys_Free`, contexts finalized by [`Raw`]'s `Drop`.

use std::ffi::CString;
use std::ptr::null_mut;

use tss_esapi::constants::response_code::Tss2ResponseCode;
use tss_esapi::structures::{Auth, Data, Private, Public, Signature, SignatureScheme};
use tss_esapi::tss2_esys::{
    Esys_CreatePrimary, Esys_Finalize, Esys_FlushContext, Esys_Free, Esys_Initialize, Esys_Load,
    Esys_NV_Certify, Esys_ReadClock, Esys_TR_Close, Esys_TR_FromTPMPublic, Esys_TR_SetAuth,
    Tss2_TctiLdr_Finalize, Tss2_TctiLdr_Initialize, ESYS_CONTEXT, ESYS_TR, ESYS_TR_NONE,
    ESYS_TR_PASSWORD, ESYS_TR_RH_ENDORSEMENT, TPM2B_ATTEST, TPM2B_AUTH, TPM2B_DATA, TPM2B_PRIVATE,
    TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE, TPML_PCR_SELECTION, TPMS_TIME_INFO, TPMT_SIGNATURE,
    TPMT_SIG_SCHEME, TSS2_RC, TSS2_TCTI_CONTEXT,
};
use tss_esapi::{Error as TssError, TctiNameConf};

use super::conn::{tpm_error, Attempt, Fail, Tag};
use super::templates;
use crate::housing::{Attestation, TpmClock};

/// One raw connection; finalized (and its objects flushed) on drop.
struct Raw {
    tcti: *mut TSS2_TCTI_CONTEXT,
    esys: *mut ESYS_CONTEXT,
    flush: Vec<ESYS_TR>,
    close: Vec<ESYS_TR>,
}

fn check(command: &'static str, rc: TSS2_RC) -> Attempt<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Fail::Tss(
            command,
            TssError::Tss2Error(Tss2ResponseCode::from(rc)),
        ))
    }
}

impl Raw {
    fn open(tcti: &TctiNameConf) -> Attempt<Raw> {
        let conf = CString::try_from(tcti.clone()).tag("tcti_conf")?;
        let mut raw = Raw {
            tcti: null_mut(),
            esys: null_mut(),
            flush: Vec::new(),
            close: Vec::new(),
        };
        // SAFETY: `conf` is a valid C string; the out-pointer is a live field.
        check("tcti_init", unsafe {
            Tss2_TctiLdr_Initialize(conf.as_ptr(), &mut raw.tcti)
        })?;
        // SAFETY: `raw.tcti` was just initialized; the ABI version may be null.
        check("esys_init", unsafe {
            Esys_Initialize(&mut raw.esys, raw.tcti, null_mut())
        })?;
        Ok(raw)
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if !self.esys.is_null() {
            for h in self.flush.drain(..) {
                // SAFETY: `h` is an object this context created and has not flushed.
                let _ = unsafe { Esys_FlushContext(self.esys, h) };
            }
            for mut h in self.close.drain(..) {
                // SAFETY: `h` is a resource this context opened.
                let _ = unsafe { Esys_TR_Close(self.esys, &mut h) };
            }
            // SAFETY: the context is live and finalized once (the pointer is nulled).
            unsafe { Esys_Finalize(&mut self.esys) };
        }
        if !self.tcti.is_null() {
            // SAFETY: as above, for the TCTI.
            unsafe { Tss2_TctiLdr_Finalize(&mut self.tcti) };
        }
    }
}

/// TPM2_NV_Certify of the 8-byte counter `index` by the AK (blobs `ak_public`,
/// `ak_private`), authorized by the index's own auth value `nv_auth`.
pub(super) fn certify_counter(
    tcti: &TctiNameConf,
    ak_public: Public,
    ak_private: Private,
    ak_auth: &[u8],
    index: u32,
    nv_auth: &[u8],
    qualifying: &[u8],
) -> Attempt<Attestation> {
    let primary_public =
        TPM2B_PUBLIC::try_from(templates::primary_template().tag("primary_template")?)
            .tag("primary_template")?;
    let ak_public = TPM2B_PUBLIC::try_from(ak_public).tag("ak_public")?;
    let ak_private = TPM2B_PRIVATE::from(ak_private);
    let data = TPM2B_DATA::from(Data::try_from(qualifying.to_vec()).tag("qualifying_data")?);
    let scheme = TPMT_SIG_SCHEME::from(SignatureScheme::Null);
    let auth = TPM2B_AUTH::from(Auth::try_from(nv_auth.to_vec()).tag("nv_auth")?);
    let ak_auth = TPM2B_AUTH::from(Auth::try_from(ak_auth.to_vec()).tag("ak_auth")?);
    let sensitive = TPM2B_SENSITIVE_CREATE::default();
    let outside = TPM2B_DATA::default();
    let pcrs = TPML_PCR_SELECTION::default();

    let mut raw = Raw::open(tcti)?;
    let mut primary: ESYS_TR = ESYS_TR_NONE;
    // SAFETY: every input points to a live local; optional outputs are null.
    check("create_primary", unsafe {
        Esys_CreatePrimary(
            raw.esys,
            ESYS_TR_RH_ENDORSEMENT,
            ESYS_TR_PASSWORD,
            ESYS_TR_NONE,
            ESYS_TR_NONE,
            &sensitive,
            &primary_public,
            &outside,
            &pcrs,
            &mut primary,
            null_mut(),
            null_mut(),
            null_mut(),
            null_mut(),
        )
    })?;
    raw.flush.push(primary);
    let mut ak: ESYS_TR = ESYS_TR_NONE;
    // SAFETY: as above.
    let loaded = check("load", unsafe {
        Esys_Load(
            raw.esys,
            primary,
            ESYS_TR_PASSWORD,
            ESYS_TR_NONE,
            ESYS_TR_NONE,
            &ak_private,
            &ak_public,
            &mut ak,
        )
    });
    // The primary is not needed once the AK is in: free its slot before the command.
    raw.flush.retain(|h| *h != primary);
    // SAFETY: `primary` is a live object of this context.
    check("flush_context", unsafe {
        Esys_FlushContext(raw.esys, primary)
    })?;
    loaded?;
    raw.flush.push(ak);
    // SAFETY: `ak` is live; `ak_auth` is a live local. The AK's auth value, as
    // the housing's own connection sets it at every load.
    check("tr_set_auth", unsafe {
        Esys_TR_SetAuth(raw.esys, ak, &ak_auth)
    })?;
    let mut nv: ESYS_TR = ESYS_TR_NONE;
    // SAFETY: as above.
    check("nv_read_public", unsafe {
        Esys_TR_FromTPMPublic(
            raw.esys,
            index,
            ESYS_TR_NONE,
            ESYS_TR_NONE,
            ESYS_TR_NONE,
            &mut nv,
        )
    })?;
    raw.close.push(nv);
    // SAFETY: `nv` is live; `auth` is a live local.
    check("tr_set_auth", unsafe {
        Esys_TR_SetAuth(raw.esys, nv, &auth)
    })?;
    let mut attest: *mut TPM2B_ATTEST = null_mut();
    let mut signature: *mut TPMT_SIGNATURE = null_mut();
    // SAFETY: handles are live; outputs are allocated by ESYS and freed below.
    let certified = check("nv_certify", unsafe {
        Esys_NV_Certify(
            raw.esys,
            ak,
            nv,
            nv,
            ESYS_TR_PASSWORD,
            ESYS_TR_PASSWORD,
            ESYS_TR_NONE,
            &data,
            &scheme,
            8,
            0,
            &mut attest,
            &mut signature,
        )
    });
    let out = take_outputs(attest, signature);
    certified?;
    out
}

/// Copies and frees what Esys_NV_Certify returned.
fn take_outputs(attest: *mut TPM2B_ATTEST, signature: *mut TPMT_SIGNATURE) -> Attempt<Attestation> {
    // SAFETY: non-null pointers were allocated by ESYS for this call and are read once.
    let bytes = unsafe { attest.as_ref() }.and_then(|a| {
        a.attestationData
            .get(..usize::from(a.size))
            .map(<[u8]>::to_vec)
    });
    // SAFETY: as above.
    let sig = unsafe { signature.as_ref() }.map(|s| Signature::try_from(*s));
    // SAFETY: ESYS allocations (or null, which Esys_Free accepts).
    unsafe {
        Esys_Free(attest.cast());
        Esys_Free(signature.cast());
    }
    let bytes = bytes.ok_or_else(|| tpm_error("nv_certify", "no attestation returned"))?;
    let sig = sig
        .ok_or_else(|| tpm_error("nv_certify", "no signature returned"))?
        .tag("nv_certify_signature")?;
    let signature = templates::raw_signature(&sig)
        .ok_or_else(|| tpm_error("nv_certify", "the AK returned a non-ECDSA signature"))?;
    Ok(Attestation {
        attest: bytes,
        signature,
    })
}

// SAFETY: a `Raw` alone holds its TCTI and ESYS contexts (the pointers are
// never copied out) and uses them through `&mut self` only, so handing the
// whole value to another thread (the housing moves to its own thread once)
// cannot race. It is not `Sync`: ESYS is not thread-safe.
unsafe impl Send for Raw {}

/// The connection TPM2_ReadClock runs on, kept between reads: a read needs
/// no object and no session, so nothing of it goes stale, and opening one
/// (the TCTI loader, an ESYS context, a socket or a device) for every read
/// cost each epoch row and each clock check that set-up again. A kept one
/// that fails (tabrmd restarted, the TPM away) is dropped and the read is
/// tried once on a new one; with none to be had the housing falls back to
/// GetTime (see `tpm::clock`).
#[derive(Default)]
pub(super) struct ClockConn(Option<Raw>);

impl ClockConn {
    /// TPM2_ReadClock: the TPM's clock and its reset and restart counts, in
    /// plain text (only attestations obfuscate them). Unlike TPM2_GetTime,
    /// whose privacy-admin handle is the endorsement hierarchy, it works
    /// while that hierarchy is disabled, which anyone who holds its (by
    /// default empty) password can do until the next TPM reset.
    pub(super) fn read(&mut self, tcti: &TctiNameConf) -> Attempt<TpmClock> {
        if let Some(raw) = self.0.as_mut() {
            match read_clock(raw) {
                Ok(clock) => return Ok(clock),
                Err(e) => {
                    tracing::debug!(error = ?e, "TPM2_ReadClock on the kept connection failed; opening another");
                    self.0 = None;
                }
            }
        }
        let mut raw = Raw::open(tcti)?;
        let clock = read_clock(&mut raw)?;
        self.0 = Some(raw);
        Ok(clock)
    }
}

/// TPM2_ReadClock on `raw`.
fn read_clock(raw: &mut Raw) -> Attempt<TpmClock> {
    let mut info: *mut TPMS_TIME_INFO = null_mut();
    // SAFETY: a live context; the out-pointer is a live local.
    let rc = unsafe {
        Esys_ReadClock(
            raw.esys,
            ESYS_TR_NONE,
            ESYS_TR_NONE,
            ESYS_TR_NONE,
            &mut info,
        )
    };
    // SAFETY: a non-null pointer was allocated by ESYS for this call and is read once.
    let clock = unsafe { info.as_ref() }.map(|t| TpmClock {
        clock_ms: t.clockInfo.clock,
        reset_count: t.clockInfo.resetCount,
        restart_count: t.clockInfo.restartCount,
        safe: t.clockInfo.safe != 0,
    });
    // SAFETY: an ESYS allocation (or null, which Esys_Free accepts).
    unsafe { Esys_Free(info.cast()) };
    check("read_clock", rc)?;
    clock.ok_or_else(|| tpm_error("read_clock", "no time returned"))
}
