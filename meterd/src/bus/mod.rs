//! The D-Bus door: `org.meterd.Meter1` on `/org/meterd/Meter1`.
//!
//! Each member is a few lines: pass the [`door::Door`] (caller, rights,
//! lane), make the caller's request key, call one service, and answer
//! through the call (which maps the error and logs a refusal). Nothing
//! here knows the TPM or SQLite; nothing in the services knows zbus.
//!
//! zbus takes one interface as one `#[interface]` impl block (methods,
//! properties and signals together), so the members' signatures and docs
//! (the D-Bus contract) all stay here; what a member does beyond its few
//! lines lives in the modules below (`door`, `status`, `certs_dict`,
//! `props`; the credit members' calls in `credit`, the user-key members'
//! in `user_keys`, the property readings in `served`).

mod auth;
mod callers;
mod certs_dict;
mod credit;
mod door;
mod errors;
mod fd_arg;
mod props;
mod served;
mod signals;
mod status;
mod user_keys;

use std::collections::HashMap;

use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::OwnedValue;
use zbus::{fdo, interface};

use meter_proto::MeterError;

use crate::{
    account, agent, anchor, audit, certs, credit as credit_service, lock, postage, postmark,
    provision, rates, recharge, report, revoke, segment, timestamp, validate,
};
use door::bounded;
use fd_arg::MessageFd;
use meter_proto::Blob;

pub use auth::{Authorizer, Caller};
use served::{currency_digits, lock_reason, rates_version, registers};
pub use served::{serve, MeterIface};
pub use signals::watch_and_emit;

