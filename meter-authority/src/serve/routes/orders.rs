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
//! * `POST /v1/meters/{id}/orders/revoke`, JSON `{"serial": "<hex serial
//!   of a user certificate this authority issued>", "reason": "<RFC 5280
//!   reason name>"}` → `200 application/cms`: a forced revoke order (as
//!   `meter-authority revoke --forced`), recorded in `revocations.json` (the
//!   CRL lists the serial from then on) before it is queued. Header
//!   `meter-order-id: revoke-order/<order id>` (the id is the authority's,
//!   random); the same serial, meter and reason again return the order
//!   queued first, `409` if the serial was revoked otherwise.
//! * `POST /v1/meters/{id}/orders/account`, JSON `{"nonce": "<the
//!   operator's id of the order>", "credit_limit": <minor units>,
//!   "period_days": <days>}` → `200 application/cms`: the current-account
//!   order (as `meter-authority account`, with this nonce). Header
//!   `meter-order-id: account-order/<nonce>`; the same nonce again returns
//!   the bytes queued first, `409` if it was other terms.
//! * `POST /v1/meters/{id}/orders/anchor`, JSON `{"update": "<the PEM
//!   `meter-authority rollover` wrote>"}` → `200 application/cms`: the
//!   trust-anchor update, checked (signed by a root of this authority, for
//!   this meter or for every meter) and queued as it is: the rollover
//!   itself replaces the root key and stays on the command line. Header
//!   `meter-order-id: anchor/<hex SHA-384 of the new root>`, the key of the
//!   meter's Provision row that installs it; the same root again returns
//!   the update queued first.
//!
//! All are operator only, as a purchase.

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;

