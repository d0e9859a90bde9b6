//! `meterctl validate FILE TOKEN`: asks the meter to verify a postmark token,
//! or a detached signature made by `meterctl sign`, against its message (a
//! charged service).
//!
//! A negative verdict is a result, not an error: it is printed like a
//! positive one and meterctl exits with `exit::NOT_VALID` (12).

use std::collections::HashMap;
use std::path::PathBuf;

use meter_proto::exit;
use meter_proto::keys::report as key;
use zbus::zvariant::{Fd, OwnedValue};

use super::{open_message, read_input, Ctx, MAX_OBJECT};
use crate::error::CtlError;
use crate::output::{dict_to_json, format_unix_time, Dict, Output, Table};

/// Arguments of `meterctl validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The message the token is over.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The RFC 3161 token, or a detached CMS signature from `meterctl sign` (DER).
    #[arg(value_name = "TOKEN")]
    pub token: PathBuf,
}

/// Runs `meterctl validate`.
pub async fn run(ctx: &Ctx, args: Args) -> Result<Output, CtlError> {
    let token = read_input(&args.token, MAX_OBJECT)?;
    let message = open_message(&args.file)?;
    let meter = ctx.meter().await?;
    let report = meter.validate(Fd::from(&message), &token).await?;
    render(&report)
}

/// The output for a `Validate()` report; a report without `valid` is a contract breach.
pub fn render(report: &HashMap<String, OwnedValue>) -> Result<Output, CtlError> {
    let d = Dict(report);
    let valid = d
        .bool(key::VALID)
        .ok_or_else(|| CtlError::Reply(format!("Validate report lacks `{}`", key::VALID)))?;
    let mut t = Table::default();
    t.row("valid", if valid { "yes" } else { "NO" });
    let opt = |v: Option<String>| v.filter(|s| !s.is_empty());
    if let Some(step) = opt(d.str(key::STEP)) {
        t.row(if valid { "step" } else { "failed step" }, step);
    }
    if let Some(detail) = opt(d.str(key::DETAIL)) {
        t.row("detail", detail);
    }
    if let Some(signer) = opt(d.str(key::SIGNER)) {
        t.row("signer", signer);
    }
    if let Some(time) = d.i64(key::TIME) {
        t.row("time", format_unix_time(time));
    }
    if let Some(id) = opt(d.str(key::METER_ID)) {
        t.row("meter id", id);
    }
    if let Some(serial) = opt(d.str(key::SERIAL)) {
        t.row("serial", serial);
    }
    let mut out = Output::new(t.render(), dict_to_json(report));
    if !valid {
        out.code = exit::NOT_VALID;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::Value;

    fn s(v: &str) -> OwnedValue {
        OwnedValue::try_from(Value::from(v)).unwrap()
    }

    #[test]
    fn valid_report() {
        let mut m = HashMap::new();
        m.insert(key::VALID.to_string(), OwnedValue::from(true));
        m.insert(key::STEP.to_string(), s("ok"));
        m.insert(key::SIGNER.to_string(), s("CN=MTR-0001"));
        m.insert(key::TIME.to_string(), OwnedValue::from(1_700_000_000i64));
        m.insert(key::METER_ID.to_string(), s("MTR-0001"));
        let out = render(&m).unwrap();
        assert_eq!(out.code, exit::OK);
        assert!(out.human.contains("valid     yes\n"), "{}", out.human);
        assert!(out.human.contains("time      2023-11-14T22:13:20Z\n"));
        assert!(out.human.contains("signer    CN=MTR-0001\n"));
        assert_eq!(out.json["valid"], serde_json::json!(true));
        assert_eq!(out.json["time"], serde_json::json!(1_700_000_000i64));
    }

    #[test]
    fn invalid_report_exits_12() {
        let mut m = HashMap::new();
        m.insert(key::VALID.to_string(), OwnedValue::from(false));
        m.insert(key::STEP.to_string(), s("digest"));
        let out = render(&m).unwrap();
        assert_eq!(out.code, exit::NOT_VALID);
        assert!(out.human.contains("failed step  digest"), "{}", out.human);
    }

    #[test]
    fn report_without_verdict_is_an_error() {
        assert!(matches!(render(&HashMap::new()), Err(CtlError::Reply(_))));
    }
}
