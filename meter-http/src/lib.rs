//! The one HTTP/1.1 server loop and bounded body reader behind `meter-tsa`
//! and `meter-authority serve`.
//!
//! Why: both answer untrusted clients on the network, so every client gets
//! bounded sizes and times, the same way in both: request headers must arrive
//! within [`HEADER_TIMEOUT`], a body is refused when its `Content-Length`
//! exceeds the limit, then read up to the limit only and within
//! [`BODY_TIMEOUT`] ([`read_body`]). On SIGTERM or SIGINT (systemd stops a
//! service with SIGTERM) [`serve`] closes the listener, closes idle
//! keep-alive connections at once and gives requests already read at most
//! [`DRAIN`] to finish, so a client mid-request gets its answer instead of a
//! reset.
//!
//! Routing, status texts and state stay with each server: this crate knows
//! nothing of time-stamps or meters.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_LENGTH;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long requests in flight may take to finish after SIGTERM.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Declared or sent more than the limit (413).
    #[error("at most {0} bytes")]
    TooLarge(usize),
    /// The connection failed mid-body (400).
    #[error("the body could not be read")]
    Unreadable,
    /// Not all of it within [`BODY_TIMEOUT`] (408).
    #[error("the body came too slowly")]
    TooSlow,
}

/// Reads the body of `req`: at most `max` bytes (a larger `Content-Length` is
/// refused before reading) within [`BODY_TIMEOUT`].
pub async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, BodyError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge(max));
    }
    let read = Limited::new(req.into_body(), max).collect();
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(BodyError::TooLarge(max))
        }
        Ok(Err(_)) => Err(BodyError::Unreadable),
        Err(_) => Err(BodyError::TooSlow),
    }
}

/// Serves HTTP/1.1 connections on `listener`, each request answered by
/// `handle(peer, request)`, until SIGTERM or SIGINT; then drains (see the
/// crate docs) and returns. `name` is the server's, for the log.
pub async fn serve<H, F>(
    listener: TcpListener,
    name: &'static str,
    handle: H,
) -> std::io::Result<()>
where
    H: Fn(SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            // Reap finished connections so the set does not grow.
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
        let handle = handle.clone();
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let reply = handle(peer, req);
                async move { Ok::<_, Infallible>(reply.await) }
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
    tracing::info!(
        connections = conns.len(),
        "stopping: no new connections, finishing requests in flight"
    );
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            left = conns.len(),
            "requests still in flight after {}s: dropped",
            DRAIN.as_secs()
        );
        conns.abort_all();
    }
    tracing::info!("{name} stopped");
    Ok(())
}