use super::{failed, header, json_request, plain, typed, Reply, CMS};
use crate::revoke::Revocations;
use crate::serve::Service;
use crate::store::pending::check_nonce;
use crate::store::StoreError;
use meter_pki::account::AccountOrder;
use meter_pki::payload::{AnchorUpdate, RateTable};
use meter_pki::revoke::RevokeOrder;
use sha2::{Digest, Sha384};

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountRequest {
    nonce: String,
    credit_limit: u64,
    period_days: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    serial: String,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnchorRequest {
    /// The update as `meter-authority rollover` writes it (PEM, label CMS).
    update: String,
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
    let r: LockRequest = match json_request(s, peer, req, MAX_ORDER_BODY, "lock").await {
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
    let r: RatesRequest = match json_request(s, peer, req, MAX_ORDER_BODY, "rates").await {
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
    queue_same::<RateTable>(s, meter_id, &id, der, now, |t| *t == table).await
}

/// Queues `der` as order `id` and answers with the bytes queued first when
/// they say what `same` wants (a retry), else 409: the operator used the
/// id before for another order.
async fn queue_same<T: meter_pki::payload::Payload>(
    s: &Service,
    meter_id: &str,
    id: &str,
    der: Vec<u8>,
    now: i64,
    same: impl Fn(&T) -> bool,
) -> Reply {
    let stored = match queue(s, meter_id, id, der).await {
        Ok(d) => d,
        Err(reply) => return reply,
    };
    let roots = match s.signer.roots() {
        Ok(r) => r,
        Err(e) => return failed(&e.into()),
    };
    match meter_pki::payload::open::<T>(&stored, &roots, now) {
        Ok((t, _)) if same(&t) => queued(id, stored),
        Ok(_) => plain(
            StatusCode::CONFLICT,
            &format!("{id} was queued for this meter with another content"),
        ),
        Err(e) => failed(&StoreError::Corrupt(format!("{id}: {e}"))),
    }
}

pub(super) async fn account(
    s: &Service,
    peer: SocketAddr,
    meter_id: &str,
    req: Request<Incoming>,
) -> Reply {
    let r: AccountRequest = match json_request(s, peer, req, MAX_ORDER_BODY, "account").await {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    if let Err(e) = crate::check_meter_id(meter_id).and_then(|()| check_nonce(&r.nonce)) {
        return failed(&e.into());
    }
    let now = crate::now();
    let signed = s
        .signer
        .account_order_with(meter_id, &r.nonce, r.credit_limit, r.period_days, now)
        .map(|(_, pem)| pem);
    let der = match der_of(signed) {
        Ok(d) => d,
        Err(e) => return failed(&e),
    };
    let id = format!("account-order/{}", r.nonce);
    queue_same::<AccountOrder>(s, meter_id, &id, der, now, |o| {
        (o.credit_limit, o.period_days) == (r.credit_limit, r.period_days)
    })
    .await
}

pub(super) async fn revoke(
    s: &Service,
    peer: SocketAddr,
    meter_id: &str,
    req: Request<Incoming>,
) -> Reply {
    let r: RevokeRequest = match json_request(s, peer, req, MAX_ORDER_BODY, "revoke").await {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let (order, der) = match revoke_recorded(s, meter_id, &r) {
        Ok(x) => x,
        Err(reply) => return *reply,
    };
    let id = format!("revoke-order/{}", order.order_id);
    match queue(s, meter_id, &id, der).await {
        Ok(der) => queued(&id, der),
        Err(reply) => reply,
    }
}

/// The forced revoke order of `r.serial`: a new one, recorded in
/// `revocations.json` (so the CRL lists the serial before the order is
/// handed out), or the one recorded before for this meter and reason
/// (signed again, same order id). Recorded under the CRL's lock: a CRL
/// signed meanwhile writes the file too, and must not write it back
/// without this entry.
fn revoke_recorded(
    s: &Service,
    meter_id: &str,
    r: &RevokeRequest,
) -> Result<(RevokeOrder, Vec<u8>), Box<Reply>> {
    let refused = |e: crate::AuthorityError| Box::new(failed(&e.into()));
    crate::check_meter_id(meter_id).map_err(refused)?;
    let serial = meter_pki::revoke::canonical_serial(&r.serial).map_err(|e| refused(e.into()))?;
    // Opened again: the register of user certificates issued since start.
    let a = crate::Authority::open(&s.dir).map_err(refused)?;
    let now = crate::now();
    let _one = s.crl.lock().map_err(|_| {
        Box::new(plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "CRL lock poisoned",
        ))
    })?;
    let all = Revocations::load(&s.dir).map_err(refused)?;
    let signed = match all.entries.iter().find(|e| e.serial == serial) {
        Some(e) if e.meter_id == meter_id && e.reason == r.reason && e.forced => {
            a.revoke_order_again(e, now)
        }
        Some(e) => {
            return Err(Box::new(plain(
                StatusCode::CONFLICT,
                &format!(
                    "serial {serial} was already revoked (meter {}, reason {}, order {})",
                    e.meter_id, e.reason, e.order_id
                ),
            )))
        }
        None => a.revoke_forced(meter_id, &serial, &r.reason, now),
    };
    let (order, pem) = signed.map_err(refused)?;
    let der = der_of(Ok(pem)).map_err(|e| Box::new(failed(&e)))?;
    Ok((order, der))
}

pub(super) async fn anchor(
    s: &Service,
    peer: SocketAddr,
    meter_id: &str,
    req: Request<Incoming>,
) -> Reply {
    let r: AnchorRequest = match json_request(s, peer, req, MAX_ORDER_BODY, "anchor").await {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let now = crate::now();
    let checked = crate::check_meter_id(meter_id)
        .and_then(|()| Ok(meter_pki::pem::decode_any(r.update.as_bytes(), "CMS")?))
        .and_then(|der| {
            let (u, _) = meter_pki::payload::open::<AnchorUpdate>(&der, &s.signer.roots()?, now)?;
            if u.meter_id.as_deref().is_some_and(|m| m != meter_id) {
                return Err(crate::AuthorityError::Invalid(format!(
                    "the update is for meter {}",
                    u.meter_id.unwrap_or_default()
                )));
            }
            Ok((hex::encode(Sha384::digest(u.new_anchor_der()?)), der))
        });
    let (root, der) = match checked {
        Ok(x) => x,
        Err(e) => return failed(&e.into()),
    };
    // The key of the meter's Provision row that installs this root.
    let id = format!("anchor/{root}");
    match queue(s, meter_id, &id, der).await {
        Ok(der) => queued(&id, der),
        Err(reply) => reply,
    }
}
