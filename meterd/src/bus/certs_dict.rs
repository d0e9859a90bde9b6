//! Wire forms of the user-certificate members: the `a{sv}` subject of
//! `RequestCertificate` (strict: known keys, string values) and the
//! `aa{sv}` of `ListCertificates`.

use std::collections::HashMap;

use zbus::zvariant::{OwnedValue, Value};

use meter_proto::keys::{certificate as ck, subject as sk};
use meter_proto::MeterError;

use crate::certs::CertStore;
use crate::clock;

type Dict = HashMap<String, OwnedValue>;

/// (cn, enrolment code) from the subject dictionary; unknown keys and
/// non-string values are refused.
pub fn subject(d: &Dict) -> Result<(String, String), MeterError> {
    let mut cn = None;
    let mut code = None;
    for (k, v) in d {
        let s = match &**v {
            Value::Str(s) => s.as_str().to_owned(),
            _ => {
                return Err(MeterError::InvalidInput(format!(
                    "subject key {k:?} must be a string"
                )))
            }
        };
        match k.as_str() {
            sk::CN => cn = Some(s),
            sk::ENROLMENT_CODE => code = Some(s),
            sk::PURPOSE if s == "sign" || s == "encrypt" => {}
            sk::PURPOSE => {
                return Err(MeterError::InvalidInput(format!(
                    "subject key {:?} must be \"sign\" or \"encrypt\", got {s:?}",
                    sk::PURPOSE
                )))
            }
            other => {
                return Err(MeterError::InvalidInput(format!(
                    "unknown subject key {other:?}; known: {}, {}, {}",
                    sk::CN,
                    sk::ENROLMENT_CODE,
                    sk::PURPOSE
                )))
            }
        }
    }
    match (cn, code) {
        (Some(cn), Some(code)) => Ok((cn, code)),
        _ => Err(MeterError::InvalidInput(format!(
            "the subject needs {:?} and {:?}",
            sk::CN,
            sk::ENROLMENT_CODE
        ))),
    }
}

/// Whether the subject dictionary asks for an encryption (key-agreement) key.
pub fn wants_encrypt(d: &Dict) -> bool {
    d.get(sk::PURPOSE)
        .and_then(|v| match &**v {
            Value::Str(s) => Some(s.as_str() == "encrypt"),
            _ => None,
        })
        .unwrap_or(false)
}

fn put<'a>(d: &mut Dict, key: &str, v: impl Into<Value<'a>>) {
    if let Ok(v) = v.into().try_to_owned() {
        d.insert(key.to_owned(), v);
    }
}

/// The string values of an `a{sv}` (an agent certificate's subject);
/// any other type of value is refused.
pub fn strings(d: Dict) -> Result<HashMap<String, String>, MeterError> {
    let mut out = HashMap::with_capacity(d.len());
    for (k, v) in d {
        let v = String::try_from(v).map_err(|_| {
            MeterError::InvalidInput(format!("subject field {k:?} must be a string"))
        })?;
        out.insert(k, v);
    }
    Ok(out)
}

/// `ListCertificates()`.
pub fn list(certs: &CertStore) -> Vec<Dict> {
    let now = clock::now();
    certs
        .list()
        .into_iter()
        .map(|e| {
            let mut d = Dict::new();
            put(&mut d, ck::SERIAL, e.serial());
            put(&mut d, ck::SUBJECT, e.subject.clone());
            put(&mut d, ck::NOT_AFTER, e.not_after());
            put(&mut d, ck::STATE, e.state(now).name());
            put(&mut d, ck::KEY, e.key.clone());
            put(
                &mut d,
                ck::PURPOSE,
                if e.encrypt { "encrypt" } else { "sign" },
            );
            d
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn dict(pairs: &[(&str, Value<'_>)]) -> Dict {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.try_to_owned().unwrap()))
            .collect()
    }

    #[test]
    fn subject_is_strict() {
        let ok = dict(&[("cn", "Alice".into()), ("enrolment_code", "C1".into())]);
        assert_eq!(subject(&ok).unwrap(), ("Alice".into(), "C1".into()));
        assert!(subject(&dict(&[("cn", "Alice".into())])).is_err());
        let extra = dict(&[
            ("cn", "A".into()),
            ("enrolment_code", "C".into()),
            ("o", "Org".into()),
        ]);
        assert!(subject(&extra).is_err());
        let typed = dict(&[("cn", 5u32.into()), ("enrolment_code", "C".into())]);
        assert!(subject(&typed).is_err());
        let enc = dict(&[
            ("cn", "A".into()),
            ("enrolment_code", "C".into()),
            ("purpose", "encrypt".into()),
        ]);
        assert!(subject(&enc).is_ok() && wants_encrypt(&enc));
        assert!(!wants_encrypt(&ok));
        let bad = dict(&[
            ("cn", "A".into()),
            ("enrolment_code", "C".into()),
            ("purpose", "other".into()),
        ]);
        assert!(subject(&bad).is_err());
    }

    proptest::proptest! {
        #[test]
        fn subject_never_panics(
            keys in proptest::collection::vec(".{0,16}", 0..4),
            vals in proptest::collection::vec(".{0,80}", 0..4),
            num in proptest::num::u64::ANY,
        ) {
            let mut d = Dict::new();
            for (i, k) in keys.iter().enumerate() {
                let v = match vals.get(i) {
                    Some(s) => Value::from(s.as_str()),
                    None => Value::from(num),
                };
                d.insert(k.clone(), v.try_to_owned().unwrap());
            }
            if let Ok((cn, code)) = subject(&d) {
                proptest::prop_assert_eq!(d.len(), 2);
                proptest::prop_assert!(keys.contains(&cn) || vals.contains(&cn));
                proptest::prop_assert!(vals.contains(&code));
            }
        }
    }
}
