//! Human and JSON printing, in one place: data on stdout, diagnostics on stderr.
//!
//! Commands build an [`Output`] holding both renderings; `main` picks one with
//! `--json`. Scripts read stdout (and the exit code); people read both. The
//! formatting helpers (amounts, times, variant values) are pure so they are
//! unit-tested without a daemon.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;

use serde_json::{json, Map, Value as Json};
use zbus::zvariant::{OwnedValue, Value};

use crate::error::CtlError;

/// What a command produced: both renderings and the exit code to leave with.
#[derive(Debug, Default)]
pub struct Output {
    /// Text for people (stdout), already newline-terminated.
    pub human: String,
    /// Document for scripts (stdout with `--json`).
    pub json: Json,
    /// Warnings for people (stderr, both modes).
    pub warnings: Vec<String>,
    /// Exit code; 0 unless the command found a negative result (`exit::NOT_VALID`).
    pub code: i32,
    /// Bytes written as they are in both modes (completions, man page).
    pub raw: Option<Vec<u8>>,
}

impl Output {
    /// An output with both renderings and exit code 0.
    pub fn new(human: String, json: Json) -> Self {
        Output {
            human,
            json,
            ..Output::default()
        }
    }

    /// An output that is the same bytes in both modes.
    pub fn raw(bytes: Vec<u8>) -> Self {
        Output {
            raw: Some(bytes),
            ..Output::default()
        }
    }
}

/// Prints a command's output. Write errors on stdout (a closed pipe) are ignored:
/// there is no one left to tell.
pub fn emit(out: &Output, json_mode: bool) {
    let mut stderr = std::io::stderr().lock();
    for w in &out.warnings {
        let _ = writeln!(stderr, "warning: {w}");
    }
    // A product written to stdout (`-o -`) keeps stdout to itself.
    let mut sink: Box<dyn Write> = match crate::cmd::data_on_stdout() {
        true => Box::new(stderr),
        false => {
            drop(stderr);
            Box::new(std::io::stdout().lock())
        }
    };
    let _ = match (&out.raw, json_mode) {
        (Some(raw), _) => sink.write_all(raw),
        (None, true) => writeln!(sink, "{}", envelope(&out.json)),
        (None, false) => sink.write_all(out.human.as_bytes()),
    };
    let _ = sink.flush();
}

/// Prints a failure: `error: Kind: message` on stderr, and in JSON mode also
/// `{"error": {"kind", "message"}}` on stdout so that scripts parse one stream.
pub fn emit_error(err: &CtlError, json_mode: bool) {
    let _ = writeln!(
        std::io::stderr().lock(),
        "error: {}: {}",
        err.kind(),
        err.message()
    );
    if json_mode {
        let _ = writeln!(std::io::stdout().lock(), "{}", error_json(err));
    }
}

/// Version of the `--json` documents (see `docs/JSON.md`); raised when a
/// field changes meaning or goes away, not when one is added.
pub const JSON_VERSION: u64 = 1;

/// The one envelope of every `--json` document: an object that always
/// has `"version"`; a command's fields beside it (never a bare array).
pub fn envelope(doc: &Json) -> Json {
    let mut obj = Map::new();
    obj.insert("version".into(), json!(JSON_VERSION));
    match doc {
        // A command's own `version` (none today) would be renamed, never lost.
        Json::Object(m) => obj.extend(m.iter().map(|(k, v)| match k.as_str() {
            "version" => ("command_version".to_owned(), v.clone()),
            _ => (k.clone(), v.clone()),
        })),
        Json::Null => {}
        other => {
            obj.insert("result".into(), other.clone());
        }
    }
    Json::Object(obj)
}

/// The JSON document for a failure.
pub fn error_json(err: &CtlError) -> Json {
    envelope(&json!({"error": {"kind": err.kind(), "message": err.message()}}))
}

/// The one money formatter (meter-proto's), re-exported for the commands.
pub use meter_proto::money::format_amount;

/// First 16 hex digits of a hash, enough to compare two heads by eye.
pub fn short_hex(full: &str) -> String {
    match full.get(..16) {
        Some(head) if full.len() > 16 => format!("{head}…"),
        _ => full.to_string(),
    }
}

/// Unix seconds as an RFC 3339 UTC time (`2024-05-01T12:00:00Z`), with the
/// `time` crate's calendar; a value outside its range (±9999 years) is shown
/// as the raw seconds rather than a wrong date.
pub fn format_unix_time(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}

