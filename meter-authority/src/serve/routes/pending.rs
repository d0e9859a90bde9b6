//! What a meter fetches after its upload, and what the operator queues for it.
//!
//! * `GET /v1/meters/{id}/pending` → `200 application/json` `{"meter_id",
//!   "acknowledged_rows": <rows of the last acknowledged report> | null,
//!   "objects": [{"id", "kind", "amount"?, "der_hex"}], "more": bool}`: the
//!   objects the meter must apply (see `store::pending`), each with the id
//!   of the ledger row that applies it (`lock-order/<nonce>`,
//!   `clear-lock/<nonce>`, `voucher/<sequence>`), so a meter skips what it
//!   applied since. A separate, read-only request rather than part of the
//!   upload's answer: it is the same until the next acknowledged report,
//!   works for a meter whose upload was refused or that has nothing new to
//!   report, and leaves the upload's answer one signed object. Requires
//!   `Authorization: Bearer <token>` with the token of the meter's last new
//!   upload (`meter_auth`: 401 without, 403 for another meter's, a forged
//!   or an expired one), or the operator's credential.
//! * `POST /v1/meters/{id}/orders/clear-lock`, JSON `{"nonce": "<the lock's
//!   nonce>"}` → `200 application/cms`: the clear-lock order (DER), queued
//!   for the meter; the same nonce again returns the same bytes. Header
//!   `meter-order-id: clear-lock/<nonce>`. Operator only, as a purchase.
//!   The nonce is checked by the meter only, not here: the provider knows
//!   the lock of the meter's last acknowledged report, which precedes any
//!   lock taken since (a lock order applied by the same sync, a local
//!   lock), so a check here would refuse the order for the lock in force.
//!   An order for another lock is answered `stale` by the meter and stays
//!   listed, harmlessly, as `sync` shows.

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;

use hyper::header::AUTHORIZATION;

use super::meter_auth::{self, Refused};
use super::{failed, header, json_request, operator_ok, plain, typed, Reply, CMS};
use crate::serve::Service;
use crate::store::pending::{check_nonce, pending as pending_of};
use crate::store::StoreError;

/// Largest body of a clear-lock request (JSON).
const MAX_ORDER_BODY: usize = 1024;

/// The meter's token (`meter_auth`) or the operator's credential, or the
/// refusal: 401 when the request carries neither, 403 for a token that is
/// not this meter's, forged, from before a restart, or expired.
fn allowed(
    s: &Service,
    peer: SocketAddr,
    meter_id: &str,
    req: &Request<Incoming>,
) -> Option<Reply> {
    if operator_ok(s, peer, req) {
        return None;
    }
    let Some(token) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Some(plain(
            StatusCode::UNAUTHORIZED,
            "the meter's pending token (from its report upload) or an operator credential is required",
        ));
    };
    match meter_auth::check(&s.pending_key, meter_id, token, crate::now()) {
        Ok(()) => None,
        Err(Refused::Expired) => Some(plain(
            StatusCode::FORBIDDEN,
            "the pending token expired: upload a new report",
        )),
        Err(Refused::NotThisMeters) => Some(plain(
            StatusCode::FORBIDDEN,
            "the pending token is not one this server gave this meter",
        )),
    }
}

pub(super) async fn pending(
    s: &Service,
    peer: SocketAddr,
    meter_id: &str,
    req: &Request<Incoming>,
) -> Reply {
    if let Err(e) = crate::check_meter_id(meter_id) {
        return failed(&e.into());
    }
    if let Some(refused) = allowed(s, peer, meter_id, req) {
        return refused;
    }
    let q = match s.store.queued(meter_id).await {
        Ok(q) => q,
        Err(e) => return failed(&e),
    };
    let roots = match s.signer.roots() {
        Ok(r) => r,
        Err(e) => return failed(&e.into()),
    };
    let (objects, more) = pending_of(&q, &roots, crate::now());
    let objects: Vec<serde_json::Value> = objects
        .into_iter()
        .map(|p| {
            let mut o = serde_json::json!({
                "id": p.id,
                "kind": p.kind,
                "der_hex": hex::encode(&p.der),
            });
            if let Some(a) = p.amount {
                o["amount"] = a.into();
            }
            o
        })
        .collect();
    let json = serde_json::json!({
        "meter_id": meter_id,
        "acknowledged_rows": q.book.last().map(|p| p.rows),
        "objects": objects,
        "more": more,
    });
    typed(
        StatusCode::OK,
        json.to_string().into_bytes(),
        "application/json",
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearLockRequest {
    nonce: String,
}

pub(super) async fn clear_lock(
    s: &Service,
    peer: SocketAddr,
    meter_id: &str,
    req: Request<Incoming>,
) -> Reply {
    let r: ClearLockRequest = match json_request(s, peer, req, MAX_ORDER_BODY, "clear-lock").await {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    if let Err(e) = check_nonce(&r.nonce) {
        return failed(&e.into());
    }
    let signed = s
        .signer
        .clear_lock(meter_id, &r.nonce, crate::now())
        .and_then(|pem| Ok(meter_pki::pem::decode_any(pem.as_bytes(), "CMS")?));
    let der = match signed {
        Ok(d) => d,
        Err(e) => return failed(&StoreError::from(e)),
    };
    let id = format!("clear-lock/{}", r.nonce);
    match s.store.queue_order(meter_id, &id, der).await {
        Ok(der) => {
            let mut reply = typed(StatusCode::OK, der, CMS);
            header(&mut reply, "meter-order-id", &id);
            reply
        }
        Err(e) => failed(&e),
    }
}
