//! The hash chain, as the meter uses it: the format itself (canonical row
//! bytes, row hashes, genesis link, seal digests, row links, the ledger-seal
//! attribute, epoch rows) lives in `meter_pki::ledger_format`, shared with
//! the authority, which re-derives every row a report brings (see the
//! layout in the [`super`] module doc).

pub(crate) use meter_pki::ledger_format::{
    contains_seal, epoch_of, epoch_previous, epoch_reason, row_hash, sha384, verify_product_seal,
    verify_seal_v2, EpochRecord, RowFields, EPOCH_NOTE,
};
pub use meter_pki::ledger_format::{
    genesis_prev, link_digest, lock_product, seal_digest, seal_digest_v2, split_lock_product,
    verify_seal, LedgerSeal, MAX_NOTE, MAX_REQUEST_ID,
};