/// Converts a D-Bus variant to JSON. Integers stay integers (u64 fits JSON
/// numbers exactly in serde_json), `ay` becomes a hex string, dictionaries
/// with string keys become objects, descriptors become null.
pub fn value_to_json(v: &Value<'_>) -> Json {
    match v {
        Value::U8(n) => json!(n),
        Value::Bool(b) => json!(b),
        Value::I16(n) => json!(n),
        Value::U16(n) => json!(n),
        Value::I32(n) => json!(n),
        Value::U32(n) => json!(n),
        Value::I64(n) => json!(n),
        Value::U64(n) => json!(n),
        Value::F64(n) => json!(n),
        Value::Str(s) => json!(s.as_str()),
        Value::Signature(s) => json!(s.to_string()),
        Value::ObjectPath(p) => json!(p.as_str()),
        Value::Value(inner) => value_to_json(inner),
        Value::Array(a) => match bytes_of(v) {
            Some(bytes) => json!(hex::encode(bytes)),
            None => Json::Array(a.inner().iter().map(value_to_json).collect()),
        },
        Value::Dict(d) => {
            let mut obj = Map::new();
            for (k, val) in d.iter() {
                let key = match k {
                    Value::Str(s) => s.as_str().to_string(),
                    other => value_to_json(other).to_string(),
                };
                obj.insert(key, value_to_json(val));
            }
            Json::Object(obj)
        }
        Value::Structure(s) => Json::Array(s.fields().iter().map(value_to_json).collect()),
        #[allow(unreachable_patterns)]
        _ => Json::Null,
    }
}

/// An `a{sv}` reply as a JSON object, keys sorted for stable output.
pub fn dict_to_json(dict: &HashMap<String, OwnedValue>) -> Json {
    let mut keys: Vec<&String> = dict.keys().collect();
    keys.sort();
    let mut obj = Map::new();
    for k in keys {
        if let Some(v) = dict.get(k) {
            obj.insert(k.clone(), value_to_json(v));
        }
    }
    Json::Object(obj)
}

/// The bytes of an `ay` value, `None` for any other type.
pub fn bytes_of(v: &Value<'_>) -> Option<Vec<u8>> {
    match v {
        Value::Array(a) if a.element_signature().to_string() == "y" => a
            .inner()
            .iter()
            .map(|e| match e {
                Value::U8(b) => Some(*b),
                _ => None,
            })
            .collect(),
        Value::Value(inner) => bytes_of(inner),
        _ => None,
    }
}

/// Typed, lenient readers of `a{sv}` replies: a missing key or another type
/// reads as `None`, so that a newer daemon adding or widening keys does not
/// break the display of the others.
pub struct Dict<'a>(pub &'a HashMap<String, OwnedValue>);

impl Dict<'_> {
    fn value(&self, key: &str) -> Option<&Value<'static>> {
        self.0.get(key).map(|v| unwrap_variant(v))
    }

    /// An unsigned integer of any width.
    pub fn u64(&self, key: &str) -> Option<u64> {
        match self.value(key)? {
            Value::U8(n) => Some(u64::from(*n)),
            Value::U16(n) => Some(u64::from(*n)),
            Value::U32(n) => Some(u64::from(*n)),
            Value::U64(n) => Some(*n),
            _ => None,
        }
    }

    /// A signed integer (`x`, or a small unsigned).
    pub fn i64(&self, key: &str) -> Option<i64> {
        match self.value(key)? {
            Value::I64(n) => Some(*n),
            Value::I32(n) => Some(i64::from(*n)),
            Value::U32(n) => Some(i64::from(*n)),
            _ => None,
        }
    }

    /// A string.
    pub fn str(&self, key: &str) -> Option<String> {
        match self.value(key)? {
            Value::Str(s) => Some(s.as_str().to_string()),
            _ => None,
        }
    }

    /// A boolean.
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.value(key)? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// A hash: a hex string, or `ay` rendered as hex.
    pub fn hex(&self, key: &str) -> Option<String> {
        let v = self.value(key)?;
        match v {
            Value::Str(s) => Some(s.as_str().to_string()),
            other => bytes_of(other).map(hex::encode),
        }
    }

    /// Raw bytes (`ay`).
    pub fn bytes(&self, key: &str) -> Option<Vec<u8>> {
        bytes_of(self.value(key)?)
    }

    /// An `a{st}` map, sorted by key.
    pub fn counts(&self, key: &str) -> Option<Vec<(String, u64)>> {
        let Value::Dict(d) = self.value(key)? else {
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in d.iter() {
            let (Value::Str(k), Value::U64(n)) = (k, unwrap_variant(v)) else {
                return None;
            };
            out.push((k.as_str().to_string(), *n));
        }
        out.sort();
        Some(out)
    }
}

