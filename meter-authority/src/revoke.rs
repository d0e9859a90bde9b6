//! Revocation (Fig. 6), authority side: revoke orders and the CRL.
//!
//! `revoke` verifies a meter's signed request (602–604: CMS chaining to this
//! root, signed by an identity certificate this authority issued to the meter
//! the request names) and answers with a signed order bound to that meter and
//! serial, single use by a fresh random `order_id` (608). `revoke_forced`
//! makes the same order without a request: the authority's own decision.
//! Either way the revocation enters `revocations.json` (time, reason: 622)
//! before the order is handed out, and `crl` publishes every entry as an
//! RFC 5280 v2 CRL signed by the root, numbered from `revocations.json`.

use meter_pki::crl::{self, CrlEntry};
use meter_pki::payload::{self, Payload};
use meter_pki::revoke::{self as rv, RevokeOrder, RevokeRequest};
use meter_pki::{cert, pem};
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::{check_meter_id, Authority, AuthorityError, Result};

/// How long a published CRL is current (nextUpdate), in days.
pub const CRL_DAYS: u32 = 7;

/// One revocation the authority ordered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// Serial revoked (canonical hex).
    pub serial: String,
    /// Meter holding the key.
    pub meter_id: String,
    /// Reason (see `meter_pki::revoke::REASONS`).
    pub reason: String,
    /// Time of the order (unix s); the CRL's revocationDate.
    pub revoked_at: i64,
    /// The order's id.
    pub order_id: String,
    /// Ordered without a meter request.
    pub forced: bool,
}

/// `revocations.json`: every revocation, and the next CRL number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocations {
    /// Number of the next CRL published (starts at 1).
    pub next_crl_number: u64,
    /// Every revocation ordered.
    pub entries: Vec<Revocation>,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations {
            next_crl_number: 1,
            entries: Vec::new(),
        }
    }
}

impl Revocations {
    fn path(dir: &Path) -> std::path::PathBuf {
        dir.join("revocations.json")
    }

    /// Reads `revocations.json` (empty when absent).
    pub fn load(dir: &Path) -> Result<Revocations> {
        Ok(crate::state::read_json(&Self::path(dir))?.unwrap_or_default())
    }

    /// Writes `revocations.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        crate::state::write_json_atomic(&Self::path(dir), self, "revocations")
    }
}

impl Authority {
    /// Verifies a meter's revoke request and signs the order (PEM).
    pub fn revoke(&self, request: &[u8], now: i64) -> Result<(RevokeOrder, String)> {
        self.revoke_known(request, &[], now)
    }

    /// The meter a revoke request comes from (its signature verified): whose
    /// certificates a database register is asked for before
    /// [`Authority::revoke_known`].
    pub fn revoke_request_meter(&self, request: &[u8], now: i64) -> Result<String> {
        let (req, _) =
            payload::open::<RevokeRequest>(request, std::slice::from_ref(self.root()), now)?;
        Ok(req.meter_id)
    }

    /// [`Authority::revoke`] where the requesting meter's identity
    /// certificate may also be among `known`, the certificates a database
    /// register (`serve --database`) issued, which `state.json` does not hold.
    pub fn revoke_known(
        &self,
        request: &[u8],
        known: &[crate::state::Issued],
        now: i64,
    ) -> Result<(RevokeOrder, String)> {
        let (req, verified) =
            payload::open::<RevokeRequest>(request, std::slice::from_ref(self.root()), now)?;
        let signer_serial = u64::from_str_radix(&cert::serial_hex(&verified.signer), 16).ok();
        let is_meter_identity = self.register()?.issued.iter().chain(known).any(|i| {
            Some(i.serial) == signer_serial
                && i.profile == "MeterIdentity"
                && i.subject_cn == req.meter_id
        });
        if !is_meter_identity
            || cert::subject_cn(&verified.signer).as_deref() != Some(&req.meter_id)
        {
            return Err(AuthorityError::Invalid(format!(
                "the request is not signed by the identity key of meter {:?} certified here",
                req.meter_id
            )));
        }
        self.order(
            &req.meter_id,
            &req.serial,
            &req.reason,
            &req.request_id,
            now,
        )
    }

    /// Signs a forced revoke order (no meter request) for `serial` held by `meter_id`.
    pub fn revoke_forced(
        &self,
        meter_id: &str,
        serial: &str,
        reason: &str,
        now: i64,
    ) -> Result<(RevokeOrder, String)> {
        check_meter_id(meter_id)?;
        self.order(meter_id, &rv::canonical_serial(serial)?, reason, "", now)
    }

    /// Signs again the forced order recorded in `r` (`serve`: a retried
    /// request, or one whose first answer was lost after the record was
    /// written). The same order id, so the meter applies it once.
    pub fn revoke_order_again(&self, r: &Revocation, now: i64) -> Result<(RevokeOrder, String)> {
        if !r.forced {
            return Err(AuthorityError::Invalid(format!(
                "serial {} was revoked at the meter's request (order {}), not by the authority",
                r.serial, r.order_id
            )));
        }
        let order = RevokeOrder {
            meter_id: r.meter_id.clone(),
            serial: r.serial.clone(),
            reason: r.reason.clone(),
            order_id: r.order_id.clone(),
            forced: true,
            request_id: String::new(),
            issued_at: r.revoked_at,
        };
        order.validate()?;
        let pem = self.sign_payload(&order, now)?;
        Ok((order, pem))
    }

