//! Reading the signed objects the rows keep: verified against the anchors
//! in force at the row's time, or only decoded when the row is before the
//! point from which the walk verifies signatures.

use der::{Decode, Reader, SliceReader};
use meter_pki::cert::{self, Certificate};
use meter_pki::payload::{self, Payload};
use meter_pki::{cms, PkiError};

/// A signed object read from a row.
pub(super) struct Opened<T> {
    /// The payload.
    pub body: T,
    /// The signer's certificate.
    pub signer: Certificate,
}

/// Opens a signed payload of type `T`. With `verify`, the signature and the
/// signer's chain to `anchors` are checked at `at` (the row's time, Unix s)
/// — or, when a certificate on the way is outside its validity then, at
/// the time the object says it was signed: the meter accepted it when it
/// came in, shortly before its row was dated, and the row's time is only
/// ever later (it never goes back), so a certificate that expired in
/// between is not tamper. Without `verify`, only the structure and the
/// content type are checked.
pub(super) fn open<T: Payload>(
    der: &[u8],
    anchors: &[Certificate],
    at: i64,
    verify: bool,
) -> Result<Opened<T>, String> {
    if !verify {
        let u = cms::peek(der).map_err(|e| e.to_string())?;
        if u.content_type != T::CONTENT_TYPE {
            return Err(format!(
                "holds an object of type {}, not {}",
                u.content_type,
                T::CONTENT_TYPE
            ));
        }
        let body = payload::decode(&u.content).map_err(|e| e.to_string())?;
        return Ok(Opened {
            body,
            signer: u.signer,
        });
    }
    let verified = match cms::verify(der, anchors, Some(&T::CONTENT_TYPE), at) {
        Err(PkiError::Expired(why)) => match cms::peek(der).ok().and_then(|u| u.signing_time) {
            Some(signed) if signed != at => {
                cms::verify(der, anchors, Some(&T::CONTENT_TYPE), signed)
            }
            _ => Err(PkiError::Expired(why)),
        },
        other => other,
    }
    .map_err(|e| {
        format!("its signed object does not verify with the trust anchors in force: {e}")
    })?;
    let body = payload::decode(&verified.content).map_err(|e| e.to_string())?;
    Ok(Opened {
        body,
        signer: verified.signer,
    })
}

/// Checks that `c` chains to `anchors` at `at`, or, when a certificate is
/// outside its validity then, at `c`'s own notBefore (see [`open`]).
pub(super) fn chain(c: &Certificate, anchors: &[Certificate], at: i64) -> Result<(), String> {
    match cert::verify_chain(c, &[], anchors, at) {
        Err(PkiError::Expired(_)) => cert::verify_chain(c, &[], anchors, cert::not_before(c)),
        other => other,
    }
    .map(|_| ())
    .map_err(|e| format!("its certificate does not chain to the trust anchors in force: {e}"))
}

/// The detail of a meter key `m/<what>/<detail>`, or of its schema-1 form
/// `<what>:<detail>` (`<what>` alone for an empty detail); `None` when the
/// key is absent or of another kind.
pub(super) fn key_detail<'a>(key: Option<&'a str>, what: &str) -> Option<&'a str> {
    let k = key?;
    if let Some(rest) = k.strip_prefix("m/") {
        let (w, detail) = rest.split_once('/')?;
        return (w == what).then_some(detail);
    }
    if k == what {
        return Some("");
    }
    let (w, detail) = k.split_once(':')?;
    (w == what).then_some(detail)
}

/// [`key_detail`], or an error naming the key the row should have had.
pub(super) fn require_detail<'a>(key: Option<&'a str>, what: &str) -> Result<&'a str, String> {
    key_detail(key, what).ok_or_else(|| {
        format!(
            "its key {:?} is not a m/{what}/ key",
            key.unwrap_or("(none)")
        )
    })
}

/// Splits `bytes` after its first DER element.
pub(super) fn first_element(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let bad = |e: der::Error| format!("its product is not DER: {e}");
    let mut r = SliceReader::new(bytes).map_err(bad)?;
    der::asn1::AnyRef::decode(&mut r).map_err(bad)?;
    let n = usize::try_from(r.position()).map_err(bad)?;
    Ok(bytes.split_at(n))
}

/// Hex SHA-384.
pub(super) fn sha384_hex(bytes: &[u8]) -> String {
    hex::encode(meter_pki::ledger_format::sha384(bytes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_details_scoped_and_legacy() {
        assert_eq!(key_detail(Some("m/voucher/7"), "voucher"), Some("7"));
        assert_eq!(key_detail(Some("voucher:7"), "voucher"), Some("7"));
        assert_eq!(key_detail(Some("m/provision/"), "provision"), Some(""));
        assert_eq!(key_detail(Some("provision"), "provision"), Some(""));
        assert_eq!(
            key_detail(Some("m/clear-lock/a/b"), "clear-lock"),
            Some("a/b")
        );
        assert_eq!(key_detail(Some("c/1000/voucher:7"), "voucher"), None);
        assert_eq!(key_detail(Some("m/voucherx/7"), "voucher"), None);
        assert_eq!(key_detail(Some("m/voucher"), "voucher"), None);
        assert_eq!(key_detail(None, "voucher"), None);
        assert!(require_detail(Some("m/rates/v2"), "voucher").is_err());
    }

    #[test]
    fn first_element_splits() {
        let (a, b) = first_element(&[0x30, 1, 5, 0x30, 0]).unwrap();
        assert_eq!(a, [0x30, 1, 5]);
        assert_eq!(b, [0x30, 0]);
        assert!(first_element(&[0x30, 9]).is_err());
    }
}
