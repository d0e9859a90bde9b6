//! CMS SignedData (RFC 5652) with ECDSA P-384 / SHA-384: two-phase build and strict verify.
//!
//! Two-phase because the meter's keys live in the TPM: [`prepare`] computes the signed
//! attributes, [`Prepared::digest`] is what the TPM signs, [`Prepared::finish`] assembles the
//! `ContentInfo` from the raw `r || s` (and checks it against the signer certificate, so a
//! wrong key is caught before anything leaves the meter). The signer is identified by
//! issuerAndSerialNumber and its certificate is embedded, as `openssl cms -verify` expects.

use std::sync::Arc;

use crate::ledger_format::LedgerSeal;
use crate::{cert, oid, sig, util, PkiError, Result};
use ::cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use ::cms::content_info::{CmsVersion, ContentInfo};
use ::cms::signed_data::{
    EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{ObjectIdentifier, OctetString, SetOfVec};
use der::{Any, Decode, Encode, Sequence, Tag, Tagged};
use spki::AlgorithmIdentifierOwned;
use x509_cert::attr::{Attribute, Attributes};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;
use x509_cert::Certificate;

/// ESSCertIDv2 (RFC 5035).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub(crate) struct EssCertIdV2 {
    /// DEFAULT id-sha256 when absent.
    #[asn1(optional = "true")]
    pub hash_algorithm: Option<AlgorithmIdentifierOwned>,
    pub cert_hash: OctetString,
    #[asn1(optional = "true")]
    pub issuer_serial: Option<IssuerSerial>,
}

/// IssuerSerial (RFC 5035).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub(crate) struct IssuerSerial {
    pub issuer: Vec<GeneralName>,
    pub serial_number: SerialNumber,
}

/// SigningCertificateV2 (RFC 5035); policies are kept opaque.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub(crate) struct SigningCertificateV2 {
    pub certs: Vec<EssCertIdV2>,
    #[asn1(optional = "true")]
    pub policies: Option<Vec<Any>>,
}

/// What to sign and with which certificate.
pub struct SignOptions<'a> {
    /// eContentType.
    pub content_type: ObjectIdentifier,
    /// eContent (embedded as an OCTET STRING).
    pub content: &'a [u8],
    /// Signer certificate (identified by issuerAndSerialNumber, embedded).
    pub signer: &'a Certificate,
    /// More certificates to embed (chain).
    pub extra_certs: &'a [Certificate],
    /// signingTime attribute (unix s), if wanted.
    pub signing_time: Option<i64>,
    /// Add a signingCertificateV2 attribute (SHA-384 ESSCertIDv2 of the signer).
    pub ess_cert_id_v2: bool,
}

/// A certificate's DER, as embedded.
type CertDer = Arc<[u8]>;

/// A SignedData waiting for its signature.
#[derive(Debug, Clone)]
pub struct Prepared {
    content_type: ObjectIdentifier,
    content: Vec<u8>,
    detached: bool,
    /// DER of the certificates to embed, signer first.
    certs: Vec<CertDer>,
    sid: IssuerAndSerialNumber,
    signed_attrs: Attributes,
    digest: [u8; 48],
    signer_sec1: Vec<u8>,
}

fn attr(id: ObjectIdentifier, value: Any) -> Result<Attribute> {
    Ok(Attribute {
        oid: id,
        values: SetOfVec::try_from(vec![value])?,
    })
}

/// A signer certificate's parts ([`ess::Signer`]), made afresh.
fn signer_uncached(c: &Certificate) -> Result<ess::Signer> {
    let der = cert::to_der(c)?;
    let ess = SigningCertificateV2 {
        certs: vec![EssCertIdV2 {
            hash_algorithm: Some(util::alg(oid::SHA384)),
            cert_hash: OctetString::new(util::sha384(&der))?,
            issuer_serial: Some(IssuerSerial {
                issuer: vec![GeneralName::DirectoryName(c.tbs_certificate.issuer.clone())],
                serial_number: c.tbs_certificate.serial_number.clone(),
            }),
        }],
        policies: None,
    };
    Ok(ess::Signer {
        der: der.into(),
        ess,
        sec1: cert::public_key_sec1(c)?,
    })
}

/// Builds the signed attributes and the digest to sign, with embedded content.
pub fn prepare(opts: &SignOptions) -> Result<Prepared> {
    prepare_inner(opts, false, None)
}

