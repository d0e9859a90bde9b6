//! What the ledger needs from the TPM side and from the products: the
//! [`Sealer`] (the housing the seals, counter and product signatures run
//! on), the [`Finisher`] that makes a product inside the sequencing job,
//! and the [`SealReader`] that finds the seal a product carries.
//!
//! Why a reader: a seal-bearing product seals its own row, so the audit
//! must check a product's signature, but the ledger is a door and must not
//! parse tokens or CMS (meter-pki's business, a floor above). The reader
//! does the parsing and hands back only bytes and a signature; the ledger
//! decides what they must contain and which key must have signed.

use std::sync::Arc;

use super::chain::LedgerSeal;
use super::{Digest, Registers, Result};
use crate::housing::{Housing, HousingHandle, RawSignature};

/// What a [`Finisher`] learns about the row it makes the product of.
#[derive(Debug, Clone)]
pub struct RowContext {
    /// The row's sequence number.
    pub seq: u64,
    /// The row's time (Unix ms).
    pub time_ms: i64,
    /// Registers after the row.
    pub registers: Registers,
    /// The epoch (NV counter value) the row is written in.
    pub epoch: u64,
    /// The row's link (`ledger_format::link_digest`): what a seal-bearing
    /// product signs, with the epoch and the sequence number.
    pub link: Digest,
}

impl RowContext {
    /// The seal a seal-bearing product must carry as a signed attribute.
    pub fn seal(&self) -> LedgerSeal {
        LedgerSeal {
            epoch: self.epoch,
            seq: self.seq,
            link: self.link,
        }
    }
}

type Make = Box<dyn FnOnce(&RowContext, &mut dyn Housing) -> Result<Vec<u8>> + Send>;

/// Makes a row's product inside the sequencing job, once the row's
/// sequence number, time, registers, epoch and link are known (a postage
/// indicium carries its own row's registers; a postmark token its row's
/// seq as serial, its time as genTime and its seal). Runs on the housing
/// thread with the housing itself, so a TPM signature costs no thread hop;
/// an error refuses this entry only, nothing charged.
pub struct Finisher {
    sealing: bool,
    make: Make,
}

impl Finisher {
    /// A product made at commit that carries no seal (an indicium): a
    /// batch it ends gets an explicit seal.
    pub fn new<F>(f: F) -> Finisher
    where
        F: FnOnce(&RowContext, &mut dyn Housing) -> Result<Vec<u8>> + Send + 'static,
    {
        Finisher {
            sealing: false,
            make: Box::new(f),
        }
    }

    /// A seal-bearing product: `f` must put [`RowContext::seal`] into what
    /// its signature covers (the ledger checks it, and seals the batch
    /// explicitly when the product does not carry it). The sequencer puts
    /// such rows last in their batch.
    pub fn sealing<F>(f: F) -> Finisher
    where
        F: FnOnce(&RowContext, &mut dyn Housing) -> Result<Vec<u8>> + Send + 'static,
    {
        Finisher {
            sealing: true,
            make: Box::new(f),
        }
    }

    /// Whether the product carries its row's seal.
    pub fn is_sealing(&self) -> bool {
        self.sealing
    }

    pub(crate) fn make(self, row: &RowContext, h: &mut dyn Housing) -> Result<Vec<u8>> {
        (self.make)(row, h)
    }
}

impl std::fmt::Debug for Finisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finisher")
            .field("sealing", &self.sealing)
            .finish_non_exhaustive()
    }
}

/// The seal a product carries, as its [`SealReader`] found it. Nothing in
/// it is trusted until the ledger checks it.
#[derive(Debug, Clone)]
pub struct ProductSeal {
    /// The housing key that signed: a name fixed in the reader's code
    /// (`'static`), never one read out of the product, so a product cannot
    /// name the key it is checked against.
    pub key: &'static str,
    /// The exact bytes the signature covers (the DER signedAttrs).
    pub signed: Vec<u8>,
    /// The signature over SHA-384(`signed`), raw r‖s.
    pub signature: RawSignature,
}

/// Finds the seal in a product, for the audit (the sequencer's check that
/// a product promised as seal-bearing is only searches its bytes).
pub trait SealReader: Send + Sync + 'static {
    /// The seal `product` carries, if it is a seal-bearing product; `None`
    /// for anything else (an indicium, a voucher, a report, garbage).
    fn read(&self, product: &[u8]) -> Option<ProductSeal>;
}

/// The TPM side of the ledger: where seals are signed, the epoch counter
/// counts and finishers run. Implemented by [`super::HousingSealer`] over
/// the daemon's housing and by [`super::SoftwareSealer`] for tests.
pub trait Sealer: Send + Sync + 'static {
    /// The housing (its thread runs the sequencing jobs).
    fn housing(&self) -> &HousingHandle;
    /// Housing name of the key that signs explicit seals and checkpoints.
    fn key(&self) -> &str;
    /// NV index of the epoch counter.
    fn nv_index(&self) -> u32;
    /// Public key (SEC1 uncompressed) of [`Sealer::key`].
    fn public_key(&self) -> &[u8];
    /// Reads the seals products carry.
    fn reader(&self) -> Arc<dyn SealReader>;
}
