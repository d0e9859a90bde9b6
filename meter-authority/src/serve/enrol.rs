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
use meter_pki::{cert, csr, pem};
use serde::Deserialize;
use sha2::{Digest, Sha256};

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

fn cert_pem(c: &cert::Certificate) -> crate::Result<String> {
    Ok(pem::encode("CERTIFICATE", &cert::to_der(c)?))
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
    let mut h = Sha256::new();
    for part in [
        c.identity_csr.trim().as_bytes(),
        c.postmark_csr.trim().as_bytes(),
        attestation.as_deref().unwrap_or_default(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let key: [u8; 32] = h.finalize().into();
    let dir = s.dir.clone();
    let a = match s.authority() {
        Ok(a) => a,
        Err(e) => return failed(&e.into()),
    };
    let issue = Box::new(
        move |register: &mut dyn Register| -> crate::Result<Vec<u8>> {
            let now = crate::now();
            let (id, pm) = (c.identity_csr.as_bytes(), c.postmark_csr.as_bytes());
            let json = match &attestation {
                Some(ev) => {
                    let (certs, sealed) =
                        a.certify_meter_attested_in(register, id, pm, ev, &ek_cas(&dir)?, now)?;
                    let credential: serde_json::Value = serde_json::from_slice(&sealed.to_json()?)
                        .map_err(|e| AuthorityError::Corrupt(format!("credential: {e}")))?;
                    serde_json::json!({
                        "meter_id": certs.meter_id,
                        "attested": true,
                        "credential": credential,
                    })
                }
                None => {
                    let certs = a.certify_meter_in(register, &id_verified, &pm_verified, now)?;
                    serde_json::json!({
                        "meter_id": certs.meter_id,
                        "attested": false,
                        "identity": cert_pem(&certs.identity)?,
                        "postmark": cert_pem(&certs.postmark)?,
                    })
                }
            };
            Ok(json.to_string().into_bytes())
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
