//! Typed client proxy for `org.meterd.Meter1`, used by meterctl and the tests.

use std::collections::HashMap;

use zbus::zvariant::{Fd, OwnedValue};

use crate::MeterError;

/// The meter's D-Bus interface as a client sees it.
#[zbus::proxy(
    interface = "org.meterd.Meter1",
    default_service = "org.meterd.Meter1",
    default_path = "/org/meterd/Meter1"
)]
pub trait Meter1 {
    /// Creates (or re-reads) the identity and postmark keys in the TPM and
    /// returns their PKCS#10 requests (keys of [`crate::keys::provision`]).
    fn provision(&self) -> Result<HashMap<String, OwnedValue>, MeterError>;

    /// Installs the authority's certificates for the two keys and its root as
    /// the trust anchor (DER or PEM each).
    fn install_provisioning(
        &self,
        meter_cert: &[u8],
        postmark_cert: &[u8],
        root_cert: &[u8],
    ) -> Result<(), MeterError>;

    /// Activates the authority's credential (`credential.json` of an attested
    /// `certify-meter`) in the TPM, opens the certificates sealed in it and installs them
    /// with the root, as [`Self::install_provisioning`] does.
    fn install_credential(&self, credential: &[u8], root_cert: &[u8]) -> Result<(), MeterError>;

    /// Installs a signed rate table (CMS SignedData, DER or PEM).
    fn install_rates(&self, table: &[u8]) -> Result<(), MeterError>;

    /// Credits an authority voucher; returns the new descending register.
    fn recharge(&self, voucher: &[u8]) -> Result<u64, MeterError>;

