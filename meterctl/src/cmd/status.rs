//! `meterctl status`: the unsigned register snapshot, as a table for people.
//! The inspection standing is its own line (`status_inspection.rs`).
//!
//! Shows what an operator must act on first: the lock and how to clear it,
//! the registers with their control-total check, and a low-funds warning.
//! `--json` prints the daemon's dictionary as it is, converted to JSON, plus
//! `user_certificates` (how many `ListCertificates` returns, pending ones
//! included) when the meter answers it, and `tsa`: whether the RFC 3161
//! endpoint (meter-tsa) runs and where it listens, from its own bus name
//! `org.meterd.TimeStamp1` (see [`Tsa`]).

use std::collections::HashMap;

use meter_proto::keys::status as key;
use meter_proto::state;
use zbus::zvariant::OwnedValue;

use super::Ctx;
use inspection::Inspection;

#[path = "status_inspection.rs"]
mod inspection;
use crate::error::CtlError;
use crate::output::{
    dict_to_json, format_amount, format_unix_time, short_hex, Dict, Output, Table,
};

/// Arguments of `meterctl status` (none yet).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `meterctl status`.
pub async fn run(ctx: &Ctx, _args: Args) -> Result<Output, CtlError> {
    let meter = ctx.meter().await?;
    let reply = meter.status().await?;
    // An unprovisioned meter has no certificate store: leave the row out.
    let certs = match meter.list_certificates().await {
        Ok(list) => Some(CertCounts::of(&list)),
        Err(_) => None,
    };
    let tsa = Tsa::query(meter.inner().connection()).await;
    let (mut human, mut warnings) = render(&reply, certs);
    let inspection = Inspection::of(&Dict(&reply));
    if let Some(i) = &inspection {
        human.push_str(&i.line());
        warnings.extend(i.warning());
    }
    human.push_str(&tsa.line());
    let mut json = dict_to_json(&reply);
    if let Some(obj) = json.as_object_mut() {
        if let Some(c) = certs {
            obj.insert("user_certificates".into(), c.total.into());
        }
        if let Some(i) = &inspection {
            obj.insert("inspection".into(), i.json());
        }
        obj.insert("tsa".into(), tsa.json());
    }
    let mut out = Output::new(human, json);
    out.warnings = warnings;
    Ok(out)
}

/// The RFC 3161 endpoint (meter-tsa), from its `org.meterd.TimeStamp1`
/// name on the bus: running while the name has an owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tsa {
    /// The name has an owner.
    pub running: bool,
    /// Where it listens (no credentials).
    pub urls: Vec<String>,
    /// Loopback clients without credentials are served.
    pub anonymous_loopback: bool,
}

impl Tsa {
    /// Asks the bus; an endpoint that does not answer counts as not running.
    pub async fn query(conn: &zbus::Connection) -> Tsa {
        let owned = match zbus::fdo::DBusProxy::new(conn).await {
            Ok(bus) => match zbus::names::BusName::try_from(meter_proto::timestamp::BUS_NAME) {
                Ok(name) => bus.name_has_owner(name).await.unwrap_or(false),
                Err(_) => false,
            },
            Err(_) => false,
        };
        if !owned {
            return Tsa::default();
        }
        let proxy = match meter_proto::TimeStamp1Proxy::builder(conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
        {
            Ok(p) => p,
            Err(_) => return Tsa::default(),
        };
        match (proxy.urls().await, proxy.anonymous_loopback().await) {
            (Ok(urls), Ok(anonymous_loopback)) => Tsa {
                running: true,
                urls,
                anonymous_loopback,
            },
            _ => Tsa::default(),
        }
    }

    /// The `time-stamp endpoint` line of the human output.
    pub fn line(&self) -> String {
        let value = if !self.running || self.urls.is_empty() {
            "not running".to_string()
        } else {
            format!(
                "{} ({})",
                self.urls.join(", "),
                if self.anonymous_loopback {
                    "anonymous loopback"
                } else {
                    "credentials required"
                }
            )
        };
        format!("time-stamp endpoint: {value}\n")
    }

    /// The `tsa` member of the JSON output.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "running": self.running,
            "urls": self.urls,
            "anonymous_loopback": self.anonymous_loopback,
        })
    }
}

/// User certificates by state, from `ListCertificates`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CertCounts {
    /// All of them, pending ones included.
    pub total: usize,
    /// Active (installed, valid, not revoked).
    pub active: usize,
    /// Requested, not installed yet.
    pub pending: usize,
}

