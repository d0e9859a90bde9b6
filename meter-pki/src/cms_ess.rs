//! What the meter needs of a signer certificate for every product, made
//! once and kept per thread: its DER (embedded in the SignedData), the
//! signingCertificateV2 value and its public key.
//!
//! A meter signs with the same few certificates again and again (its
//! postmark certificate for every token). Encoding the certificate (for the
//! attribute's hash and for the `certificates` field), hashing it and
//! cloning it cost about a fifth of a postmark's instructions (issue 14,
//! callgrind). The parts are reused only for a certificate equal in every
//! field to the one they were made for.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use x509_cert::Certificate;

use super::SigningCertificateV2;
use crate::Result;

/// A signer certificate's parts, as made by `ess_uncached` and friends.
#[derive(Debug)]
pub(super) struct Signer {
    /// The certificate's DER.
    pub der: Arc<[u8]>,
    /// Its signingCertificateV2 value.
    pub ess: SigningCertificateV2,
    /// Its public key, uncompressed SEC1.
    pub sec1: Vec<u8>,
}

thread_local! {
    static LAST: RefCell<Option<(Certificate, Rc<Signer>)>> = const { RefCell::new(None) };
}

/// `make(c)`, or the parts made for an equal certificate last time on this
/// thread.
pub(super) fn cached(
    c: &Certificate,
    make: fn(&Certificate) -> Result<Signer>,
) -> Result<Rc<Signer>> {
    let hit = LAST.with(|l| {
        l.borrow()
            .as_ref()
            .filter(|(cert, _)| cert == c)
            .map(|(_, v)| Rc::clone(v))
    });
    if let Some(v) = hit {
        return Ok(v);
    }
    let v = Rc::new(make(c)?);
    LAST.with(|l| *l.borrow_mut() = Some((c.clone(), Rc::clone(&v))));
    Ok(v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_keys::{key, T0};

    #[test]
    fn parts_are_reused_only_for_an_equal_certificate() {
        let a = crate::issue::self_signed_root(&key(1), "A", 1, T0, 10).unwrap();
        // Same name, serial and key: only the validity differs.
        let b = crate::issue::self_signed_root(&key(1), "A", 1, T0, 11).unwrap();
        assert_ne!(a, b);
        let va = cached(&a, super::super::signer_uncached).unwrap();
        let again = cached(&a, |_| unreachable_parts()).unwrap();
        assert!(Rc::ptr_eq(&va, &again));
        let vb = cached(&b, super::super::signer_uncached).unwrap();
        assert_ne!(va.ess, vb.ess);
        assert_ne!(va.der, vb.der);
        let fresh = super::super::signer_uncached(&b).unwrap();
        assert_eq!(vb.ess, fresh.ess);
        assert_eq!(vb.der, fresh.der);
        assert_eq!(&*vb.der, crate::cert::to_der(&b).unwrap().as_slice());
    }

    fn unreachable_parts() -> Result<Signer> {
        Err(crate::PkiError::Malformed(
            "the cached parts were not used".into(),
        ))
    }
}
