//! The RFC 3161 protocol around a postmark: a DER `TimeStampReq` in, a DER
//! `TimeStampResp` out, so that every time-stamp client (openssl ts,
//! osslsigncode, signtool, jarsigner, pyHanko, rfc3161-client) can buy one.
//!
//! Parsing is strict: the request must be DER (it is re-encoded and compared,
//! because .NET and others reject BER and a meter must not sign what it
//! would not emit), bounded in size, version 1, with a SHA-256, SHA-384 or
//! SHA-512 imprint of the matching length. A refusal is the client's fault
//! and travels in-band as a `TimeStampResp` with status rejection and the
//! RFC 3161 failInfo bit, never as a transport error the client cannot read.

use der::asn1::{BitString, Int, ObjectIdentifier, Utf8StringRef};
use der::{Any, Decode, Encode, Sequence};
use x509_tsp::{MessageImprint, TimeStampReq, TspVersion};

use crate::{oid, PkiError};

/// Largest request accepted (a TimeStampReq with a SHA-512 imprint, a
/// nonce and a policy is about 100 bytes; extensions are refused anyway).
pub const MAX_REQUEST: usize = 4096;

/// PKIFailureInfo bits a TSA uses (RFC 3161 §2.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailInfo {
    /// Unrecognized or unsupported hash algorithm.
    BadAlg = 0,
    /// Transaction not permitted or supported.
    BadRequest = 2,
    /// The data submitted has the wrong format.
    BadDataFormat = 5,
    /// The TSA's time source is not available.
    TimeNotAvailable = 14,
    /// The requested TSA policy is not supported.
    UnacceptedPolicy = 15,
    /// The requested extension is not supported.
    UnacceptedExtension = 16,
    /// The request cannot be handled due to system failure.
    SystemFailure = 25,
}

impl FailInfo {
    /// The bit number.
    pub fn bit(self) -> u32 {
        self as u32
    }

    fn bit_string(self) -> der::Result<BitString> {
        let n = self.bit() as usize;
        let mut bytes = vec![0u8; n / 8 + 1];
        if let Some(b) = bytes.last_mut() {
            *b = 0x80 >> (n % 8);
        }
        BitString::new(7 - (n % 8) as u8, bytes)
    }

    /// The name RFC 3161 gives the bit (what `openssl ts -reply -text` shows).
    pub fn name(self) -> &'static str {
        match self {
            FailInfo::BadAlg => "badAlg",
            FailInfo::BadRequest => "badRequest",
            FailInfo::BadDataFormat => "badDataFormat",
            FailInfo::TimeNotAvailable => "timeNotAvailable",
            FailInfo::UnacceptedPolicy => "unacceptedPolicy",
            FailInfo::UnacceptedExtension => "unacceptedExtension",
            FailInfo::SystemFailure => "systemFailure",
        }
    }
}

/// Why a request is not granted: the failInfo bit and a statusString.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({})", text, fail.name())]
pub struct Refusal {
    /// The failInfo bit.
    pub fail: FailInfo,
    /// The statusString: what is wrong and what to do.
    pub text: String,
}

impl Refusal {
    /// A refusal with `fail` and `text`.
    pub fn new(fail: FailInfo, text: impl Into<String>) -> Refusal {
        Refusal {
            fail,
            text: text.into(),
        }
    }
}

/// An accepted request: what the token copies.
#[derive(Debug, Clone)]
pub struct Request {
    /// The message imprint, as sent (parameters normalised to absent).
    pub imprint: MessageImprint,
    /// The nonce, as sent.
    pub nonce: Option<Int>,
    /// Whether the certificates must be embedded.
    pub cert_req: bool,
}

/// The imprint length of an accepted hash algorithm.
fn digest_len(alg: &ObjectIdentifier) -> Option<usize> {
    match *alg {
        a if a == oid::SHA256 => Some(32),
        a if a == oid::SHA384 => Some(48),
        a if a == oid::SHA512 => Some(64),
        _ => None,
    }
}

