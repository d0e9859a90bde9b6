//! The chargeable operations the load tests drive.
//!
//! Adding a service to the torture suite is ONE entry in [`OPERATIONS`]: a
//! name, how it is priced, whether it needs the sandbox setup of
//! [`crate::setup`], and how to call it with a request id. Each call must be
//! deterministic in its id (same id → same input), so a retry is a true retry
//! and the meter must answer it with the stored product.
//!
//! A [`Mix`] is the list a test actually sends, round robin: `postmark` alone
//! on a bare sandbox, every operation once [`crate::setup`] has installed a
//! user certificate, a credit line and a rate table with a postage band.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use meter_proto::{Meter1Proxy, MeterError};
use sha2::{Digest, Sha384};
use zbus::zvariant::Fd;

use crate::regs::Registers;

/// A boxed call future.
pub type Call<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, MeterError>> + Send + 'a>>;

/// What the setup made that some operations need.
#[derive(Clone, Debug, Default)]
pub struct Ctx {
    /// Serial (hex) of the installed user certificate (`sign`).
    pub cert_serial: String,
    /// Serial of the open credit line (`pay`).
    pub credit_serial: String,
    /// Directory for the messages `sign` sends by file descriptor.
    pub scratch: PathBuf,
}

/// How an operation's ledger debit is priced.
#[derive(Clone, Copy, Debug)]
pub enum Price {
    /// The `rates` entry of `Status` with this key.
    Rate(&'static str),
    /// A fixed amount: the postage band the setup's rate table holds.
    Fixed(u64),
}

/// One chargeable operation.
pub struct Operation {
    /// Short name for the logs and the summary.
    pub name: &'static str,
    /// What its ledger row debits.
    pub price: Price,
    /// Needs the setup of [`crate::setup`] (a certificate, a credit line, postage rows).
    pub needs_setup: bool,
    /// Makes the call; the input is derived from the request id only.
    pub call: for<'a> fn(&'a Ctx, &'a Meter1Proxy<'static>, &'a str) -> Call<'a>,
}

/// Postage class the setup prices and `postage` buys.
pub const POSTAGE_CLASS: &str = "letter";
/// Heaviest piece of the setup's postage band (grams).
pub const POSTAGE_MAX_GRAMS: u32 = 20;
/// Price of a piece in that band (minor units).
pub const POSTAGE_PRICE: u64 = 730;
/// Amount of every payment (minor units of the credit line).
pub const PAY_AMOUNT: u64 = 1;
/// `Service::PaymentCertificate` as stored in the journal's `service` column.
pub const PAYMENT_SERVICE_CODE: i64 = 8;

/// Every operation the crash, TPM and storage tests can mix. `postmark`
/// must stay first: a bare sandbox sends it alone, and the tamper test uses it.
pub const OPERATIONS: &[Operation] = &[
    Operation {
        name: "postmark",
        price: Price::Rate("postmark"),
        needs_setup: false,
        call: |_, proxy, id| Box::pin(async move { proxy.postmark_digest(&digest(id), id).await }),
    },
    Operation {
        name: "sign",
        price: Price::Rate("sign"),
        needs_setup: true,
        call: |ctx, proxy, id| Box::pin(sign(ctx, proxy, id)),
    },
    Operation {
        name: "postage",
        price: Price::Fixed(POSTAGE_PRICE),
        needs_setup: true,
        call: |_, proxy, id| {
            Box::pin(async move {
                let (grams, dest) = postage_input(id);
                proxy
                    .postage(POSTAGE_CLASS, grams, "TORTURE", &dest, id)
                    .await
            })
        },
    },
    Operation {
        name: "pay",
        price: Price::Rate("payment-certificate"),
        needs_setup: true,
        call: |ctx, proxy, id| {
            Box::pin(async move {
                proxy
                    .pay(&ctx.credit_serial, PAY_AMOUNT, &payee(id), id)
                    .await
            })
        },
    },
];

// `Mix::pick` indexes the list: it must never be empty.
const _: () = assert!(!OPERATIONS.is_empty());

/// The message digest `postmark` uses for request `id`.
pub fn digest(id: &str) -> Vec<u8> {
    Sha384::digest(id.as_bytes()).to_vec()
}

/// The message `sign` signs for request `id`.
pub fn message(id: &str) -> Vec<u8> {
    format!("torture message for request {id}\n").into_bytes()
}

/// Weight (1..=band maximum) and destination of the piece for request `id`.
pub fn postage_input(id: &str) -> (u32, String) {
    let h = Sha384::digest(id.as_bytes());
    let grams = 1 + u32::from(h[0]) % POSTAGE_MAX_GRAMS;
    (grams, format!("D{}", hex::encode(&h[1..6]).to_uppercase()))
}

/// The payee of the payment for request `id` (printable ASCII, ≤ 64).
pub fn payee(id: &str) -> String {
    let h = Sha384::digest(id.as_bytes());
    format!("payee-{}", hex::encode(&h[..8]))
}

/// `sign`: writes the id's message to a scratch file and passes its fd.
async fn sign(ctx: &Ctx, proxy: &Meter1Proxy<'static>, id: &str) -> Result<Vec<u8>, MeterError> {
    let path = ctx
        .scratch
        .join(&hex::encode(Sha384::digest(id.as_bytes()))[..24]);
    let local = |e: std::io::Error| {
        MeterError::ZBus(zbus::Error::Failure(format!("{}: {e}", path.display())))
    };
    std::fs::write(&path, message(id)).map_err(local)?;
    let file = std::fs::File::open(&path).map_err(local)?;
    let got = proxy.sign(&ctx.cert_serial, Fd::from(&file), id).await;
    drop(file);
    let _ = std::fs::remove_file(&path);
    got
}

/// The operations a test sends, with what they need.
#[derive(Clone)]
pub struct Mix {
    ctx: Arc<Ctx>,
    ops: Arc<Vec<&'static Operation>>,
}

impl Mix {
    /// `postmark` alone: a sandbox without the setup.
    pub fn basic() -> Mix {
        Mix {
            ctx: Arc::new(Ctx::default()),
            ops: Arc::new(OPERATIONS.iter().filter(|o| !o.needs_setup).collect()),
        }
    }

