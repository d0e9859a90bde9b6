//! User certificates (Fig. 5), authority side: one-time enrolment codes and
//! certification of the requests meters send.
//!
//! The authority checks the user's identity out of band and hands them an
//! enrolment code for one subject (`enrol`). The meter sends a PKCS#10
//! request for a key it made in its TPM, with that code, in CMS signed by
//! its identity key (`meter_pki::certreq`). `certify_user` checks both
//! signatures (the CMS by a meter identity this authority certified, the
//! PKCS#10 self-signature), consumes the code for that subject, and issues
//! a user certificate (profile User, policy `oid::USER_POLICY`). A request with
//! purpose `encrypt` is for a key-agreement key, which cannot sign: its PKCS#10 is
//! signed by the meter's identity key instead and the certificate says keyAgreement
//! (profile UserEncryption).
//!
//! Codes are kept in `enrolments.json` as SHA-384 digests only, so the file
//! does not leak usable codes; a used code stays listed with its use time.

use crate::state::Issued;
use crate::{Authority, AuthorityError, Result};
use meter_pki::certreq::{CertRequest, PURPOSE_ENCRYPT};
use meter_pki::issue::{self, Profile};
use meter_pki::{cert, csr, payload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};
use std::path::Path;

/// Default validity of a user certificate (1 year).
pub const USER_DAYS: u32 = 365;

/// One enrolment code issued for a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolment {
    /// Subject common name the code is for.
    pub subject_cn: String,
    /// SHA-384 of the code, hex.
    pub code_sha384: String,
    /// Issue time (unix s).
    pub issued_at: i64,
    /// When it was consumed (unix s), if it was.
    pub used_at: Option<i64>,
}

/// The enrolment file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolments {
    /// Every code ever issued.
    pub codes: Vec<Enrolment>,
}

impl Enrolments {
    fn path(dir: &Path) -> std::path::PathBuf {
        dir.join("enrolments.json")
    }

    /// Reads `enrolments.json` (empty when absent).
    pub fn load(dir: &Path) -> Result<Enrolments> {
        Ok(crate::state::read_json(&Self::path(dir))?.unwrap_or_default())
    }

    /// Writes `enrolments.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        crate::state::write_json_atomic(&Self::path(dir), self, "enrolments")
    }
}

fn code_digest(code: &str) -> String {
    hex::encode(Sha384::digest(code.as_bytes()))
}

/// `CN=Alice` or `Alice` → `Alice`.
pub fn subject_cn(subject: &str) -> Result<String> {
    let cn = subject.strip_prefix("CN=").unwrap_or(subject);
    let n = cn.chars().count();
    if n == 0 || n > 64 || cn.chars().any(char::is_control) || cn.contains(',') {
        return Err(AuthorityError::Invalid(format!(
            "subject {subject:?}: give CN=<name>, 1..64 printable characters without commas"
        )));
    }
    Ok(cn.to_owned())
}

fn random_code() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 10];
    rand_core::OsRng.fill_bytes(&mut b);
    let h = hex::encode_upper(b);
    let groups: Vec<&str> = (0..5).filter_map(|i| h.get(i * 4..i * 4 + 4)).collect();
    groups.join("-")
}

/// Validity of a user certificate: `days` from now, or (tests) ending `seconds` from now.
#[derive(Debug, Clone, Copy)]
pub enum UserValidity {
    /// From now, this many days.
    Days(u32),
    /// Ends this many seconds from now (started a day earlier).
    Seconds(u32),
}

impl Authority {
    /// Issues a one-time enrolment code for `subject` (`CN=<name>`).
    pub fn enrol(&self, subject: &str, now: i64) -> Result<(String, String)> {
        let cn = subject_cn(subject)?;
        let code = random_code();
        let mut all = Enrolments::load(&self.dir)?;
        all.codes.push(Enrolment {
            subject_cn: cn.clone(),
            code_sha384: code_digest(&code),
            issued_at: now,
            used_at: None,
        });
        all.save(&self.dir)?;
        Ok((cn, code))
    }

    /// Verifies a meter's certificate request and issues the user certificate.
    pub fn certify_user(
        &mut self,
        request: &[u8],
        validity: UserValidity,
        now: i64,
    ) -> Result<cert::Certificate> {
        self.certify_user_known(request, validity, &[], now)
    }

