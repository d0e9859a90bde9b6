//! Agent certificates (Fig. 3A): the meter of a business certifies its employees.
//!
//! The meter holds an agent-CA key (`agent-ca`) in the TPM and a certificate for it from the
//! authority (CA, pathLen 0). Issuing for an employee generates the employee's key pair in
//! software, certifies it with the agent key, and hands the private key out only inside a
//! CMS EnvelopedData for the receiver's P-384 key; the meter keeps no copy (the key and its
//! PKCS#8 encoding are zeroized when dropped). The sale is charged as `agent-certificate`
//! through [`sale::sell`], so funds are reserved before any work and a retry with the same
//! request id returns the stored product (certificate, envelope, agent-CA certificate: the
//! envelope is safe to keep, only the receiver can open it).
//!
//! The agent-CA certificate is installed by an Event row (note `agent-ca`, product its DER)
//! so it is covered by the ledger chain; the last such row wins at start.

use der::{Decode, Encode, Reader, SliceReader};
use meter_pki::agent::{self, AgentSubject};
use meter_pki::cert::{self, Certificate};
use meter_pki::{csr, envelope, oid};
use p384::pkcs8::EncodePrivateKey;
use rand_core::{OsRng, RngCore};
use sha2::{Digest as _, Sha384};

use std::sync::Arc;

use crate::clock;
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::ledger::{EntryKind, Key, Ledger};
use crate::meter::Meter;
use crate::sale::{self, Guard, Made, Sale, Spec};
use crate::service::Service;

/// Name of the agent-CA key in the housing.
pub const AGENT_CA_KEY: &str = "agent-ca";
/// Note of the ledger rows that install an agent-CA certificate.
pub const AGENT_CA_NOTE: &str = crate::semantic::NOTE_AGENT_CA;
/// Validity asked for an employee certificate (clipped to the agent CA's).
pub const EMPLOYEE_DAYS: i64 = 365;

/// What an agent-certificate sale delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentProduct {
    /// The employee's certificate (DER).
    pub certificate: Vec<u8>,
    /// CMS EnvelopedData (DER) holding the employee's PKCS#8 private key, for the receiver.
    pub envelope: Vec<u8>,
    /// The agent-CA certificate (DER) that issued it, for the chain.
    pub agent_ca: Vec<u8>,
}

impl AgentProduct {
    /// Ledger form: the three DER objects one after the other.
    fn to_bytes(&self) -> Vec<u8> {
        [self.certificate.as_slice(), &self.envelope, &self.agent_ca].concat()
    }

    /// Parses [`AgentProduct::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<AgentProduct> {
        let bad = |e: der::Error| ServiceError::Storage(format!("agent product: {e}"));
        let mut r = SliceReader::new(bytes).map_err(bad)?;
        let mut parts = Vec::with_capacity(3);
        while !r.is_finished() {
            let any = der::Any::decode(&mut r).map_err(bad)?;
            parts.push(any.to_der().map_err(bad)?);
        }
        match <[Vec<u8>; 3]>::try_from(parts) {
            Ok([certificate, envelope, agent_ca]) => Ok(AgentProduct {
                certificate,
                envelope,
                agent_ca,
            }),
            Err(_) => Err(ServiceError::Storage(
                "agent product does not hold three objects".into(),
            )),
        }
    }
}

/// Keys of the `IssueAgentCertificate` subject dictionary.
pub const SUBJECT_KEYS: [&str; 4] = ["cn", "o", "ou", "email"];

/// Builds the subject from the `IssueAgentCertificate` dictionary: `cn` (required), `o`,
/// `ou`, `email`, all strings; any other key is refused (a typo must not drop a field).
pub fn subject_from_map(map: &std::collections::HashMap<String, String>) -> Result<AgentSubject> {
    if let Some(k) = map.keys().find(|k| !SUBJECT_KEYS.contains(&k.as_str())) {
        return Err(ServiceError::InvalidInput(format!(
            "unknown subject key {k:?}; use cn, o, ou, email"
        )));
    }
    let cn = map
        .get("cn")
        .ok_or_else(|| ServiceError::InvalidInput("the subject needs a cn".into()))?;
    let get = |k: &str| map.get(k).map(String::as_str);
    Ok(AgentSubject::new(cn, get("o"), get("ou"), get("email"))?)
}

