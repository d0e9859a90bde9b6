//! The signingCertificateV2 attribute of the last certificate used, kept
//! per thread.
//!
//! A meter signs with the same few certificates again and again (its
//! postmark certificate for every token); encoding the certificate and
//! hashing it for the attribute cost ~5 % of a postmark's instructions
//! (issue 14, callgrind). The value is reused only for a certificate equal
//! in every field to the one it was made for.

use std::cell::RefCell;

use x509_cert::Certificate;

use super::SigningCertificateV2;
use crate::Result;

thread_local! {
    static LAST: RefCell<Option<(Certificate, SigningCertificateV2)>> = const { RefCell::new(None) };
}

/// `make(c)`, or the value made for an equal certificate last time on this
/// thread.
pub(super) fn cached(
    c: &Certificate,
    make: fn(&Certificate) -> Result<SigningCertificateV2>,
) -> Result<SigningCertificateV2> {
    let hit = LAST.with(|l| {
        l.borrow()
            .as_ref()
            .filter(|(cert, _)| cert == c)
            .map(|(_, v)| v.clone())
    });
    if let Some(v) = hit {
        return Ok(v);
    }
    let v = make(c)?;
    LAST.with(|l| *l.borrow_mut() = Some((c.clone(), v.clone())));
    Ok(v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_keys::{key, T0};

    #[test]
    fn a_value_is_reused_only_for_an_equal_certificate() {
        let a = crate::issue::self_signed_root(&key(1), "A", 1, T0, 10).unwrap();
        // Same name, serial and key: only the validity differs.
        let b = crate::issue::self_signed_root(&key(1), "A", 1, T0, 11).unwrap();
        assert_ne!(a, b);
        let va = cached(&a, super::super::ess_uncached).unwrap();
        assert_eq!(cached(&a, |_| unreachable_ess()).unwrap(), va);
        let vb = cached(&b, super::super::ess_uncached).unwrap();
        assert_ne!(va, vb);
        assert_eq!(vb, super::super::ess_uncached(&b).unwrap());
    }

    fn unreachable_ess() -> Result<SigningCertificateV2> {
        Err(crate::PkiError::Malformed(
            "the cached value was not used".into(),
        ))
    }
}
