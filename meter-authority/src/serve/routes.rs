//! The routes of `serve` and their wire formats.
//!
//! * `POST /v1/meters/{id}/topups`, JSON `{"purchase_id": "...", "amount":
//!   <minor units>, "register": "postage" | "services"}` (`register`
//!   optional: a voucher naming no register, as `meter-authority voucher`
//!   without `--register`) → `200 application/cms`: the voucher (DER), the
//!   same bytes for every request with that purchase id; headers
//!   `meter-voucher-sequence` and `meter-purchase: new | repeated`. `409` when
//!   the purchase id was used for another amount or register. Requires
//!   `Authorization: Bearer <operator token>` when the server has one, else
//!   a loopback client.
//! * `POST /v1/meters/{id}/reports`, body [`UPLOAD`] (see [`frame_upload`]):
//!   the meter's signed status report, its TPM attestation (may be empty)
//!   and its ledger segment. The report's CMS signature, by the identity key
//!   this authority certified for meter `{id}`, authenticates the upload (the
//!   report binds the segment's digest and the attestation the report's).
//!   → `200 application/cms`: the acknowledgement (DER); or `409
//!   application/cms`: the forced lock order (DER), findings in the header
//!   `meter-findings` (JSON array, ASCII). The same upload gets the same answer.
//! * `POST /v1/lookup`, body: a postmark token (DER or PEM) or an indicium
//!   (binary), any media type → `200 application/json` `{"what", "meter_id",
//!   "time", "serial_row", "answer": "reported" | "not-reported-yet" |
//!   "unreported" | "another-digest", "seq", "time_ms", "acknowledged_rows"}`;
//!   `flagged` is true for the last two. Open to any relying party.
//! * `GET /v1/crl` → `application/pkix-crl` (DER), re-signed when the
//!   revocations changed or after [`CRL_REFRESH`].
//! * `GET /healthz` → `ok`.
//! * `GET /v1/meters/{id}/pending` and `POST /v1/meters/{id}/orders/clear-lock`:
//!   see `pending`; `POST /v1/meters/{id}/orders/lock` and `.../orders/rates`:
//!   see `orders`.

mod meter_auth;
mod orders;
mod pending;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use meter_http::BodyError;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{Service, MAX_TOPUP_BODY};
use crate::inspect::Periods;
use crate::store::{Answer, Purchase, StoreError};
use crate::AuthorityError;

/// Media type of a report upload.
pub const UPLOAD: &str = "application/vnd.meterd.report-upload";
/// Media type of the signed objects answered.
const CMS: &str = "application/cms";
/// Largest object looked up (a token with its certificates).
const MAX_LOOKUP_BODY: usize = 64 * 1024;
/// How long a CRL is served before it is re-signed.
pub const CRL_REFRESH: Duration = Duration::from_secs(3600);

type Reply = Response<Full<Bytes>>;

#[path = "enrol.rs"]
mod enrol;
#[path = "settle.rs"]
mod settle;

/// A CRL signed, for the state of `revocations.json` it was signed from.
pub(crate) struct CachedCrl {
    source: Option<super::FileState>,
    signed: Instant,
    der: Vec<u8>,
}

/// The body of a report upload: u32 (big-endian) length and bytes of the
/// signed report, u32 length and bytes of the attestation (0: none), then
/// the segment to the end.
pub fn frame_upload(report: &[u8], attestation: &[u8], segment: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + report.len() + attestation.len() + segment.len());
    for part in [report, attestation] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(segment);
    out
}

fn unframe(body: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let take = |b: &[u8]| -> Option<(usize, usize)> {
        let n = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
        (b.len() >= 4 + n).then_some((4, 4 + n))
    };
    let (s, e) = take(body)?;
    let (report, rest) = (&body[s..e], &body[e..]);
    let (s, e) = take(rest)?;
    Some((report, &rest[s..e], &rest[e..]))
}