/// [`prepare`], with the ledger seal of the product's row as one more
/// signed attribute (`oid::ATTR_LEDGER_SEAL`): the one signature then also
/// seals the meter's ledger up to that row. Verifiers that do not know the
/// attribute ignore it (`openssl cms -verify` does).
pub fn prepare_sealed(opts: &SignOptions, seal: &LedgerSeal) -> Result<Prepared> {
    prepare_inner(opts, false, Some(seal))
}

/// Like [`prepare`] but the content is left out of the message (detached signature).
pub fn prepare_detached(opts: &SignOptions) -> Result<Prepared> {
    prepare_inner(opts, true, None)
}

/// Detached signature over content the caller already hashed with SHA-384 (a message too
/// large to hold in memory); `opts.content` must be empty.
pub fn prepare_detached_digest(opts: &SignOptions, content_digest: [u8; 48]) -> Result<Prepared> {
    if !opts.content.is_empty() {
        return Err(PkiError::Malformed(
            "a detached signature over a digest takes no content".into(),
        ));
    }
    prepare_with(opts, true, content_digest, None)
}

pub(crate) fn prepare_inner(
    opts: &SignOptions,
    detached: bool,
    seal: Option<&LedgerSeal>,
) -> Result<Prepared> {
    util::check_size(opts.content.len())?;
    prepare_with(opts, detached, util::sha384(opts.content), seal)
}

fn prepare_with(
    opts: &SignOptions,
    detached: bool,
    content_digest: [u8; 48],
    seal: Option<&LedgerSeal>,
) -> Result<Prepared> {
    let signer = ess::cached(opts.signer, signer_uncached)?;
    let mut attrs = vec![
        attr(
            oid::ATTR_CONTENT_TYPE,
            Any::encode_from(&opts.content_type)?,
        )?,
        attr(
            oid::ATTR_MESSAGE_DIGEST,
            Any::encode_from(&OctetString::new(content_digest)?)?,
        )?,
    ];
    if let Some(t) = opts.signing_time {
        attr_push(
            &mut attrs,
            oid::ATTR_SIGNING_TIME,
            &util::time_from_unix(t)?,
        )?;
    }
    if opts.ess_cert_id_v2 {
        attr_push(&mut attrs, oid::ATTR_SIGNING_CERT_V2, &signer.ess)?;
    }
    if let Some(seal) = seal {
        attrs.push(Attribute::from_der(&seal.attribute_der())?);
    }
    let signed_attrs = SetOfVec::try_from(attrs)?;
    let digest = util::sha384(&signed_attrs.to_der()?);
    let mut certs: Vec<CertDer> = vec![Arc::clone(&signer.der)];
    for c in opts.extra_certs {
        let der: CertDer = cert::to_der(c)?.into();
        if !certs.contains(&der) {
            certs.push(der);
        }
    }
    Ok(Prepared {
        content_type: opts.content_type,
        content: opts.content.to_vec(),
        detached,
        certs,
        sid: IssuerAndSerialNumber {
            issuer: opts.signer.tbs_certificate.issuer.clone(),
            serial_number: opts.signer.tbs_certificate.serial_number.clone(),
        },
        signed_attrs,
        digest,
        signer_sec1: signer.sec1.clone(),
    })
}

fn attr_push<T: Encode>(attrs: &mut Vec<Attribute>, id: ObjectIdentifier, v: &T) -> Result<()> {
    attrs.push(attr(id, Any::from_der(&v.to_der()?)?)?);
    Ok(())
}

impl Prepared {
    /// Without any certificate in the SignedData (an RFC 3161 reply to a
    /// request whose certReq is false); the signer stays named by issuer
    /// and serial and bound by its signingCertificateV2 attribute.
    pub fn without_certs(mut self) -> Prepared {
        self.certs.clear();
        self
    }

    /// SHA-384 of the DER `SET OF Attribute` (signedAttrs): what the signer must sign.
    pub fn digest(&self) -> [u8; 48] {
        self.digest
    }

    /// Assembles the `ContentInfo` DER; `BadSignature` if `raw_sig` does not verify under
    /// the signer certificate's key.
    pub fn finish_verified(self, raw_sig: &[u8; 96]) -> Result<Vec<u8>> {
        sig::verify_prehash(&self.signer_sec1, &self.digest, raw_sig)?;
        self.finish(raw_sig)
    }