    /// The meter a user-certificate request comes from (its signature
    /// verified): whose certificates a database register is asked for
    /// before [`Authority::certify_user_known`].
    pub fn user_request_meter(&self, request: &[u8], now: i64) -> Result<String> {
        let (req, _) =
            payload::open::<CertRequest>(request, std::slice::from_ref(&self.root), now)?;
        Ok(req.meter_id)
    }

    /// [`Authority::certify_user`] where the requesting meter's identity
    /// certificate may also be among `known`: the certificates a database
    /// register (`serve --database`) issued, which `state.json` does not
    /// hold. The user certificate itself takes its serial from, and is
    /// recorded in, `state.json` as always.
    pub fn certify_user_known(
        &mut self,
        request: &[u8],
        validity: UserValidity,
        known: &[Issued],
        now: i64,
    ) -> Result<cert::Certificate> {
        let (req, verified) =
            payload::open::<CertRequest>(request, std::slice::from_ref(&self.root), now)?;
        let signer = &verified.signer;
        let signer_serial = u64::from_str_radix(&cert::serial_hex(signer), 16).ok();
        let is_meter_identity = self.register()?.issued.iter().chain(known).any(|i| {
            Some(i.serial) == signer_serial
                && i.profile == format!("{:?}", Profile::MeterIdentity)
                && i.subject_cn == req.meter_id
        });
        if !is_meter_identity || cert::subject_cn(signer).as_deref() != Some(&req.meter_id) {
            return Err(AuthorityError::Invalid(format!(
                "the request is not signed by the identity key of meter {:?} certified here",
                req.meter_id
            )));
        }
        // A key-agreement key cannot sign its own request: the meter's identity key
        // (checked above to be one certified here) signs it instead.
        let encrypt = req.purpose.as_deref() == Some(PURPOSE_ENCRYPT);
        let csr = if encrypt {
            csr::verify_signed_by(&req.csr_der()?, &cert::public_key_sec1(signer)?)?
        } else {
            csr::verify(&req.csr_der()?)?
        };
        let profile = if encrypt {
            Profile::UserEncryption
        } else {
            Profile::User
        };
        if csr.subject_cn != req.subject_cn {
            return Err(AuthorityError::Invalid(
                "the PKCS#10 subject differs from the subject asked for".into(),
            ));
        }
        let mut all = Enrolments::load(&self.dir)?;
        let digest = code_digest(&req.enrolment_code);
        let slot = all
            .codes
            .iter_mut()
            .find(|e| e.used_at.is_none() && e.subject_cn == csr.subject_cn && e.code_sha384 == digest)
            .ok_or_else(|| {
                AuthorityError::Invalid(format!(
                    "enrolment code refused for {:?}: unknown, already used, or issued for another subject",
                    csr.subject_cn
                ))
            })?;
        slot.used_at = Some(now);
        // The code is spent before the certificate exists: a crash wastes it, never reuses it.
        all.save(&self.dir)?;
        let (not_before, days) = match validity {
            UserValidity::Days(d) => (now, d),
            UserValidity::Seconds(s) => (now + i64::from(s) - 86_400, 1),
        };
        let serial = self.register_mut()?.take_serial()?;
        let c = issue::issue(
            &csr.subject_cn,
            &csr.public_sec1,
            profile,
            &self.key,
            &self.root,
            serial,
            not_before,
            days,
        )?;
        self.register_mut()?.issued.push(Issued {
            serial,
            subject_cn: csr.subject_cn,
            profile: format!("{profile:?}"),
            not_after: cert::not_after(&c),
            meter: Some(req.meter_id),
        });
        self.save()?;
        Ok(c)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_codes() {
        assert_eq!(subject_cn("CN=Alice").unwrap(), "Alice");
        assert_eq!(subject_cn("Bob").unwrap(), "Bob");
        assert!(subject_cn("CN=").is_err());
        assert!(subject_cn("CN=a,O=b").is_err());
        let a = random_code();
        assert_eq!(a.len(), 24);
        assert_ne!(a, random_code());
        assert_ne!(code_digest(&a), code_digest("x"));
    }
}