fn plain(status: StatusCode, text: &str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn typed(status: StatusCode, body: Vec<u8>, media: &'static str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(media));
    r
}

fn header(r: &mut Reply, name: &'static str, value: &str) {
    let ascii: String = value
        .chars()
        .map(|c| match c {
            ' '..='~' => c,
            _ => '?',
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&ascii) {
        r.headers_mut().insert(name, v);
    }
}

fn failed(e: &StoreError) -> Reply {
    let status = match e {
        StoreError::Conflict(_) => StatusCode::CONFLICT,
        StoreError::Authority(
            AuthorityError::Invalid(_)
            | AuthorityError::Pki(_)
            | AuthorityError::Amount(_)
            | AuthorityError::Token { .. }
            | AuthorityError::Replay(_),
        ) => StatusCode::UNPROCESSABLE_ENTITY,
        StoreError::Db(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status.is_server_error() {
        tracing::error!(error = %e, "request failed");
    }
    plain(status, &e.to_string())
}

/// Reads a body of at most `max` bytes within [`meter_http::BODY_TIMEOUT`]
/// ([`meter_http::read_body`]); the refusal as a reply.
async fn body(req: Request<Incoming>, max: usize) -> Result<Bytes, Reply> {
    meter_http::read_body(req, max).await.map_err(|e| {
        let status = match e {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Unreadable => StatusCode::BAD_REQUEST,
            BodyError::TooSlow => StatusCode::REQUEST_TIMEOUT,
        };
        plain(status, &e.to_string())
    })
}

fn media_is(req: &Request<Incoming>, want: &str) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

pub(super) async fn handle(s: &Service, peer: SocketAddr, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    match (method, parts.as_slice()) {
        (Method::GET, ["healthz"]) => plain(StatusCode::OK, "ok"),
        (Method::GET, ["v1", "crl"]) => crl(s),
        (Method::POST, ["v1", "lookup"]) => lookup(s, req).await,
        (Method::POST, ["v1", "meters", id, "topups"]) => {
            let id = (*id).to_owned();
            topup(s, peer, &id, req).await
        }
        (Method::POST, ["v1", "meters", id, "certify"]) => {
            let id = (*id).to_owned();
            enrol::certify(s, peer, &id, req).await
        }
        (Method::POST, ["v1", "settle"]) => settle::settle(s, req).await,
        (Method::POST, ["v1", "meters", id, "reports"]) => {
            let id = (*id).to_owned();
            report(s, &id, req).await
        }
        (Method::GET, ["v1", "meters", id, "pending"]) => {
            let id = (*id).to_owned();
            pending::pending(s, peer, &id, &req).await
        }
        (Method::POST, ["v1", "meters", id, "orders", "clear-lock"]) => {
            let id = (*id).to_owned();
            pending::clear_lock(s, peer, &id, req).await
        }
        (Method::POST, ["v1", "meters", id, "orders", "lock"]) => {
            let id = (*id).to_owned();
            orders::lock(s, peer, &id, req).await
        }
        (Method::POST, ["v1", "meters", id, "orders", "rates"]) => {
            let id = (*id).to_owned();
            orders::rates(s, peer, &id, req).await
        }
        (Method::POST, ["v1", "meters", id, "orders", "revoke"]) => {
            let id = (*id).to_owned();
            orders::revoke(s, peer, &id, req).await
        }
        (Method::POST, ["v1", "meters", id, "orders", "account"]) => {
            let id = (*id).to_owned();
            orders::account(s, peer, &id, req).await
        }
        (Method::POST, ["v1", "meters", id, "orders", "anchor"]) => {
            let id = (*id).to_owned();
            orders::anchor(s, peer, &id, req).await
        }
        (
            _,
            ["v1", "meters", _, "pending"]
            | ["v1", "meters", _, "orders", "clear-lock" | "lock" | "rates" | "revoke" | "account" | "anchor"],
        ) => plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        (_, ["healthz"] | ["v1", "crl" | "lookup"] | ["v1", "meters", _, "topups" | "reports"]) => {
            plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => plain(StatusCode::NOT_FOUND, "not found"),
    }
}

fn operator_ok(s: &Service, peer: SocketAddr, req: &Request<Incoming>) -> bool {
    let Some(want) = s.operator_token else {
        return peer.ip().is_loopback();
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compared as digests: equal length, and no early exit that depends on
    // how much of the token was right.
    given.is_some_and(|g| {
        let g: [u8; 32] = Sha256::digest(g.trim().as_bytes()).into();
        g.iter()
            .zip(want.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    })
}

/// The operator's JSON request of at most `max` bytes (`what` names it in
/// the refusal), or the reply refusing it: 401 without the operator's
/// credential ([`operator_ok`]), 415 for another media type, 413/400/408
/// for a body too large, unreadable or too slow ([`body`]), 400 for JSON
/// that is not a `T` (unknown fields included).
async fn json_request<T: serde::de::DeserializeOwned>(
    s: &Service,
    peer: SocketAddr,
    req: Request<Incoming>,
    max: usize,
    what: &str,
) -> Result<T, Reply> {
    if !operator_ok(s, peer, &req) {
        return Err(plain(
            StatusCode::UNAUTHORIZED,
            "an operator credential is required",
        ));
    }
    if !media_is(&req, "application/json") {
        return Err(plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send application/json",
        ));
    }
    let bytes = body(req, max).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| plain(StatusCode::BAD_REQUEST, &format!("{what} request: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopupRequest {
    purchase_id: String,
    amount: u64,
    #[serde(default)]
    register: Option<String>,
}

async fn topup(s: &Service, peer: SocketAddr, meter_id: &str, req: Request<Incoming>) -> Reply {
    let t: TopupRequest = match json_request(s, peer, req, MAX_TOPUP_BODY, "top-up").await {
        Ok(t) => t,
        Err(r) => return r,
    };
    if let Some(r) = t.register.as_deref() {
        if !meter_pki::payload::VOUCHER_REGISTERS.contains(&r) {
            return plain(
                StatusCode::BAD_REQUEST,
                "top-up request: the register is postage or services",
            );
        }
    }
    let p = Purchase {
        meter_id: meter_id.to_owned(),
        purchase_id: t.purchase_id,
        amount: t.amount,
        register: t.register,
    };
    let sign = super::shared::voucher_signer(&s.signer, &p, crate::now());
    match s.store.purchase(&p, &sign).await {
        Ok(v) => {
            let mut r = typed(StatusCode::OK, v.voucher, CMS);
            header(&mut r, "meter-voucher-sequence", &v.sequence.to_string());
            header(
                &mut r,
                "meter-purchase",
                if v.fresh { "new" } else { "repeated" },
            );
            r
        }
        Err(e) => failed(&e),
    }
}

async fn report(s: &Service, meter_id: &str, req: Request<Incoming>) -> Reply {
    if !media_is(&req, UPLOAD) {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("send {UPLOAD}"),
        );
    }
    let bytes = match body(req, s.max_upload).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some((report, att, segment)) = unframe(&bytes) else {
        return plain(StatusCode::BAD_REQUEST, "not a framed report upload");
    };
    let now = crate::now();
    let a = match s.authority() {
        Ok(a) => a,
        Err(e) => return failed(&e.into()),
    };
    let key = super::shared::upload_key(report, att, segment);
    let att = (!att.is_empty()).then_some(att);
    let upload = match a.verify_upload_signed(report, att, now) {
        Ok(u) => u,
        Err(e) => return failed(&e.into()),
    };
    if upload.meter_id() != meter_id {
        return plain(
            StatusCode::FORBIDDEN,
            "the report is signed by another meter than the path names",
        );
    }
    if let Err(e) = super::shared::issued_signer(&*s.store, &s.dir, &upload).await {
        return failed(&e);
    }
    // Set when this upload is reconciled now, not answered from the record
    // of an earlier one: only a new upload earns a pending token.
    let seen = std::sync::Mutex::new(None);
    let reconcile =
        super::shared::reconcile_upload(&a, upload, segment, Periods::default(), now, &seen);
    let mut reply = match s.store.upload(meter_id, key, reconcile).await {
        Ok(Answer::Ack(der)) => typed(StatusCode::OK, der, CMS),
        Ok(Answer::Refused {
            lock_order,
            findings,
        }) => {
            let mut r = typed(StatusCode::CONFLICT, lock_order, CMS);
            let json = serde_json::to_string(&findings).unwrap_or_default();
            header(&mut r, "meter-findings", &json);
            r
        }
        Err(e) => return failed(&e),
    };
    if seen.lock().is_ok_and(|f| f.is_some()) {
        let token = meter_auth::mint(&s.pending_key, meter_id, now);
        header(&mut reply, meter_auth::TOKEN_HEADER, &token);
    }
    reply
}

fn crl(s: &Service) -> Reply {
    let path = s.dir.join("revocations.json");
    let source = super::file_state(&path);
    let Ok(mut cache) = s.crl.lock() else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "CRL cache poisoned");
    };
    if let Some(c) = cache.as_ref() {
        if c.source == source && c.signed.elapsed() < CRL_REFRESH {
            return typed(StatusCode::OK, c.der.clone(), "application/pkix-crl");
        }
    }
    let signed = s
        .signer
        .crl(crate::now())
        .and_then(|(pem, _, _)| Ok(meter_pki::pem::decode_any(pem.as_bytes(), "X509 CRL")?));
    match signed {
        Ok(der) => {
            // Signing wrote the next CRL number: the file changed.
            let source = super::file_state(&path);
            *cache = Some(CachedCrl {
                source,
                signed: Instant::now(),
                der: der.clone(),
            });
            typed(StatusCode::OK, der, "application/pkix-crl")
        }
        Err(e) => failed(&e.into()),
    }
}

async fn lookup(s: &Service, req: Request<Incoming>) -> Reply {
    use crate::lookup::Answer as A;
    let bytes = match body(req, MAX_LOOKUP_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let now = crate::now();
    let a = match s.authority() {
        Ok(a) => a,
        Err(e) => return failed(&e.into()),
    };
    let shown = match a.shown(&bytes, now) {
        Ok(x) => x,
        Err(e) => return failed(&e.into()),
    };
    let meter_id = shown.meter_id().to_owned();
    let look = super::shared::look(shown, now);
    let l = match s.store.lookup(&meter_id, look).await {
        Ok(l) => l,
        Err(e) => return failed(&e),
    };
    let (answer, seq, time_ms, acknowledged_rows) = match l.answer {
        A::Reported { seq, time_ms } => ("reported", Some(seq), Some(time_ms), None),
        A::NotReportedYet { acknowledged_rows } => {
            ("not-reported-yet", None, None, Some(acknowledged_rows))
        }
        A::Unreported {
            acknowledged_rows,
            acknowledged_time_ms,
        } => (
            "unreported",
            None,
            Some(acknowledged_time_ms),
            Some(acknowledged_rows),
        ),
        A::AnotherDigest { seq, time_ms } => ("another-digest", Some(seq), Some(time_ms), None),
    };
    let json = serde_json::json!({
        "what": l.what,
        "meter_id": l.meter_id,
        "time": l.time,
        "serial_row": l.serial_row,
        "answer": answer,
        "flagged": matches!(answer, "unreported" | "another-digest"),
        "seq": seq,
        "time_ms": time_ms,
        "acknowledged_rows": acknowledged_rows,
    });
    typed(
        StatusCode::OK,
        json.to_string().into_bytes(),
        "application/json",
    )
}