    /// Assembles the ContentInfo without re-verifying the signature: for a
    /// signer whose key was already matched to its certificate (the meter's
    /// TPM keys, checked at provisioning), where a software verify per
    /// product would cost as much CPU as the TPM sign itself.
    pub fn finish(self, raw_sig: &[u8; 96]) -> Result<Vec<u8>> {
        let signer_info = SignerInfo {
            version: CmsVersion::V1,
            sid: SignerIdentifier::IssuerAndSerialNumber(self.sid),
            digest_alg: util::alg(oid::SHA384),
            signed_attrs: Some(self.signed_attrs),
            signature_algorithm: util::alg(oid::ECDSA_SHA384),
            signature: OctetString::new(sig::raw_to_der(raw_sig)?)?,
            unsigned_attrs: None,
        };
        let econtent = if self.detached {
            None
        } else {
            Some(Any::encode_from(&OctetString::new(self.content)?)?)
        };
        let version = if self.content_type == oid::ID_DATA {
            CmsVersion::V1
        } else {
            CmsVersion::V3
        };
        // SignedData put together from its fields' DER, the certificates
        // as made once (`ess::Signer::der`): the der crate would encode
        // each certificate again, field by field, for every product
        // (issue 14). The bytes are the ones it would write (the tests
        // decode and re-encode them).
        let mut body = version.to_der()?;
        SetOfVec::try_from(vec![util::alg(oid::SHA384)])?.encode_to_vec(&mut body)?;
        EncapsulatedContentInfo {
            econtent_type: self.content_type,
            econtent,
        }
        .encode_to_vec(&mut body)?;
        if !self.certs.is_empty() {
            let mut certs = self.certs;
            certs.sort_by(|a, b| util::der_set_order(a, b));
            util::push_tlv(&mut body, 0xa0, &certs.concat())?;
        }
        SignerInfos(SetOfVec::try_from(vec![signer_info])?).encode_to_vec(&mut body)?;
        let mut signed_data = Vec::with_capacity(body.len() + 8);
        util::push_tlv(&mut signed_data, 0x30, &body)?;
        let mut ci = oid::ID_SIGNED_DATA.to_der()?;
        util::push_tlv(&mut ci, 0xa0, &signed_data)?;
        let mut out = Vec::with_capacity(ci.len() + 8);
        util::push_tlv(&mut out, 0x30, &ci)?;
        Ok(out)
    }
}

/// [`prepare`] + sign with a software key + [`Prepared::finish`].
pub fn sign_with_key(opts: &SignOptions, key: &p384::ecdsa::SigningKey) -> Result<Vec<u8>> {
    let p = prepare(opts)?;
    let raw = sig::sign_prehash_raw(key, &p.digest())?;
    p.finish(&raw)
}

/// What a product's signature covers, for checking the ledger seal it
/// carries: nothing here is verified (see `ledger_format::verify_product_seal`).
#[derive(Debug, Clone)]
pub struct SignedParts {
    /// eContentType (`id-ct-TSTInfo` for a postmark token).
    pub content_type: ObjectIdentifier,
    /// DER of the signedAttrs (`SET OF Attribute`): what the signature covers.
    pub signed_attrs: Vec<u8>,
    /// The signature, raw r‖s.
    pub signature: [u8; 96],
    /// The ledger seal attribute, if present and well formed.
    pub seal: Option<LedgerSeal>,
}

/// Reads [`SignedParts`] out of a one-signer SignedData (a token or a CMS
/// the meter made); `Malformed` for anything else.
pub fn signed_parts(der: &[u8]) -> Result<SignedParts> {
    let p = parse(der)?;
    let seal = match p.attr(oid::ATTR_LEDGER_SEAL)? {
        Some(v) => Some(
            LedgerSeal::from_value_der(&v.to_der()?)
                .ok_or_else(|| PkiError::Malformed("ledger seal attribute malformed".into()))?,
        ),
        None => None,
    };
    let signed_attrs = p
        .signer_info
        .signed_attrs
        .as_ref()
        .ok_or_else(|| PkiError::Malformed("signed attributes missing".into()))?
        .to_der()?;
    Ok(SignedParts {
        content_type: p.content_type,
        signed_attrs,
        signature: sig::der_to_raw(p.signer_info.signature.as_bytes())?,
        seal,
    })
}

/// A verified SignedData.
#[derive(Debug, Clone)]
pub struct Verified {
    /// eContentType.
    pub content_type: ObjectIdentifier,
    /// eContent bytes (the OCTET STRING value).
    pub content: Vec<u8>,
    /// The signer's certificate.
    pub signer: Certificate,
    /// Every embedded certificate.
    pub certificates: Vec<Certificate>,
    /// signingTime attribute, if present (unix s).
    pub signing_time: Option<i64>,
}

