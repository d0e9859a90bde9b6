//! RFC 3161 time-stamp tokens: the meter's postmarks.
//!
//! A postmark is a standard `TimeStampToken` so any relying party can check it with
//! `openssl ts -verify`; the meter is the TSA, its postmark key (critical EKU timeStamping)
//! signs in the TPM through the two-phase [`crate::cms::Prepared`]. [`verify`] reports
//! *which* step failed, because the Validate service tells the caller.

use crate::cms::{self as pcms, SignOptions, SigningCertificateV2};
use crate::ledger_format::LedgerSeal;
use crate::{cert, oid, util, PkiError};
use der::asn1::{Int, ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::Certificate;
use x509_tsp::{Accuracy, MessageImprint, TspVersion, TstInfo};

/// What the meter puts into a postmark.
#[derive(Debug, Clone)]
pub struct TokenParams {
    /// SHA-384 of the message.
    pub imprint: [u8; 48],
    /// Postmark serial (unique per meter).
    pub serial: u64,
    /// Time from the secure clock (unix s).
    pub gen_time: i64,
    /// TSA policy, normally [`oid::POSTMARK_POLICY`].
    pub policy: ObjectIdentifier,
    /// Accuracy in seconds (0 = omitted).
    pub accuracy_secs: u32,
    /// Nonce from the request, if any.
    pub nonce: Option<u64>,
}

/// Builds the TSTInfo and a SignedData around it, waiting for the TSA signature.
pub fn prepare(
    p: &TokenParams,
    tsa_cert: &Certificate,
    chain: &[Certificate],
) -> crate::Result<pcms::Prepared> {
    prepare_inner(p, tsa_cert, chain, None)
}

/// [`prepare`], with the ledger seal of the token's row as a signed
/// attribute (see [`crate::ledger_format::LedgerSeal`]): relying parties
/// ignore it (`openssl ts -verify` does), the meter's audit reads it.
pub fn prepare_sealed(
    p: &TokenParams,
    tsa_cert: &Certificate,
    chain: &[Certificate],
    seal: &LedgerSeal,
) -> crate::Result<pcms::Prepared> {
    prepare_inner(p, tsa_cert, chain, Some(seal))
}

fn prepare_inner(
    p: &TokenParams,
    tsa_cert: &Certificate,
    chain: &[Certificate],
    seal: Option<&LedgerSeal>,
) -> crate::Result<pcms::Prepared> {
    let imprint = MessageImprint {
        hash_algorithm: util::alg(oid::SHA384),
        hashed_message: OctetString::new(p.imprint.to_vec())?,
    };
    let nonce = p
        .nonce
        .map(|n| Int::new(&util::int_bytes_u64(n)))
        .transpose()?;
    prepare_tst(p, imprint, nonce, tsa_cert, chain, seal)
}

/// A token answering an RFC 3161 `TimeStampReq` (see [`crate::tsq`]): the
/// request's own imprint (SHA-256, SHA-384 or SHA-512) and nonce, copied
/// as they came.
#[derive(Debug, Clone)]
pub struct ReplyParams {
    /// Serial, time, policy and accuracy; its `imprint` and `nonce` are
    /// not used (the request's are).
    pub base: TokenParams,
    /// The request's message imprint.
    pub imprint: MessageImprint,
    /// The request's nonce.
    pub nonce: Option<Int>,
    /// `certReq`: embed the signer certificate (and `chain`); without it the
    /// token carries no certificate (RFC 3161 §2.4.1).
    pub certs: bool,
}

/// [`prepare_sealed`] for an RFC 3161 request.
pub fn prepare_reply_sealed(
    p: &ReplyParams,
    tsa_cert: &Certificate,
    chain: &[Certificate],
    seal: &LedgerSeal,
) -> crate::Result<pcms::Prepared> {
    let prepared = prepare_tst(
        &p.base,
        p.imprint.clone(),
        p.nonce.clone(),
        tsa_cert,
        chain,
        Some(seal),
    )?;
    Ok(if p.certs {
        prepared
    } else {
        prepared.without_certs()
    })
}

fn prepare_tst(
    p: &TokenParams,
    imprint: MessageImprint,
    nonce: Option<Int>,
    tsa_cert: &Certificate,
    chain: &[Certificate],
    seal: Option<&LedgerSeal>,
) -> crate::Result<pcms::Prepared> {
    if !cert::has_eku_timestamping_critical(tsa_cert) {
        return Err(PkiError::WrongType(
            "signer certificate lacks critical EKU timeStamping".into(),
        ));
    }
    let tst = TstInfo {
        version: TspVersion::V1,
        policy: p.policy,
        message_imprint: imprint,
        serial_number: Int::new(&util::int_bytes_u64(p.serial))?,
        gen_time: util::gentime_from_unix(p.gen_time)?,
        accuracy: (p.accuracy_secs > 0).then_some(Accuracy {
            seconds: Some(u64::from(p.accuracy_secs)),
            millis: None,
            micros: None,
        }),
        ordering: false,
        nonce,
        tsa: Some(GeneralName::DirectoryName(
            tsa_cert.tbs_certificate.subject.clone(),
        )),
        extensions: None,
    };
    let content = tst.to_der()?;
    let opts = SignOptions {
        content_type: oid::ID_CT_TSTINFO,
        content: &content,
        signer: tsa_cert,
        extra_certs: chain,
        signing_time: None,
        ess_cert_id_v2: true,
    };
    pcms::prepare_inner(&opts, false, seal)
}

/// What a verified token says.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// hashedMessage of the message imprint.
    pub imprint: Vec<u8>,
    /// Hash algorithm of the imprint.
    pub hash_oid: ObjectIdentifier,
    /// Serial number bytes (big-endian, two's complement).
    pub serial: Vec<u8>,
    /// genTime (unix s).
    pub gen_time: i64,
    /// TSA policy.
    pub policy: ObjectIdentifier,
    /// The TSA (postmark) certificate.
    pub signer: Certificate,
    /// Its common name (the meter id for meter postmarks).
    pub signer_cn: Option<String>,
}

