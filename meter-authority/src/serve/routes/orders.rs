//! Orders the operator queues for a meter beyond clear-lock (issue 16):
//! each signed here as the command line signs it, queued once under the id
//! of the ledger row that applies it, listed by `GET .../pending` until the
//! meter's acknowledged report shows it applied (see `store::pending`).
//!
//! * `POST /v1/meters/{id}/orders/lock`, JSON `{"nonce": "<the operator's
//!   id of the order>", "reason": "..."}` → `200 application/cms`: the lock
//!   order (DER, as `meter-authority lock` signs it, with this nonce).
//!   Header `meter-order-id: lock-order/<nonce>`; the same nonce again
//!   returns the bytes queued first.
//! * `POST /v1/meters/{id}/orders/rates`, JSON `{"toml": "<the rate table as
//!   `meter-authority rates` reads it>"}` → `200 application/cms`: the
//!   signed table. Header `meter-order-id: rates/v<version>`; the same
//!   version again returns the bytes queued first, `409` if it was another
//!   table. A meter that already holds this version or a newer one has it.
//!
//! Both are operator only, as a purchase. Revoke orders are not queued
//! here: the meter's ledger row of a revocation (`m/revoke-order/<id>`) is
//! not yet among what a reconciliation records applied.

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;

use super::{body, failed, header, media_is, operator_ok, plain, typed, Reply, CMS};
use crate::serve::Service;
use crate::store::pending::check_nonce;
use crate::store::StoreError;
use meter_pki::payload::RateTable;

/// Largest body of an order request (JSON; a rate table is a few KiB).
const MAX_ORDER_BODY: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockRequest {
    nonce: String,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RatesRequest {
    toml: String,
}

/// The operator's JSON request, or the reply refusing it.
async fn json_request<T: serde::de::DeserializeOwned>(
    s: &Service,
    peer: SocketAddr,
    req: Request<Incoming>,
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
    let bytes = body(req, MAX_ORDER_BODY).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| plain(StatusCode::BAD_REQUEST, &format!("{what} request: {e}")))
}

fn der_of(pem: crate::Result<String>) -> Result<Vec<u8>, StoreError> {
    pem.and_then(|p| Ok(meter_pki::pem::decode_any(p.as_bytes(), "CMS")?))
        .map_err(StoreError::from)
}

/// Queues `der` as order `id` for `meter_id`: the bytes queued first.
async fn queue(s: &Service, meter_id: &str, id: &str, der: Vec<u8>) -> Result<Vec<u8>, Reply> {
    s.store
        .queue_order(meter_id, id, der)
        .await
        .map_err(|e| failed(&e))
}

fn queued(id: &str, der: Vec<u8>) -> Reply {
    let mut reply = typed(StatusCode::OK, der, CMS);
    header(&mut reply, "meter-order-id", id);
    reply
}

pub(super) async fn lock(
    s: &Service,
    peer: SocketAddr,
    meter_id: &str,
    req: Request<Incoming>,
) -> Reply {
    let r: LockRequest = match json_request(s, peer, req, "lock").await {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    if let Err(e) = crate::check_meter_id(meter_id).and_then(|()| check_nonce(&r.nonce)) {
        return failed(&e.into());
    }
    let signed = s
        .signer
        .lock_order_with(meter_id, &r.nonce, &r.reason, crate::now())
        .map(|(_, pem)| pem);
    let id = format!("lock-order/{}", r.nonce);
    match der_of(signed) {
        Ok(der) => match queue(s, meter_id, &id, der).await {
            Ok(der) => queued(&id, der),
            Err(reply) => reply,
        },
        Err(e) => failed(&e),
    }
}

pub(super) async fn rates(
    s: &Service,
    peer: SocketAddr,
    meter_id: &str,
    req: Request<Incoming>,
) -> Reply {
    let r: RatesRequest = match json_request(s, peer, req, "rates").await {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    if let Err(e) = crate::check_meter_id(meter_id) {
        return failed(&e.into());
    }
    let now = crate::now();
    let (table, pem) = match s.signer.rates(&r.toml, now) {
        Ok(t) => t,
        Err(e) => return failed(&e.into()),
    };
    let id = format!("rates/v{}", table.version);
    let der = match der_of(Ok(pem)) {
        Ok(d) => d,
        Err(e) => return failed(&e),
    };
    let stored = match queue(s, meter_id, &id, der).await {
        Ok(d) => d,
        Err(reply) => return reply,
    };
    // The version was queued before: the same table, or a conflict.
    let roots = match s.signer.roots() {
        Ok(r) => r,
        Err(e) => return failed(&e.into()),
    };
    match meter_pki::payload::open::<RateTable>(&stored, &roots, now) {
        Ok((t, _)) if t == table => queued(&id, stored),
        Ok(_) => plain(
            StatusCode::CONFLICT,
            &format!("{id} was queued for this meter with another table"),
        ),
        Err(e) => failed(&StoreError::Corrupt(format!("{id}: {e}"))),
    }
}
