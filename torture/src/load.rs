//! The load engine shared by the crash, TPM and storage tests: N clients,
//! each on its own bus connection, send chargeable calls with fresh request
//! ids until told to stop or a count is reached, and record what each id got
//! back (a product, or an error kind and message) for the cross-check.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::sandbox::Sandbox;

/// What one request got.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// A product (token, ...).
    Product(Vec<u8>),
    /// A named error (`MeterError::kind`) and its message.
    Failed {
        /// `Housing`, `Storage`, `Bus`, ...
        kind: &'static str,
        /// The message the meter (or the bus) sent.
        message: String,
    },
}

/// One request and its outcome.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The request id.
    pub id: String,
    /// Sequence number (selects the operation, see [`crate::ops::Mix::pick`]).
    pub n: u64,
    /// What came back.
    pub outcome: Outcome,
}

/// How much load to send.
#[derive(Clone)]
pub struct Spec {
    /// Concurrent clients (one connection each).
    pub clients: usize,
    /// Stop after this many requests in all.
    pub max_ops: u64,
    /// Request id prefix (ids are `prefix` + sequence number).
    pub prefix: String,
    /// Set to stop the clients early.
    pub stop: Arc<AtomicBool>,
    /// Pause after a failed call, so a dead daemon is not hammered.
    pub backoff: Duration,
}

impl Spec {
    /// `clients` clients, at most `max_ops` requests, ids `prefix<n>`.
    pub fn new(clients: usize, max_ops: u64, prefix: &str) -> Spec {
        Spec {
            clients: clients.max(1),
            max_ops,
            prefix: prefix.to_string(),
            stop: Arc::new(AtomicBool::new(false)),
            backoff: Duration::from_millis(20),
        }
    }
}

/// Runs the load and returns every attempt (order unspecified).
pub async fn run(sb: &Sandbox, spec: Spec) -> Result<Vec<Attempt>> {
    let mut proxies = Vec::with_capacity(spec.clients);
    for _ in 0..spec.clients {
        proxies.push(sb.connect().await?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(spec.clients);
    for proxy in proxies {
        let spec = spec.clone();
        let next = next.clone();
        let mix = sb.mix.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while !spec.stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= spec.max_ops {
                    break;
                }
                let id = format!("{}{n}", spec.prefix);
                let outcome = match mix.call(&proxy, n, &id).await {
                    Ok(p) => Outcome::Product(p),
                    Err(e) => Outcome::Failed {
                        kind: e.kind(),
                        message: e.message(),
                    },
                };
                let failed = matches!(outcome, Outcome::Failed { .. });
                mine.push(Attempt { id, n, outcome });
                if failed {
                    tokio::time::sleep(spec.backoff).await;
                }
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    Ok(all)
}

/// Counts failures by kind: `[("Housing", 3), ...]`, sorted by kind.
pub fn failure_kinds(attempts: &[Attempt]) -> Vec<(&'static str, u64)> {
    let mut m = std::collections::BTreeMap::new();
    for a in attempts {
        if let Outcome::Failed { kind, .. } = a.outcome {
            *m.entry(kind).or_insert(0u64) += 1;
        }
    }
    m.into_iter().collect()
}

/// Number of attempts that got a product.
pub fn products(attempts: &[Attempt]) -> u64 {
    attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Product(_)))
        .count() as u64
}