/// Which verification step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenFailure {
    /// Not a well-formed time-stamp token.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signer does not chain to the anchors, or is not a time-stamping certificate.
    #[error("untrusted token signer: {0}")]
    Chain(String),
    /// The signature or a signed digest does not match.
    #[error("token signature invalid: {0}")]
    Signature(String),
}

impl TokenFailure {
    /// Short step name (`parse`, `chain`, `signature`) for reports.
    pub fn step(&self) -> &'static str {
        match self {
            TokenFailure::Malformed(_) => "parse",
            TokenFailure::Chain(_) => "chain",
            TokenFailure::Signature(_) => "signature",
        }
    }
}

fn malformed(e: impl std::fmt::Display) -> TokenFailure {
    TokenFailure::Malformed(e.to_string())
}

/// Checks, in order: parse → signer chain + critical EKU timeStamping → signature,
/// messageDigest and signingCertificate(V2) binding. The caller compares `imprint` with the
/// message digest.
pub fn verify(
    token_der: &[u8],
    anchors: &[Certificate],
    now: i64,
) -> std::result::Result<TokenInfo, TokenFailure> {
    verify_cached(token_der, anchors, now, None)
}

/// Signer certificates already chained to the anchors, so that a busy
/// validator pays one signature check per token instead of two (the chain
/// check is a second ECDSA verify, as costly as the token's own).
///
/// Keyed by SHA-384 of the signer certificate and the anchors; an entry
/// holds until the signer certificate's notAfter. Bounded: cleared when full.
#[derive(Debug, Default)]
pub struct ChainCache {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 48], (i64, i64)>>,
}

impl ChainCache {
    const MAX: usize = 1024;

    fn key(signer: &Certificate, anchors: &[Certificate]) -> Option<[u8; 48]> {
        use sha2::{Digest, Sha384};
        let mut h = Sha384::new();
        h.update(cert::to_der(signer).ok()?);
        for a in anchors {
            h.update(cert::to_der(a).ok()?);
        }
        Some(h.finalize().into())
    }

    fn hit(&self, key: &[u8; 48], now: i64) -> bool {
        self.entries
            .lock()
            .ok()
            .and_then(|e| e.get(key).copied())
            .is_some_and(|(from, until)| from <= now && now <= until)
    }

    fn remember(&self, key: [u8; 48], signer: &Certificate) {
        if let Ok(mut e) = self.entries.lock() {
            if e.len() >= Self::MAX {
                e.clear();
            }
            e.insert(key, (cert::not_before(signer), cert::not_after(signer)));
        }
    }
}

