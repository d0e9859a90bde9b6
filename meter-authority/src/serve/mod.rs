//! `meter-authority serve`: the provider's HTTP/1.1 API (hyper, as
//! `meter-tsa`), with its state in a [`Store`] (the authority directory, or
//! PostgreSQL with `--database`).
//!
//! The signing key, the root and the register of issued certificates stay in
//! the authority directory (`--dir`), read when the server starts (the key)
//! and at each report upload (the register, so meters certified by the
//! command line meanwhile are known). Every request body is bounded (its
//! `Content-Length` checked first, then the bytes read), headers must arrive
//! within [`HEADER_TIMEOUT`] and the body within [`BODY_TIMEOUT`]. On SIGTERM
//! or SIGINT the listener closes and requests in flight get [`DRAIN`] to
//! finish: a state change is one transaction, so one cut short is rolled
//! back and its retry starts over.
//!
//! Routes (see `routes`, `enrol`, `settle`): `POST /v1/meters/{id}/certify`,
//! `POST /v1/settle`, `POST /v1/meters/{id}/topups`, `POST
//! /v1/meters/{id}/reports`, `GET /v1/meters/{id}/pending`, `POST
//! /v1/meters/{id}/orders/clear-lock`, `POST /v1/lookup`, `GET /v1/crl`, `GET /healthz`.

mod routes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::store::Store;
use crate::Authority;

pub use routes::{frame_upload, UPLOAD};

/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long requests in flight may take to finish after SIGTERM.
pub const DRAIN: Duration = Duration::from_secs(10);
/// Largest body of a top-up request (JSON).
pub const MAX_TOPUP_BODY: usize = 4096;

/// What every connection shares.
pub struct Service {
    /// The authority directory (register of issued certificates, revocations).
    pub dir: PathBuf,
    /// The authority as opened at start: signs vouchers and CRLs.
    pub signer: Authority,
    /// Where the state is kept.
    pub store: Arc<dyn Store>,
    /// Largest report upload (report + attestation + segment), bytes.
    pub max_upload: usize,
    /// SHA-256 of the operator's bearer token: required of top-up purchases
    /// when set; without it only loopback clients may buy.
    pub operator_token: Option<[u8; 32]>,
    /// The last CRL signed, and the revocation file state it was signed for.
    pub(crate) crl: Mutex<Option<routes::CachedCrl>>,
}

impl Service {
    /// A service for the authority in `dir` keeping its state in `store`.
    pub fn new(
        dir: PathBuf,
        store: Arc<dyn Store>,
        max_upload: usize,
        operator_token: Option<[u8; 32]>,
    ) -> crate::Result<Service> {
        let signer = Authority::open(&dir)?;
        Ok(Service {
            dir,
            signer,
            store,
            max_upload,
            operator_token,
            crl: Mutex::new(None),
        })
    }
}

/// Binds `addr` (port 0: any free port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves connections until SIGTERM or SIGINT, then drains (see module docs).
pub async fn serve(listener: TcpListener, service: Arc<Service>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = service.clone();
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let service = service.clone();
                async move { Ok::<_, Infallible>(routes::handle(&service, peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = stop.wait_for(|s| *s) => None,
            };
            let ended = match ended {
                Some(r) => r,
                None => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, %peer, "connection ended");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(left = conns.len(), "requests still in flight: dropped");
        conns.abort_all();
    }
    tracing::info!("meter-authority serve stopped");
    Ok(())
}
