//! Turning `tss_esapi::Error` into [`HousingError`], keeping the kind.
//!
//! tss-esapi's `Tss2ResponseCodeKind` decodes the TPM layer only and ignores
//! the TSS layer byte, so a TCTI I/O failure (`0x000A000A`) would read as an
//! unrelated TPM code. We recover the raw 32-bit code and look at the layer
//! first: TCTI-layer failures and the ESAPI errors that follow a broken
//! exchange mean "the TPM is unreachable, reconnect", everything else is the
//! TPM's (or the TSS's) own answer, reported with its decoded name. This
//! mirrors what Parsec does in `providers/tpm/utils.rs`.

use tss_esapi::constants::response_code::{Tss2ResponseCode, Tss2ResponseCodeKind};
use tss_esapi::Error as TssError;

use crate::housing::HousingError;

/// TSS layer of a response code (bits 16..24): 0 is the TPM itself.
const LAYER_SHIFT: u32 = 16;
const LAYER_ESYS: u32 = 7;
const LAYER_TCTI: u32 = 10;

/// Base error numbers shared by the TSS layers (`TSS2_BASE_RC_*`).
const BASE_RC_BAD_SEQUENCE: u32 = 7;
const BASE_RC_TRY_AGAIN: u32 = 9;
const BASE_RC_IO_ERROR: u32 = 10;
const BASE_RC_NO_CONNECTION: u32 = 8;
const BASE_RC_MALFORMED_RESPONSE: u32 = 17;
const BASE_RC_INSUFFICIENT_RESPONSE: u32 = 19;

/// The raw `TSS2_RC` of an error, if it came from the TSS.
pub(crate) fn raw_rc(err: &TssError) -> Option<u32> {
    let TssError::Tss2Error(rc) = err else {
        return None;
    };
    // The bitfield newtypes hide their value but display it as
    // "Response code value: 0x...".
    let text = match rc {
        Tss2ResponseCode::Success => return Some(0),
        Tss2ResponseCode::FormatZero(z) => z.to_string(),
        Tss2ResponseCode::FormatOne(o) => o.to_string(),
    };
    let hex = text.rsplit("0x").next()?;
    u32::from_str_radix(hex.trim(), 16).ok()
}

/// Whether `err` means the link to the TPM is broken (reconnect and retry).
pub(crate) fn is_link_failure(err: &TssError) -> bool {
    let Some(rc) = raw_rc(err) else {
        return false;
    };
    let layer = (rc >> LAYER_SHIFT) & 0xFF;
    let base = rc & 0xFFFF;
    match layer {
        LAYER_TCTI => true,
        LAYER_ESYS => matches!(
            base,
            BASE_RC_BAD_SEQUENCE
                | BASE_RC_TRY_AGAIN
                | BASE_RC_IO_ERROR
                | BASE_RC_NO_CONNECTION
                | BASE_RC_MALFORMED_RESPONSE
                | BASE_RC_INSUFFICIENT_RESPONSE
        ),
        _ => false,
    }
}

/// Whether the TPM says a handle or session we passed is not loaded,
/// which for handles we track means the TPM was reset under us.
pub(crate) fn is_stale_handle(err: &TssError) -> bool {
    use Tss2ResponseCodeKind as K;
    matches!(
        tpm_kind(err),
        Some(
            K::ReferenceH0
                | K::ReferenceH1
                | K::ReferenceH2
                | K::ReferenceH3
                | K::ReferenceH4
                | K::ReferenceH5
                | K::ReferenceH6
                | K::ReferenceS0
                | K::ReferenceS1
                | K::ReferenceS2
                | K::ReferenceS3
                | K::ReferenceS4
                | K::ReferenceS5
                | K::ReferenceS6
        )
    )
}

/// Whether the TPM refused an authorization value (TPM_RC_BAD_AUTH for
/// objects and hierarchies exempt from dictionary-attack protection,
/// TPM_RC_AUTH_FAIL for the others).
pub(crate) fn is_bad_auth(err: &TssError) -> bool {
    matches!(
        tpm_kind(err),
        Some(Tss2ResponseCodeKind::BadAuth | Tss2ResponseCodeKind::AuthFail)
    )
}