/// Parses `der` strictly; `policy` is the only `reqPolicy` accepted.
pub fn parse_request(der: &[u8], policy: ObjectIdentifier) -> Result<Request, Refusal> {
    let bad = |t: String| Refusal::new(FailInfo::BadDataFormat, t);
    if der.len() > MAX_REQUEST {
        return Err(bad(format!(
            "request of {} bytes exceeds the {MAX_REQUEST}-byte limit",
            der.len()
        )));
    }
    let req =
        TimeStampReq::from_der(der).map_err(|e| bad(format!("not a DER TimeStampReq: {e}")))?;
    match req.to_der() {
        Ok(again) if again == der => {}
        _ => return Err(bad("TimeStampReq is not in DER form".into())),
    }
    if req.version != TspVersion::V1 {
        return Err(Refusal::new(
            FailInfo::BadRequest,
            "TimeStampReq version must be 1",
        ));
    }
    let alg = &req.message_imprint.hash_algorithm;
    let Some(len) = digest_len(&alg.oid) else {
        return Err(Refusal::new(
            FailInfo::BadAlg,
            format!(
                "hash algorithm {} is not accepted; use SHA-256, SHA-384 or SHA-512",
                alg.oid
            ),
        ));
    };
    if let Some(p) = &alg.parameters {
        if p != &Any::null() {
            return Err(Refusal::new(
                FailInfo::BadAlg,
                "hash algorithm parameters must be absent or NULL",
            ));
        }
    }
    let got = req.message_imprint.hashed_message.as_bytes().len();
    if got != len {
        return Err(Refusal::new(
            FailInfo::BadDataFormat,
            format!("the imprint is {got} bytes; its algorithm makes {len}"),
        ));
    }
    if let Some(p) = req.req_policy {
        if p != policy {
            return Err(Refusal::new(
                FailInfo::UnacceptedPolicy,
                format!("policy {p} is not offered; ask for {policy} or none"),
            ));
        }
    }
    if req.extensions.is_some() {
        return Err(Refusal::new(
            FailInfo::UnacceptedExtension,
            "request extensions are not supported",
        ));
    }
    let mut imprint = req.message_imprint;
    imprint.hash_algorithm.parameters = None;
    Ok(Request {
        imprint,
        nonce: req.nonce,
        cert_req: req.cert_req,
    })
}

/// PKIStatusInfo (RFC 3161 §2.4.2; statusString a PKIFreeText).
#[derive(Debug, Clone, Sequence)]
struct StatusInfo<'a> {
    status: u8,
    status_string: Option<Vec<Utf8StringRef<'a>>>,
    fail_info: Option<BitString>,
}

/// TimeStampResp with the token kept as encoded.
#[derive(Debug, Clone, Sequence)]
struct Resp<'a> {
    status: StatusInfo<'a>,
    token: Option<Any>,
}

/// PKIStatus granted.
pub const GRANTED: u8 = 0;
/// PKIStatus rejection.
pub const REJECTION: u8 = 2;

/// The `TimeStampResp` granting `token` (a DER ContentInfo).
pub fn granted(token: &[u8]) -> crate::Result<Vec<u8>> {
    let resp = Resp {
        status: StatusInfo {
            status: GRANTED,
            status_string: None,
            fail_info: None,
        },
        token: Some(Any::from_der(token)?),
    };
    Ok(resp.to_der()?)
}

/// The `TimeStampResp` refusing with `r`.
pub fn rejection(r: &Refusal) -> crate::Result<Vec<u8>> {
    let text: String = r.text.chars().take(512).collect();
    let resp = Resp {
        status: StatusInfo {
            status: REJECTION,
            status_string: Some(vec![Utf8StringRef::new(&text)?]),
            fail_info: Some(r.fail.bit_string()?),
        },
        token: None,
    };
    Ok(resp.to_der()?)
}

/// A response read back (meterctl, tests): status, statusString, the failInfo
/// bits set, and the token.
#[derive(Debug, Clone)]
pub struct Response {
    /// PKIStatus.
    pub status: u8,
    /// statusString, joined.
    pub text: Option<String>,
    /// Numbers of the failInfo bits set.
    pub fail_bits: Vec<u32>,
    /// The token (DER ContentInfo), when granted.
    pub token: Option<Vec<u8>>,
}