#[interface(name = "org.meterd.Meter1")]
impl MeterIface {
    /// Creates the keys (if needed) and returns PKCS#10 requests for them.
    async fn provision(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<HashMap<String, OwnedValue>, MeterError> {
        let call = self.admin(&header, "Provision").await?;
        let r = call.done(provision::begin(&self.app.meter).await)?;
        Ok(status::provision_dict(r))
    }

    /// Installs the authority's certificates and root.
    async fn install_provisioning(
        &self,
        #[zbus(header)] header: Header<'_>,
        meter_cert: Vec<u8>,
        postmark_cert: Vec<u8>,
        root_cert: Vec<u8>,
    ) -> Result<(), MeterError> {
        let call = self.admin(&header, "InstallProvisioning").await?;
        for (what, b) in [
            ("meter certificate", &meter_cert),
            ("postmark certificate", &postmark_cert),
            ("root certificate", &root_cert),
        ] {
            bounded(what, b)?;
        }
        call.done(
            self.app
                .install_provisioning(&meter_cert, &postmark_cert, &root_cert)
                .await,
        )
    }

    /// Activates the authority's credential in the TPM and installs the certificates
    /// sealed in it, with the root.
    async fn install_credential(
        &self,
        #[zbus(header)] header: Header<'_>,
        credential: Vec<u8>,
        root_cert: Vec<u8>,
    ) -> Result<(), MeterError> {
        let call = self.admin(&header, "InstallCredential").await?;
        bounded("credential", &credential)?;
        bounded("root certificate", &root_cert)?;
        call.done(self.app.install_credential(&credential, &root_cert).await)
    }

    /// Installs a signed rate table.
    async fn install_rates(
        &self,
        #[zbus(header)] header: Header<'_>,
        table: Vec<u8>,
    ) -> Result<(), MeterError> {
        let call = self.admin(&header, "InstallRates").await?;
        bounded("rate table", &table)?;
        call.done(rates::install(&self.app.meter, &table).await)
            .map(|_| ())
    }

    /// Credits a voucher; returns the descending register.
    async fn recharge(
        &self,
        #[zbus(header)] header: Header<'_>,
        voucher: Vec<u8>,
    ) -> Result<u64, MeterError> {
        let call = self.admin(&header, "Recharge").await?;
        bounded("voucher", &voucher)?;
        call.done(recharge::recharge(&self.app.meter, &self.app.dues, &voucher).await)
            .map(|a| a.0)
    }

    /// RFC 3161 token over SHA-384 of the message behind the descriptor.
    async fn postmark(
        &self,
        #[zbus(header)] header: Header<'_>,
        message: MessageFd,
        request_id: String,
    ) -> Result<Blob, MeterError> {
        let call = self.seller(&header, "Postmark").await?;
        let key = call.key(&request_id)?;
        let imprint = call.hash(message).await?;
        call.blob(postmark::postmark(&self.app.meter, imprint, key).await)
    }

    /// RFC 3161 token over a caller-computed SHA-384.
    async fn postmark_digest(
        &self,
        #[zbus(header)] header: Header<'_>,
        sha384: Vec<u8>,
        request_id: String,
    ) -> Result<Blob, MeterError> {
        let call = self.seller(&header, "PostmarkDigest").await?;
        let key = call.key(&request_id)?;
        let imprint = call.done(postmark::imprint_of(&sha384))?;
        call.blob(postmark::postmark(&self.app.meter, imprint, key).await)
    }

    /// RFC 3161: a DER TimeStampReq in, a DER TimeStampResp out, charged
    /// as a postmark; refusals are rejections inside the response.
    async fn time_stamp(
        &self,
        #[zbus(header)] header: Header<'_>,
        request: Vec<u8>,
        request_id: String,
    ) -> Result<Blob, MeterError> {
        let call = self.seller(&header, "TimeStamp").await?;
        let key = call.key(&request_id)?;
        bounded("time-stamp request", &request)?;
        call.blob(timestamp::time_stamp(&self.app.meter, &request, key).await)
    }

    /// Postage indicium for one mail piece (claims 17–31): priced by class
    /// and weight band, debited, signed with the registers after the debit.
    // The D-Bus signature has five arguments; zbus adds the connection and header.
    #[allow(clippy::too_many_arguments)]
    async fn postage(
        &self,
        #[zbus(header)] header: Header<'_>,
        class: String,
        grams: u32,
        origin: String,
        destination: String,
        request_id: String,
    ) -> Result<Blob, MeterError> {
        let call = self.seller(&header, "Postage").await?;
        let key = call.key(&request_id)?;
        let req = postage::PostageRequest {
            class,
            grams,
            origin,
            destination,
        };
        call.blob(postage::postage(&self.app.meter, req, key).await)
    }

    /// Charged verification of a token against the message.
    async fn validate(
        &self,
        #[zbus(header)] header: Header<'_>,
        message: MessageFd,
        token: Vec<u8>,
    ) -> Result<HashMap<String, OwnedValue>, MeterError> {
        let call = self.seller(&header, "Validate").await?;
        bounded("token", &token)?;
        let imprint = call.hash(message).await?;
        let report = call.done(validate::validate(&self.app.meter, imprint, token).await)?;
        Ok(status::report_dict(report))
    }

    /// Unsigned snapshot of registers and state.
    async fn status(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<HashMap<String, OwnedValue>, MeterError> {
        let _call = self.user(&header, "Status").await?;
        Ok(status::full(&self.app.meter).await)
    }

    /// Signed status report (CMS, DER); answered even when locked (then free).
    async fn report(
        &self,
        #[zbus(header)] header: Header<'_>,
        request_id: String,
    ) -> Result<Blob, MeterError> {
        let call = self.user(&header, "Report").await?;
        let key = call.key(&request_id)?;
        call.blob(report::report(&self.app.meter, &self.app.reports, key).await)
    }

    /// Writes the ledger segment of the caller's report (the rows since the
    /// last acknowledged report, for the authority) to `output`; returns
    /// (first row, last row, bytes written). Administrators only.
    async fn report_segment(
        &self,
        #[zbus(header)] header: Header<'_>,
        request_id: String,
        output: MessageFd,
    ) -> Result<(u64, u64, u64), MeterError> {
        let call = self.admin(&header, "ReportSegment").await?;
        let key = call.key(&request_id)?;
        let out = call.outlet(output)?;
        let w = call.done(segment::stream(&self.app.meter, key, out).await)?;
        Ok((w.first_seq, w.last_seq, w.bytes))
    }

    /// The TPM's attestation (JSON) of the caller's report, over its digest; empty when
    /// the housing cannot attest. Administrators only.
    async fn report_attestation(
        &self,
        #[zbus(header)] header: Header<'_>,
        request_id: String,
    ) -> Result<Blob, MeterError> {
        let call = self.admin(&header, "ReportAttestation").await?;
        let key = call.key(&request_id)?;
        call.blob(crate::attest::attest_report(&self.app.meter, key).await)
    }

    /// Applies an authority acknowledgement of a report; returns the next deadline (Unix s).
    async fn acknowledge_report(
        &self,
        #[zbus(header)] header: Header<'_>,
        ack: Vec<u8>,
    ) -> Result<i64, MeterError> {
        let call = self.admin(&header, "AcknowledgeReport").await?;
        bounded("acknowledgement", &ack)?;
        call.done(report::acknowledge(&self.app.meter, &ack).await)
            .map(|a| a.due)
    }

    /// Applies an authority lock order (reason `forced`).
    async fn apply_lock_order(
        &self,
        #[zbus(header)] header: Header<'_>,
        order: Vec<u8>,
    ) -> Result<(), MeterError> {
        let call = self.admin(&header, "ApplyLockOrder").await?;
        bounded("lock order", &order)?;
        call.done(lock::apply_order(&self.app.meter, &order).await)
    }

    /// Applies an authority current-account order (credit limit, billing
    /// period) or funds order (postage funds apart); returns the end of the
    /// period now in force (Unix s; 0: none).
    async fn set_account_mode(
        &self,
        #[zbus(header)] header: Header<'_>,
        order: Vec<u8>,
    ) -> Result<i64, MeterError> {
        let call = self.admin(&header, "SetAccountMode").await?;
        bounded("account order", &order)?;
        call.done(account::apply(&self.app.meter, &order).await)
    }

    /// Full re-check of the ledger and its TPM binding.
    async fn audit(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<HashMap<String, OwnedValue>, MeterError> {
        let call = self.user(&header, "Audit").await?;
        let report = call.done(audit::audit(&self.app.meter).await)?;
        Ok(status::audit_dict(report))
    }

    /// Applies an authority clear-lock order.
    async fn clear_lock(
        &self,
        #[zbus(header)] header: Header<'_>,
        order: Vec<u8>,
    ) -> Result<(), MeterError> {
        let call = self.admin(&header, "ClearLock").await?;
        bounded("order", &order)?;
        call.done(lock::clear(&self.app.meter, &order).await)
    }

    /// Applies an authority-signed trust-anchor update; returns the number of anchors.
    async fn update_trust_anchor(
        &self,
        #[zbus(header)] header: Header<'_>,
        message: Vec<u8>,
    ) -> Result<u32, MeterError> {
        let call = self.admin(&header, "UpdateTrustAnchor").await?;
        bounded("trust-anchor update", &message)?;
        call.done(anchor::update(&self.app.meter, &message).await)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Creates the agent-CA key if needed; returns its certification request (CMS
    /// SignedData by the identity key around the PKCS#10) for the authority.
    async fn request_agent_ca(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Blob, MeterError> {
        let call = self.admin(&header, "RequestAgentCa").await?;
        call.blob(agent::request_ca(&self.app.meter).await)
    }

    /// The postal-key request (CMS SignedData by the identity key naming the TPM storage
    /// parent) for `meter-authority postal-key`. Records nothing.
    async fn postal_key_request(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Blob, MeterError> {
        let call = self.admin(&header, "PostalKeyRequest").await?;
        call.blob(crate::postal_key::request(&self.app.meter).await)
    }

    /// Imports the authority's postal-key delivery into the TPM (once per delivery);
    /// returns the delivery id.
    async fn import_postal_key(
        &self,
        #[zbus(header)] header: Header<'_>,
        delivery: Vec<u8>,
    ) -> Result<String, MeterError> {
        let call = self.admin(&header, "ImportPostalKey").await?;
        bounded("postal key delivery", &delivery)?;
        call.done(crate::postal_key::import(&self.app.meter, &delivery).await)
    }

    /// Installs the authority's agent-CA certificate; returns its serial (hex).
    async fn install_agent_ca(
        &self,
        #[zbus(header)] header: Header<'_>,
        certificate: Vec<u8>,
    ) -> Result<String, MeterError> {
        let call = self.admin(&header, "InstallAgentCa").await?;
        bounded("agent-CA certificate", &certificate)?;
        call.done(agent::install_ca(&self.app.meter, &self.app.agent, &certificate).await)
    }

    /// Issues an employee certificate under the agent CA (charged); returns the
    /// certificate, the private key enveloped to the receiver, and the agent-CA certificate.
    async fn issue_agent_certificate(
        &self,
        #[zbus(header)] header: Header<'_>,
        subject: HashMap<String, OwnedValue>,
        receiver: Vec<u8>,
        request_id: String,
    ) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>), MeterError> {
        let call = self.admin(&header, "IssueAgentCertificate").await?;
        bounded("receiver key", &receiver)?;
        let key = call.key(&request_id)?;
        let subject = call.done(agent::subject_from_map(&certs_dict::strings(subject)?))?;
        let p = call
            .done(agent::issue(&self.app.meter, &self.app.agent, &subject, &receiver, key).await)?;
        Ok((p.certificate, p.envelope, p.agent_ca))
    }

    /// A signed, postmarked credit request for `creditor` (Fig. 8, 802).
    async fn request_credit(
        &self,
        #[zbus(header)] header: Header<'_>,
        creditor: String,
        amount: u64,
        request_id: String,
    ) -> Result<Blob, MeterError> {
        self.request_credit_for(&header, &creditor, amount, &request_id)
            .await
    }

    /// Opens a line of credit; returns the first payment certificate.
    async fn open_credit_line(
        &self,
        #[zbus(header)] header: Header<'_>,
        certificate: Vec<u8>,
        request_id: String,
    ) -> Result<Blob, MeterError> {
        self.open_line(&header, &certificate, &request_id).await
    }

    /// Pays from a line of credit; returns the payment certificate.
    async fn pay(
        &self,
        #[zbus(header)] header: Header<'_>,
        credit_serial: String,
        amount: u64,
        payee: String,
        request_id: String,
    ) -> Result<Blob, MeterError> {
        self.pay_from_line(&header, &credit_serial, amount, &payee, &request_id)
            .await
    }

    /// The lines of credit and their registers.
    async fn list_credit_lines(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<HashMap<String, OwnedValue>>, MeterError> {
        let call = self.user(&header, "ListCreditLines").await?;
        let lines = call.done(credit_service::list(&self.app.meter, &self.app.credit).await)?;
        Ok(lines.into_iter().map(credit::line_dict).collect())
    }

    /// Signs a request to the authority to revoke a user certificate (CMS, DER).
    async fn revoke(
        &self,
        #[zbus(header)] header: Header<'_>,
        serial: String,
        reason: String,
        request_id: String,
    ) -> Result<Blob, MeterError> {
        let call = self.admin(&header, "Revoke").await?;
        let key = call.key(&request_id)?;
        call.blob(revoke::request(&self.app.meter, &self.app.certs, &serial, &reason, key).await)
    }

    /// Applies an authority revoke order; returns the signed confirmation
    /// of revocation and payment, or of payment due (CMS, DER).
    async fn apply_revoke_order(
        &self,
        #[zbus(header)] header: Header<'_>,
        order: Vec<u8>,
    ) -> Result<Blob, MeterError> {
        let call = self.admin(&header, "ApplyRevokeOrder").await?;
        bounded("revoke order", &order)?;
        call.blob(revoke::apply(&self.app.meter, &self.app.certs, &self.app.dues, &order).await)
    }

    /// Makes a user key in the TPM and returns its certificate request (CMS).
    async fn request_certificate(
        &self,
        #[zbus(header)] header: Header<'_>,
        subject: HashMap<String, OwnedValue>,
        request_id: String,
    ) -> Result<Blob, MeterError> {
        let call = self.admin(&header, "RequestCertificate").await?;
        let key = call.key(&request_id)?;
        let (cn, code) = certs_dict::subject(&subject)?;
        let encrypt = certs_dict::wants_encrypt(&subject);
        call.blob(
            certs::request_for(&self.app.meter, &self.app.certs, &cn, &code, encrypt, key).await,
        )
    }

    /// Installs a user certificate for a pending key; returns its serial.
    async fn install_certificate(
        &self,
        #[zbus(header)] header: Header<'_>,
        cert: Vec<u8>,
    ) -> Result<String, MeterError> {
        let call = self.admin(&header, "InstallCertificate").await?;
        bounded("certificate", &cert)?;
        call.done(certs::install(&self.app.meter, &self.app.certs, &cert).await)
    }

    /// User certificates and their states.
    async fn list_certificates(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<HashMap<String, OwnedValue>>, MeterError> {
        let _call = self.user(&header, "ListCertificates").await?;
        Ok(certs_dict::list(&self.app.certs))
    }

    /// Detached CMS signature over the message with a user certificate.
    async fn sign(
        &self,
        #[zbus(header)] header: Header<'_>,
        certificate_serial: String,
        message: MessageFd,
        request_id: String,
    ) -> Result<Blob, MeterError> {
        self.sign_with(&header, &certificate_serial, message, &request_id)
            .await
    }

    /// Opens a CMS EnvelopedData (read from `envelope`) addressed to the user
    /// encryption certificate `certificate_serial`, the key agreement done in the
    /// TPM, and writes the plaintext to `output`; returns the bytes written.
    /// Charged (`decrypt`); a retry with the same request id is not.
    async fn decrypt(
        &self,
        #[zbus(header)] header: Header<'_>,
        certificate_serial: String,
        envelope: MessageFd,
        output: MessageFd,
        request_id: String,
    ) -> Result<u64, MeterError> {
        self.decrypt_with(&header, &certificate_serial, envelope, output, &request_id)
            .await
    }

    /// Meter id, empty before provisioning.
    #[zbus(property)]
    async fn meter_id(&self, #[zbus(header)] h: Option<Header<'_>>) -> fdo::Result<String> {
        self.read(h, "MeterId", |a| a.meter.meter_id().unwrap_or_default())
            .await
    }

    /// `unprovisioned`, `ready` or `locked`.
    #[zbus(property)]
    async fn state(&self, #[zbus(header)] h: Option<Header<'_>>) -> fdo::Result<String> {
        self.read(h, "State", |a| a.meter.state_name().to_owned())
            .await
    }

    /// Why the meter is locked, empty otherwise.
    #[zbus(property)]
    async fn lock_reason(&self, #[zbus(header)] h: Option<Header<'_>>) -> fdo::Result<String> {
        self.read(h, "LockReason", lock_reason).await
    }

    /// Funds available.
    #[zbus(property)]
    async fn descending(&self, #[zbus(header)] h: Option<Header<'_>>) -> fdo::Result<u64> {
        self.read(h, "Descending", |a| registers(a).descending.0)
            .await
    }

    /// Funds used.
    #[zbus(property)]
    async fn ascending(&self, #[zbus(header)] h: Option<Header<'_>>) -> fdo::Result<u64> {
        self.read(h, "Ascending", |a| registers(a).ascending.0)
            .await
    }

    /// All funds ever credited.
    #[zbus(property)]
    async fn control_total(&self, #[zbus(header)] h: Option<Header<'_>>) -> fdo::Result<u64> {
        self.read(h, "ControlTotal", |a| registers(a).control_total.0)
            .await
    }

    /// Pieces sold.
    #[zbus(property)]
    async fn piece_count(&self, #[zbus(header)] h: Option<Header<'_>>) -> fdo::Result<u64> {
        self.read(h, "PieceCount", |a| registers(a).pieces).await
    }

    /// Digits of the minor unit.
    #[zbus(property)]
    async fn currency_digits(&self, #[zbus(header)] h: Option<Header<'_>>) -> fdo::Result<u8> {
        self.read(h, "CurrencyDigits", currency_digits).await
    }

    /// Rate table version in force.
    #[zbus(property)]
    async fn rates_version(&self, #[zbus(header)] h: Option<Header<'_>>) -> fdo::Result<u32> {
        self.read(h, "RatesVersion", rates_version).await
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

    /// The inspection fell due: a status report must be acknowledged before
    /// `lock` (Unix s) or the meter locks `inspection-overdue`; `due` is
    /// when the warning started (Unix s).
    #[zbus(signal)]
    pub async fn inspection_due(
        emitter: &SignalEmitter<'_>,
        due: i64,
        lock: i64,
    ) -> zbus::Result<()>;
}
