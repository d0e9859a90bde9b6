//! The meter's identity: its id, certificates and trust anchors.
//!
//! The id is derived from the identity key so that it cannot drift from the
//! key the TPM holds; the certificates arrive from the authority and are
//! kept in the ledger (Provision row) as a bundle of concatenated DER
//! certificates: meter, postmark, then the anchors.

use der::{Decode, Encode, Reader, SliceReader};
use meter_pki::cert::Certificate;
use sha2::{Digest, Sha384};

use crate::error::{Result, ServiceError};

/// The provisioned identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Meter id (CN of both certificates).
    pub meter_id: String,
    /// Certificate of the identity key.
    pub meter_cert: Certificate,
    /// Certificate of the postmark key (critical EKU timeStamping).
    pub postmark_cert: Certificate,
    /// Authority certificates the meter trusts.
    pub anchors: Vec<Certificate>,
}

/// Meter id from the identity public key: `MTR-` and 12 hex digits of its SHA-384.
pub fn meter_id_from_key(public_sec1: &[u8]) -> String {
    let digest = Sha384::digest(public_sec1);
    format!("MTR-{}", hex::encode_upper(&digest[..6]))
}

impl Identity {
    /// Serializes for the ledger.
    pub fn to_bundle(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for cert in [&self.meter_cert, &self.postmark_cert]
            .into_iter()
            .chain(self.anchors.iter())
        {
            cert.encode_to_vec(&mut out)
                .map_err(|e| ServiceError::InvalidInput(format!("certificate encoding: {e}")))?;
        }
        Ok(out)
    }

    /// Parses a bundle written by [`Identity::to_bundle`].
    pub fn from_bundle(meter_id: &str, bundle: &[u8]) -> Result<Identity> {
        let bad = |e: der::Error| ServiceError::Storage(format!("provisioning bundle: {e}"));
        let mut reader = SliceReader::new(bundle).map_err(bad)?;
        let mut certs = Vec::new();
        while !reader.is_finished() {
            certs.push(Certificate::decode(&mut reader).map_err(bad)?);
        }
        let mut certs = certs.into_iter();
        match (certs.next(), certs.next()) {
            (Some(meter_cert), Some(postmark_cert)) => Ok(Identity {
                meter_id: meter_id.to_owned(),
                meter_cert,
                postmark_cert,
                anchors: certs.collect(),
            }),
            _ => Err(ServiceError::Storage(
                "provisioning bundle holds fewer than two certificates".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_id_is_stable_and_short() {
        let a = meter_id_from_key(&[4u8; 97]);
        assert_eq!(a, meter_id_from_key(&[4u8; 97]));
        assert_ne!(a, meter_id_from_key(&[5u8; 97]));
        assert_eq!(a.len(), 16);
        assert!(a.starts_with("MTR-"));
    }
}
