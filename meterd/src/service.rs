//! The chargeable services of the meter and their codes in the ledger.

use std::fmt;

/// A service the meter sells; each has a rate and a piece count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Service {
    /// RFC 3161 postmark (Fig. 3).
    Postmark = 1,
    /// Validation of a token or signature (Fig. 4).
    Validate = 2,
    /// Detached signature with a user certificate.
    Sign = 3,
    /// User certificate install (Fig. 5).
    CertificateInstall = 4,
    /// Agent certificate (Fig. 3A).
    AgentCertificate = 5,
    /// Revocation (Fig. 6).
    Revoke = 6,
    /// Line of credit (Fig. 7A).
    CreditLine = 7,
    /// Payment certificate (Fig. 7B).
    PaymentCertificate = 8,
    /// Signed status report.
    StatusReport = 9,
    /// Postage indicium.
    Postage = 10,
    /// Decryption of a CMS envelope with a user encryption certificate.
    Decrypt = 11,
}

impl Service {
    /// Every service, in code order.
    pub const ALL: [Service; 11] = [
        Service::Postmark,
        Service::Validate,
        Service::Sign,
        Service::CertificateInstall,
        Service::AgentCertificate,
        Service::Revoke,
        Service::CreditLine,
        Service::PaymentCertificate,
        Service::StatusReport,
        Service::Postage,
        Service::Decrypt,
    ];

    /// Name used in rate tables, status and logs.
    pub fn name(self) -> &'static str {
        match self {
            Service::Postmark => "postmark",
            Service::Validate => "validate",
            Service::Sign => "sign",
            Service::CertificateInstall => "certificate-install",
            Service::AgentCertificate => "agent-certificate",
            Service::Revoke => "revoke",
            Service::CreditLine => "credit-line",
            Service::PaymentCertificate => "payment-certificate",
            Service::StatusReport => "status-report",
            Service::Postage => "postage",
            Service::Decrypt => "decrypt",
        }
    }

    /// The ledger code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// From a ledger code.
    pub fn from_code(code: u8) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.code() == code)
    }

    /// From a rate-table name.
    pub fn from_name(name: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Index into per-service arrays.
    pub fn index(self) -> usize {
        usize::from(self.code() - 1)
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
