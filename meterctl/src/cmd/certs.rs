//! `meterctl certs`: the meter's user certificates and their states
//! (pending, active, expired, revoked).
//!
//! Serials are shown in one form everywhere in meterctl ([`shown_serial`]):
//! as `openssl x509 -serial` prints them, so that a serial read here can be
//! compared with OpenSSL's by eye and given back in any spelling.

use meter_proto::keys::certificate as key;
use serde_json::Value as Json;

use super::Ctx;
use crate::error::CtlError;
use crate::output::{dict_to_json, format_unix_time, Dict, Output};

/// Arguments of `meterctl certs`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// A serial as `openssl x509 -serial` prints it (uppercase hex, even
/// length: `04`, `1F`); a serial that is not hex is shown as it came.
pub fn shown_serial(serial: &str) -> String {
    meter_pki::revoke::display_serial(serial).unwrap_or_else(|_| serial.to_string())
}

/// Runs `meterctl certs`.
pub async fn run(ctx: &Ctx, _args: Args) -> Result<Output, CtlError> {
    let meter = ctx.meter().await?;
    let list = meter.list_certificates().await?;
    let mut human = format!(
        "{:<20} {:<8} {:<24} {:<20} {}\n",
        "SERIAL", "STATE", "SUBJECT", "NOT AFTER", "KEY"
    );
    for entry in &list {
        let d = Dict(entry);
        let serial = d
            .str(key::SERIAL)
            .filter(|s| !s.is_empty())
            .map(|s| shown_serial(&s));
        let not_after = d.i64(key::NOT_AFTER).filter(|t| *t > 0);
        human.push_str(&format!(
            "{:<20} {:<8} {:<24} {:<20} {}\n",
            serial.unwrap_or_else(|| "-".into()),
            d.str(key::STATE).unwrap_or_default(),
            d.str(key::SUBJECT).unwrap_or_default(),
            not_after
                .map(format_unix_time)
                .unwrap_or_else(|| "-".into()),
            d.str(key::KEY).unwrap_or_default(),
        ));
    }
    if list.is_empty() {
        human = "no user certificates; meterctl cert request makes one\n".into();
    }
    let entries = list.iter().map(|e| {
        let mut j = dict_to_json(e);
        if let Some(Json::String(s)) = j.get_mut(key::SERIAL) {
            if !s.is_empty() {
                *s = shown_serial(s);
            }
        }
        j
    });
    let json = serde_json::json!({"certificates": Json::Array(entries.collect())});
    Ok(Output::new(human, json))
}
