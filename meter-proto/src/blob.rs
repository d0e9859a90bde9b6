//! `ay` replies written in one copy (meterd's, and the bench's stand-in
//! meters', so a stand-in costs what meterd's bus share costs).
//!
//! zvariant serializes a `Vec<u8>` as a sequence, one byte at a time, twice
//! (once to size the message, once to write it): for a 2 KiB postmark token
//! that was a fifth of meterd's instructions per postmark (issue 14,
//! callgrind). [`Blob`] has the same D-Bus signature (`ay`), so the
//! contract and every client are unchanged, but serializes through
//! `serialize_bytes`: a length and one `memcpy`.

use serde::{Serialize, Serializer};
use zbus::zvariant::{Signature, Type};

/// A byte-array reply (`ay`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl Type for Blob {
    const SIGNATURE: &'static Signature = <Vec<u8> as Type>::SIGNATURE;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use zbus::zvariant::serialized::Context;
    use zbus::zvariant::{to_bytes, LE};

    #[test]
    fn same_signature_and_bytes_as_a_vec() {
        assert_eq!(Blob::SIGNATURE, <Vec<u8> as Type>::SIGNATURE);
        let ctxt = Context::new_dbus(LE, 0);
        for len in [0usize, 1, 3, 48, 2_500] {
            let v: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let as_vec = to_bytes(ctxt, &v).unwrap();
            let as_blob = to_bytes(ctxt, &Blob(v.clone())).unwrap();
            assert_eq!(as_blob.bytes(), as_vec.bytes(), "len {len}");
            let back: Vec<u8> = as_blob.deserialize().unwrap().0;
            assert_eq!(back, v);
        }
    }
}
