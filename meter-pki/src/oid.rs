//! Object identifiers used by the meter formats.
//!
//! Private identifiers sit under one `2.25.N` arc (ITU-T X.667). `const-oid` 0.9, which the
//! whole `der` 0.7 stack uses, limits each arc to 32 bits (and in practice to 28: a 5-byte arc is refused), so a full 128-bit UUID arc cannot
//! be represented (neither encoded nor decoded); `N` is therefore a random 28-bit number
//! (252996336). A production deployment should move to a registered enterprise arc.

use der::asn1::ObjectIdentifier;

/// eContentType of a recharge voucher (`payload::Voucher`).
pub const CT_VOUCHER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.1.1");
/// eContentType of a rate table (`payload::RateTable`).
pub const CT_RATES: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.1.2");
/// eContentType of a clear-lock order (`payload::ClearLockOrder`).
pub const CT_CLEAR_LOCK: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.1.3");
/// eContentType of a trust-anchor update (`payload::AnchorUpdate`).
pub const CT_ANCHOR_UPDATE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.1.4");
/// eContentType of a certificate request (meter → authority: PKCS#10 + enrolment code), Fig. 5.
pub const CT_CERT_REQUEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.1.5");
/// eContentType of a revoke request (meter → authority), Fig. 6.
pub const CT_REVOKE_REQUEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.1.6");
/// eContentType of a revoke order (authority → meter), Fig. 6.
pub const CT_REVOKE_ORDER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.1.7");
/// eContentType of a revocation confirmation (meter → authority: revoked, paid or payment due).
pub const CT_REVOKE_CONFIRMATION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.25.252996336.1.8");
/// eContentType of a signed status report (meter → authority).
pub const CT_STATUS_REPORT: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.1.9");
/// eContentType of a report acknowledgement (authority → meter).
pub const CT_REPORT_ACK: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.1.10");
/// eContentType of a lock order (authority → meter, reason `forced`).
pub const CT_LOCK_ORDER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.1.11");
/// eContentType of a credit request (meter → creditor), Fig. 7A.
pub const CT_CREDIT_REQUEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.1.12");
/// eContentType of a line-of-credit certificate (creditor → meter), Fig. 8.
pub const CT_CREDIT_LINE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.1.13");
/// eContentType of a payment certificate (meter → merchant), Fig. 9.
pub const CT_PAYMENT: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.1.14");
/// eContentType of a current-account order (authority → meter: limit, billing period).
pub const CT_ACCOUNT_ORDER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.1.15");
/// eContentType of a funds order (authority → meter: keep postage funds apart), issue 17.
pub const CT_FUNDS_ORDER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.1.22");
/// eContentType of a postal-key request (meter → authority: its TPM storage parent), claim 21.
pub const CT_POSTAL_KEY_REQUEST: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.25.252996336.1.20");
/// eContentType of a postal-key delivery (authority → meter: the wrapped HMAC key), claim 21.
pub const CT_POSTAL_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.1.21");
/// Signed attribute of a seal-bearing product (postmark token, a CMS the
/// meter signs with its identity key): `SEQUENCE { epoch INTEGER, seq
/// INTEGER, link OCTET STRING }`, see `ledger_format::LedgerSeal`. Relying
/// parties that do not know it ignore it (RFC 5652 §5.3).
pub const ATTR_LEDGER_SEAL: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.4.1");
/// Certificate policy of user certificates the authority issues to meters (Fig. 5).
pub const USER_POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.2.2");
/// Certificate policy of agent (employee) certificates a meter issues (Fig. 3A).
pub const AGENT_POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.2.3");
/// Postage indicium format marker (claims 17–31).
pub const INDICIUM_V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.3.1");
/// TSA policy of meter postmarks (RFC 3161 `TSTInfo.policy`).
pub const POSTMARK_POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.25.252996336.2.1");
/// id-ct-TSTInfo (RFC 3161).
pub const ID_CT_TSTINFO: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");

/// id-data (RFC 5652).
pub const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
/// id-signedData (RFC 5652).
pub const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
/// id-contentType signed attribute.
pub const ATTR_CONTENT_TYPE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
/// id-messageDigest signed attribute.
pub const ATTR_MESSAGE_DIGEST: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
/// id-signingTime signed attribute.
pub const ATTR_SIGNING_TIME: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.5");
/// id-aa-signingCertificateV2 (RFC 5035).
pub const ATTR_SIGNING_CERT_V2: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.47");
/// id-sha256.
pub const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// id-sha512.
pub const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
/// id-sha384.
pub const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
/// ecdsa-with-SHA384.
pub const ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
/// id-ecPublicKey.
pub const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp384r1.
pub const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// id-kp-timeStamping.
pub const KP_TIME_STAMPING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.8");
/// commonName attribute type.
pub const CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
/// id-ce-subjectKeyIdentifier.
pub const EXT_SKI: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
/// id-ce-keyUsage.
pub const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
/// id-ce-basicConstraints.
pub const EXT_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
/// id-ce-certificatePolicies.
pub const EXT_CERT_POLICIES: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.32");
/// id-ce-authorityKeyIdentifier.
pub const EXT_AKI: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.35");
/// id-ce-extKeyUsage.
pub const EXT_EKU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn private_arc_is_shared_and_distinct() {
        let all = [
            CT_VOUCHER,
            CT_RATES,
            CT_CLEAR_LOCK,
            CT_ANCHOR_UPDATE,
            CT_CERT_REQUEST,
            CT_REVOKE_REQUEST,
            CT_REVOKE_ORDER,
            CT_REVOKE_CONFIRMATION,
            CT_STATUS_REPORT,
            CT_REPORT_ACK,
            CT_LOCK_ORDER,
            CT_CREDIT_REQUEST,
            CT_CREDIT_LINE,
            CT_PAYMENT,
            CT_ACCOUNT_ORDER,
            CT_FUNDS_ORDER,
            CT_POSTAL_KEY_REQUEST,
            CT_POSTAL_KEY,
            POSTMARK_POLICY,
            USER_POLICY,
            AGENT_POLICY,
            INDICIUM_V1,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(a.to_string().starts_with("2.25.252996336."));
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
