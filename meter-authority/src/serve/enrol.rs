//! `POST /v1/meters/{id}/certify`: a meter's certification over the API,
//! the same checks as `meter-authority certify-meter`.
//!
//! Body `application/json`: `{"identity_csr": "<PEM>", "postmark_csr":
//! "<PEM>", "attestation": <the meter's attestation.json, or absent>}`.
//! With an attestation, the keys must be in the TPM of an EK chaining to a
//! CA in `<dir>/ek-ca/` (every file there, PEM or DER), and the answer
//! carries the certificates only sealed in a credential that TPM activates:
//! `{"meter_id", "attested": true, "credential": {...}}`. Without one, only
//! the operator (its bearer token, or a loopback client when the server has
//! none) may certify, as `certify-meter --unattested`: software housings
//! and the fleet simulator; the answer is `{"meter_id", "attested": false,
//! "identity": "<PEM>", "postmark": "<PEM>"}`. `200` with header
//! `meter-certification: new | repeated` (the same request gets the same
//! bytes); `409` when the meter was already certified for another request;
//! `403` when the requests name another meter than the path; `422` when a
//! request or the attestation does not verify; `401` unattested without the
//! operator's credential.

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use meter_pki::{cert, csr};
use serde::Deserialize;

use super::{body, failed, header, media_is, operator_ok, plain, typed, Reply};
use crate::serve::Service;
use crate::state::Register;
use crate::AuthorityError;

/// Largest certification request (two CSRs and a TPM attestation).
const MAX_CERTIFY_BODY: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertifyRequest {
    identity_csr: String,
    postmark_csr: String,
    #[serde(default)]
    attestation: Option<serde_json::Value>,
}

fn ek_cas(dir: &std::path::Path) -> crate::Result<Vec<cert::Certificate>> {
    let d = dir.join("ek-ca");
    let mut paths: Vec<_> = match std::fs::read_dir(&d) {
        Ok(r) => r.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    };
    paths.sort();
    crate::attest::read_ek_cas(&paths)
}

pub(super) async fn certify(
    s: &Service,
    peer: SocketAddr,
    meter_id: &str,
    req: Request<Incoming>,
) -> Reply {
    if !media_is(&req, "application/json") {
        return plain(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send application/json");
    }
    let operator = operator_ok(s, peer, &req);
    let bytes = match body(req, MAX_CERTIFY_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let c: CertifyRequest = match serde_json::from_slice(&bytes) {
        Ok(c) => c,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("certify request: {e}")),
    };
    if c.attestation.is_none() && !operator {
        return plain(
            StatusCode::UNAUTHORIZED,
            "unattested keys are certified only with the operator's credential",
        );
    }
    // The requests must name the meter of the path before anything is
    // issued (verified once: the issuing below takes them as they are).
    let mut verified = Vec::with_capacity(2);
    for r in [&c.identity_csr, &c.postmark_csr] {
        match csr::verify(r.as_bytes()) {
            Ok(v) if v.subject_cn == meter_id => verified.push(v),
            Ok(_) => {
                return plain(
                    StatusCode::FORBIDDEN,
                    "the requests name another meter than the path",
                )
            }
            Err(e) => return failed(&AuthorityError::from(e).into()),
        }
    }
    let (Some(pm_verified), Some(id_verified)) = (verified.pop(), verified.pop()) else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "requests not verified");
    };
    let attestation = match &c.attestation {
        Some(v) => match serde_json::to_vec(v) {
            Ok(b) => Some(b),
            Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("attestation: {e}")),
        },
        None => None,
    };
    let key =
        crate::serve::shared::certify_key(&c.identity_csr, &c.postmark_csr, attestation.as_deref());
    let dir = s.dir.clone();
    let a = match s.authority() {
        Ok(a) => a,
        Err(e) => return failed(&e.into()),
    };
    let request = crate::serve::shared::CertifyRequest {
        identity_csr: &c.identity_csr,
        postmark_csr: &c.postmark_csr,
        identity: id_verified,
        postmark: pm_verified,
        attestation,
    };
    let issue = Box::new(
        move |register: &mut dyn Register| -> crate::Result<Vec<u8>> {
            let cas = match &request.attestation {
                Some(_) => ek_cas(&dir)?,
                None => Vec::new(),
            };
            let (_, answer) = crate::serve::shared::issue_certification(
                &a,
                register,
                &request,
                &cas,
                crate::now(),
            )?;
            Ok(answer)
        },
    );
    match s.store.certify(meter_id, key, issue).await {
        Ok(done) => {
            let mut r = typed(StatusCode::OK, done.answer, "application/json");
            header(
                &mut r,
                "meter-certification",
                if done.fresh { "new" } else { "repeated" },
            );
            r
        }
        Err(e) => failed(&e),
    }
}