impl CertCounts {
    /// Counts a `ListCertificates()` reply.
    pub fn of(list: &[HashMap<String, OwnedValue>]) -> CertCounts {
        let state = |e: &HashMap<String, OwnedValue>| {
            Dict(e)
                .str(meter_proto::keys::certificate::STATE)
                .unwrap_or_default()
        };
        CertCounts {
            total: list.len(),
            active: list.iter().filter(|e| state(e) == "active").count(),
            pending: list.iter().filter(|e| state(e) == "pending").count(),
        }
    }
}

/// The human table and the warnings for a `Status()` reply.
pub fn render(
    reply: &HashMap<String, OwnedValue>,
    certs: Option<CertCounts>,
) -> (String, Vec<String>) {
    let d = Dict(reply);
    let mut warnings = Vec::new();
    let currency = d.str(key::CURRENCY).unwrap_or_default();
    let digits = d
        .u64(key::CURRENCY_DIGITS)
        .and_then(|n| u8::try_from(n).ok())
        .unwrap_or(0);
    let money = |minor: u64| {
        format!(
            "{}  ({minor} minor units)",
            format_amount(minor, digits, &currency)
        )
    };
    let unknown = || "?".to_string();

    let mut t = Table::default();
    let meter_id = d.str(key::METER_ID).unwrap_or_default();
    t.row(
        "meter id",
        if meter_id.is_empty() {
            "(none: run meterctl provision)".into()
        } else {
            meter_id.clone()
        },
    );
    let st = d.str(key::STATE).unwrap_or_else(unknown);
    t.row("state", st.clone());
    if st == state::LOCKED {
        let reason = d.str(key::LOCK_REASON).unwrap_or_else(unknown);
        let nonce = d.str(key::LOCK_NONCE).unwrap_or_default();
        t.row("lock reason", reason.clone());
        t.row("lock nonce", nonce.clone());
        let id = if meter_id.is_empty() { "ID" } else { &meter_id };
        let order = format!(
            "ask the authority for a clear-lock order: meter-authority clear-lock --meter {id} --nonce {}, then: meterctl clear-lock ORDER",
            if nonce.is_empty() { "N" } else { &nonce }
        );
        t.row("why", lock_explanation(&reason));
        if reason == meter_proto::lock_reason::INSPECTION_OVERDUE
            || reason == meter_proto::lock_reason::PERIOD_CLOSED
        {
            t.row(
                "to unlock",
                "meterctl report -o report.pem; the authority runs meter-authority inspect report.pem --out ack.pem; then: meterctl report ack ack.pem",
            );
        } else {
            t.row("to unlock", order);
        }
        warnings.push(format!(
            "the meter is locked ({reason}): it sells nothing until cleared"
        ));
    }

    if d.bool(key::TPM_LEGACY_AUTH) == Some(true) {
        warnings.push(
            "legacy TPM objects without authorization: anyone who can reach the TPM can sign \
             with this meter's keys and move its counter; re-provision the meter"
                .into(),
        );
    }

    let dr = d.u64(key::DESCENDING);
    let ar = d.u64(key::ASCENDING);
    let ct = d.u64(key::CONTROL_TOTAL);
    t.row("descending (DR)", dr.map(money).unwrap_or_else(unknown));
    t.row("ascending (AR)", ar.map(money).unwrap_or_else(unknown));
    t.row("control total (CT)", ct.map(money).unwrap_or_else(unknown));
    if let (Some(ar), Some(dr), Some(ct)) = (ar, dr, ct) {
        let check = match ar.checked_add(dr) {
            Some(sum) if sum == ct => "ok".to_string(),
            Some(sum) => {
                warnings.push(format!(
                    "AR + DR = {sum} differs from the control total {ct}"
                ));
                format!("MISMATCH ({ar} + {dr} = {sum} ≠ {ct})")
            }
            None => {
                warnings.push("AR + DR overflows".to_string());
                "MISMATCH (AR + DR overflows)".to_string()
            }
        };
        t.row("AR + DR = CT", check);
    }
    // Split funds (issue 17): the rows above are the services register;
    // the postage register follows with its own check.
    if d.str(key::FUNDS_MODE).as_deref() == Some("split") {
        t.row(
            "funds",
            "split: postage paid from the postage register only",
        );
        let p = |k| d.u64(k);
        let (par, pdr, pct) = (
            p(key::POSTAGE_ASCENDING),
            p(key::POSTAGE_DESCENDING),
            p(key::POSTAGE_CONTROL_TOTAL),
        );
        t.row("postage DR", pdr.map(money).unwrap_or_else(unknown));
        t.row("postage AR", par.map(money).unwrap_or_else(unknown));
        t.row("postage CT", pct.map(money).unwrap_or_else(unknown));
        if let (Some(ar), Some(dr), Some(ct)) = (par, pdr, pct) {
            let ok = ar.checked_add(dr) == Some(ct);
            if !ok {
                warnings.push(format!(
                    "postage AR {ar} + DR {dr} differs from its control total {ct}"
                ));
            }
            t.row("postage AR + DR = CT", if ok { "ok" } else { "MISMATCH" });
        }
        t.row(
            "postage pieces",
            p(key::POSTAGE_PIECE_COUNT)
                .map(|n| n.to_string())
                .unwrap_or_else(unknown),
        );
    }
    let account = d.bool(key::ACCOUNT_MODE).unwrap_or(false);
    if account {
        let limit = d.u64(key::CREDIT_LIMIT).unwrap_or(0);
        let used = d.u64(key::PERIOD_USED).unwrap_or(0);
        t.row("mode", "current account (billed by report, no vouchers)");
        t.row("credit limit", money(limit));
        t.row("used this period", money(used));
        t.row(
            "period ends",
            d.i64(key::PERIOD_END)
                .map(format_unix_time)
                .unwrap_or_else(unknown),
        );
        if used >= limit {
            warnings.push(
                "the credit limit of this period is used up: sales are refused until the next period"
                    .to_string(),
            );
        }
    }
    if let Some(due) = d.u64(key::PAYMENT_DUE).filter(|d| *d > 0) {
        t.row("payment due", money(due));
        warnings.push(format!(
            "payment due: {} of revocation fees; the next recharge settles it first, and no sale can spend it meanwhile",
            format_amount(due, digits, &currency)
        ));
    }
    if let (false, Some(dr), Some(threshold)) = (account, dr, d.u64(key::LOW_FUNDS_THRESHOLD)) {
        if threshold > 0 && dr < threshold {
            let msg = format!(
                "low funds: {} left, below the {} threshold: recharge with meterctl recharge VOUCHER",
                format_amount(dr, digits, &currency),
                format_amount(threshold, digits, &currency)
            );
            t.row(
                "funds",
                format!(
                    "LOW (below {})",
                    format_amount(threshold, digits, &currency)
                ),
            );
            warnings.push(msg);
        }
    }

    t.row(
        "pieces",
        d.u64(key::PIECE_COUNT)
            .map(|n| n.to_string())
            .unwrap_or_else(unknown),
    );
    for (service, n) in d.counts(key::SERVICE_COUNTS).unwrap_or_default() {
        t.row(format!("  {service}"), n.to_string());
    }
    if let Some(c) = certs {
        t.row(
            "user certificates",
            format!("{}  ({} active, {} pending)", c.total, c.active, c.pending),
        );
    }
    let version = d.u64(key::RATES_VERSION);
    t.row(
        "rates version",
        match version {
            Some(0) => "none installed".to_string(),
            Some(v) => v.to_string(),
            None => unknown(),
        },
    );
    for (service, price) in d.counts(key::RATES).unwrap_or_default() {
        t.row(
            format!("  {service}"),
            format_amount(price, digits, &currency),
        );
    }
    match d.i64(key::INSPECTION_DUE) {
        Some(due) if due > 0 => {
            let period = d.u64(key::INSPECTION_PERIOD_DAYS).unwrap_or(0);
            t.row(
                "inspection lock deadline",
                format!("{}  (period {period} days)", format_unix_time(due)),
            );
            let last = d.u64(key::ACKNOWLEDGED_REPORT).unwrap_or(0);
            t.row(
                "last acknowledged report",
                if last == 0 {
                    "none yet (meterctl report, then meterctl report ack)".to_string()
                } else {
                    last.to_string()
                },
            );
        }
        _ => {}
    }
    t.row(
        "ledger rows",
        d.u64(key::LEDGER_ROWS)
            .map(|n| n.to_string())
            .unwrap_or_else(unknown),
    );
    t.row(
        "ledger head",
        d.hex(key::LEDGER_HEAD)
            .map(|h| short_hex(&h))
            .unwrap_or_else(unknown),
    );
    t.row(
        "NV counter",
        d.u64(key::NV_COUNTER)
            .map(|n| n.to_string())
            .unwrap_or_else(unknown),
    );
    (t.render(), warnings)
}