/// Parses a `TimeStampResp`.
pub fn parse_response(der: &[u8]) -> crate::Result<Response> {
    let r = Resp::from_der(der)?;
    let text = r
        .status
        .status_string
        .map(|v| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; "));
    let fail_bits = r
        .status
        .fail_info
        .map(|b| {
            b.bits()
                .enumerate()
                .filter(|(_, set)| *set)
                .map(|(i, _)| i as u32)
                .collect()
        })
        .unwrap_or_default();
    let token = r.token.map(|t| t.to_der()).transpose()?;
    Ok(Response {
        status: r.status.status,
        text,
        fail_bits,
        token,
    })
}

/// A DER `TimeStampReq` for `imprint` under `alg` (meterctl, tests).
pub fn request(
    alg: ObjectIdentifier,
    imprint: &[u8],
    nonce: Option<u64>,
    cert_req: bool,
) -> crate::Result<Vec<u8>> {
    let req = TimeStampReq {
        version: TspVersion::V1,
        message_imprint: MessageImprint {
            hash_algorithm: crate::util::alg(alg),
            hashed_message: der::asn1::OctetString::new(imprint)?,
        },
        req_policy: None,
        nonce: nonce
            .map(|n| Int::new(&crate::util::int_bytes_u64(n)))
            .transpose()?,
        cert_req,
        extensions: None,
    };
    req.to_der().map_err(PkiError::from)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const POLICY: ObjectIdentifier = oid::POSTMARK_POLICY;

    #[test]
    fn accepts_sha2_family_and_copies_nonce() {
        for (alg, len) in [(oid::SHA256, 32), (oid::SHA384, 48), (oid::SHA512, 64)] {
            let der = request(alg, &vec![7u8; len], Some(0xdead_beef_0102_0304), true).unwrap();
            let r = parse_request(&der, POLICY).unwrap();
            assert_eq!(r.imprint.hash_algorithm.oid, alg);
            assert!(r.cert_req);
            assert_eq!(
                r.nonce.unwrap().as_bytes(),
                &[0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]
            );
        }
    }

    #[test]
    fn refuses_sha1_and_wrong_lengths() {
        let sha1 = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
        let der = request(sha1, &[1u8; 20], None, false).unwrap();
        assert_eq!(
            parse_request(&der, POLICY).unwrap_err().fail,
            FailInfo::BadAlg
        );
        let der = request(oid::SHA256, &[1u8; 48], None, false).unwrap();
        assert_eq!(
            parse_request(&der, POLICY).unwrap_err().fail,
            FailInfo::BadDataFormat
        );
    }

    #[test]
    fn refuses_other_policy_ber_and_garbage() {
        let mut req =
            TimeStampReq::from_der(&request(oid::SHA256, &[1; 32], None, false).unwrap()).unwrap();
        req.req_policy = Some(oid::USER_POLICY);
        let der = req.to_der().unwrap();
        assert_eq!(
            parse_request(&der, POLICY).unwrap_err().fail,
            FailInfo::UnacceptedPolicy
        );
        req.req_policy = Some(POLICY);
        assert!(parse_request(&req.to_der().unwrap(), POLICY).is_ok());
        // BER: a long-form length where DER needs the short form.
        let der = request(oid::SHA256, &[1; 32], None, false).unwrap();
        let mut ber = vec![0x30, 0x81, der[1]];
        ber.extend_from_slice(&der[2..]);
        assert_eq!(
            parse_request(&ber, POLICY).unwrap_err().fail,
            FailInfo::BadDataFormat
        );
        assert_eq!(
            parse_request(&[0u8; 5000], POLICY).unwrap_err().fail,
            FailInfo::BadDataFormat
        );
    }

    #[test]
    fn rejection_round_trips_with_its_bit() {
        for f in [
            FailInfo::BadAlg,
            FailInfo::UnacceptedExtension,
            FailInfo::SystemFailure,
        ] {
            let der = rejection(&Refusal::new(f, "why")).unwrap();
            let r = parse_response(&der).unwrap();
            assert_eq!(r.status, REJECTION);
            assert_eq!(r.fail_bits, vec![f.bit()]);
            assert_eq!(r.text.as_deref(), Some("why"));
            assert!(r.token.is_none());
        }
    }
}