/// A structurally parsed SignedData with one signer, nothing verified yet.
pub(crate) struct Parsed {
    pub content_type: ObjectIdentifier,
    pub content: Option<Vec<u8>>,
    pub signer_info: SignerInfo,
    pub signer: Certificate,
    pub certs: Vec<Certificate>,
}

impl Parsed {
    /// The single value of signed attribute `id`; `Malformed` if repeated or multi-valued.
    pub fn attr(&self, id: ObjectIdentifier) -> Result<Option<&Any>> {
        let attrs = self.signer_info.signed_attrs.as_ref();
        let mut found = attrs
            .into_iter()
            .flat_map(|a| a.iter())
            .filter(|a| a.oid == id);
        let first = found.next();
        if found.next().is_some() {
            return Err(PkiError::Malformed(format!("attribute {id} repeated")));
        }
        match first {
            None => Ok(None),
            Some(a) if a.values.len() == 1 => Ok(a.values.get(0)),
            Some(_) => Err(PkiError::Malformed(format!(
                "attribute {id} not single-valued"
            ))),
        }
    }
}

fn sid_matches(sid: &SignerIdentifier, c: &Certificate) -> bool {
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(ias) => {
            ias.issuer == c.tbs_certificate.issuer
                && ias.serial_number == c.tbs_certificate.serial_number
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => c
            .tbs_certificate
            .extensions
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .any(|e| {
                e.extn_id == oid::EXT_SKI && e.extn_value.as_bytes().ends_with(ski.0.as_bytes())
            }),
    }
}

/// Parses the structure (one signer, signed attributes present, algorithms P-384/SHA-384,
/// signer certificate embedded). Every failure is `Malformed` (or `TooLarge`).
pub(crate) fn parse(der_or_pem: &[u8]) -> Result<Parsed> {
    let der = crate::pem::decode_any(der_or_pem, "CMS")?;
    let ci = ContentInfo::from_der(&der)?;
    if ci.content_type != oid::ID_SIGNED_DATA {
        return Err(PkiError::Malformed("not a CMS SignedData".into()));
    }
    let sd: SignedData = ci.content.decode_as()?;
    let content = match &sd.encap_content_info.econtent {
        None => None,
        Some(any) if any.tag() == Tag::OctetString => Some(any.value().to_vec()),
        Some(_) => {
            return Err(PkiError::Malformed(
                "eContent is not an OCTET STRING".into(),
            ))
        }
    };
    let mut infos = sd.signer_infos.0.into_vec();
    if infos.len() != 1 {
        return Err(PkiError::Malformed(format!(
            "expected one signer, found {}",
            infos.len()
        )));
    }
    let signer_info = infos.remove(0);
    if signer_info.signed_attrs.is_none() {
        return Err(PkiError::Malformed("signed attributes missing".into()));
    }
    if !util::is_sha384(&signer_info.digest_alg)
        || !(util::is_ecdsa_sha384(&signer_info.signature_algorithm)
            || signer_info.signature_algorithm.oid == oid::EC_PUBLIC_KEY)
    {
        return Err(PkiError::Malformed(
            "only ECDSA P-384 with SHA-384 is accepted".into(),
        ));
    }
    let certs: Vec<Certificate> = sd
        .certificates
        .map(|s| s.0.into_vec())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| match c {
            CertificateChoices::Certificate(c) => Some(c),
            CertificateChoices::Other(_) => None,
        })
        .collect();
    let signer = certs
        .iter()
        .find(|c| sid_matches(&signer_info.sid, c))
        .cloned()
        .ok_or_else(|| PkiError::Malformed("signer certificate not embedded".into()))?;
    Ok(Parsed {
        content_type: sd.encap_content_info.econtent_type,
        content,
        signer_info,
        signer,
        certs,
    })
}

/// Chains the signer to `anchors` with the embedded certificates as intermediates.
pub(crate) fn check_chain(p: &Parsed, anchors: &[Certificate], now: i64) -> Result<usize> {
    cert::verify_chain(&p.signer, &p.certs, anchors, now)
}

