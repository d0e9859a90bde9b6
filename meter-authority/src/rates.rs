//! The human-readable rate file (TOML) and its conversion to the signed `RateTable`.
//!
//! Format (see `rates.example.toml`): money in integer minor units with `digits` telling how
//! many of them make one currency unit (3 = tenths of cents); `effective` is an RFC 3339 UTC
//! timestamp `YYYY-MM-DDTHH:MM:SSZ` (a quoted string), so people can read it.

use crate::{AuthorityError, Result};
use meter_pki::payload::{Payload, PostageRate, RateTable};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Services a rate table may price (SPEC "Table of service rates").
pub const SERVICES: [&str; 11] = [
    "postmark",
    "validate",
    "sign",
    "certificate-install",
    "agent-certificate",
    "revoke",
    "credit-line",
    "payment-certificate",
    "status-report",
    "postage",
    "decrypt",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RatesFile {
    version: u32,
    effective: String,
    currency: String,
    digits: u8,
    rates: BTreeMap<String, u64>,
    #[serde(default)]
    postage: Vec<PostageRate>,
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` to unix seconds.
pub fn parse_utc(s: &str) -> Result<i64> {
    let bad = || AuthorityError::Invalid(format!("time {s:?} is not YYYY-MM-DDTHH:MM:SSZ"));
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u16> {
        s.get(r)
            .filter(|x| x.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|x| x.parse().ok())
            .ok_or_else(bad)
    };
    let small = |r| -> Result<u8> { u8::try_from(num(r)?).map_err(|_| bad()) };
    let dt = der::DateTime::new(
        num(0..4)?,
        small(5..7)?,
        small(8..10)?,
        small(11..13)?,
        small(14..16)?,
        small(17..19)?,
    )
    .map_err(|_| bad())?;
    i64::try_from(dt.unix_duration().as_secs()).map_err(|_| bad())
}

/// Parses and validates a rate file into the payload the meter installs.
pub fn parse(toml_text: &str) -> Result<RateTable> {
    let f: RatesFile = toml::from_str(toml_text)
        .map_err(|e| AuthorityError::Invalid(format!("rate file: {e}")))?;
    if f.version < 1 {
        return Err(AuthorityError::Invalid("version must be >= 1".into()));
    }
    if let Some(unknown) = f.rates.keys().find(|k| !SERVICES.contains(&k.as_str())) {
        return Err(AuthorityError::Invalid(format!(
            "unknown service {unknown:?}; known: {}",
            SERVICES.join(", ")
        )));
    }
    let table = RateTable {
        version: f.version,
        effective: parse_utc(&f.effective)?,
        currency: f.currency,
        digits: f.digits,
        rates: f.rates,
        postage: f.postage,
    };
    table.validate()?;
    Ok(table)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_utc("2026-01-01T00:00:00Z").unwrap(), 1_767_225_600);
        assert_eq!(parse_utc("1970-01-01T00:00:01Z").unwrap(), 1);
        for bad in [
            "2026-01-01",
            "2026-13-01T00:00:00Z",
            "2026-01-01T00:00:00+01",
            "+026-01-01T00:00:00Z",
        ] {
            assert!(parse_utc(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn example_file_parses_and_bad_files_do_not() {
        let text = include_str!("../rates.example.toml");
        let t = parse(text).unwrap();
        assert_eq!(t.version, 1);
        assert_eq!(t.digits, 3);
        assert_eq!(t.rates.get("postmark"), Some(&500));
        assert!(!t.postage.is_empty());
        assert!(parse(&text.replace("postmark = 500", "postmarc = 500")).is_err());
        assert!(parse(&text.replace("version = 1", "version = 0")).is_err());
        assert!(parse(&text.replace("digits = 3", "digits = 9")).is_err());
        assert!(parse(&format!("{text}\nextra = 1\n")).is_err());
    }
}
