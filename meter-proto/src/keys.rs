//! Keys of the `a{sv}` dictionaries returned by `Status`, `Validate`, `Audit`
//! and `Provision`: shared so that client and daemon spell them alike.

/// `Status()` keys.
pub mod status {
    pub const METER_ID: &str = "meter_id";
    pub const STATE: &str = "state";
    pub const LOCK_REASON: &str = "lock_reason";
    /// Nonce an authority clear-lock order must carry (empty when not locked).
    pub const LOCK_NONCE: &str = "lock_nonce";
    pub const DESCENDING: &str = "descending";
    pub const ASCENDING: &str = "ascending";
    pub const CONTROL_TOTAL: &str = "control_total";
    pub const PIECE_COUNT: &str = "piece_count";
    /// `s`: `combined` (one pool pays everything: `descending`,
    /// `ascending`, `control_total`, `piece_count`) or `split` (those keys
    /// are the services register, the `postage_*` keys the postage one).
    pub const FUNDS_MODE: &str = "funds_mode";
    /// `t`: postage register (split mode; 0 in combined mode).
    pub const POSTAGE_DESCENDING: &str = "postage_descending";
    pub const POSTAGE_ASCENDING: &str = "postage_ascending";
    pub const POSTAGE_CONTROL_TOTAL: &str = "postage_control_total";
    pub const POSTAGE_PIECE_COUNT: &str = "postage_piece_count";
    pub const CURRENCY: &str = "currency";
    pub const CURRENCY_DIGITS: &str = "currency_digits";
    pub const RATES_VERSION: &str = "rates_version";
    /// `a{st}`: piece count per service.
    pub const SERVICE_COUNTS: &str = "service_counts";
    /// `a{st}`: current price per service, minor units.
    pub const RATES: &str = "rates";
    /// `a(sut)`: postage bands of the rate table in force: mail class, upper
    /// weight bound in grams (inclusive), price in minor units; a piece takes
    /// the lightest band of its class that holds its weight.
    pub const POSTAGE_BANDS: &str = "postage_bands";
    pub const LEDGER_ROWS: &str = "ledger_rows";
    pub const LEDGER_HEAD: &str = "ledger_head";
    pub const NV_COUNTER: &str = "nv_counter";
    pub const LOW_FUNDS_THRESHOLD: &str = "low_funds_threshold";
    /// `x`: the lock deadline: when the meter locks `inspection-overdue`
    /// without a newer acknowledged status report (Unix s; 0 unknown). The
    /// name predates the warning period.
    pub const INSPECTION_DUE: &str = "inspection_due";
    /// `u`: inspection period in force (days to the lock).
    pub const INSPECTION_PERIOD_DAYS: &str = "inspection_period_days";
    /// `s`: `ok`, `due` (past the warning deadline) or `overdue` (past the
    /// lock deadline); empty when unknown (not provisioned).
    pub const INSPECTION_STATE: &str = "inspection_state";
    /// `x`: the warning deadline: when the inspection falls due (Unix s; 0 unknown).
    pub const INSPECTION_WARN_AT: &str = "inspection_warn_at";
    /// `u`: warning period in force (days to the warning).
    pub const INSPECTION_WARN_DAYS: &str = "inspection_warn_days";
    /// `t`: sequence of the last acknowledged status report (0: none).
    pub const ACKNOWLEDGED_REPORT: &str = "acknowledged_report";
    /// `t`: revocation fees due, held out of the funds until a recharge settles them.
    pub const PAYMENT_DUE: &str = "payment_due";
    /// `b`: current-account mode (credit limit and billing period) in force.
    pub const ACCOUNT_MODE: &str = "account_mode";
    /// `t`: current account: credit limit per billing period (0 in prepaid mode).
    pub const CREDIT_LIMIT: &str = "credit_limit";
    /// `x`: current account: end of the billing period (Unix s; 0 in prepaid mode).
    pub const PERIOD_END: &str = "period_end";
    /// `t`: current account: charged in the billing period so far.
    pub const PERIOD_USED: &str = "period_used";
    /// `b`: the meter's TPM keys and NV counter were made without
    /// authorization (provisioned before TPM authorization): anyone who can
    /// reach the TPM can use them; re-provision.
    pub const TPM_LEGACY_AUTH: &str = "tpm_legacy_auth";
}

