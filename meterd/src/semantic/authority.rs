//! Rows that bring authority: the provisioning (the first trust anchor and
//! the meter's certificates), trust-anchor updates (each signed by an
//! anchor in force then), rate tables, the agent-CA and user certificates.

use meter_pki::cert::{self, Certificate};
use meter_pki::payload::{AnchorUpdate, RateTable, ANCHOR_REPLACE};

use super::objects::{self, open, require_detail};
use super::walk::{at, product, Judged, Walk};
use crate::identity::{self, meter_id_from_key, Identity};
use crate::ledger::FilteredRow;
use crate::service::Service;

impl Walk {
    /// A Provision row: the first provisioning, or a trust-anchor update.
    pub(super) fn provision(&mut self, r: &FilteredRow, verify: bool) -> Judged {
        let product = product(r)?;
        let (bundle, signed) = identity::split_row(product).map_err(|e| e.to_string())?;
        let id = Identity::from_bundle(&self.meter_id, bundle).map_err(|e| e.to_string())?;
        match r.note.as_str() {
            super::NOTE_INSTALLED => self.installed(r, id, signed.is_some(), verify),
            super::NOTE_ANCHOR_ADD | super::NOTE_ANCHOR_REPLACE => {
                // The meter loads these anchors whatever the check says;
                // until a verified `reanchor` accepts them, the walk keeps
                // verifying with the anchors it verified itself.
                let loaded = id.anchors.clone();
                let judged = match signed {
                    Some(signed) => self.anchor_update(r, id, signed, verify),
                    None => Err(
                        "a trust-anchor row without the authority's signed update (a row of \
                         a meterd before issue 12, or forged): nothing shows that an anchor \
                         in force signed the new root; a clear order for the tamper lock \
                         accepts it"
                            .into(),
                    ),
                };
                if judged.is_err() {
                    self.unverified_anchors = Some(loaded);
                }
                judged
            }
            other => Err(format!("a provisioning row noted {other:?}")),
        }
    }

    /// The first provisioning. Its root is trusted on first use (only the
    /// authority, which issued the meter certificate, can tell a bundle it
    /// made from another: every report embeds that certificate); what can
    /// be checked here is that it is the first, for this meter's identity
    /// key, and that the certificates chain to the root it brings.
    fn installed(&mut self, r: &FilteredRow, id: Identity, extra: bool, verify: bool) -> Judged {
        if !require_detail(r.key.as_deref(), "provision")?.is_empty() {
            return Err("its key is not the provisioning key".into());
        }
        if self.certs.is_some() {
            return Err("a second provisioning: the meter was already provisioned".into());
        }
        if extra || id.anchors.is_empty() {
            return Err("the provisioning bundle is not certificates and a root".into());
        }
        let key = cert::public_key_sec1(&id.meter_cert).map_err(|e| e.to_string())?;
        if meter_id_from_key(&key) != self.meter_id {
            return Err("the meter certificate is not for this meter's identity key".into());
        }
        for (what, c) in [("meter", &id.meter_cert), ("postmark", &id.postmark_cert)] {
            if cert::subject_cn(c).as_deref() != Some(self.meter_id.as_str()) {
                return Err(format!(
                    "the {what} certificate is not named for this meter"
                ));
            }
            if verify {
                objects::chain(c, &id.anchors, at(r))?;
            }
        }
        self.count(verify);
        self.anchors = id.anchors;
        self.certs = Some((id.meter_cert, id.postmark_cert));
        Ok(())
    }

