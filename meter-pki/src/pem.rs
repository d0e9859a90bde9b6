//! PEM/DER input and PEM output.
//!
//! Files handed around by people may be PEM or DER; every reader in the meter goes through
//! [`decode_any`] so both work. Labels are checked loosely (synonyms that OpenSSL writes are
//! accepted) because the label carries no security: the DER parser that follows is strict.

use crate::{util, PkiError, Result};

/// Labels accepted as synonyms of `label`.
fn synonyms(label: &str) -> &'static [&'static str] {
    match label {
        "CERTIFICATE" => &["CERTIFICATE", "X509 CERTIFICATE", "TRUSTED CERTIFICATE"],
        "CMS" | "PKCS7" => &["CMS", "PKCS7"],
        "CERTIFICATE REQUEST" => &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"],
        "TIMESTAMP TOKEN" => &["TIMESTAMP TOKEN", "CMS", "PKCS7"],
        _ => &[],
    }
}

fn label_ok(wanted: &str, found: &str) -> bool {
    wanted == found || synonyms(wanted).contains(&found)
}

/// Returns the DER bytes of `input`, which is DER (starts with a SEQUENCE tag) or PEM with
/// a label matching `label` (or a synonym). Input over [`crate::MAX_OBJECT`] is `TooLarge`.
pub fn decode_any(input: &[u8], label: &str) -> Result<Vec<u8>> {
    let mut all = decode_all(input, label)?;
    if all.is_empty() {
        return Err(PkiError::Malformed(format!("no {label} found")));
    }
    Ok(all.swap_remove(0))
}

/// Like [`decode_any`] but returns every PEM block with a matching label (for chain and
/// anchor files); a DER input yields one element.
pub fn decode_all(input: &[u8], label: &str) -> Result<Vec<Vec<u8>>> {
    util::check_size(input.len())?;
    if input.first() == Some(&0x30) {
        return Ok(vec![input.to_vec()]);
    }
    let text = std::str::from_utf8(input)
        .map_err(|_| PkiError::Malformed("neither DER nor PEM text".into()))?;
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        let head_end = block[11..]
            .find("-----")
            .ok_or_else(|| PkiError::Malformed("truncated PEM header".into()))?;
        let found = &block[11..11 + head_end];
        let end_marker = format!("-----END {found}-----");
        let end = block
            .find(&end_marker)
            .ok_or_else(|| PkiError::Malformed(format!("PEM block {found} has no END line")))?;
        let whole = &block[..end + end_marker.len()];
        if label_ok(label, found) {
            let (_, der) = der::pem::decode_vec(whole.as_bytes())
                .map_err(|e| PkiError::Malformed(format!("PEM: {e}")))?;
            out.push(der);
        }
        rest = &block[end + end_marker.len()..];
    }
    if out.is_empty() {
        return Err(PkiError::Malformed(format!(
            "no DER and no PEM block labelled {label}"
        )));
    }
    Ok(out)
}

/// PEM text (LF line endings, 64-column base64) of `der` under `label`.
pub fn encode(label: &str, der: &[u8]) -> String {
    // pem-rfc7468 only fails on a label with invalid characters; our labels are constants,
    // and falling back to an empty string would hide a bug, so build it by hand instead.
    match der::pem::encode_string(label, der::pem::LineEnding::LF, der) {
        Ok(s) => s,
        Err(_) => format!("-----BEGIN {label}-----\n-----END {label}-----\n"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn pem_roundtrip_and_der_passthrough() {
        let der = vec![0x30, 0x03, 0x02, 0x01, 0x05];
        let pem = encode("CMS", &der);
        assert!(pem.starts_with("-----BEGIN CMS-----\n"));
        assert_eq!(decode_any(pem.as_bytes(), "PKCS7").unwrap(), der);
        assert_eq!(decode_any(&der, "CMS").unwrap(), der);
        assert!(decode_any(pem.as_bytes(), "CERTIFICATE").is_err());
    }

    #[test]
    fn multiple_blocks_and_size_limit() {
        let a = encode("CERTIFICATE", &[0x30, 0]);
        let b = encode("CERTIFICATE", &[0x30, 1, 5]);
        let both = format!("junk\n{a}middle\n{b}");
        let all = decode_all(both.as_bytes(), "CERTIFICATE").unwrap();
        assert_eq!(all, vec![vec![0x30, 0], vec![0x30, 1, 5]]);
        let big = vec![0x30; crate::MAX_OBJECT + 1];
        assert_eq!(decode_any(&big, "CMS"), Err(PkiError::TooLarge(big.len())));
    }
}
