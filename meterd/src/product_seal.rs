//! The [`SealReader`] of the meter's own products: finds the ledger seal
//! (`oid::ATTR_LEDGER_SEAL`) a postmark token or a CMS the meter signed
//! carries, so that the ledger (a door that must not parse products) can
//! check it.
//!
//! Which key must have signed is decided here from the product's type, in
//! code: a time-stamp token (`id-ct-TSTInfo`) by the postmark key, any other
//! SignedData by the identity key. Never from a key or certificate the
//! product names, so a product cannot choose the key it is checked against.

use crate::housing::{IDENTITY_KEY, POSTMARK_KEY};
use crate::ledger::{ProductSeal, SealReader};

/// Reads seals out of tokens and CMS with meter-pki.
#[derive(Debug, Clone, Copy, Default)]
pub struct PkiSealReader;

impl SealReader for PkiSealReader {
    fn read(&self, product: &[u8]) -> Option<ProductSeal> {
        let parts = meter_pki::cms::signed_parts(product).ok()?;
        parts.seal?;
        let key = if parts.content_type == meter_pki::oid::ID_CT_TSTINFO {
            POSTMARK_KEY
        } else {
            IDENTITY_KEY
        };
        Some(ProductSeal {
            key,
            signed: parts.signed_attrs,
            signature: parts.signature,
        })
    }
}