/// The agent-CA certificate installed (Fig. 3A), owned by this feature.
#[derive(Debug, Default)]
pub struct AgentBook {
    ca: std::sync::RwLock<Option<Arc<Certificate>>>,
}

impl AgentBook {
    /// The agent-CA certificate in force, if any.
    pub fn ca(&self) -> Option<Arc<Certificate>> {
        self.ca.read().ok().and_then(|g| g.clone())
    }

    fn set(&self, c: Certificate) -> Result<()> {
        *self
            .ca
            .write()
            .map_err(|_| ServiceError::Internal("agent state lock poisoned".into()))? =
            Some(Arc::new(c));
        Ok(())
    }

    /// Loads the last installed agent-CA certificate from the ledger (at start).
    pub async fn load(&self, ledger: &Ledger) -> Result<()> {
        let rows = ledger
            .products_noted(EntryKind::Event, AGENT_CA_NOTE)
            .await?;
        if let Some((_, _, der)) = rows.last() {
            let c = Certificate::from_der(der)
                .map_err(|e| ServiceError::Storage(format!("agent-CA row: {e}")))?;
            self.set(c)?;
        }
        Ok(())
    }
}

/// `RequestAgentCa`: creates the agent key if needed and returns its PKCS#10 (CN
/// `<meter id> Agent CA`) inside a CMS SignedData by the identity key (eContentType
/// `CT_CERT_REQUEST`), for `meter-authority certify-agent-ca`. Records nothing.
pub async fn request_ca(meter: &Meter) -> Result<Vec<u8>> {
    let (identity, ledger) = meter.provisioned()?;
    if let Some(refusal) = meter.refusal(&ledger, clock::now()) {
        return Err(refusal);
    }
    {
        let _guard = meter.provisioning().lock().await;
        if !meter.housing().call(|h| h.has_key(AGENT_CA_KEY)).await? {
            meter.housing().call(|h| h.create_key(AGENT_CA_KEY)).await?;
            tracing::info!(key = AGENT_CA_KEY, "key created in the TPM");
        }
    }
    let public = meter.housing().call(|h| h.public_key(AGENT_CA_KEY)).await?;
    let prepared = csr::prepare(&agent::agent_ca_cn(&identity.meter_id), &public)?;
    let raw = meter
        .housing()
        .sign_digest(AGENT_CA_KEY, prepared.digest())
        .await?;
    let request = prepared.finish(&raw)?;
    meter
        .sign_as_meter(&identity, oid::CT_CERT_REQUEST, &request, clock::now())
        .await
}

/// `InstallAgentCa`: checks the authority's agent-CA certificate (chains to a trust anchor,
/// CA with pathLen 0, for the agent key this meter holds, named for this meter) and records
/// it (Event row, key `m/agent-ca/<sha384>`); returns its serial (hex).
pub async fn install_ca(meter: &Meter, book: &AgentBook, der_or_pem: &[u8]) -> Result<String> {
    let identity = meter.require_identity()?;
    let c = cert::parse(der_or_pem)?;
    let now = clock::now();
    agent::check_agent_ca(&c)?;
    cert::verify_chain(&c, &[], &identity.anchors, now)?;
    if !meter.housing().call(|h| h.has_key(AGENT_CA_KEY)).await? {
        return Err(ServiceError::InvalidInput(
            "this meter has no agent key yet: run meterctl agent-ca request first".into(),
        ));
    }
    let public = meter.housing().call(|h| h.public_key(AGENT_CA_KEY)).await?;
    if cert::public_key_sec1(&c)? != public {
        return Err(ServiceError::InvalidInput(
            "the certificate is for a key this meter does not hold as its agent key".into(),
        ));
    }
    let cn = agent::agent_ca_cn(&identity.meter_id);
    if cert::subject_cn(&c).as_deref() != Some(cn.as_str()) {
        return Err(ServiceError::InvalidInput(format!(
            "the agent-CA certificate must be named {cn:?}"
        )));
    }
    let der = cert::to_der(&c)?;
    let key = Key::meter("agent-ca", hex::encode(Sha384::digest(&der)));
    let spec = Spec::record(
        EntryKind::Event,
        key,
        input_digest("agent-ca", &[&der]),
        AGENT_CA_NOTE,
    )
    .guarded(Guard::Selling);
    sale::record_once(meter, spec, der, || {
        ServiceError::Replay("this agent-CA certificate is already installed".into())
    })
    .await?;
    let serial = cert::serial_hex(&c);
    tracing::info!(%serial, not_after = cert::not_after(&c), "agent-CA certificate installed");
    book.set(c)?;
    Ok(serial)
}

