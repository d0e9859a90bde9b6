//! The D-Bus door: `org.meterd.Meter1` on `/org/meterd/Meter1`.
//!
//! Each member is a dozen lines: take a slot (requests in flight are
//! capped), authorize the caller, call one service, map the error. Nothing
//! here knows the TPM or SQLite; nothing in the services knows zbus.

mod auth;
mod callers;
mod certs_dict;
mod credit;
mod errors;
mod fd_arg;
mod signals;
mod status;

use std::collections::HashMap;
use std::sync::Arc;

use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::OwnedValue;
use zbus::{interface, Connection};

use meter_proto::MeterError;

use crate::meter::Meter;
use crate::{
    account, agent, anchor, audit, certs, credit as credit_service, inspection, lock, postage,
    postmark, provision, rates, recharge, report, revoke, sign, validate,
};

pub use auth::{Authorizer, Role};
pub use callers::{CallGuard, Callers, Lane};
pub use fd_arg::MessageFd;
pub use signals::watch_and_emit;

/// Largest signed object (voucher, table, order, certificate) accepted as bytes.
const MAX_OBJECT: usize = meter_pki::MAX_OBJECT;

/// The served object.
pub struct MeterIface {
    meter: Arc<Meter>,
    auth: Authorizer,
    callers: Callers,
}

impl MeterIface {
    /// Interface over `meter`, with its configured groups; calls are
    /// admitted by `callers`.
    pub fn new(meter: Arc<Meter>, callers: Callers) -> MeterIface {
        let config = meter.config();
        let auth = Authorizer::new(&config.user_group, &config.admin_group);
        MeterIface {
            meter,
            auth,
            callers,
        }
    }

    async fn admit(
        &self,
        conn: &Connection,
        header: &Header<'_>,
        member: &str,
        needed: Role,
        lane: Lane,
    ) -> Result<CallGuard, MeterError> {
        let (role, uid) = self.auth.identify(conn, header).await;
        if role < needed {
            tracing::warn!(member, ?role, "access denied");
            return Err(MeterError::AccessDenied(format!(
                "{member} needs membership of group {}; ask an administrator",
                if needed == Role::Admin {
                    &self.meter.config().admin_group
                } else {
                    &self.meter.config().user_group
                }
            )));
        }
        // A known role implies a known uid; Nobody was refused above.
        let uid = uid.unwrap_or(u32::MAX);
        let unique = header.sender().map(|s| s.as_str());
        self.callers.enter(unique, uid, lane).await
    }
}

fn bounded(what: &str, bytes: &[u8]) -> Result<(), MeterError> {
    if bytes.len() > MAX_OBJECT {
        return Err(MeterError::InvalidInput(format!(
            "{what} of {} bytes exceeds the {MAX_OBJECT}-byte limit",
            bytes.len()
        )));
    }
    Ok(())
}

