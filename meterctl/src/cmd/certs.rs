//! `meterctl certs`: the meter's user certificates and their states
//! (pending, active, expired, revoked).

use meter_proto::keys::certificate as key;
use serde_json::Value as Json;

use super::Ctx;
use crate::error::CtlError;
use crate::output::{dict_to_json, format_unix_time, Dict, Output};

/// Arguments of `meterctl certs`.
#[derive(Debug, clap::Args)]
pub struct Args {}

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
        let serial = d.str(key::SERIAL).filter(|s| !s.is_empty());
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
    let json =
        serde_json::json!({"certificates": Json::Array(list.iter().map(dict_to_json).collect())});
    Ok(Output::new(human, json))
}
