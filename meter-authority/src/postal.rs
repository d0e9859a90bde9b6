//! The postal secret key (claim 21), authority side: answers a meter's postal-key request
//! with a random HMAC-SHA-256 key wrapped to the meter's TPM storage parent, keeps the key,
//! and checks indicium MACs with it.
//!
//! Keys are kept as `postal-keys/<meter id>/<delivery id>.key` (hex, mode 0600) in the
//! authority directory: the post needs them to verify, and a meter may hold a newer key
//! than some indicia in circulation, so every key of the meter is tried.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use meter_pki::indicium;
use meter_pki::postal::{self, PostalKeyDelivery};
use meter_pki::tpm::{duplicate, wire};

use crate::{check_meter_id, fresh_nonce_hex, Authority, AuthorityError, Result};

/// A delivery made for a meter.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The signed delivery (PEM).
    pub pem: String,
    /// Its id.
    pub delivery_id: String,
    /// The meter.
    pub meter_id: String,
}

impl Authority {
    fn postal_dir(&self, meter_id: &str) -> PathBuf {
        self.dir().join("postal-keys").join(meter_id)
    }

    /// Verifies a meter's postal-key request (signed by a meter this authority certified),
    /// makes and keeps a fresh key, and returns the signed delivery wrapping it to the
    /// meter's storage parent.
    pub fn postal_key(&self, request: &[u8], now: i64) -> Result<Delivered> {
        let req = postal::verify_request(request, &self.roots()?, now)?;
        check_meter_id(&req.meter_id)?;
        let parent = req.parent_public()?;
        let key = duplicate::fresh_key();
        let dup = duplicate::wrap_hmac_key(&parent, &key)?;
        let delivery_id = fresh_nonce_hex();
        let delivery = PostalKeyDelivery {
            meter_id: req.meter_id.clone(),
            delivery_id: delivery_id.clone(),
            public_hex: hex::encode(&dup.public),
            duplicate_hex: hex::encode(&dup.duplicate),
            seed_hex: hex::encode(&dup.seed),
            parent_name_hex: hex::encode(wire::name(wire::ALG_SHA256, &parent)?),
            issued_at: now,
        };
        let pem = self.sign_payload(&delivery, now)?;
        // Keep the key before the delivery leaves: a delivery whose key is lost is useless.
        let dir = self.postal_dir(&req.meter_id);
        std::fs::create_dir_all(&dir).map_err(|e| AuthorityError::io(&dir, e))?;
        let path = dir.join(format!("{delivery_id}.key"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| AuthorityError::io(&path, e))?;
        f.write_all(hex::encode(key.as_ref()).as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| AuthorityError::io(&path, e))?;
        Ok(Delivered {
            pem,
            delivery_id,
            meter_id: req.meter_id,
        })
    }

    /// The postal keys kept for `meter_id`: (delivery id, key).
    pub fn postal_keys(&self, meter_id: &str) -> Result<Vec<(String, Vec<u8>)>> {
        check_meter_id(meter_id)?;
        let dir = self.postal_dir(meter_id);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(AuthorityError::io(&dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| AuthorityError::io(&dir, e))?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".key"))
            else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(|e| AuthorityError::io(&path, e))?;
            let key = hex::decode(text.trim())
                .map_err(|e| AuthorityError::Corrupt(format!("{}: {e}", path.display())))?;
            out.push((id.to_owned(), key));
        }
        out.sort();
        Ok(out)
    }

    /// Checks the postal MAC of an indicium with the keys kept for its meter; returns the
    /// decoded indicium and the delivery id of the key that matched.
    pub fn verify_indicium_mac(&self, bytes: &[u8]) -> Result<(indicium::Indicium, String)> {
        let ind = indicium::decode(bytes)?;
        let mac = ind.mac.ok_or_else(|| {
            AuthorityError::Invalid("the indicium carries no postal MAC (layout version 1)".into())
        })?;
        let keys = self.postal_keys(&ind.body.meter_id)?;
        if keys.is_empty() {
            return Err(AuthorityError::Invalid(format!(
                "no postal key was delivered to meter {}",
                ind.body.meter_id
            )));
        }
        for (id, key) in keys {
            if postal::verify_indicium_mac(&key, &ind.body_bytes, &mac).is_ok() {
                return Ok((ind, id));
            }
        }
        Err(meter_pki::PkiError::BadSignature(
            "the indicium MAC matches no postal key of its meter".into(),
        )
        .into())
    }
}
