//! The `a{sv}` dictionaries of `ListCreditLines`.

use std::collections::HashMap;

use meter_proto::keys::credit_line as k;
use zbus::zvariant::{OwnedValue, Value};

use crate::credit::LineView;

type Dict = HashMap<String, OwnedValue>;

fn put<'a>(d: &mut Dict, key: &str, v: impl Into<Value<'a>>) {
    // Only file descriptors fail to become owned; none are put here.
    if let Ok(v) = v.into().try_to_owned() {
        d.insert(key.to_owned(), v);
    }
}

/// One line's dictionary.
pub fn line_dict(l: LineView) -> Dict {
    let mut d = Dict::new();
    put(&mut d, k::SERIAL, l.serial);
    put(&mut d, k::ISSUER, l.issuer);
    put(&mut d, k::HOLDER, l.holder);
    put(&mut d, k::GRANTED, l.granted.0);
    put(&mut d, k::USED, l.used.0);
    put(&mut d, k::REMAINING, l.remaining.0);
    put(&mut d, k::CERTIFICATES, l.certificates);
    put(&mut d, k::NOT_BEFORE, l.not_before);
    put(&mut d, k::NOT_AFTER, l.not_after);
    put(&mut d, k::AUTHORIZED_USE, l.authorized_use);
    put(&mut d, k::STATE, l.state);
    put(&mut d, k::DIGEST, l.digest_hex);
    d
}