/// `Validate()` report keys.
pub mod report {
    pub const VALID: &str = "valid";
    pub const STEP: &str = "step";
    pub const DETAIL: &str = "detail";
    pub const SIGNER: &str = "signer";
    pub const TIME: &str = "time";
    pub const METER_ID: &str = "meter_id";
    pub const SERIAL: &str = "serial";
}

/// `Audit()` result keys.
pub mod audit {
    pub const OK: &str = "ok";
    pub const ROWS: &str = "rows";
    pub const BATCHES: &str = "batches";
    pub const HEAD: &str = "head";
    pub const NV_COUNTER: &str = "nv_counter";
    pub const PROBLEM: &str = "problem";
    pub const MILLIS: &str = "millis";
}

/// `Provision()` result keys.
pub mod provision {
    pub const METER_ID: &str = "meter_id";
    /// `ay`: DER PKCS#10 request for the identity (communications) key.
    pub const IDENTITY_CSR: &str = "identity_csr";
    /// `ay`: DER PKCS#10 request for the postmark (time-stamping) key.
    pub const POSTMARK_CSR: &str = "postmark_csr";
    /// `ay`: the TPM evidence (JSON, `meter_pki::tpm::Evidence`: EK certificate, AK,
    /// TPM2_Certify of both keys); absent when the housing cannot attest.
    pub const ATTESTATION: &str = "attestation";
}

/// Keys of each dictionary returned by `ListCreditLines()`.
pub mod credit_line {
    /// `s` line serial.
    pub const SERIAL: &str = "serial";
    /// `s` creditor.
    pub const ISSUER: &str = "issuer";
    /// `s` holder (the meter id).
    pub const HOLDER: &str = "holder";
    /// `t` line amount.
    pub const GRANTED: &str = "granted";
    /// `t` paid out.
    pub const USED: &str = "used";
    /// `t` still available (granted = used + remaining).
    pub const REMAINING: &str = "remaining";
    /// `t` payment certificates made, the opening one included.
    pub const CERTIFICATES: &str = "certificates";
    /// `x` valid from.
    pub const NOT_BEFORE: &str = "not_before";
    /// `x` valid until.
    pub const NOT_AFTER: &str = "not_after";
    /// `s` authorized use.
    pub const AUTHORIZED_USE: &str = "authorized_use";
    /// `s` `open`, `expired` or `damaged`.
    pub const STATE: &str = "state";
    /// `s` SHA-384 (hex) of the line-of-credit certificate.
    pub const DIGEST: &str = "digest";
}

/// `RequestCertificate()` subject keys (`a{sv}`, every value `s`; unknown keys refused).
pub mod subject {
    /// Subject common name of the user certificate.
    pub const CN: &str = "cn";
    /// One-time enrolment code the authority issued for that subject.
    pub const ENROLMENT_CODE: &str = "enrolment_code";
    /// Optional: `sign` (the default, a signing key) or `encrypt` (a key-agreement
    /// key for `Decrypt`, certified with key usage keyAgreement).
    pub const PURPOSE: &str = "purpose";
}

/// `ListCertificates()` entry keys.
pub mod certificate {
    /// Serial, lowercase hex (empty while pending).
    pub const SERIAL: &str = "serial";
    /// Subject common name.
    pub const SUBJECT: &str = "subject";
    /// notAfter, unix seconds (0 while pending).
    pub const NOT_AFTER: &str = "not_after";
    /// `pending`, `active`, `expired` or `revoked`.
    pub const STATE: &str = "state";
    /// Name of the key in the housing.
    pub const KEY: &str = "key";
    /// `sign` or `encrypt`.
    pub const PURPOSE: &str = "purpose";
}
