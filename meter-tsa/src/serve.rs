//! The HTTP side: routes, status codes, the body limit, socket activation.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use meter_proto::proxy::Meter1Proxy;
use meter_proto::MeterError;

use crate::clients::Clients;

/// Media type of a request.
pub const QUERY: &str = "application/timestamp-query";
/// Media type of a reply (exactly; pyHanko compares the whole header).
pub const REPLY: &str = "application/timestamp-reply";
/// Media type of the chain.
pub const CHAIN: &str = "application/pem-certificate-chain";

const STAMP_PATHS: &[&str] = &["/", "/api/v1/timestamp"];
const CHAIN_PATHS: &[&str] = &["/api/v1/timestamp/certchain", "/ca.pem"];

/// What every connection shares.
pub struct State {
    /// meterd.
    pub meter: Meter1Proxy<'static>,
    /// Allowed clients.
    pub clients: Clients,
    /// Serve loopback clients without credentials.
    pub anonymous_loopback: bool,
    /// The PEM chain.
    pub chain: Vec<u8>,
    /// Body limit.
    pub max_body: usize,
}

/// The socket systemd passed (`LISTEN_FDS`/`LISTEN_PID`, fd 3), else a new
/// one bound to `addr`.
pub fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let fds = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    if ours && fds >= 1 {
        use std::os::fd::FromRawFd;
        // SAFETY: systemd passes the listening socket as fd 3
        // (SD_LISTEN_FDS_START) and nothing else in this process owns it.
        let std_listener = unsafe { std::net::TcpListener::from_raw_fd(3) };
        std_listener.set_nonblocking(true)?;
        return TcpListener::from_std(std_listener);
    }
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

/// How long in-flight requests may take to finish after SIGTERM.
pub const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves connections until SIGTERM or SIGINT; then stops accepting (the
/// listener is closed), lets every request already read finish (idle
/// keep-alive connections are closed at once) for at most [`DRAIN`], and
/// returns. systemd stops the service with SIGTERM, so a client mid-request
/// gets its answer (and its charge has its product) instead of a reset.
pub async fn serve(listener: TcpListener, state: Arc<State>) -> std::io::Result<()> {
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
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
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
    tracing::info!("meter-tsa stopped");
    Ok(())
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn typed(body: Vec<u8>, media: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(media));
    r
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

async fn handle(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if CHAIN_PATHS.contains(&path.as_str()) {
        return match *req.method() {
            Method::GET | Method::HEAD => typed(state.chain.clone(), CHAIN),
            _ => not_allowed("GET, HEAD"),
        };
    }
    if !STAMP_PATHS.contains(&path.as_str()) {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; POST time-stamp queries to /api/v1/timestamp",
        );
    }
    if req.method() != Method::POST {
        return not_allowed("POST");
    }
    let Some(client) = client(state, peer, &req) else {
        let mut r = plain(StatusCode::UNAUTHORIZED, "credentials required");
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"meter-tsa\", charset=\"UTF-8\""),
        );
        return r;
    };
    let media = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if media.as_deref() != Some(QUERY) {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send a DER TimeStampReq as application/timestamp-query",
        );
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "a TimeStampReq is a few hundred bytes",
        )
    };
    if declared.is_some_and(|n| n > state.max_body as u64) {
        return too_large();
    }
    let body = match Limited::new(req.into_body(), state.max_body)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return too_large();
        }
        Err(_) => {
            return plain(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            )
        }
    };
    let request_id = format!("{client}.{}", hex::encode(Sha256::digest(&body)));
    match state.meter.time_stamp(&body, &request_id).await {
        Ok(reply) => {
            tracing::info!(%client, %peer, bytes = reply.len(), "time-stamp answered");
            typed(reply, REPLY)
        }
        Err(e) => {
            tracing::warn!(%client, %peer, error = %e, "meterd refused the call");
            let status = match e {
                MeterError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            plain(status, &format!("the meter could not answer: {e}"))
        }
    }
}

/// The client's name: its credentials, or `anonymous` on loopback when
/// allowed; `None`: 401.
fn client(state: &State, peer: SocketAddr, req: &Request<Incoming>) -> Option<String> {
    match req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        Some(auth) => state.clients.authenticate(auth).map(str::to_owned),
        None if state.anonymous_loopback && peer.ip().is_loopback() => Some("anonymous".into()),
        None => None,
    }
}
