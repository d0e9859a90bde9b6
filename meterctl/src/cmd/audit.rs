//! `meterctl audit`: asks the meter to re-check its whole ledger chain and the
//! chain head's binding to the TPM counter.
//!
//! Damage found is a result: printed, with exit `exit::NOT_VALID` (12).

use std::collections::HashMap;

use meter_proto::exit;
use meter_proto::keys::audit as key;
use zbus::zvariant::OwnedValue;

use super::Ctx;
use crate::error::CtlError;
use crate::output::{dict_to_json, short_hex, Dict, Output, Table};

/// Arguments of `meterctl audit` (none).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `meterctl audit`.
pub async fn run(ctx: &Ctx, _args: Args) -> Result<Output, CtlError> {
    let meter = ctx.meter().await?;
    let result = meter.audit().await?;
    render(&result)
}

/// The output for an `Audit()` result; a result without `ok` is a contract breach.
pub fn render(result: &HashMap<String, OwnedValue>) -> Result<Output, CtlError> {
    let d = Dict(result);
    let ok = d
        .bool(key::OK)
        .ok_or_else(|| CtlError::Reply(format!("Audit result lacks `{}`", key::OK)))?;
    let num = |k: &str| {
        d.u64(k)
            .map(|n| n.to_string())
            .unwrap_or_else(|| "?".into())
    };
    let mut t = Table::default();
    t.row("ok", if ok { "yes" } else { "NO" });
    if let Some(problem) = d.str(key::PROBLEM).filter(|p| !p.is_empty()) {
        t.row("problem", problem);
    }
    t.row("rows", num(key::ROWS));
    t.row("batches", num(key::BATCHES));
    t.row(
        "head",
        d.hex(key::HEAD)
            .map(|h| short_hex(&h))
            .unwrap_or_else(|| "?".into()),
    );
    t.row("NV counter", num(key::NV_COUNTER));
    t.row("took", format!("{} ms", num(key::MILLIS)));
    let mut out = Output::new(t.render(), dict_to_json(result));
    if !ok {
        out.code = exit::NOT_VALID;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::Value;

    fn result(ok: bool) -> HashMap<String, OwnedValue> {
        let mut m = HashMap::new();
        m.insert(key::OK.to_string(), OwnedValue::from(ok));
        m.insert(key::ROWS.to_string(), OwnedValue::from(1_000u64));
        m.insert(key::BATCHES.to_string(), OwnedValue::from(40u64));
        m.insert(
            key::HEAD.to_string(),
            OwnedValue::try_from(Value::from(vec![0x12u8; 48])).unwrap(),
        );
        m.insert(key::NV_COUNTER.to_string(), OwnedValue::from(40u64));
        m.insert(key::MILLIS.to_string(), OwnedValue::from(87u64));
        if !ok {
            m.insert(
                key::PROBLEM.to_string(),
                OwnedValue::try_from(Value::from("row 17 hash mismatch")).unwrap(),
            );
        }
        m
    }

    #[test]
    fn clean_audit() {
        let out = render(&result(true)).unwrap();
        assert_eq!(out.code, exit::OK);
        assert!(out.human.contains("rows        1000\n"), "{}", out.human);
        assert!(out.human.contains("head        1212121212121212…\n"));
        assert!(out.human.contains("took        87 ms\n"));
        assert_eq!(out.json["head"], serde_json::json!("12".repeat(48)));
    }

    #[test]
    fn damaged_ledger_exits_12() {
        let out = render(&result(false)).unwrap();
        assert_eq!(out.code, exit::NOT_VALID);
        assert!(out.human.contains("problem     row 17 hash mismatch\n"));
    }
}