/// The decoded TPM response kind, only for codes from the TPM layer.
pub(crate) fn tpm_kind(err: &TssError) -> Option<Tss2ResponseCodeKind> {
    let TssError::Tss2Error(rc) = err else {
        return None;
    };
    let raw = raw_rc(err)?;
    if (raw >> LAYER_SHIFT) & 0xFF != 0 {
        return None;
    }
    rc.kind()
}

/// The one mapping from a tss-esapi error to a housing error.
pub(crate) fn map_tss(command: &'static str, err: TssError) -> HousingError {
    if is_link_failure(&err) {
        return HousingError::Unavailable(format!("{command}: {}", describe(&err)));
    }
    match tpm_kind(&err) {
        Some(Tss2ResponseCodeKind::NvRate) => HousingError::NvRate,
        _ => HousingError::Tpm {
            command,
            message: describe(&err),
        },
    }
}

/// "`<decoded message>` (rc 0x...)" — the kind name plus the raw code.
pub(crate) fn describe(err: &TssError) -> String {
    match (tpm_kind(err), raw_rc(err)) {
        (Some(kind), Some(rc)) => format!("{kind:?}: {err} (rc {rc:#010x})"),
        (None, Some(rc)) => format!("TSS layer {} error (rc {rc:#010x})", (rc >> 16) & 0xFF),
        _ => err.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use tss_esapi::WrapperErrorKind;

    fn rc(v: u32) -> TssError {
        TssError::Tss2Error(Tss2ResponseCode::from(v))
    }

    #[test]
    fn raw_code_roundtrips() {
        for v in [
            0x000A_000A,
            0x0000_0922,
            0x0000_014A,
            0x0000_018B,
            0x0007_0007,
        ] {
            assert_eq!(raw_rc(&rc(v)), Some(v), "{v:#x}");
        }
        assert_eq!(
            raw_rc(&TssError::WrapperError(WrapperErrorKind::WrongParamSize)),
            None
        );
    }

    #[test]
    fn tcti_io_error_is_unavailable() {
        assert!(is_link_failure(&rc(0x000A_000A)));
        assert!(matches!(
            map_tss("sign", rc(0x000A_000A)),
            HousingError::Unavailable(_)
        ));
        // An ESAPI "bad sequence" after a failed exchange, too.
        assert!(is_link_failure(&rc(0x0007_0007)));
    }

    #[test]
    fn tpm_codes_keep_their_kind() {
        // TPM_RC_NV_RATE (warning 0x920).
        assert!(matches!(
            map_tss("nv", rc(0x0000_0920)),
            HousingError::NvRate
        ));
        // TPM_RC_NV_UNINITIALIZED (0x14A).
        assert_eq!(
            tpm_kind(&rc(0x0000_014A)),
            Some(Tss2ResponseCodeKind::NvUninitialized)
        );
        match map_tss("nv_read", rc(0x0000_014A)) {
            HousingError::Tpm { command, message } => {
                assert_eq!(command, "nv_read");
                assert!(message.contains("NvUninitialized"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // TPM_RC_REFERENCE_H0: a handle we hold is gone.
        assert!(is_stale_handle(&rc(0x0000_0910)));
        assert!(!is_stale_handle(&rc(0x0000_014A)));
        // The same error number in the TCTI layer is not a TPM kind.
        assert_eq!(tpm_kind(&rc(0x000A_014A)), None);
    }

    #[test]
    fn refused_authorizations() {
        // TPM_RC_BAD_AUTH on session 1 (noDA object or a hierarchy).
        assert!(is_bad_auth(&rc(0x0000_09A2)));
        assert_eq!(
            tpm_kind(&rc(0x0000_09A2)),
            Some(Tss2ResponseCodeKind::BadAuth)
        );
        // TPM_RC_AUTH_FAIL on session 1 (DA-protected object).
        assert!(is_bad_auth(&rc(0x0000_098E)));
        assert!(!is_bad_auth(&rc(0x0000_014A)));
        assert!(!is_bad_auth(&rc(0x000A_09A2)));
    }
}