    /// RFC 3161 token over SHA-384 of the message read from the descriptor.
    fn postmark(&self, message: Fd<'_>, request_id: &str) -> Result<Vec<u8>, MeterError>;

    /// RFC 3161 token over a SHA-384 digest the caller computed.
    fn postmark_digest(&self, sha384: &[u8], request_id: &str) -> Result<Vec<u8>, MeterError>;

    /// RFC 3161: a DER TimeStampReq in, a DER TimeStampResp out (refusals
    /// are rejections inside it), charged as a postmark.
    fn time_stamp(&self, request: &[u8], request_id: &str) -> Result<Vec<u8>, MeterError>;

    /// Postage indicium (binary, `docs/INDICIUM.md`) for a piece of `class`
    /// weighing `grams`, from `origin` to `destination` (1–16 printable ASCII).
    fn postage(
        &self,
        class: &str,
        grams: u32,
        origin: &str,
        destination: &str,
        request_id: &str,
    ) -> Result<Vec<u8>, MeterError>;

    /// Verifies a token against the message (charged); keys of [`crate::keys::report`].
    fn validate(
        &self,
        message: Fd<'_>,
        token: &[u8],
    ) -> Result<HashMap<String, OwnedValue>, MeterError>;

    /// Unsigned register snapshot (keys of [`crate::keys::status`]).
    fn status(&self) -> Result<HashMap<String, OwnedValue>, MeterError>;

    /// Signed status report (CMS SignedData, DER, eContentType `CT_STATUS_REPORT`):
    /// registers and usage since the previous report. Answered when locked (free then).
    fn report(&self, request_id: &str) -> Result<Vec<u8>, MeterError>;

    /// Writes the ledger segment of the caller's report `request_id` (the rows
    /// since the last acknowledged report, `meter_pki::segment` format) to
    /// `output`; returns (first row, last row, bytes). Administrators only.
    fn report_segment(
        &self,
        request_id: &str,
        output: Fd<'_>,
    ) -> Result<(u64, u64, u64), MeterError>;

    /// The TPM's attestation (JSON) of the caller's report `request_id`, over its
    /// digest; empty when the meter cannot attest. Administrators only.
    fn report_attestation(&self, request_id: &str) -> Result<Vec<u8>, MeterError>;

    /// Applies the authority's acknowledgement of a report (resets the inspection
    /// watchdog); returns when the next acknowledged report is due (Unix s).
    fn acknowledge_report(&self, ack: &[u8]) -> Result<i64, MeterError>;

    /// Applies an authority lock order: the meter locks with reason `forced`.
    fn apply_lock_order(&self, order: &[u8]) -> Result<(), MeterError>;

    /// Applies an authority current-account order; returns the end of the
    /// billing period in force (Unix s).
    fn set_account_mode(&self, order: &[u8]) -> Result<i64, MeterError>;

    /// Re-checks the whole ledger chain and its TPM binding (keys of [`crate::keys::audit`]).
    fn audit(&self) -> Result<HashMap<String, OwnedValue>, MeterError>;

    /// Applies an authority-signed clear-lock order.
    fn clear_lock(&self, order: &[u8]) -> Result<(), MeterError>;

    /// Applies an authority-signed trust-anchor update (CMS SignedData signed by a
    /// current anchor); returns the number of anchors the meter now trusts.
    fn update_trust_anchor(&self, message: &[u8]) -> Result<u32, MeterError>;

    /// Creates the agent-CA key if needed and returns its certification request (CMS
    /// SignedData by the meter's identity key around a PKCS#10, DER) for
    /// `meter-authority certify-agent-ca`.
    fn request_agent_ca(&self) -> Result<Vec<u8>, MeterError>;

    /// The postal-key request (CMS SignedData by the identity key, DER, naming the TPM
    /// storage parent) for `meter-authority postal-key`.
    fn postal_key_request(&self) -> Result<Vec<u8>, MeterError>;

    /// Imports the authority's postal-key delivery (CMS SignedData) into the TPM; returns
    /// the delivery id. A delivery already imported is refused (`Replay`).
    fn import_postal_key(&self, delivery: &[u8]) -> Result<String, MeterError>;

    /// Installs the authority's agent-CA certificate (DER or PEM); returns its serial (hex).
    fn install_agent_ca(&self, certificate: &[u8]) -> Result<String, MeterError>;

    /// Issues an employee certificate under the meter's agent CA (charged as
    /// `agent-certificate`). `subject` keys: `cn` (required), `o`, `ou`, `email` (strings);
    /// `receiver`: the receiver's P-384 certificate or public key (PEM, DER or SEC1).
    /// Returns (certificate DER, CMS EnvelopedData DER holding the PKCS#8 private key
    /// encrypted to the receiver, agent-CA certificate DER).
    fn issue_agent_certificate(
        &self,
        subject: HashMap<&str, zbus::zvariant::Value<'_>>,
        receiver: &[u8],
        request_id: &str,
    ) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>), MeterError>;
    /// A credit request for `creditor` (CMS SignedData, `CT_CREDIT_REQUEST`) carrying the
    /// meter's postmark; charged as a postmark.
    fn request_credit(
        &self,
        creditor: &str,
        amount: u64,
        request_id: &str,
    ) -> Result<Vec<u8>, MeterError>;

    /// Opens the line of credit in the creditor's certificate (CMS, `CT_CREDIT_LINE`);
    /// returns the first payment certificate (full line remaining).
    fn open_credit_line(&self, certificate: &[u8], request_id: &str)
        -> Result<Vec<u8>, MeterError>;

    /// Pays `amount` to `payee` from line `credit_serial`; returns the payment certificate
    /// (CMS, `CT_PAYMENT`).
    fn pay(
        &self,
        credit_serial: &str,
        amount: u64,
        payee: &str,
        request_id: &str,
    ) -> Result<Vec<u8>, MeterError>;

    /// Lines of credit (keys of [`crate::keys::credit_line`]).
    fn list_credit_lines(&self) -> Result<Vec<HashMap<String, OwnedValue>>, MeterError>;

    /// Signs a request to the authority to revoke installed certificate `serial`
    /// for `reason` (an RFC 5280 reason name); CMS `CT_REVOKE_REQUEST`, not charged.
    fn revoke(&self, serial: &str, reason: &str, request_id: &str) -> Result<Vec<u8>, MeterError>;

    /// Applies the authority's revoke order (once): destroys the key, marks the
    /// certificate revoked, charges `revoke` (or records it due when funds are
    /// short) and returns the signed confirmation (CMS `CT_REVOKE_CONFIRMATION`).
    fn apply_revoke_order(&self, order: &[u8]) -> Result<Vec<u8>, MeterError>;

