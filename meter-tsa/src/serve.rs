//! The HTTP side: routes, status codes, the body limit, socket activation;
//! the connection loop and the bounded body reader are `meter-http`'s.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use meter_http::BodyError;
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

/// Serves connections until SIGTERM or SIGINT, then drains: see
/// [`meter_http::serve`] (bounded header and body times, [`meter_http::DRAIN`]).
pub async fn serve(listener: TcpListener, state: Arc<State>) -> std::io::Result<()> {
    meter_http::serve(listener, "meter-tsa", move |peer, req| {
        let state = state.clone();
        async move { handle(&state, peer, req).await }
    })
    .await
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
    let body = match meter_http::read_body(req, state.max_body).await {
        Ok(b) => b,
        Err(BodyError::TooLarge(_)) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "a TimeStampReq is a few hundred bytes",
            )
        }
        Err(BodyError::Unreadable) => {
            return plain(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            )
        }
        Err(e @ BodyError::TooSlow) => return plain(StatusCode::REQUEST_TIMEOUT, &e.to_string()),
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
