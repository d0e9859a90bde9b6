//! The hash chain, as the meter uses it: the format itself (canonical row
//! bytes, row hashes, genesis link, seal digest) lives in
//! `meter_pki::ledger_format`, shared with the authority, which re-derives
//! every row a report brings (see the layout in the [`super`] module doc).

pub use meter_pki::ledger_format::{
    genesis_prev, seal_digest, verify_seal, MAX_NOTE, MAX_REQUEST_ID,
};
pub(crate) use meter_pki::ledger_format::{row_hash, sha384, RowFields};