    /// Every operation, with what the setup made.
    pub fn full(ctx: Ctx) -> Mix {
        Mix {
            ctx: Arc::new(ctx),
            ops: Arc::new(OPERATIONS.iter().collect()),
        }
    }

    /// What the setup made (empty on a basic mix).
    pub fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    /// Names of the operations, in round-robin order.
    pub fn names(&self) -> Vec<&'static str> {
        self.ops.iter().map(|o| o.name).collect()
    }

    /// Whether `pay` is in the mix (so the credit line must be checked).
    pub fn pays(&self) -> bool {
        self.ops.iter().any(|o| o.name == "pay")
    }

    /// The operation used for the `n`th request of a run.
    pub fn pick(&self, n: u64) -> &'static Operation {
        let len = self.ops.len().max(1) as u64;
        let i = usize::try_from(n % len).unwrap_or(0);
        self.ops.get(i).copied().unwrap_or(&OPERATIONS[0])
    }

    /// Calls the `n`th request's operation with request id `id`.
    pub fn call<'a>(&'a self, proxy: &'a Meter1Proxy<'static>, n: u64, id: &'a str) -> Call<'a> {
        (self.pick(n).call)(&self.ctx, proxy, id)
    }

    /// The debit the `n`th request's ledger row must carry at `regs`' rates.
    pub fn price(&self, regs: &Registers, n: u64) -> u64 {
        match self.pick(n).price {
            Price::Rate(key) => regs.rates.get(key).copied().unwrap_or(0),
            Price::Fixed(amount) => amount,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_deterministic_and_valid() {
        assert_eq!(postage_input("a-1"), postage_input("a-1"));
        assert_ne!(payee("a-1"), payee("a-2"));
        for i in 0..200 {
            let id = format!("crash-0-{i}");
            let (g, d) = postage_input(&id);
            assert!((1..=POSTAGE_MAX_GRAMS).contains(&g));
            assert!((1..=16).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_graphic()));
            let p = payee(&id);
            assert!(p.len() <= 64 && p.bytes().all(|b| b.is_ascii_graphic()));
        }
    }

    #[test]
    fn mixes_round_robin_over_what_is_available() {
        assert_eq!(Mix::basic().names(), vec!["postmark"]);
        assert!(!Mix::basic().pays());
        let full = Mix::full(Ctx::default());
        assert_eq!(full.names(), vec!["postmark", "sign", "postage", "pay"]);
        assert!(full.pays());
        assert_eq!(full.pick(5).name, "sign");
        assert_eq!(Mix::basic().pick(5).name, "postmark");
    }
}