/// What a lock reason means, for the operator.
fn lock_explanation(reason: &str) -> &'static str {
    use meter_proto::lock_reason as r;
    match reason {
        r::TAMPER => "a ledger row was changed or removed, or its seal does not verify",
        r::ROLLBACK => "an older copy of the ledger was restored (the TPM counter is ahead)",
        r::CLOCK => "the system clock went backwards against the TPM clock; fix the clock first",
        r::FORCED => "the authority locked the meter (lock order)",
        r::INSPECTION_OVERDUE => "no status report was acknowledged within the inspection period",
        r::PERIOD_CLOSED => "a current-account billing period closed unreported",
        _ => "see the meter's log",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::Value;

    fn s(v: &str) -> OwnedValue {
        OwnedValue::try_from(Value::from(v)).unwrap()
    }

    fn reply(dr: u64, ar: u64, ct: u64, st: &str) -> HashMap<String, OwnedValue> {
        let mut m = HashMap::new();
        m.insert(key::METER_ID.into(), s("MTR-0001"));
        m.insert(key::STATE.into(), s(st));
        m.insert(
            key::LOCK_REASON.into(),
            s(if st == "locked" { "rollback" } else { "" }),
        );
        m.insert(
            key::LOCK_NONCE.into(),
            s(if st == "locked" { "n0nce" } else { "" }),
        );
        m.insert(key::DESCENDING.into(), OwnedValue::from(dr));
        m.insert(key::ASCENDING.into(), OwnedValue::from(ar));
        m.insert(key::CONTROL_TOTAL.into(), OwnedValue::from(ct));
        m.insert(key::PIECE_COUNT.into(), OwnedValue::from(9u64));
        m.insert(key::CURRENCY.into(), s("USD"));
        m.insert(key::CURRENCY_DIGITS.into(), OwnedValue::from(3u8));
        m.insert(key::RATES_VERSION.into(), OwnedValue::from(4u32));
        let counts = HashMap::from([
            ("postmark".to_string(), 7u64),
            ("validate".to_string(), 2u64),
        ]);
        m.insert(
            key::SERVICE_COUNTS.into(),
            OwnedValue::try_from(Value::from(counts)).unwrap(),
        );
        m.insert(key::LEDGER_ROWS.into(), OwnedValue::from(12u64));
        m.insert(key::LEDGER_HEAD.into(), s(&"ab".repeat(48)));
        m.insert(key::NV_COUNTER.into(), OwnedValue::from(5u64));
        m.insert(key::LOW_FUNDS_THRESHOLD.into(), OwnedValue::from(1_000u64));
        m
    }

    fn render_plain(r: &HashMap<String, OwnedValue>) -> (String, Vec<String>) {
        render(r, None)
    }

    #[test]
    fn account_mode_payment_due_and_certificates() {
        let mut m = reply(0, 700, 700, "ready");
        m.insert(key::ACCOUNT_MODE.into(), OwnedValue::from(true));
        m.insert(key::CREDIT_LIMIT.into(), OwnedValue::from(1_000u64));
        m.insert(key::PERIOD_USED.into(), OwnedValue::from(300u64));
        m.insert(key::PERIOD_END.into(), OwnedValue::from(86_400i64));
        m.insert("payment_due".into(), OwnedValue::from(250u64));
        let certs = CertCounts {
            total: 3,
            active: 2,
            pending: 1,
        };
        let (text, warnings) = render(&m, Some(certs));
        // DR is 0 by design in this mode: no low-funds warning; only the debt is flagged.
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("payment due: 0.250 USD"),
            "{warnings:?}"
        );
        assert!(line(&text, "mode").contains("current account"));
        assert!(line(&text, "credit limit").contains("1.000 USD"));
        assert!(line(&text, "used this period").contains("0.300 USD"));
        assert!(line(&text, "period ends").contains("1970-01-02T00:00:00Z"));
        assert!(line(&text, "payment due").contains("0.250 USD"));
        assert!(line(&text, "user certificates").contains("3  (2 active, 1 pending)"));
        m.insert(key::PERIOD_USED.into(), OwnedValue::from(1_000u64));
        m.insert(key::STATE.into(), s("locked"));
        m.insert(key::LOCK_REASON.into(), s("period-closed"));
        let (text, warnings) = render(&m, None);
        assert!(warnings.iter().any(|w| w.contains("credit limit")));
        assert!(line(&text, "to unlock").contains("meterctl report ack"));
        assert!(!text.contains("user certificates"));
    }

    #[test]
    fn tsa_line_and_json() {
        let off = Tsa::default();
        assert_eq!(off.line(), "time-stamp endpoint: not running\n");
        assert_eq!(
            off.json(),
            serde_json::json!({"running": false, "urls": [], "anonymous_loopback": false})
        );
        let mut on = Tsa {
            running: true,
            urls: vec!["http://127.0.0.1:3180/".into()],
            anonymous_loopback: false,
        };
        assert_eq!(
            on.line(),
            "time-stamp endpoint: http://127.0.0.1:3180/ (credentials required)\n"
        );
        on.anonymous_loopback = true;
        assert!(on.line().ends_with("(anonymous loopback)\n"));
        assert_eq!(on.json()["urls"][0], "http://127.0.0.1:3180/");
    }

    #[test]
    fn certificate_counts() {
        let entry =
            |st: &str| HashMap::from([(meter_proto::keys::certificate::STATE.to_string(), s(st))]);
        let c = CertCounts::of(&[
            entry("active"),
            entry("pending"),
            entry("revoked"),
            entry("active"),
        ]);
        assert_eq!(
            c,
            CertCounts {
                total: 4,
                active: 2,
                pending: 1
            }
        );
    }

    fn line<'a>(text: &'a str, label: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` line in:\n{text}"))
    }

    #[test]
    fn ready_meter_table() {
        let (text, warnings) = render_plain(&reply(12_345, 655, 13_000, "ready"));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(line(&text, "meter id").ends_with("MTR-0001"));
        assert!(line(&text, "descending (DR)").contains("12.345 USD  (12345 minor units)"));
        assert!(line(&text, "ascending (AR)").contains("0.655 USD"));
        assert!(line(&text, "AR + DR = CT").ends_with("ok"));
        assert!(line(&text, "  postmark").ends_with(" 7"));
        assert!(line(&text, "  validate").ends_with(" 2"));
        assert!(line(&text, "rates version").ends_with(" 4"));
        assert!(line(&text, "ledger head").ends_with("abababababababab…"));
        assert!(line(&text, "NV counter").ends_with(" 5"));
        assert!(!text.contains("lock reason"));
        assert!(!text.contains("LOW"));
    }

    #[test]
    fn locked_meter_says_how_to_unlock() {
        let (text, warnings) = render_plain(&reply(12_345, 655, 13_000, "locked"));
        assert!(line(&text, "lock reason").ends_with("rollback"));
        assert!(line(&text, "to unlock")
            .contains("meter-authority clear-lock --meter MTR-0001 --nonce n0nce"));
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn inspection_lock_and_schedule_are_explained() {
        let mut m = reply(12_345, 655, 13_000, "locked");
        m.insert(key::LOCK_REASON.into(), s("inspection-overdue"));
        m.insert(key::INSPECTION_DUE.into(), OwnedValue::from(86_400i64));
        m.insert(key::INSPECTION_PERIOD_DAYS.into(), OwnedValue::from(90u32));
        m.insert(key::ACKNOWLEDGED_REPORT.into(), OwnedValue::from(0u64));
        let (text, _) = render_plain(&m);
        assert!(line(&text, "why").contains("inspection period"));
        assert!(line(&text, "to unlock").contains("meterctl report ack"));
        assert!(line(&text, "inspection lock deadline")
            .contains("1970-01-02T00:00:00Z  (period 90 days)"));
        assert!(line(&text, "last acknowledged report").contains("none yet"));
        m.insert(key::ACKNOWLEDGED_REPORT.into(), OwnedValue::from(3u64));
        let (text, _) = render_plain(&m);
        assert!(line(&text, "last acknowledged report").ends_with(" 3"));
    }

    #[test]
    fn control_total_mismatch_and_low_funds_are_flagged() {
        let (text, warnings) = render_plain(&reply(999, 1, 13_000, "ready"));
        assert!(line(&text, "AR + DR = CT").contains("MISMATCH (1 + 999 = 1000 ≠ 13000)"));
        assert!(line(&text, "funds").contains("LOW (below 1.000 USD)"));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        let (_, warnings) = render_plain(&reply(u64::MAX, 1, 0, "ready"));
        assert!(warnings.iter().any(|w| w.contains("overflows")));
    }

    #[test]
    fn missing_keys_show_question_marks() {
        let (text, _) = render_plain(&HashMap::new());
        assert!(line(&text, "state").ends_with('?'));
        assert!(line(&text, "descending (DR)").ends_with('?'));
        assert!(!text.contains("AR + DR = CT"));
    }
}