fn unwrap_variant<'a, 'v>(v: &'a Value<'v>) -> &'a Value<'v> {
    match v {
        Value::Value(inner) => unwrap_variant(inner),
        other => other,
    }
}

/// A two-column `label  value` table, labels padded to the widest one.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<(String, String)>,
}

impl Table {
    /// Adds a row.
    pub fn row(&mut self, label: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.rows.push((label.into(), value.into()));
        self
    }

    /// Renders the table, one row per line.
    pub fn render(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (label, value) in &self.rows {
            let pad = width - label.chars().count();
            let _ = writeln!(out, "{label}{}  {value}", " ".repeat(pad));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(format_unix_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix_time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_unix_time(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_unix_time(i64::MAX), format!("@{}", i64::MAX));
    }

    #[test]
    fn short_hex_cuts_long_hashes_only() {
        assert_eq!(short_hex("abcd"), "abcd");
        let full = "0123456789abcdef0123";
        assert_eq!(short_hex(full), "0123456789abcdef…");
    }

    #[test]
    fn table_aligns_values() {
        let mut t = Table::default();
        t.row("id", "m1").row("descending", "1.000 USD");
        assert_eq!(t.render(), "id          m1\ndescending  1.000 USD\n");
    }

    fn sample() -> HashMap<String, OwnedValue> {
        let mut counts = HashMap::new();
        counts.insert("postmark".to_string(), 7u64);
        counts.insert("validate".to_string(), 2u64);
        let mut m: HashMap<String, OwnedValue> = HashMap::new();
        m.insert("d".into(), OwnedValue::from(12_345u64));
        m.insert("v".into(), OwnedValue::from(3u32));
        m.insert("y".into(), OwnedValue::from(3u8));
        m.insert("t".into(), OwnedValue::from(-5i64));
        m.insert("b".into(), OwnedValue::from(true));
        m.insert(
            "s".into(),
            OwnedValue::try_from(Value::from("ready")).unwrap(),
        );
        m.insert(
            "c".into(),
            OwnedValue::try_from(Value::from(counts)).unwrap(),
        );
        m.insert(
            "h".into(),
            OwnedValue::try_from(Value::from(vec![0xabu8, 0x01])).unwrap(),
        );
        m
    }

    #[test]
    fn dictionaries_convert_to_json() {
        let j = dict_to_json(&sample());
        assert_eq!(
            j,
            json!({
                "d": 12345, "v": 3, "y": 3, "t": -5, "b": true, "s": "ready",
                "c": {"postmark": 7, "validate": 2}, "h": "ab01"
            })
        );
        let big = HashMap::from([("x".to_string(), OwnedValue::from(u64::MAX))]);
        assert_eq!(dict_to_json(&big)["x"].as_u64(), Some(u64::MAX));
    }

    #[test]
    fn dict_reader_is_typed_and_lenient() {
        let m = sample();
        let d = Dict(&m);
        assert_eq!(d.u64("d"), Some(12_345));
        assert_eq!(d.u64("y"), Some(3));
        assert_eq!(d.u64("s"), None);
        assert_eq!(d.u64("missing"), None);
        assert_eq!(d.i64("t"), Some(-5));
        assert_eq!(d.str("s").as_deref(), Some("ready"));
        assert_eq!(d.bool("b"), Some(true));
        assert_eq!(d.hex("h").as_deref(), Some("ab01"));
        assert_eq!(d.bytes("h"), Some(vec![0xab, 0x01]));
        assert_eq!(
            d.counts("c"),
            Some(vec![("postmark".into(), 7), ("validate".into(), 2)])
        );
    }

    #[test]
    fn errors_have_a_json_shape() {
        let e = CtlError::Usage("bad".into());
        assert_eq!(
            error_json(&e),
            json!({"version": 1, "error": {"kind": "Usage", "message": "bad"}})
        );
        assert_eq!(envelope(&json!({"a": 1}))["version"], 1);
        assert_eq!(envelope(&json!([1]))["result"], json!([1]));
    }
}