/// Checks the contentType attribute, messageDigest against `content`, and the signature.
pub(crate) fn check_signature(p: &Parsed, content: &[u8]) -> Result<()> {
    let ct = p
        .attr(oid::ATTR_CONTENT_TYPE)?
        .ok_or_else(|| PkiError::Malformed("contentType attribute missing".into()))?
        .decode_as::<ObjectIdentifier>()?;
    if ct != p.content_type {
        return Err(PkiError::BadSignature(
            "contentType attribute differs from eContentType".into(),
        ));
    }
    let md = p
        .attr(oid::ATTR_MESSAGE_DIGEST)?
        .ok_or_else(|| PkiError::Malformed("messageDigest attribute missing".into()))?
        .decode_as::<OctetString>()?;
    if md.as_bytes() != util::sha384(content) {
        return Err(PkiError::BadSignature(
            "content does not match the signed digest".into(),
        ));
    }
    let attrs_der = p
        .signer_info
        .signed_attrs
        .as_ref()
        .ok_or_else(|| PkiError::Malformed("signed attributes missing".into()))?
        .to_der()?;
    let key = cert::public_key_sec1(&p.signer)?;
    sig::verify_prehash_der(
        &key,
        &util::sha384(&attrs_der),
        p.signer_info.signature.as_bytes(),
    )
}

fn signing_time(p: &Parsed) -> Result<Option<i64>> {
    Ok(match p.attr(oid::ATTR_SIGNING_TIME)? {
        Some(v) => Some(util::unix_of(&Time::from_der(&v.to_der()?)?)),
        None => None,
    })
}

fn check_type(p: &Parsed, expected: Option<&ObjectIdentifier>) -> Result<()> {
    match expected {
        Some(e) if *e != p.content_type => Err(PkiError::WrongType(format!(
            "expected content type {e}, found {}",
            p.content_type
        ))),
        _ => Ok(()),
    }
}

/// What a SignedData with embedded content says, NOTHING verified: for an
/// object that was verified when it came in and is kept where tampering is
/// caught otherwise (the meter's hash-chained ledger), or to learn when it
/// claims to have been signed before verifying it at that time.
#[derive(Debug, Clone)]
pub struct Unverified {
    /// eContentType.
    pub content_type: ObjectIdentifier,
    /// eContent bytes.
    pub content: Vec<u8>,
    /// The certificate the signer info names (embedded).
    pub signer: Certificate,
    /// signingTime attribute, if present (unix s).
    pub signing_time: Option<i64>,
}

/// Reads a SignedData with embedded content without verifying anything but
/// its structure (see [`Unverified`]).
pub fn peek(der_or_pem: &[u8]) -> Result<Unverified> {
    let p = parse(der_or_pem)?;
    let signing_time = signing_time(&p)?;
    let content = p
        .content
        .ok_or_else(|| PkiError::Malformed("content is detached".into()))?;
    Ok(Unverified {
        content_type: p.content_type,
        content,
        signer: p.signer,
        signing_time,
    })
}

/// Verifies a SignedData with embedded content: structure, eContentType (`WrongType`),
/// signer chain to `anchors` at `now` (`Untrusted`/`Expired`), then contentType and
/// messageDigest attributes and the signature (`BadSignature`).
pub fn verify(
    der_or_pem: &[u8],
    anchors: &[Certificate],
    expected: Option<&ObjectIdentifier>,
    now: i64,
) -> Result<Verified> {
    let p = parse(der_or_pem)?;
    let content = p
        .content
        .clone()
        .ok_or_else(|| PkiError::Malformed("content is detached".into()))?;
    verify_parsed(p, content, anchors, expected, now)
}

/// Verifies a detached SignedData over `content` (same checks as [`verify`]).
pub fn verify_detached(
    der_or_pem: &[u8],
    content: &[u8],
    anchors: &[Certificate],
    expected: Option<&ObjectIdentifier>,
    now: i64,
) -> Result<Verified> {
    let p = parse(der_or_pem)?;
    if p.content.is_some() {
        return Err(PkiError::Malformed(
            "content is embedded, not detached".into(),
        ));
    }
    verify_parsed(p, content.to_vec(), anchors, expected, now)
}

fn verify_parsed(
    p: Parsed,
    content: Vec<u8>,
    anchors: &[Certificate],
    expected: Option<&ObjectIdentifier>,
    now: i64,
) -> Result<Verified> {
    check_type(&p, expected)?;
    check_chain(&p, anchors, now)?;
    check_signature(&p, &content)?;
    Ok(Verified {
        content_type: p.content_type,
        content,
        signing_time: signing_time(&p)?,
        signer: p.signer,
        certificates: p.certs,
    })
}

#[path = "cms_ess.rs"]
mod ess;

#[cfg(test)]
#[path = "cms_tests.rs"]
mod tests;
