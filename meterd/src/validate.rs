//! Validate (Fig. 4, claims 35–36): check a postmark, or a detached CMS
//! signature made by `Sign`, against a message.
//!
//! Steps, in the patent's order: funds; the signer's certificate against the
//! trust anchors (`chain`); the signature with the key taken from that
//! certificate (`signature`); the time the token claims (`time`: genTime, or
//! a signature's signingTime, must lie within the signer certificate's
//! validity and not in the future beyond `clock_tolerance_seconds`: a signer
//! whose clock was set back or forward is caught here); the digest in the
//! token against the message's (`digest`). The report names the first step
//! that failed. The check is a service like any other: charged, and recorded
//! as one ledger row whose product is the report.

use serde::Serialize;

use meter_pki::detached::{self, DetachedFailure};
use meter_pki::tsp::{self, TokenFailure};

use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::ledger::Digest;
use crate::meter::Meter;
use crate::sale::{self, Made, Sale, Spec};
use crate::service::Service;

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

/// `Validate`: charged verification of `token` against the message whose
/// SHA-384 is `imprint` (hashed by the door before anything is reserved).
/// Every call is a new sale (no request id): the report is the product.
pub async fn validate(meter: &Meter, imprint: Digest, token: Vec<u8>) -> Result<Report> {
    if token.len() > MAX_TOKEN {
        return Err(ServiceError::InvalidInput(format!(
            "token of {} bytes exceeds the {MAX_TOKEN}-byte limit",
            token.len()
        )));
    }
    let skew = i64::try_from(meter.config().clock_tolerance_seconds).unwrap_or(i64::MAX);
    let spec = Spec::sale(
        Service::Validate,
        None,
        input_digest("validate", &[&imprint, &token]),
    );
    let sold = sale::sell(meter, spec, async move |sale: &Sale| {
        let anchors = sale.identity.anchors.clone();
        let cache = meter.chain_cache();
        let when = When {
            now: sale.now(),
            future_skew: skew,
        };
        let report = tokio::task::spawn_blocking(move || {
            check(&token, &imprint, &anchors, Some(&cache), when)
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("validation task: {e}")))?;
        let bytes = serde_json::to_vec(&report)
            .map_err(|e| ServiceError::Internal(format!("report encoding: {e}")))?;
        Ok(Made::Product(bytes))
    })
    .await?;
    serde_json::from_slice(&sold.product)
        .map_err(|e| ServiceError::Storage(format!("stored report unreadable: {e}")))
}