    /// A trust-anchor update: signed by an anchor in force, for this meter
    /// (or any), a new self-signed CA root named by the row's key, and the
    /// new anchor list is the old one with the new root first (`replace`)
    /// or last (`add`), the meter's certificates unchanged.
    fn anchor_update(
        &mut self,
        r: &FilteredRow,
        id: Identity,
        signed: &[u8],
        verify: bool,
    ) -> Judged {
        let (meter_cert, postmark_cert) = self
            .certs
            .clone()
            .ok_or("a trust-anchor update before the meter was provisioned")?;
        let update = open::<AnchorUpdate>(signed, &self.anchors, at(r), verify)?.body;
        self.count(verify);
        if update
            .meter_id
            .as_ref()
            .is_some_and(|m| *m != self.meter_id)
        {
            return Err("the trust-anchor update is for another meter".into());
        }
        let replace = update.mode == ANCHOR_REPLACE;
        if replace != (r.note == super::NOTE_ANCHOR_REPLACE) {
            return Err(format!(
                "the update's mode {:?} is not the row's {:?}",
                update.mode, r.note
            ));
        }
        let der = update.new_anchor_der().map_err(|e| e.to_string())?;
        let detail = require_detail(r.key.as_deref(), "anchor")?;
        if !detail.eq_ignore_ascii_case(&objects::sha384_hex(&der)) {
            return Err("its key does not name the root the update brings".into());
        }
        let new = cert::parse(&der).map_err(|e| e.to_string())?;
        if !cert::is_ca(&new) || (verify && cert::check_signed_by(&new, &new).is_err()) {
            return Err("the new trust anchor is not a self-signed CA certificate".into());
        }
        if self.anchors.contains(&new) {
            return Err("the new trust anchor was already trusted".into());
        }
        let mut expected: Vec<Certificate> = Vec::with_capacity(self.anchors.len() + 1);
        if replace {
            expected.push(new);
            expected.extend(self.anchors.iter().cloned());
        } else {
            expected.extend(self.anchors.iter().cloned());
            expected.push(new);
        }
        if id.meter_cert != meter_cert || id.postmark_cert != postmark_cert {
            return Err("a trust-anchor update changed the meter's certificates".into());
        }
        if id.anchors != expected {
            return Err(
                "the anchors after the update are not the anchors before it and the new root"
                    .into(),
            );
        }
        self.anchors = expected;
        self.unverified_anchors = None;
        Ok(())
    }

    /// A rate table: signed by an anchor in force, its version the row's
    /// key and note, newer than every table before it.
    pub(super) fn rates(&mut self, r: &FilteredRow, verify: bool) -> Judged {
        let table = open::<RateTable>(product(r)?, &self.anchors, at(r), verify)?.body;
        self.count(verify);
        let version = format!("v{}", table.version);
        if require_detail(r.key.as_deref(), "rates")? != version || r.note != version {
            return Err(format!(
                "the table is version {}, the row says {:?} (key {:?})",
                table.version, r.note, r.key
            ));
        }
        if table.version == 0 || table.version <= self.rates_version {
            return Err(format!(
                "rate table version {} is not newer than version {} installed before it",
                table.version, self.rates_version
            ));
        }
        if let Some(name) = table.rates.keys().find(|n| Service::from_name(n).is_none()) {
            return Err(format!("the rate table prices unknown service {name:?}"));
        }
        self.rates_version = table.version;
        Ok(())
    }

    /// The agent-CA certificate: a CA for this meter, chaining to an anchor
    /// in force, named by the row's key.
    pub(super) fn agent_ca(&mut self, r: &FilteredRow, verify: bool) -> Judged {
        let der = product(r)?;
        let detail = require_detail(r.key.as_deref(), "agent-ca")?;
        if !detail.eq_ignore_ascii_case(&objects::sha384_hex(der)) {
            return Err("its key does not name the certificate it holds".into());
        }
        let c = cert::parse(der).map_err(|e| e.to_string())?;
        meter_pki::agent::check_agent_ca(&c).map_err(|e| e.to_string())?;
        if cert::subject_cn(&c) != Some(meter_pki::agent::agent_ca_cn(&self.meter_id)) {
            return Err("the agent-CA certificate is not named for this meter".into());
        }
        if verify {
            objects::chain(&c, &self.anchors, at(r))?;
        }
        self.count(verify);
        Ok(())
    }

    /// A user certificate installed: not a CA, chaining to an anchor in force.
    pub(super) fn cert_install(&mut self, r: &FilteredRow, verify: bool) -> Judged {
        let c = cert::parse(product(r)?).map_err(|e| e.to_string())?;
        if cert::is_ca(&c) {
            return Err("an installed user certificate is a CA".into());
        }
        if verify {
            objects::chain(&c, &self.anchors, at(r))?;
        }
        self.count(verify);
        Ok(())
    }
}
