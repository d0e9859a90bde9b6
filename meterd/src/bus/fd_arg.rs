//! The `h` argument of Postmark, Sign and Validate.
//!
//! A D-Bus `h` is an index into the descriptors attached to the message.
//! With zvariant's own fd types, an index that points at no attached
//! descriptor fails the whole argument decoding inside the generated
//! interface code, and the caller gets `org.freedesktop.zbus.Error` —
//! not a meterd error a client can act on (issue 11, hole 7). This type
//! has the same signature (`h`, so the interface and its introspection do
//! not change), but its decoding cannot fail: a missing descriptor becomes
//! [`MessageFd::Missing`], which the method turns into `InvalidInput`.
//!
//! Why catching the error is sound: zvariant reads the 4-byte index (the
//! deserializer's position moves past it) before it looks the descriptor
//! up, so the arguments after it decode normally. A body too short to hold
//! the index fails again at the next argument, with zbus's own error, as
//! any malformed body does.

use std::os::fd::OwnedFd;

use serde::{Deserialize, Deserializer};
use zbus::zvariant::{Signature, Type};

use meter_proto::MeterError;

/// A message descriptor argument, or why there is none.
#[derive(Debug)]
pub enum MessageFd {
    /// The descriptor the caller attached (a duplicate, owned here).
    Attached(OwnedFd),
    /// The index pointed at no attached descriptor.
    Missing(String),
}

impl MessageFd {
    /// The descriptor, or `InvalidInput` saying it is missing.
    pub fn into_fd(self) -> Result<OwnedFd, MeterError> {
        match self {
            MessageFd::Attached(fd) => Ok(fd),
            MessageFd::Missing(why) => Err(MeterError::InvalidInput(format!(
                "the message argument (type h) carries no file descriptor ({why}); \
                 attach the message's descriptor to the call"
            ))),
        }
    }
}

impl Type for MessageFd {
    const SIGNATURE: &'static Signature = &Signature::Fd;
}

impl<'de> Deserialize<'de> for MessageFd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match zbus::zvariant::OwnedFd::deserialize(deserializer) {
            Ok(fd) => Ok(MessageFd::Attached(OwnedFd::from(fd))),
            Err(e) => Ok(MessageFd::Missing(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::os::fd::AsFd;

    use zbus::zvariant::serialized::{Context, Data};
    use zbus::zvariant::{to_bytes, Fd, LE};

    use super::*;

    #[test]
    fn an_index_without_descriptor_decodes_as_missing() {
        // (h s) with index 3 and no descriptors: same bytes as (u s).
        let ctxt = Context::new_dbus(LE, 0);
        let bytes = to_bytes(ctxt, &(3u32, "req-1")).unwrap().to_vec();
        let data = Data::new(bytes, ctxt);
        let ((fd, id), _): ((MessageFd, String), _) = data.deserialize().unwrap();
        assert!(matches!(fd, MessageFd::Missing(_)), "{fd:?}");
        assert_eq!(id, "req-1", "the next argument still decodes");
        let e = fd.into_fd().unwrap_err();
        assert!(matches!(e, MeterError::InvalidInput(_)));
    }

    #[test]
    fn an_attached_descriptor_decodes() {
        let file = tempfile::tempfile().unwrap();
        let ctxt = Context::new_dbus(LE, 0);
        let data = zbus::zvariant::to_bytes(ctxt, &(Fd::from(file.as_fd()), "id")).unwrap();
        let ((fd, id), _): ((MessageFd, String), _) = data.deserialize().unwrap();
        assert!(matches!(fd, MessageFd::Attached(_)), "{fd:?}");
        assert_eq!(id, "id");
        assert_eq!(<MessageFd as Type>::SIGNATURE, &Signature::Fd);
    }
}