#[interface(name = "org.meterd.Meter1")]
impl MeterIface {
    /// Creates the keys (if needed) and returns PKCS#10 requests for them.
    async fn provision(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<HashMap<String, OwnedValue>, MeterError> {
        let _slot = self
            .admit(conn, &header, "Provision", Role::Admin, Lane::Control)
            .await?;
        let r = provision::begin(&self.meter)
            .await
            .map_err(|e| errors::to_dbus("Provision", e))?;
        Ok(status::provision_dict(r))
    }

    /// Installs the authority's certificates and root.
    async fn install_provisioning(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        meter_cert: Vec<u8>,
        postmark_cert: Vec<u8>,
        root_cert: Vec<u8>,
    ) -> Result<(), MeterError> {
        let _slot = self
            .admit(
                conn,
                &header,
                "InstallProvisioning",
                Role::Admin,
                Lane::Control,
            )
            .await?;
        for (what, b) in [
            ("meter certificate", &meter_cert),
            ("postmark certificate", &postmark_cert),
            ("root certificate", &root_cert),
        ] {
            bounded(what, b)?;
        }
        provision::install(&self.meter, &meter_cert, &postmark_cert, &root_cert)
            .await
            .map_err(|e| errors::to_dbus("InstallProvisioning", e))
    }

    /// Installs a signed rate table.
    async fn install_rates(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        table: Vec<u8>,
    ) -> Result<(), MeterError> {
        let _slot = self
            .admit(conn, &header, "InstallRates", Role::Admin, Lane::Control)
            .await?;
        bounded("rate table", &table)?;
        rates::install(&self.meter, &table)
            .await
            .map(|_| ())
            .map_err(|e| errors::to_dbus("InstallRates", e))
    }

    /// Credits a voucher; returns the descending register.
    async fn recharge(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        voucher: Vec<u8>,
    ) -> Result<u64, MeterError> {
        let _slot = self
            .admit(conn, &header, "Recharge", Role::Admin, Lane::Control)
            .await?;
        bounded("voucher", &voucher)?;
        recharge::recharge(&self.meter, &voucher)
            .await
            .map(|a| a.0)
            .map_err(|e| errors::to_dbus("Recharge", e))
    }

    /// RFC 3161 token over SHA-384 of the message behind the descriptor.
    async fn postmark(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        message: MessageFd,
        request_id: String,
    ) -> Result<Vec<u8>, MeterError> {
        let call = self
            .admit(conn, &header, "Postmark", Role::User, Lane::Sale)
            .await?;
        let fd = message.into_fd()?;
        postmark::postmark_file(&self.meter, fd, &request_id, call.cancel())
            .await
            .map_err(|e| errors::to_dbus("Postmark", e))
    }

    /// RFC 3161 token over a caller-computed SHA-384.
    async fn postmark_digest(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        sha384: Vec<u8>,
        request_id: String,
    ) -> Result<Vec<u8>, MeterError> {
        let _slot = self
            .admit(conn, &header, "PostmarkDigest", Role::User, Lane::Sale)
            .await?;
        postmark::postmark_digest(&self.meter, &sha384, &request_id)
            .await
            .map_err(|e| errors::to_dbus("PostmarkDigest", e))
    }

    /// Postage indicium for one mail piece (claims 17–31): priced by class
    /// and weight band, debited, signed with the registers after the debit.
    // The D-Bus signature has five arguments; zbus adds the connection and header.
    #[allow(clippy::too_many_arguments)]
    async fn postage(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        class: String,
        grams: u32,
        origin: String,
        destination: String,
        request_id: String,
    ) -> Result<Vec<u8>, MeterError> {
        let _slot = self
            .admit(conn, &header, "Postage", Role::User, Lane::Sale)
            .await?;
        let req = postage::PostageRequest {
            class,
            grams,
            origin,
            destination,
        };
        postage::postage(&self.meter, req, &request_id)
            .await
            .map_err(|e| errors::to_dbus("Postage", e))
    }

    /// Charged verification of a token against the message.
    async fn validate(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        message: MessageFd,
        token: Vec<u8>,
    ) -> Result<HashMap<String, OwnedValue>, MeterError> {
        let call = self
            .admit(conn, &header, "Validate", Role::User, Lane::Sale)
            .await?;
        let fd = message.into_fd()?;
        let report = validate::validate(&self.meter, fd, token, call.cancel())
            .await
            .map_err(|e| errors::to_dbus("Validate", e))?;
        Ok(status::report_dict(report))
    }

    /// Unsigned snapshot of registers and state.
    async fn status(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<HashMap<String, OwnedValue>, MeterError> {
        let _slot = self
            .admit(conn, &header, "Status", Role::User, Lane::Control)
            .await?;
        let mut d = status::status_dict(&self.meter);
        let schedule = match self.meter.identity() {
            Some(_) => inspection::schedule(&self.meter).await.ok(),
            None => None,
        };
        status::put_inspection(&mut d, schedule.as_ref());
        status::put_account(&mut d, &self.meter);
        Ok(d)
    }

    /// Signed status report (CMS, DER); answered even when locked (then free).
    async fn report(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        request_id: String,
    ) -> Result<Vec<u8>, MeterError> {
        let _slot = self
            .admit(conn, &header, "Report", Role::User, Lane::Control)
            .await?;
        report::report(&self.meter, &request_id)
            .await
            .map_err(|e| errors::to_dbus("Report", e))
    }

    /// Applies an authority acknowledgement of a report; returns the next deadline (Unix s).
    async fn acknowledge_report(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        ack: Vec<u8>,
    ) -> Result<i64, MeterError> {
        let _slot = self
            .admit(
                conn,
                &header,
                "AcknowledgeReport",
                Role::Admin,
                Lane::Control,
            )
            .await?;
        bounded("acknowledgement", &ack)?;
        report::acknowledge(&self.meter, &ack)
            .await
            .map(|a| a.due)
            .map_err(|e| errors::to_dbus("AcknowledgeReport", e))
    }

    /// Applies an authority lock order (reason `forced`).
    async fn apply_lock_order(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        order: Vec<u8>,
    ) -> Result<(), MeterError> {
        let _slot = self
            .admit(conn, &header, "ApplyLockOrder", Role::Admin, Lane::Control)
            .await?;
        bounded("lock order", &order)?;
        lock::apply_order(&self.meter, &order)
            .await
            .map_err(|e| errors::to_dbus("ApplyLockOrder", e))
    }

    /// Applies an authority current-account order (credit limit, billing
    /// period); returns the end of the period now in force (Unix s).
    async fn set_account_mode(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        order: Vec<u8>,
    ) -> Result<i64, MeterError> {
        let _slot = self
            .admit(conn, &header, "SetAccountMode", Role::Admin, Lane::Control)
            .await?;
        bounded("account order", &order)?;
        account::apply_order(&self.meter, &order)
            .await
            .map(|a| a.period_end)
            .map_err(|e| errors::to_dbus("SetAccountMode", e))
    }

    /// Full re-check of the ledger and its TPM binding.
    async fn audit(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<HashMap<String, OwnedValue>, MeterError> {
        let _slot = self
            .admit(conn, &header, "Audit", Role::User, Lane::Control)
            .await?;
        let report = audit::audit(&self.meter)
            .await
            .map_err(|e| errors::to_dbus("Audit", e))?;
        Ok(status::audit_dict(report))
    }

    /// Applies an authority clear-lock order.
    async fn clear_lock(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        order: Vec<u8>,
    ) -> Result<(), MeterError> {
        let _slot = self
            .admit(conn, &header, "ClearLock", Role::Admin, Lane::Control)
            .await?;
        bounded("order", &order)?;
        lock::clear(&self.meter, &order)
            .await
            .map_err(|e| errors::to_dbus("ClearLock", e))
    }

    /// Applies an authority-signed trust-anchor update; returns the number of anchors.
    async fn update_trust_anchor(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        message: Vec<u8>,
    ) -> Result<u32, MeterError> {
        let _slot = self
            .admit(
                conn,
                &header,
                "UpdateTrustAnchor",
                Role::Admin,
                Lane::Control,
            )
            .await?;
        bounded("trust-anchor update", &message)?;
        anchor::update(&self.meter, &message)
            .await
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            .map_err(|e| errors::to_dbus("UpdateTrustAnchor", e))
    }

    /// Creates the agent-CA key if needed; returns its certification request (CMS
    /// SignedData by the identity key around the PKCS#10) for the authority.
    async fn request_agent_ca(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<u8>, MeterError> {
        let _slot = self
            .admit(conn, &header, "RequestAgentCa", Role::Admin, Lane::Control)
            .await?;
        agent::request_ca(&self.meter)
            .await
            .map_err(|e| errors::to_dbus("RequestAgentCa", e))
    }

    /// Installs the authority's agent-CA certificate; returns its serial (hex).
    async fn install_agent_ca(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        certificate: Vec<u8>,
    ) -> Result<String, MeterError> {
        let _slot = self
            .admit(conn, &header, "InstallAgentCa", Role::Admin, Lane::Control)
            .await?;
        bounded("agent-CA certificate", &certificate)?;
        agent::install_ca(&self.meter, &certificate)
            .await
            .map_err(|e| errors::to_dbus("InstallAgentCa", e))
    }

    /// Issues an employee certificate under the agent CA (charged); returns the
    /// certificate, the private key enveloped to the receiver, and the agent-CA certificate.
    async fn issue_agent_certificate(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        subject: HashMap<String, OwnedValue>,
        receiver: Vec<u8>,
        request_id: String,
    ) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>), MeterError> {
        let _slot = self
            .admit(
                conn,
                &header,
                "IssueAgentCertificate",
                Role::Admin,
                Lane::Control,
            )
            .await?;
        bounded("receiver key", &receiver)?;
        let mut fields = HashMap::with_capacity(subject.len());
        for (k, v) in subject {
            let v = String::try_from(v).map_err(|_| {
                MeterError::InvalidInput(format!("subject field {k:?} must be a string"))
            })?;
            fields.insert(k, v);
        }
        let subject = agent::subject_from_map(&fields)
            .map_err(|e| errors::to_dbus("IssueAgentCertificate", e))?;
        let p = agent::issue(&self.meter, &subject, &receiver, &request_id)
            .await
            .map_err(|e| errors::to_dbus("IssueAgentCertificate", e))?;
        Ok((p.certificate, p.envelope, p.agent_ca))
    }

    /// A signed, postmarked credit request for `creditor` (Fig. 8, 802).
    async fn request_credit(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        creditor: String,
        amount: u64,
        request_id: String,
    ) -> Result<Vec<u8>, MeterError> {
        let _slot = self
            .admit(conn, &header, "RequestCredit", Role::Admin, Lane::Control)
            .await?;
        credit_service::request::request_credit(&self.meter, &creditor, amount, &request_id)
            .await
            .map_err(|e| errors::to_dbus("RequestCredit", e))
    }

    /// Opens a line of credit; returns the first payment certificate.
    async fn open_credit_line(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        certificate: Vec<u8>,
        request_id: String,
    ) -> Result<Vec<u8>, MeterError> {
        let _slot = self
            .admit(conn, &header, "OpenCreditLine", Role::Admin, Lane::Control)
            .await?;
        bounded("line-of-credit certificate", &certificate)?;
        credit_service::open::open_credit_line(&self.meter, &certificate, &request_id)
            .await
            .map_err(|e| errors::to_dbus("OpenCreditLine", e))
    }

    /// Pays from a line of credit; returns the payment certificate.
    async fn pay(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        credit_serial: String,
        amount: u64,
        payee: String,
        request_id: String,
    ) -> Result<Vec<u8>, MeterError> {
        let _slot = self
            .admit(conn, &header, "Pay", Role::User, Lane::Sale)
            .await?;
        credit_service::pay::pay(&self.meter, &credit_serial, amount, &payee, &request_id)
            .await
            .map_err(|e| errors::to_dbus("Pay", e))
    }

    /// The lines of credit and their registers.
    async fn list_credit_lines(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<HashMap<String, OwnedValue>>, MeterError> {
        let _slot = self
            .admit(conn, &header, "ListCreditLines", Role::User, Lane::Control)
            .await?;
        let lines = credit_service::list(&self.meter)
            .await
            .map_err(|e| errors::to_dbus("ListCreditLines", e))?;
        Ok(lines.into_iter().map(credit::line_dict).collect())
    }

    /// Signs a request to the authority to revoke a user certificate (CMS, DER).
    async fn revoke(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        serial: String,
        reason: String,
        request_id: String,
    ) -> Result<Vec<u8>, MeterError> {
        let _slot = self
            .admit(conn, &header, "Revoke", Role::Admin, Lane::Control)
            .await?;
        revoke::request(&self.meter, &serial, &reason, &request_id)
            .await
            .map_err(|e| errors::to_dbus("Revoke", e))
    }

    /// Applies an authority revoke order; returns the signed confirmation
    /// of revocation and payment, or of payment due (CMS, DER).
    async fn apply_revoke_order(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        order: Vec<u8>,
    ) -> Result<Vec<u8>, MeterError> {
        let _slot = self
            .admit(
                conn,
                &header,
                "ApplyRevokeOrder",
                Role::Admin,
                Lane::Control,
            )
            .await?;
        bounded("revoke order", &order)?;
        revoke::apply(&self.meter, &order)
            .await
            .map_err(|e| errors::to_dbus("ApplyRevokeOrder", e))
    }

    /// Makes a user key in the TPM and returns its certificate request (CMS).
    async fn request_certificate(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        subject: HashMap<String, OwnedValue>,
        request_id: String,
    ) -> Result<Vec<u8>, MeterError> {
        let _slot = self
            .admit(
                conn,
                &header,
                "RequestCertificate",
                Role::Admin,
                Lane::Control,
            )
            .await?;
        let (cn, code) = certs_dict::subject(&subject)?;
        certs::request(&self.meter, &cn, &code, &request_id)
            .await
            .map_err(|e| errors::to_dbus("RequestCertificate", e))
    }

    /// Installs a user certificate for a pending key; returns its serial.
    async fn install_certificate(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        cert: Vec<u8>,
    ) -> Result<String, MeterError> {
        let _slot = self
            .admit(
                conn,
                &header,
                "InstallCertificate",
                Role::Admin,
                Lane::Control,
            )
            .await?;
        bounded("certificate", &cert)?;
        certs::install(&self.meter, &cert)
            .await
            .map_err(|e| errors::to_dbus("InstallCertificate", e))
    }

    /// User certificates and their states.
    async fn list_certificates(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<HashMap<String, OwnedValue>>, MeterError> {
        let _slot = self
            .admit(conn, &header, "ListCertificates", Role::User, Lane::Control)
            .await?;
        Ok(certs_dict::list(&self.meter))
    }

    /// Detached CMS signature over the message with a user certificate.
    async fn sign(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
        certificate_serial: String,
        message: MessageFd,
        request_id: String,
    ) -> Result<Vec<u8>, MeterError> {
        let call = self
            .admit(conn, &header, "Sign", Role::User, Lane::Sale)
            .await?;
        let fd = message.into_fd()?;
        sign::sign_file(
            &self.meter,
            &certificate_serial,
            fd,
            &request_id,
            call.cancel(),
        )
        .await
        .map_err(|e| errors::to_dbus("Sign", e))
    }

    /// Meter id, empty before provisioning.
    #[zbus(property)]
    async fn meter_id(&self) -> String {
        self.meter.meter_id().unwrap_or_default()
    }

    /// `unprovisioned`, `ready` or `locked`.
    #[zbus(property)]
    async fn state(&self) -> String {
        self.meter.state_name().to_owned()
    }

    /// Why the meter is locked, empty otherwise.
    #[zbus(property)]
    async fn lock_reason(&self) -> String {
        self.meter
            .ledger_state()
            .and_then(|s| s.lock)
            .map(|l| l.reason)
            .unwrap_or_default()
    }

    /// Funds available.
    #[zbus(property)]
    async fn descending(&self) -> u64 {
        self.registers().descending.0
    }

    /// Funds used.
    #[zbus(property)]
    async fn ascending(&self) -> u64 {
        self.registers().ascending.0
    }

    /// All funds ever credited.
    #[zbus(property)]
    async fn control_total(&self) -> u64 {
        self.registers().control_total.0
    }

    /// Pieces sold.
    #[zbus(property)]
    async fn piece_count(&self) -> u64 {
        self.registers().pieces
    }

    /// Digits of the minor unit.
    #[zbus(property)]
    async fn currency_digits(&self) -> u8 {
        self.meter.rates().currency(crate::clock::now()).1
    }

    /// Rate table version in force.
    #[zbus(property)]
    async fn rates_version(&self) -> u32 {
        self.meter
            .rates()
            .current(crate::clock::now())
            .map(|t| t.version)
            .unwrap_or(0)
    }

    /// The descending register fell below the threshold.
    #[zbus(signal)]
    pub async fn low_funds(emitter: &SignalEmitter<'_>, descending: u64) -> zbus::Result<()>;

    /// The meter locked.
    #[zbus(signal)]
    pub async fn locked(emitter: &SignalEmitter<'_>, reason: &str) -> zbus::Result<()>;

    /// A lock was cleared.
    #[zbus(signal)]
    pub async fn unlocked(emitter: &SignalEmitter<'_>) -> zbus::Result<()>;
}

impl MeterIface {
    fn registers(&self) -> crate::ledger::Registers {
        self.meter
            .ledger_state()
            .map(|s| s.registers)
            .unwrap_or_default()
    }
}

/// Serves the interface on `conn` (bus or peer-to-peer) at the object path.
pub async fn serve(conn: &Connection, meter: Arc<Meter>) -> zbus::Result<()> {
    let config = meter.config();
    let callers = Callers::new(config.max_in_flight, config.max_in_flight_per_caller);
    // Before the first call: a client that leaves must cancel its reads.
    if let Err(e) = callers.watch(conn).await {
        tracing::info!(error = %e, "no bus to watch for departing callers (peer-to-peer?); reads end at their deadline");
    }
    conn.object_server()
        .at(meter_proto::OBJECT_PATH, MeterIface::new(meter, callers))
        .await?;
    Ok(())
}
