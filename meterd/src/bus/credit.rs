//! The credit members' work (`RequestCredit`, `OpenCreditLine`, `Pay`: the
//! interface block in `mod.rs` keeps their signatures) and the `a{sv}`
//! dictionaries of `ListCreditLines`.

use std::collections::HashMap;

use meter_proto::keys::credit_line as k;
use meter_proto::MeterError;
use zbus::message::Header;
use zbus::zvariant::{OwnedValue, Value};

use super::door::bounded;
use super::MeterIface;
use crate::credit::{self as service, LineView};
use meter_proto::Blob;

impl MeterIface {
    /// `RequestCredit`: a signed, postmarked credit request (admin).
    pub(super) async fn request_credit_for(
        &self,
        header: &Header<'_>,
        creditor: &str,
        amount: u64,
        request_id: &str,
    ) -> Result<Blob, MeterError> {
        let call = self.admin(header, "RequestCredit").await?;
        let key = call.key(request_id)?;
        call.blob(service::request::request_credit(&self.app.meter, creditor, amount, key).await)
    }

    /// `OpenCreditLine`: the first payment certificate (admin).
    pub(super) async fn open_line(
        &self,
        header: &Header<'_>,
        certificate: &[u8],
        request_id: &str,
    ) -> Result<Blob, MeterError> {
        let call = self.admin(header, "OpenCreditLine").await?;
        bounded("line-of-credit certificate", certificate)?;
        let key = call.key(request_id)?;
        let (meter, credit) = (&self.app.meter, &self.app.credit);
        call.blob(service::open::open_credit_line(meter, credit, certificate, key).await)
    }

    /// `Pay`: a payment certificate from a line (sale lane).
    pub(super) async fn pay_from_line(
        &self,
        header: &Header<'_>,
        credit_serial: &str,
        amount: u64,
        payee: &str,
        request_id: &str,
    ) -> Result<Blob, MeterError> {
        let call = self.seller(header, "Pay").await?;
        let key = call.key(request_id)?;
        let (meter, credit) = (&self.app.meter, &self.app.credit);
        call.blob(service::pay::pay(meter, credit, credit_serial, amount, payee, key).await)
    }
}

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
