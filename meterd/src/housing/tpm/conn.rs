//! The ESAPI context of [`TpmHousing`] and the retry-once rule.
//!
//! Every operation runs as an [`Attempt`] on a [`Conn`]: a failure is either
//! a raw TSS error, classified here (link failure or stale handle: drop the
//! context and retry once on a fresh one; TPM not started: TPM2_Startup and
//! retry), or a final [`HousingError`]. Keeping the classification in one
//! place is what lets the operations in `tpm.rs` be written straight.

use std::collections::HashMap;

use tss_esapi::constants::{StartupType, Tss2ResponseCodeKind};
use tss_esapi::handles::{KeyHandle, NvIndexHandle};
use tss_esapi::{Context, Error as TssError};

use super::errors::{self, describe, is_bad_auth, is_link_failure, map_tss, tpm_kind};
use super::keystore::KeyStore;
use super::{clock, TpmHousing};
use crate::housing::{HousingError, Result};

/// One signing key loaded in the TPM.
pub(super) struct LoadedKey {
    pub(super) name: String,
    pub(super) handle: KeyHandle,
    /// Uncompressed SEC1 point, from the blob the TPM accepted.
    pub(super) point: Vec<u8>,
}

/// A live connection: the context and what is loaded through it.
pub(super) struct Conn {
    pub(super) ctx: Context,
    /// LRU of loaded signing keys, most recently used last.
    pub(super) keys: Vec<LoadedKey>,
    /// ESAPI handles of NV indices (no TPM slot; saves a ReadPublic each).
    pub(super) nv: HashMap<u32, NvIndexHandle>,
    /// Clock de-obfuscation offsets, see `clock.rs`; reset with the context.
    pub(super) clock_offsets: Option<clock::Offsets>,
    /// Last value read or produced per NV counter on this connection.
    pub(super) counters: HashMap<u32, u64>,
}

/// Failure of one attempt: a TSS error (classified later) or a final one.
#[derive(Debug)]
pub(super) enum Fail {
    Tss(&'static str, TssError),
    Housing(HousingError),
}

impl From<HousingError> for Fail {
    fn from(e: HousingError) -> Self {
        Fail::Housing(e)
    }
}

impl Fail {
    /// The final error of an attempt that is not retried (no reconnect).
    pub(super) fn into_housing(self) -> HousingError {
        match self {
            Fail::Housing(h) => h,
            Fail::Tss(command, e) => map_tss(command, e),
        }
    }
}

pub(super) type Attempt<T> = std::result::Result<T, Fail>;

/// Tags a tss-esapi result with the command name.
pub(super) trait Tag<T> {
    fn tag(self, command: &'static str) -> Attempt<T>;
}

impl<T> Tag<T> for tss_esapi::Result<T> {
    fn tag(self, command: &'static str) -> Attempt<T> {
        self.map_err(|e| Fail::Tss(command, e))
    }
}

pub(super) fn tpm_error(command: &'static str, message: impl Into<String>) -> Fail {
    Fail::Housing(HousingError::Tpm {
        command,
        message: message.into(),
    })
}

/// A failed command that used `object`'s auth value: a refused
/// authorization becomes a final error that keeps the TPM's kind and says
/// where the secret is; anything else goes through the retry rule.
pub(super) fn object_failure(
    store: &KeyStore,
    object: &str,
    command: &'static str,
    e: TssError,
) -> Fail {
    if is_bad_auth(&e) {
        tpm_error(
            command,
            format!("{}: {}", describe(&e), store.auth().refusal_hint(object)),
        )
    } else {
        Fail::Tss(command, e)
    }
}

impl TpmHousing {
    /// Runs `op` on the connection; on a link failure drops the context and
    /// retries once on a fresh one (a TPM needing TPM2_Startup gets one).
    pub(super) fn run<T>(
        &mut self,
        mut op: impl FnMut(&mut Conn, &KeyStore) -> Attempt<T>,
    ) -> Result<T> {
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
                return Err(self.final_error(command, e));
            }
            if retried {
                return Err(self.final_error(command, e));
            }
            retried = true;
        }
    }

    /// The housing error of a command that failed for good. A refused
    /// authorization names its cause: the hierarchy password and the
    /// credential to set, or the object secret.
    fn final_error(&self, command: &'static str, e: TssError) -> HousingError {
        if !is_bad_auth(&e) {
            return map_tss(command, e);
        }
        let hint = match command {
            "create_primary" | "nv_define_space" => self.owner.refusal_hint(),
            "clock_primary" | "get_time" | "endorsement_primary" => self.endorsement.refusal_hint(),
            "nv_read" | "nv_increment" => self.store.auth().refusal_hint("the NV counter"),
            _ => return map_tss(command, e),
        };
        HousingError::Tpm {
            command,
            message: format!("{}: {hint}", describe(&e)),
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
}
