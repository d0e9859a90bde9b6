//! The work of the members that use a user key in the TPM: `Sign` (a
//! detached CMS signature over a message read from a descriptor) and
//! `Decrypt` (an EnvelopedData opened into an output descriptor). The
//! interface block in `mod.rs` keeps their signatures and docs.

use meter_proto::MeterError;
use zbus::message::Header;

use super::fd_arg::MessageFd;
use super::MeterIface;
use crate::{decrypt, sign};
use meter_proto::Blob;

impl MeterIface {
    /// `Sign` (sale lane): hashes `message`, then signs the imprint.
    pub(super) async fn sign_with(
        &self,
        header: &Header<'_>,
        certificate_serial: &str,
        message: MessageFd,
        request_id: &str,
    ) -> Result<Blob, MeterError> {
        let call = self.seller(header, "Sign").await?;
        let key = call.key(request_id)?;
        let imprint = call.hash(message).await?;
        let (meter, certs) = (&self.app.meter, &self.app.certs);
        call.blob(sign::sign(meter, certs, certificate_serial, imprint, key).await)
    }

    /// `Decrypt` (sale lane): checks `output` before reading `envelope`,
    /// then opens it into `output`; the bytes written.
    pub(super) async fn decrypt_with(
        &self,
        header: &Header<'_>,
        certificate_serial: &str,
        envelope: MessageFd,
        output: MessageFd,
        request_id: &str,
    ) -> Result<u64, MeterError> {
        let call = self.seller(header, "Decrypt").await?;
        let key = call.key(request_id)?;
        let out = call.outlet(output)?;
        call.done(out.check())?;
        let envelope = call.read(envelope).await?;
        let (meter, certs) = (&self.app.meter, &self.app.certs);
        call.done(decrypt::decrypt(meter, certs, certificate_serial, &envelope, out, key).await)
    }
}