/// The verifier's clock, and how far ahead of it a token may be dated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct When {
    /// Now, Unix s.
    pub now: i64,
    /// Seconds a token may lie in the future (`clock_tolerance_seconds`).
    pub future_skew: i64,
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
    when: When,
) -> Report {
    let info = match tsp::verify_cached(token, anchors, when.now, cache) {
        Ok(info) => info,
        Err(TokenFailure::Malformed(d)) => {
            return match detached::content_type(token) {
                Ok(ct) if ct != meter_pki::oid::ID_CT_TSTINFO => {
                    check_detached(token, imprint, anchors, when)
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
    if let Err(d) = tsp::check_time(info.gen_time, &info.signer, when.now, when.future_skew) {
        report.valid = false;
        report.step = meter_proto::step::TIME.into();
        report.detail = format!("the token is {d}");
    } else if info.hash_oid != const_oid::db::rfc5912::ID_SHA_384 {
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
    when: When,
) -> Report {
    use meter_proto::step;
    match detached::verify_digest(sig, imprint, anchors, when.now) {
        Ok(info) => {
            let time = info
                .signing_time
                .map(|t| tsp::check_time(t, &info.signer, when.now, when.future_skew));
            let (valid, step, detail) = match time {
                Some(Err(d)) => (false, step::TIME, format!("the signature is {d}")),
                _ => (true, step::OK, String::new()),
            };
            Report {
                valid,
                step: step.into(),
                detail,
                signer: info.signer_cn.unwrap_or_default(),
                time: info.signing_time.unwrap_or(0),
                meter_id: String::new(),
                serial: meter_pki::cert::serial_hex(&info.signer),
            }
        }
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
    use meter_pki::cert::Certificate;
    use meter_pki::cms::{self, SignOptions};
    use meter_pki::issue::{self, Profile};
    use p384::ecdsa::SigningKey;
    use sha2::{Digest as _, Sha384};

    const DAY: i64 = 86_400;

    struct Pki {
        now: i64,
        root: Certificate,
        rk: SigningKey,
    }

    /// A root valid from a day ago; `leaf` issues under it from `from`.
    fn pki() -> Pki {
        let now = crate::clock::now();
        let rk = SigningKey::from_slice(&[1u8; 48]).unwrap();
        let root = issue::self_signed_root(&rk, "R", 1, now - DAY, 30).unwrap();
        Pki { now, root, rk }
    }

    impl Pki {
        fn leaf(
            &self,
            cn: &str,
            profile: Profile,
            seed: u8,
            from: i64,
        ) -> (Certificate, SigningKey) {
            let k = SigningKey::from_slice(&[seed; 48]).unwrap();
            let sec1 = k.verifying_key().to_encoded_point(false);
            let c = issue::issue(
                cn,
                sec1.as_bytes(),
                profile,
                &self.rk,
                &self.root,
                5,
                from,
                10,
            )
            .unwrap();
            (c, k)
        }

        fn when(&self) -> When {
            When {
                now: self.now,
                future_skew: 300,
            }
        }
    }

    fn sign_detached(user: &Certificate, key: &SigningKey, digest: [u8; 48], t: i64) -> Vec<u8> {
        let p = cms::prepare_detached_digest(
            &SignOptions {
                content_type: meter_pki::oid::ID_DATA,
                content: &[],
                signer: user,
                extra_certs: &[],
                signing_time: Some(t),
                ess_cert_id_v2: true,
            },
            digest,
        )
        .unwrap();
        let raw = meter_pki::sig::sign_prehash_raw(key, &p.digest()).unwrap();
        p.finish(&raw).unwrap()
    }

    fn token(tsa: &Certificate, key: &SigningKey, imprint: [u8; 48], gen_time: i64) -> Vec<u8> {
        let p = tsp::prepare(
            &tsp::TokenParams {
                imprint,
                serial: 7,
                gen_time,
                policy: meter_pki::oid::POSTMARK_POLICY,
                accuracy_secs: 1,
                nonce: None,
            },
            tsa,
            &[],
        )
        .unwrap();
        let raw = meter_pki::sig::sign_prehash_raw(key, &p.digest()).unwrap();
        p.finish(&raw).unwrap()
    }

    #[test]
    fn detached_signatures_are_checked_step_by_step() {
        let k = pki();
        let now = k.now;
        let (user, uk) = k.leaf("Alice", Profile::User, 2, now - 60);
        let digest: [u8; 48] = Sha384::digest(b"msg").into();
        let sig = sign_detached(&user, &uk, digest, now);
        let anchors = [k.root.clone()];
        let r = check(&sig, &digest, &anchors, None, k.when());
        assert!(r.valid, "{r:?}");
        assert_eq!((r.signer.as_str(), r.serial.as_str()), ("Alice", "05"));
        assert_eq!(r.time, now);
        assert_eq!(
            check(&sig, &[0; 48], &anchors, None, k.when()).step,
            "digest"
        );
        let other = issue::self_signed_root(&uk, "Other", 1, now - 60, 10).unwrap();
        assert_eq!(check(&sig, &digest, &[other], None, k.when()).step, "chain");
        assert_eq!(
            check(b"junk", &digest, &anchors, None, k.when()).step,
            "malformed"
        );
    }

    #[test]
    fn a_signature_dated_outside_its_certificate_or_ahead_fails_at_time() {
        let k = pki();
        let now = k.now;
        let (user, uk) = k.leaf("Alice", Profile::User, 2, now - 60);
        let digest: [u8; 48] = Sha384::digest(b"msg").into();
        let anchors = [k.root.clone()];
        for (t, what) in [(now + DAY, "future"), (now - 3_600, "notBefore")] {
            let r = check(
                &sign_detached(&user, &uk, digest, t),
                &digest,
                &anchors,
                None,
                k.when(),
            );
            assert_eq!((r.valid, r.step.as_str()), (false, "time"), "{r:?}");
            assert!(r.detail.contains(what), "{r:?}");
            assert_eq!(r.time, t);
        }
        // Within the skew: valid.
        let r = check(
            &sign_detached(&user, &uk, digest, now + 200),
            &digest,
            &anchors,
            None,
            k.when(),
        );
        assert!(r.valid, "{r:?}");
    }

    #[test]
    fn tokens_are_checked_for_time_between_signature_and_digest() {
        let k = pki();
        let now = k.now;
        let (tsa, tk) = k.leaf("MTR-TEST", Profile::Postmark, 3, now - 60);
        let imprint: [u8; 48] = Sha384::digest(b"letter").into();
        let anchors = [k.root.clone()];
        let r = check(
            &token(&tsa, &tk, imprint, now),
            &imprint,
            &anchors,
            None,
            k.when(),
        );
        assert!(r.valid, "{r:?}");
        // Two days ahead of the verifier: `time`, not `ok`.
        let ahead = token(&tsa, &tk, imprint, now + 2 * DAY);
        let r = check(&ahead, &imprint, &anchors, None, k.when());
        assert_eq!((r.valid, r.step.as_str()), (false, "time"), "{r:?}");
        assert!(r.detail.contains("in the future"), "{r:?}");
        assert_eq!((r.time, r.signer.as_str()), (now + 2 * DAY, "MTR-TEST"));
        // Dated before its certificate (a meter whose clock was set back).
        let early = token(&tsa, &tk, imprint, now - 300 * DAY);
        let r = check(&early, &imprint, &anchors, None, k.when());
        assert_eq!((r.valid, r.step.as_str()), (false, "time"), "{r:?}");
        assert!(r.detail.contains("notBefore"), "{r:?}");
        // Time comes before the digest: a wrong time over another message
        // still names `time`.
        let r = check(&early, &[0; 48], &anchors, None, k.when());
        assert_eq!(r.step, "time");
        // Within the skew: valid.
        let near = token(&tsa, &tk, imprint, now + 299);
        assert!(check(&near, &imprint, &anchors, None, k.when()).valid);
    }
}
