//! `POST /v1/settle`: a creditor settles a payment certificate, once.
//!
//! Body: the payment certificate (CMS, DER or PEM; any media type), header
//! `Authorization: Bearer <creditor token>`. Creditors are the files of
//! `<dir>/creditors/`: the file name is the creditor's name, its content
//! (trimmed, at least 16 characters) its token; read at each request, so a
//! creditor is added or removed without a restart. → `200 application/json`:
//! the settlement (`serial`, `credit_serial`, `amount`, `payee`,
//! `settled_total`, `line_amount`, `settled_at`), header `meter-settlement:
//! new | repeated` (the same creditor bringing the same certificate again
//! gets the same answer); `409` when the payment was settled for another
//! creditor or with another certificate of the same serial; `422` when the
//! certificate does not verify or would take its line past its amount;
//! `403` when its line was granted in another creditor's name (the line's
//! `issuer`, the creditor the meter asked); `401` without a known
//! creditor's token.

use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Request, StatusCode};
use sha2::{Digest, Sha256};

use super::{body, failed, header, plain, typed, Reply};
use crate::serve::Service;
use crate::AuthorityError;

/// Largest payment certificate (with its certificates).
const MAX_PAYMENT_BODY: usize = 64 * 1024;

/// The creditor whose token is `given`, from `<dir>/creditors/`.
fn creditor(dir: &std::path::Path, given: &str) -> Option<String> {
    let want: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
    let mut found = None;
    for e in std::fs::read_dir(dir.join("creditors")).ok()?.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Ok(text) = crate::read_bounded(&e.path()) else {
            continue;
        };
        let Ok(text) = String::from_utf8(text) else {
            continue;
        };
        let text = text.trim();
        if text.len() < 16 || name.starts_with('.') {
            continue;
        }
        let have: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        // Compared as digests, without an early exit.
        if have
            .iter()
            .zip(want.iter())
            .fold(0u8, |a, (x, y)| a | (x ^ y))
            == 0
        {
            found = Some(name);
        }
    }
    found
}

pub(super) async fn settle(s: &Service, req: Request<Incoming>) -> Reply {
    let who = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| creditor(&s.dir, t));
    let Some(who) = who else {
        return plain(
            StatusCode::UNAUTHORIZED,
            "a creditor's credential is required",
        );
    };
    let bytes = match body(req, MAX_PAYMENT_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let now = crate::now();
    let a = match s.authority() {
        Ok(a) => a,
        Err(e) => return failed(&e.into()),
    };
    let checked = match crate::serve::shared::CheckedPayment::check(&a, &bytes, now) {
        Ok(x) => x,
        Err(e) => return failed(&e.into()),
    };
    // A creditor settles the lines granted in its name only.
    if checked.line.line.issuer != who {
        return plain(
            StatusCode::FORBIDDEN,
            &format!(
                "line {} is not granted in this creditor's name",
                checked.line.line.serial
            ),
        );
    }
    let r = checked.request(&who, &bytes, now);
    match s.store.settle(&r).await {
        Ok(done) => match serde_json::to_vec(&done.settlement) {
            Ok(json) => {
                let mut reply = typed(StatusCode::OK, json, "application/json");
                header(
                    &mut reply,
                    "meter-settlement",
                    if done.fresh { "new" } else { "repeated" },
                );
                reply
            }
            Err(e) => failed(&AuthorityError::Corrupt(format!("settlement: {e}")).into()),
        },
        Err(e) => failed(&e),
    }
}