/// [`verify`], skipping the chain check for a signer `cache` has seen chain
/// to these anchors (the token's own signature is always checked).
pub fn verify_cached(
    token_der: &[u8],
    anchors: &[Certificate],
    now: i64,
    cache: Option<&ChainCache>,
) -> std::result::Result<TokenInfo, TokenFailure> {
    let p = pcms::parse(token_der).map_err(malformed)?;
    if p.content_type != oid::ID_CT_TSTINFO {
        return Err(malformed("eContentType is not id-ct-TSTInfo"));
    }
    let content = p
        .content
        .clone()
        .ok_or_else(|| malformed("TSTInfo is detached"))?;
    let tst = TstInfo::from_der(&content).map_err(malformed)?;
    let ess = p
        .attr(oid::ATTR_SIGNING_CERT_V2)
        .map_err(malformed)?
        .map(|v| v.to_der().and_then(|d| SigningCertificateV2::from_der(&d)))
        .transpose()
        .map_err(malformed)?
        .ok_or_else(|| malformed("signingCertificateV2 attribute missing"))?;

    let key = cache.and_then(|_| ChainCache::key(&p.signer, anchors));
    let cached = matches!((cache, &key), (Some(c), Some(k)) if c.hit(k, now));
    if !cached {
        pcms::check_chain(&p, anchors, now).map_err(|e| TokenFailure::Chain(e.to_string()))?;
        if let (Some(c), Some(k)) = (cache, key) {
            c.remember(k, &p.signer);
        }
    }
    if !cert::has_eku_timestamping_critical(&p.signer) {
        return Err(TokenFailure::Chain(
            "signer lacks critical EKU timeStamping".into(),
        ));
    }

    pcms::check_signature(&p, &content).map_err(|e| TokenFailure::Signature(e.to_string()))?;
    check_ess(&ess, &p.signer)?;

    Ok(TokenInfo {
        imprint: tst.message_imprint.hashed_message.as_bytes().to_vec(),
        hash_oid: tst.message_imprint.hash_algorithm.oid,
        serial: tst.serial_number.as_bytes().to_vec(),
        gen_time: i64::try_from(tst.gen_time.to_unix_duration().as_secs())
            .map_err(|_| malformed("genTime out of range"))?,
        policy: tst.policy,
        signer_cn: cert::subject_cn(&p.signer),
        signer: p.signer,
    })
}

/// Checks the time a token or signature claims (genTime, signingTime)
/// against its signer certificate and the verifier's clock: a time before
/// the certificate's notBefore or after its notAfter was not vouched for by
/// it, and a time later than `now + future_skew` has not happened yet (a
/// signer whose clock was set forward). `Err` says which, for the report.
///
/// [`verify`] does not call it: a chain valid now and a signature that
/// checks do not make the time right, and the caller decides the skew.
pub fn check_time(
    time: i64,
    signer: &Certificate,
    now: i64,
    future_skew: i64,
) -> Result<(), String> {
    let (nb, na) = (cert::not_before(signer), cert::not_after(signer));
    if time < nb {
        return Err(format!(
            "dated {time}, {} s before its signer certificate's notBefore {nb}",
            nb - time
        ));
    }
    if time > na {
        return Err(format!(
            "dated {time}, {} s after its signer certificate's notAfter {na}",
            time - na
        ));
    }
    if time > now.saturating_add(future_skew) {
        return Err(format!(
            "dated {time}, {} s in the future (this clock: {now}, {future_skew} s allowed)",
            time - now
        ));
    }
    Ok(())
}

/// The first ESSCertIDv2 must name the signer certificate (RFC 5035 §5.4).
fn check_ess(ess: &SigningCertificateV2, signer: &Certificate) -> Result<(), TokenFailure> {
    let first = ess
        .certs
        .first()
        .ok_or_else(|| malformed("signingCertificateV2 is empty"))?;
    let alg = first.hash_algorithm.as_ref().map(|a| a.oid);
    let der = cert::to_der(signer).map_err(malformed)?;
    let ok = match alg {
        Some(a) if a == oid::SHA384 => first.cert_hash.as_bytes() == util::sha384(&der),
        None => {
            use sha2::{Digest, Sha256};
            first.cert_hash.as_bytes() == &Sha256::digest(&der)[..]
        }
        Some(_) => false,
    };
    if !ok {
        return Err(TokenFailure::Signature(
            "signingCertificateV2 does not match the signer certificate".into(),
        ));
    }
    Ok(())
}
