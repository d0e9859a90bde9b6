//! The command line of `meter-authority`: its commands and their arguments, as
//! clap reads them (and as the man pages and completions are generated from).
//! Kept apart from `main.rs`, which runs them, so each stays readable.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Reference authority for meterd: a file-based CA that certifies meters and signs
/// vouchers, rate tables and clear-lock orders.
///
/// The meters' state (voucher sequences, books, report answers, settlements,
/// the certificate register) is kept in the authority directory, or in
/// PostgreSQL with --database: `serve` and the commands voucher, inspect,
/// settle, lookup, certify-meter and certify then use the database, the
/// same operations as the HTTP API. Once `serve --database` ran on a
/// directory (it writes `<dir>/database`), serve, voucher, inspect, settle,
/// lookup and certify-meter refuse to run on the directory without
/// --database. The other commands keep their state only in the directory
/// (certify and revoke read the database's register with --database).
#[derive(Parser)]
#[command(version)]
pub(crate) struct Cli {
    /// Authority directory (root.key, root.pem, state.json).
    #[arg(long, env = "METER_AUTHORITY_DIR", global = true)]
    pub(crate) dir: Option<PathBuf>,
    /// PostgreSQL URL of the provider's state (`postgres://user@host/db`, or
    /// `postgres:///db?host=/run/postgresql` for a unix socket; no TLS): used by
    /// serve, voucher, inspect, settle, lookup, certify-meter and certify (and revoke,
    /// to know the meters the database certified); the other commands use --dir only
    /// and ignore it. Without it the state is kept in --dir.
    #[arg(long, env = "METER_AUTHORITY_DATABASE", global = true)]
    pub(crate) database: Option<String>,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Create a new authority (root key and certificate) in --dir.
    Init {
        /// Common name of the root certificate.
        #[arg(long, default_value = "meterd Reference Authority")]
        name: String,
    },
    /// Certify a meter from its identity and postmark CSRs.
    ///
    /// With --database: the serials and the register are the database's, as `POST /v1/meters/{id}/certify`
    /// (the same CSRs again: the same certificates; other CSRs for the meter: refused).
    CertifyMeter {
        /// PKCS#10 request of the identity (communications) key.
        #[arg(long)]
        identity_csr: PathBuf,
        /// PKCS#10 request of the postmark key.
        #[arg(long)]
        postmark_csr: PathBuf,
        /// Directory for the output: credential.json (attested), or meter.pem and
        /// postmark.pem (--unattested).
        #[arg(long)]
        out_dir: PathBuf,
        /// The meter's TPM evidence (attestation.json from `meterctl provision`): the
        /// certificates are then issued only sealed in a credential its TPM activates.
        #[arg(long, requires = "ek_ca")]
        attestation: Option<PathBuf>,
        /// A trusted EK CA certificate (PEM or DER; repeatable): the CA that signed the
        /// TPM's EK certificate (a TPM vendor's, or swtpm's local CA in tests).
        #[arg(long, value_name = "FILE")]
        ek_ca: Vec<PathBuf>,
        /// Certify keys nobody proved to be in a TPM (demos, software housings): writes
        /// meter.pem and postmark.pem in clear.
        #[arg(long, conflicts_with = "attestation")]
        unattested: bool,
        /// With --attestation: also write the issued certificates (public: every
        /// postmark carries them) to this directory, for relying parties and the
        /// authority's records. The meter still receives them only in the credential.
        #[arg(long, value_name = "DIR", requires = "attestation")]
        certs_out: Option<PathBuf>,
    },
    /// Certify a meter's agent CA (Fig. 3A) from its request (`meterctl agent-ca request`).
    CertifyAgentCa {
        /// The request: CMS SignedData by the meter around the agent key's PKCS#10.
        request: PathBuf,
        /// Output: the agent-CA certificate (PEM).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a rate table written in TOML (see rates.example.toml).
    Rates {
        /// The TOML rate file.
        #[arg(long = "in")]
        input: PathBuf,
        /// Output (PEM, label CMS).
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a recharge voucher (next sequence number for the meter).
    ///
    /// With --database (or --purchase-id): a purchase, as `POST
    /// /v1/meters/{id}/topups` makes.
    Voucher {
        /// Meter id.
        #[arg(long)]
        meter: String,
        /// The purchase's id (1 to 128 visible ASCII characters), required with
        /// --database: the voucher is issued once per id, and running the command
        /// again with it gets the same voucher (printed `repeated`), as a top-up
        /// retried over the API does. Without --database it is kept in --dir.
        #[arg(long, value_name = "ID")]
        purchase_id: Option<String>,
        /// Amount: `1.50` in the currency of the last rate table signed,
        /// or minor units (`1500`).
        #[arg(long, value_name = "AMOUNT")]
        amount: String,
        /// Register it funds on a meter whose funds are split: `postage`
        /// or `services`. Without it: services (on a meter not split, the
        /// one pool that pays everything).
        #[arg(long, value_parser = ["postage", "services"])]
        register: Option<String>,
        /// Output (PEM, label CMS).
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue an order clearing a meter lock.
    ClearLock {
        /// Meter id.
        #[arg(long)]
        meter: String,
        /// The lock's nonce (from the meter's Status).
        #[arg(long)]
        nonce: String,
        /// Output (PEM, label CMS).
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a meter's signed status report, reconcile it with the ledger
    /// rows of its segment (every hash and register re-derived, every
    /// voucher and order checked against what this authority issued) and
    /// issue its acknowledgement (apply with `meterctl report ack ACK`). On
    /// any discrepancy: no acknowledgement, each discrepancy named, and a
    /// forced lock order written (apply with `meterctl lock apply ORDER`).
    /// The TPM's attestation of the report is read from beside it (extension
    /// `.att`, as `meterctl report` writes it); a meter certified with
    /// attestation must send one.
    ///
    /// With --database: the same upload as
    /// `POST /v1/meters/{id}/reports`, answered once (again: the same answer).
    Inspect {
        /// The report (CMS SignedData, DER or PEM, from `meterctl report`).
        report: PathBuf,
        /// The report's ledger segment (from `meterctl report`); default:
        /// the report's path with extension `.seg`.
        #[arg(long, value_name = "SEG", conflicts_with = "without_segment")]
        segment: Option<PathBuf>,
        /// Acknowledge on the report's word alone, without its rows (meters
        /// older than segments); nothing is reconciled. Not with --database.
        #[arg(long)]
        without_segment: bool,
        /// Output: the acknowledgement (PEM, label CMS).
        #[arg(long)]
        out: PathBuf,
        /// Where the lock order goes when the report is refused; default:
        /// the acknowledgement's path with extension `lock-order.pem`.
        #[arg(long, value_name = "FILE")]
        lock_out: Option<PathBuf>,
        /// Set a new inspection period for the meter, in days: it locks
        /// (`inspection-overdue`) this long after the report without a newer
        /// acknowledgement.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
        period_days: Option<u32>,
        /// Set a new warning period, in days: the inspection falls due (the
        /// meter warns) this long after the report; less than the period.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
        warn_days: Option<u32>,
    },
    /// Issue an order locking a meter (reason `forced`; apply with `meterctl lock apply ORDER`).
    Lock {
        /// Meter id.
        #[arg(long)]
        meter: String,
        /// Why, for the meter's operator.
        #[arg(long)]
        reason: String,
        /// Output (PEM, label CMS).
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a current-account order: the meter sells up to LIMIT per billing period and
    /// must have a report acknowledged each period (apply with `meterctl account apply ORDER`).
    Account {
        /// Meter id.
        #[arg(long)]
        meter: String,
        /// Credit limit per billing period: `1.50` or minor units (`1500`).
        #[arg(long, value_name = "AMOUNT")]
        limit: String,
        /// Billing period, days.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
        period_days: u32,
        /// Output (PEM, label CMS).
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a funds order: the meter keeps its postage funds apart from its services
    /// funds from then on, for good (apply with `meterctl account split ORDER`).
    FundsSplit {
        /// Meter id.
        #[arg(long)]
        meter: String,
        /// Output (PEM, label CMS).
        #[arg(long)]
        out: PathBuf,
    },
    /// Roll the root over: new root key and certificate, announced to meters by a
    /// trust-anchor update signed with the current root (apply with
    /// `meterctl trust-anchor update`). The old root is kept as root.<n>.key/.pem.
    Rollover {
        /// Output: the trust-anchor update (PEM, label CMS).
        #[arg(long)]
        out: PathBuf,
        /// `add` (the new root joins the meter's anchors) or `replace` (it becomes the
        /// first, current one; the old ones stay to verify old objects).
        #[arg(long, default_value = "replace", value_parser = ["add", "replace"])]
        mode: String,
        /// Common name of the new root certificate.
        #[arg(long, default_value = "meterd Reference Authority")]
        name: String,
        /// Restrict the update to one meter (default: any meter).
        #[arg(long)]
        meter: Option<String>,
    },
    /// As the creditor: verify a meter's credit request and grant a line of credit.
    CreditGrant {
        /// The meter's credit request (CMS, PEM or DER).
        #[arg(value_name = "REQUEST")]
        request: PathBuf,
        /// Output: the line-of-credit certificate (PEM, label CMS).
        #[arg(long)]
        out: PathBuf,
        /// Amount to grant, `1.50` or minor units (default: the amount
        /// asked; never more).
        #[arg(long, value_name = "AMOUNT")]
        amount: Option<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Authorized use written in the certificate.
        #[arg(long = "use", default_value = "any purchase")]
        authorized_use: String,
    },
    /// As the creditor: verify a payment certificate and settle it (once).
    ///
    /// With --database: settled in the database in the name of the creditor its line
    /// names, as `POST /v1/settle` by that creditor (again: `repeated`, not paid twice).
    Settle {
        /// The payment certificate (CMS, PEM or DER).
        #[arg(value_name = "PAYMENT")]
        payment: PathBuf,
    },
    /// Issue a one-time enrolment code for a user (Fig. 5); prints the code.
    Enrol {
        /// Subject of the user certificate, `CN=<name>`.
        #[arg(long)]
        subject: String,
    },
    /// Certify a meter's user-certificate request (`meterctl cert request`): checks the
    /// meter's signature, the PKCS#10 self-signature and the enrolment code (consumed).
    ///
    /// With --database the meter may be one the database certified.
    Certify {
        /// The request (CMS, DER or PEM).
        #[arg(value_name = "REQUEST")]
        request: PathBuf,
        /// Output: the user certificate (PEM).
        #[arg(long)]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = meter_authority::enrol::USER_DAYS)]
        days: u32,
        /// Validity ending this many seconds from now instead (for expiry tests).
        #[arg(long, conflicts_with = "days")]
        valid_seconds: Option<u32>,
    },
    /// Answer a meter's revoke request (`meterctl cert revoke`) with a signed,
    /// single-use revoke order; or, with --forced, order a revocation on the
    /// authority's own decision (Fig. 6, 608). Recorded for the CRL.
    ///
    /// The order is recorded in --dir; with --database a request may come from a
    /// meter the database certified.
    Revoke {
        /// The request (CMS, DER or PEM); not with --forced.
        #[arg(value_name = "REQUEST", required_unless_present = "forced")]
        request: Option<PathBuf>,
        /// Forced revocation: no request; give --meter, --serial and --reason.
        #[arg(long, requires_all = ["meter", "serial"], conflicts_with = "request")]
        forced: bool,
        /// Meter holding the certificate (forced).
        #[arg(long)]
        meter: Option<String>,
        /// Serial of the certificate, hex (forced).
        #[arg(long)]
        serial: Option<String>,
        /// Reason (forced): unspecified, keyCompromise, affiliationChanged,
        /// superseded, cessationOfOperation, privilegeWithdrawn.
        #[arg(long, default_value = "unspecified")]
        reason: String,
        /// Output: the revoke order (PEM).
        #[arg(long)]
        out: PathBuf,
    },
    /// Publish a CRL (RFC 5280 v2, signed by the root) of every revocation ordered.
    Crl {
        /// Output: the CRL (PEM).
        #[arg(long)]
        out: PathBuf,
    },
    /// Was this postmark token or indicium reported by its meter? Answers
    /// reported (row, time), not reported yet, or, exit status 3, unreported
    /// though older than the last acknowledged report / reported with
    /// another digest (a duplicate serial): made outside the meter's ledger.
    ///
    /// With --database: the rows and books of the database, as `POST /v1/lookup`.
    Lookup {
        /// The token (DER or PEM) or the indicium (221 bytes, binary).
        object: PathBuf,
    },
    /// Answer a meter's postal-key request (`meterctl postal-key request`): a fresh
    /// HMAC-SHA-256 key, kept here and wrapped to the meter's TPM storage parent.
    PostalKey {
        /// The request: CMS SignedData by the meter naming its storage parent.
        request: PathBuf,
        /// Output: the delivery (PEM, label CMS) for `meterctl postal-key import`.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an indicium (221 or 237 bytes, binary); with --postal-key, its MAC with the
    /// postal keys delivered to its meter (exit status 1 when it does not match).
    VerifyIndicium {
        /// The indicium bytes (e.g. from `dmtxread`).
        file: PathBuf,
        /// Check the postal-key MAC (claim 21).
        #[arg(long)]
        postal_key: bool,
    },
    /// Verify a postmark token over a message against this authority's root.
    VerifyToken {
        /// The token (DER or PEM).
        #[arg(long)]
        token: PathBuf,
        /// The message.
        #[arg(long)]
        data: PathBuf,
    },
    /// Serve the provider's HTTP API (top-ups, report uploads, CRL) with the state in
    /// PostgreSQL (--database: with the register of the certificates it issues) or in --dir;
    /// the keys stay in --dir.
    ///
    /// With --database it records in `<dir>/database` that the meters live there (the
    /// URL without its password).
    Serve {
        /// Address to listen on (port 0: any free port, printed on stdout).
        #[arg(long, default_value = "127.0.0.1:8480")]
        listen: std::net::SocketAddr,
        /// Database connections in the pool.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Largest report upload (report + attestation + segment), bytes.
        #[arg(long, default_value_t = 64 << 20)]
        max_upload: usize,
        /// File holding the operator's bearer token, required of top-up purchases; without
        /// it only loopback clients may buy top-ups.
        #[arg(long)]
        operator_token_file: Option<PathBuf>,
    },
}
