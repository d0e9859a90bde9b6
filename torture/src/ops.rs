//! The chargeable operations the load tests drive.
//!
//! Adding a service to the torture suite is ONE entry in [`OPERATIONS`]: a
//! name, the rate-table key that prices it, and how to call it with a request
//! id. Each call must be deterministic in its id (same id → same input), so a
//! retry is a true retry and the meter must answer it with the stored product.

use std::future::Future;
use std::pin::Pin;

use meter_proto::{Meter1Proxy, MeterError};
use sha2::{Digest, Sha384};

/// A boxed call future.
pub type Call<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, MeterError>> + Send + 'a>>;

/// One chargeable operation.
pub struct Operation {
    /// Short name for the logs and the summary.
    pub name: &'static str,
    /// Key of the `rates` dictionary of `Status` that prices it.
    pub rate: &'static str,
    /// Makes the call; the input is derived from the request id only.
    pub call: for<'a> fn(&'a Meter1Proxy<'static>, &'a str) -> Call<'a>,
}

/// Every operation the crash, TPM and storage tests mix (round robin).
pub const OPERATIONS: &[Operation] = &[Operation {
    name: "postmark",
    rate: "postmark",
    call: |proxy, id| Box::pin(async move { proxy.postmark_digest(&digest(id), id).await }),
}];

// `pick` indexes the list: it must never be empty.
const _: () = assert!(!OPERATIONS.is_empty());

/// The message digest an operation uses for request `id`.
pub fn digest(id: &str) -> Vec<u8> {
    Sha384::digest(id.as_bytes()).to_vec()
}

/// The operation used for the `n`th request of a run.
pub fn pick(n: u64) -> &'static Operation {
    let i = usize::try_from(n % OPERATIONS.len() as u64).unwrap_or(0);
    &OPERATIONS[i]
}
