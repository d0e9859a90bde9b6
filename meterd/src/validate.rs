//! Validate (Fig. 4, claims 35–36): check a postmark, or a detached CMS
//! signature made by `Sign`, against a message.
//!
//! Steps, in the patent's order: funds; the signer's certificate against the
//! trust anchors (`chain`); the signature with the key taken from that
//! certificate (`signature`); the digest in the token against the message's
//! (`digest`). The report names the first step that failed. The check is a
//! service like any other: charged, and recorded as one ledger row whose
//! product is the report.

use serde::Serialize;

use meter_pki::detached::{self, DetachedFailure};
use meter_pki::tsp::{self, TokenFailure};

use tokio_util::sync::CancellationToken;

use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::intake::{hash_message, ReadLimits};
use crate::meter::Meter;
use crate::service::Service;
use crate::{clock, sale};

/// Largest token accepted.
pub const MAX_TOKEN: usize = meter_pki::MAX_OBJECT;

/// What Validate found.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Report {
    /// Every step passed.
    pub valid: bool,
    /// `ok`, or the first step that failed.
    pub step: String,
    /// Why that step failed (empty when valid).
    pub detail: String,
    /// Signer certificate subject CN.
    pub signer: String,
    /// Time in the token (unix seconds), 0 if unknown.
    pub time: i64,
    /// Meter id named by the token (the signer's CN for meter tokens).
    pub meter_id: String,
    /// Token serial, hex.
    pub serial: String,
}

impl Report {
    fn failed(step: &str, detail: String) -> Report {
        Report {
            valid: false,
            step: step.into(),
            detail,
            signer: String::new(),
            time: 0,
            meter_id: String::new(),
            serial: String::new(),
        }
    }
}

/// `Validate`: charged verification of `token` against the message behind
/// `fd` (read bounded, ended by `cancel`).
pub async fn validate(
    meter: &Meter,
    fd: std::os::fd::OwnedFd,
    token: Vec<u8>,
    cancel: &CancellationToken,
) -> Result<Report> {
    if token.len() > MAX_TOKEN {
        return Err(ServiceError::InvalidInput(format!(
            "token of {} bytes exceeds the {MAX_TOKEN}-byte limit",
            token.len()
        )));
    }
    let limits = ReadLimits::from_config(meter.config());
    let product = sale::sell(
        meter,
        Service::Validate,
        None,
        async move {
            let imprint = hash_message(fd, &limits, cancel).await?;
            Ok((
                input_digest("validate", &[&imprint, &token]),
                (imprint, token),
            ))
        },
        |(imprint, token), identity| async move {
            let anchors = identity.anchors.clone();
            let cache = meter.chain_cache();
            let report = tokio::task::spawn_blocking(move || {
                check(&token, &imprint, &anchors, Some(&cache))
            })
            .await
            .map_err(|e| ServiceError::InvalidInput(format!("validation task failed: {e}")))?;
            serde_json::to_vec(&report)
                .map_err(|e| ServiceError::InvalidInput(format!("report encoding: {e}")))
        },
    )
    .await?;
    serde_json::from_slice(&product)
        .map_err(|e| ServiceError::Storage(format!("stored report unreadable: {e}")))
}