    /// Makes a user key in the TPM (funds checked for `certificate-install`, nothing
    /// charged) and returns its PKCS#10 request with the enrolment code, in CMS
    /// SignedData signed by the meter (keys of [`crate::keys::subject`]).
    fn request_certificate(
        &self,
        subject: HashMap<&str, zbus::zvariant::Value<'_>>,
        request_id: &str,
    ) -> Result<Vec<u8>, MeterError>;

    /// Installs the authority's certificate (DER or PEM) for a pending user key;
    /// charged (`certificate-install`). Returns its serial (hex).
    fn install_certificate(&self, cert: &[u8]) -> Result<String, MeterError>;

    /// User certificates, pending ones included (keys of [`crate::keys::certificate`]).
    fn list_certificates(&self) -> Result<Vec<HashMap<String, OwnedValue>>, MeterError>;

    /// Detached CMS SignedData over the message with the certificate `serial`'s key; charged.
    fn sign(
        &self,
        certificate_serial: &str,
        message: Fd<'_>,
        request_id: &str,
    ) -> Result<Vec<u8>, MeterError>;

    /// Opens a CMS EnvelopedData read from `envelope` with the user encryption
    /// certificate `certificate_serial` and writes the plaintext to `output`;
    /// returns the bytes written. Charged (`decrypt`), idempotent by request id.
    fn decrypt(
        &self,
        certificate_serial: &str,
        envelope: Fd<'_>,
        output: Fd<'_>,
        request_id: &str,
    ) -> Result<u64, MeterError>;

    /// Meter identifier (from the identity key), empty when unprovisioned.
    #[zbus(property)]
    fn meter_id(&self) -> zbus::Result<String>;
    /// `unprovisioned`, `ready` or `locked`.
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    /// Why the meter is locked, empty otherwise.
    #[zbus(property)]
    fn lock_reason(&self) -> zbus::Result<String>;
    /// Funds available, minor units.
    #[zbus(property)]
    fn descending(&self) -> zbus::Result<u64>;
    /// Funds ever used, minor units.
    #[zbus(property)]
    fn ascending(&self) -> zbus::Result<u64>;
    /// Ascending + descending = all funds ever credited.
    #[zbus(property)]
    fn control_total(&self) -> zbus::Result<u64>;
    /// Chargeable pieces ever sold.
    #[zbus(property)]
    fn piece_count(&self) -> zbus::Result<u64>;
    /// Decimal digits of the minor unit (3: thousandths).
    #[zbus(property)]
    fn currency_digits(&self) -> zbus::Result<u8>;
    /// Version of the rate table in force, 0 when none.
    #[zbus(property)]
    fn rates_version(&self) -> zbus::Result<u32>;

    /// Emitted once each time the descending register falls below the threshold.
    #[zbus(signal)]
    fn low_funds(&self, descending: u64) -> zbus::Result<()>;
    /// Emitted when the meter locks.
    #[zbus(signal)]
    fn locked(&self, reason: &str) -> zbus::Result<()>;
    /// Emitted when an authority order clears a lock.
    #[zbus(signal)]
    fn unlocked(&self) -> zbus::Result<()>;
    /// Emitted when the inspection falls due (the meter enters its warning
    /// period, at start or at a watchdog tick): `due` is when the warning
    /// started, `lock` when the meter locks `inspection-overdue` (Unix s).
    #[zbus(signal)]
    fn inspection_due(&self, due: i64, lock: i64) -> zbus::Result<()>;
}

/// meter-tsa's status object (see [`crate::timestamp`]): where the RFC 3161
/// endpoint listens.
#[zbus::proxy(
    interface = "org.meterd.TimeStamp1",
    default_service = "org.meterd.TimeStamp1",
    default_path = "/org/meterd/TimeStamp1"
)]
pub trait TimeStamp1 {
    /// The URLs it listens on (`http://127.0.0.1:PORT/`, no credentials).
    #[zbus(property)]
    fn urls(&self) -> zbus::Result<Vec<String>>;
    /// True when loopback clients without credentials are served.
    #[zbus(property)]
    fn anonymous_loopback(&self) -> zbus::Result<bool>;
}