    fn order(
        &self,
        meter_id: &str,
        serial: &str,
        reason: &str,
        request_id: &str,
        now: i64,
    ) -> Result<(RevokeOrder, String)> {
        rv::check_reason(reason)?;
        let register = self.register()?;
        let Some(issued) = register.issued.iter().find(|i| {
            (i.profile == "User" || i.profile == "UserEncryption")
                && rv::canonical_serial(&format!("{:x}", i.serial))
                    .ok()
                    .as_deref()
                    == Some(serial)
        }) else {
            return Err(AuthorityError::Invalid(format!(
                "serial {serial} is not a user certificate this authority issued"
            )));
        };
        // A meter's request names only its own users' certificates: its
        // operator holds its identity key and must not revoke another
        // meter's users (a forced order, by the authority, may).
        let forced = request_id.is_empty();
        if !forced && issued.meter.as_deref() != Some(meter_id) {
            return Err(AuthorityError::Invalid(format!(
                "serial {serial} was not issued on a request of meter {meter_id:?}: a meter \
                 revokes only its own users' certificates (the authority can: \
                 `revoke --forced --meter ID --serial S`)"
            )));
        }
        let mut all = Revocations::load(&self.dir)?;
        if let Some(r) = all.entries.iter().find(|r| r.serial == serial) {
            return Err(AuthorityError::Invalid(format!(
                "serial {serial} was already revoked at {} (order {})",
                r.revoked_at, r.order_id
            )));
        }
        let id = crate::fresh_nonce_hex();
        let order = RevokeOrder {
            meter_id: meter_id.to_owned(),
            serial: serial.to_owned(),
            reason: reason.to_owned(),
            order_id: id,
            forced: request_id.is_empty(),
            request_id: request_id.to_owned(),
            issued_at: now,
        };
        order.validate()?;
        let pem = self.sign_payload(&order, now)?;
        // Recorded before it is handed out: a crash may list a revocation
        // whose order was never delivered (the serial stays refused), never
        // the other way round.
        all.entries.push(Revocation {
            serial: order.serial.clone(),
            meter_id: order.meter_id.clone(),
            reason: order.reason.clone(),
            revoked_at: now,
            order_id: order.order_id.clone(),
            forced: order.forced,
        });
        all.save(&self.dir)?;
        Ok((order, pem))
    }

    /// Signs a CRL of every revocation (PEM `X509 CRL`); returns it and its number.
    pub fn crl(&self, now: i64) -> Result<(String, u64, usize)> {
        let mut all = Revocations::load(&self.dir)?;
        let number = all.next_crl_number;
        let entries: Vec<CrlEntry> = all
            .entries
            .iter()
            .map(|r| {
                Ok(CrlEntry {
                    serial_hex: r.serial.clone(),
                    revoked_at: r.revoked_at,
                    reason_code: rv::reason_code(&r.reason).ok_or_else(|| {
                        AuthorityError::Corrupt(format!("revocations.json: reason {:?}", r.reason))
                    })?,
                })
            })
            .collect::<Result<_>>()?;
        let der = crl::build(&self.key, self.root(), &entries, number, now, CRL_DAYS)?;
        all.next_crl_number = number
            .checked_add(1)
            .ok_or_else(|| AuthorityError::Corrupt("CRL number exhausted".into()))?;
        all.save(&self.dir)?;
        Ok((pem::encode("X509 CRL", &der), number, entries.len()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::state::Issued;

    #[test]
    fn forced_orders_are_recorded_once_and_listed_in_the_crl() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Authority::init(dir.path(), "Test Root", crate::now()).unwrap();
        a.register_mut().unwrap().issued.push(Issued {
            serial: 0x1f,
            subject_cn: "Alice".into(),
            profile: "User".into(),
            not_after: i64::MAX,
            meter: None,
        });
        assert!(a
            .revoke_forced("MTR-1", "20", "superseded", crate::now())
            .is_err());
        assert!(a
            .revoke_forced("MTR-1", "1f", "bogus", crate::now())
            .is_err());
        let (o, pem) = a
            .revoke_forced("MTR-1", "0x001F", "keyCompromise", crate::now())
            .unwrap();
        assert!(o.forced && o.request_id.is_empty() && o.serial == "1f");
        let (back, _) = payload::open::<RevokeOrder>(
            pem.as_bytes(),
            std::slice::from_ref(a.root()),
            crate::now(),
        )
        .unwrap();
        assert_eq!(back, o);
        assert!(a
            .revoke_forced("MTR-1", "1f", "keyCompromise", crate::now())
            .is_err());
        let (crl_pem, n1, count) = a.crl(crate::now()).unwrap();
        assert_eq!((n1, count), (1, 1));
        let der = meter_pki::pem::decode_any(crl_pem.as_bytes(), "X509 CRL").unwrap();
        assert_eq!(crl::serials(&der).unwrap(), vec!["1f".to_string()]);
        assert_eq!(a.crl(crate::now()).unwrap().1, 2);
    }

    #[test]
    fn a_request_signed_by_the_root_is_not_a_meter_request() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authority::init(dir.path(), "Test Root", crate::now()).unwrap();
        let req = RevokeRequest {
            meter_id: "MTR-1".into(),
            serial: "1f".into(),
            reason: "superseded".into(),
            request_id: "r".into(),
            issued_at: 0,
        };
        let pem = a.sign_payload(&req, crate::now()).unwrap();
        assert!(a.revoke(pem.as_bytes(), crate::now()).is_err());
        assert!(a.revoke(b"garbage", crate::now()).is_err());
    }
}
