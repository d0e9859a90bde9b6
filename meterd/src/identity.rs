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

    /// Parses the bundle of a Provision row's product (see [`split_row`]):
    /// what [`Identity::to_bundle`] wrote, and any authority object after it.
    pub fn from_bundle(meter_id: &str, product: &[u8]) -> Result<Identity> {
        let (bundle, _) = split_row(product)?;
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

/// Splits a Provision row's product into the bundle of certificates and
/// what follows it: the authority's signed object that made the row (a
/// trust-anchor update stores the [`meter_pki::payload::AnchorUpdate`] CMS
/// after the new bundle, so the audit can verify it again; the first
/// provisioning stores the bundle alone). At most one object follows, and
/// it is the last DER element.
pub fn split_row(product: &[u8]) -> Result<(&[u8], Option<&[u8]>)> {
    let bad = |e: der::Error| ServiceError::Storage(format!("provisioning row: {e}"));
    let mut reader = SliceReader::new(product).map_err(bad)?;
    let mut start = 0usize;
    while !reader.is_finished() {
        der::asn1::AnyRef::decode(&mut reader).map_err(bad)?;
        let end = usize::try_from(reader.position()).map_err(bad)?;
        let element = product.get(start..end).unwrap_or_default();
        if Certificate::from_der(element).is_err() {
            if end != product.len() {
                return Err(ServiceError::Storage(
                    "provisioning row: more than one object after the certificates".into(),
                ));
            }
            return Ok((product.get(..start).unwrap_or_default(), Some(element)));
        }
        start = end;
    }
    Ok((product, None))
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