/// The verification itself, pure and CPU-bound. Tokens go first (the common
/// case, parsed once); only a SignedData the token check calls malformed and
/// whose eContentType is not id-ct-TSTInfo goes to the detached-signature
/// check (signatures made by `Sign`).
pub fn check(
    token: &[u8],
    imprint: &[u8; 48],
    anchors: &[meter_pki::cert::Certificate],
    cache: Option<&tsp::ChainCache>,
) -> Report {
    let info = match tsp::verify_cached(token, anchors, clock::now(), cache) {
        Ok(info) => info,
        Err(TokenFailure::Malformed(d)) => {
            return match detached::content_type(token) {
                Ok(ct) if ct != meter_pki::oid::ID_CT_TSTINFO => {
                    check_detached(token, imprint, anchors)
                }
                _ => Report::failed(meter_proto::step::MALFORMED, d),
            }
        }
        Err(TokenFailure::Chain(d)) => return Report::failed(meter_proto::step::CHAIN, d),
        Err(TokenFailure::Signature(d)) => return Report::failed(meter_proto::step::SIGNATURE, d),
    };
    let signer = info.signer_cn.clone().unwrap_or_default();
    let mut report = Report {
        valid: true,
        step: meter_proto::step::OK.into(),
        detail: String::new(),
        signer: signer.clone(),
        time: info.gen_time,
        meter_id: signer,
        serial: hex::encode(&info.serial),
    };
    if info.hash_oid != const_oid::db::rfc5912::ID_SHA_384 {
        report.valid = false;
        report.step = meter_proto::step::DIGEST.into();
        report.detail = format!(
            "token uses hash {}, this meter compares SHA-384",
            info.hash_oid
        );
    } else if info.imprint.as_slice() != imprint.as_slice() {
        report.valid = false;
        report.step = meter_proto::step::DIGEST.into();
        report.detail = "the message's SHA-384 differs from the one in the token".into();
    }
    report
}

/// A detached CMS signature (from `Sign`): same report keys; `meter_id` is
/// empty (a user certificate names its holder, not the meter).
fn check_detached(
    sig: &[u8],
    imprint: &[u8; 48],
    anchors: &[meter_pki::cert::Certificate],
) -> Report {
    use meter_proto::step;
    match detached::verify_digest(sig, imprint, anchors, clock::now()) {
        Ok(info) => Report {
            valid: true,
            step: step::OK.into(),
            detail: String::new(),
            signer: info.signer_cn.unwrap_or_default(),
            time: info.signing_time.unwrap_or(0),
            meter_id: String::new(),
            serial: meter_pki::cert::serial_hex(&info.signer),
        },
        Err(DetachedFailure::Malformed(d)) => Report::failed(step::MALFORMED, d),
        Err(DetachedFailure::Chain(d)) => Report::failed(step::CHAIN, d),
        Err(DetachedFailure::Signature(d)) => Report::failed(step::SIGNATURE, d),
        Err(DetachedFailure::Digest(d)) => Report::failed(step::DIGEST, d),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use meter_pki::cms::{self, SignOptions};
    use meter_pki::issue::{self, Profile};
    use p384::ecdsa::SigningKey;
    use sha2::{Digest as _, Sha384};

    #[test]
    fn detached_signatures_are_checked_step_by_step() {
        let now = clock::now();
        let rk = SigningKey::from_slice(&[1u8; 48]).unwrap();
        let root = issue::self_signed_root(&rk, "R", 1, now - 60, 10).unwrap();
        let uk = SigningKey::from_slice(&[2u8; 48]).unwrap();
        let sec1 = uk.verifying_key().to_encoded_point(false);
        let user = issue::issue(
            "Alice",
            sec1.as_bytes(),
            Profile::User,
            &rk,
            &root,
            5,
            now - 60,
            10,
        )
        .unwrap();
        let digest: [u8; 48] = Sha384::digest(b"msg").into();
        let p = cms::prepare_detached_digest(
            &SignOptions {
                content_type: meter_pki::oid::ID_DATA,
                content: &[],
                signer: &user,
                extra_certs: &[],
                signing_time: Some(now),
                ess_cert_id_v2: true,
            },
            digest,
        )
        .unwrap();
        let raw = meter_pki::sig::sign_prehash_raw(&uk, &p.digest()).unwrap();
        let sig = p.finish(&raw).unwrap();
        let anchors = [root];
        let r = check(&sig, &digest, &anchors, None);
        assert!(r.valid, "{r:?}");
        assert_eq!((r.signer.as_str(), r.serial.as_str()), ("Alice", "05"));
        assert_eq!(r.time, now);
        assert_eq!(check(&sig, &[0; 48], &anchors, None).step, "digest");
        let other = issue::self_signed_root(&uk, "Other", 1, now - 60, 10).unwrap();
        assert_eq!(check(&sig, &digest, &[other], None).step, "chain");
        assert_eq!(check(b"junk", &digest, &anchors, None).step, "malformed");
    }
}