/// `IssueAgentCertificate`: certifies a fresh employee key and delivers its private key
/// encrypted to `receiver` (P-384 certificate, SPKI or SEC1 key, DER or PEM).
pub async fn issue(
    meter: &Meter,
    book: &AgentBook,
    subject: &AgentSubject,
    receiver: &[u8],
    key: Key,
) -> Result<AgentProduct> {
    // Cheap checks first, so a refused request never reaches the ledger or the TPM.
    let parsed = envelope::parse_receiver(receiver)?;
    let agent_ca = book.ca().ok_or_else(|| {
        ServiceError::NotProvisioned(
            "no agent-CA certificate is installed: run meterctl agent-ca request, have the authority certify it (meter-authority certify-agent-ca), then meterctl agent-ca install".into(),
        )
    })?;
    let spec = Spec::sale(
        Service::AgentCertificate,
        Some(key),
        input_digest(
            Service::AgentCertificate.name(),
            &[&subject.canonical(), receiver],
        ),
    );
    let sold = sale::sell(meter, spec, async |sale: &Sale| {
        Ok(Made::Product(
            make(meter, sale, subject, parsed, agent_ca).await?,
        ))
    })
    .await?;
    AgentProduct::from_bytes(&sold.product)
}

async fn make(
    meter: &Meter,
    sale: &Sale,
    subject: &AgentSubject,
    receiver: envelope::Receiver,
    agent_ca: Arc<Certificate>,
) -> Result<Vec<u8>> {
    // The secret key zeroizes itself on drop, and so does its PKCS#8 document.
    let secret = p384::SecretKey::random(&mut OsRng);
    let public = secret.public_key().to_sec1_bytes().to_vec();
    let pkcs8 = secret
        .to_pkcs8_der()
        .map_err(|e| ServiceError::Internal(format!("key encoding: {e}")))?;
    drop(secret);
    let envelope = envelope::seal(pkcs8.as_bytes(), &receiver, &mut OsRng)?;
    drop(pkcs8);

    let mut serial = [0u8; 16];
    OsRng.fill_bytes(&mut serial);
    serial[0] = (serial[0] & 0x7f).max(1);
    let now = sale.now();
    let prepared = agent::prepare_employee(
        subject,
        &public,
        &agent_ca,
        &serial,
        now - 60,
        now + EMPLOYEE_DAYS * 86_400,
    )?;
    let raw = meter
        .housing()
        .sign_digest(AGENT_CA_KEY, prepared.digest())
        .await?;
    let certificate = prepared.finish(&raw)?;
    tracing::info!(
        subject = subject.cn(),
        serial = %hex::encode(serial),
        "agent certificate issued"
    );
    Ok(AgentProduct {
        certificate,
        envelope,
        agent_ca: cert::to_der(&agent_ca)?,
    }
    .to_bytes())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn product_roundtrip_and_refusals() {
        let p = AgentProduct {
            certificate: vec![0x30, 1, 1],
            envelope: vec![0x30, 2, 2, 2],
            agent_ca: vec![0x30, 0],
        };
        assert_eq!(AgentProduct::from_bytes(&p.to_bytes()).unwrap(), p);
        assert!(AgentProduct::from_bytes(&[0x30, 0, 0x30, 0]).is_err());
        assert!(AgentProduct::from_bytes(&[0x30, 5, 0]).is_err());
    }

    #[test]
    fn subject_map_rules() {
        let m = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::HashMap<_, _>>()
        };
        assert!(subject_from_map(&m(&[("cn", "A"), ("o", "B"), ("email", "a@b.example")])).is_ok());
        assert!(subject_from_map(&m(&[("o", "B")])).is_err());
        assert!(subject_from_map(&m(&[("cn", "A"), ("c", "US")])).is_err());
        assert!(subject_from_map(&m(&[("cn", "A\u{0}")])).is_err());
    }

    proptest::proptest! {
        #[test]
        fn product_parser_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = AgentProduct::from_bytes(&bytes);
        }
    }
}
