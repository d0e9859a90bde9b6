//! `meterctl watch`: follows the meter live, printing property changes and
//! the LowFunds / Locked / Unlocked signals, one line each, until Ctrl-C or
//! until the bus connection ends.
//!
//! Lines are printed as events arrive (not collected), in JSON lines with
//! `--json`; the subscriptions are made before the first line is printed so
//! that nothing after "watching" is missed.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use meter_proto::{MeterError, BUS_NAME, INTERFACE, OBJECT_PATH};
use serde_json::{json, Map, Value as Json};
use zbus::export::ordered_stream::{self, OrderedStreamExt};

use super::Ctx;
use crate::error::CtlError;
use crate::output::{format_amount, format_unix_time, value_to_json, Output};

/// Arguments of `meterctl watch` (none).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `meterctl watch`.
pub async fn run(ctx: &Ctx, _args: Args) -> Result<Output, CtlError> {
    let meter = ctx.meter().await?;
    // The digits only shape the display; raw minor units if unreadable.
    let digits = meter.currency_digits().await.ok();
    let props = zbus::fdo::PropertiesProxy::builder(meter.inner().connection())
        .destination(BUS_NAME)
        .and_then(|b| b.path(OBJECT_PATH))
        .map_err(MeterError::from)?
        .build()
        .await
        .map_err(MeterError::from)?;
    let bus = |e: zbus::Error| CtlError::from(MeterError::from(e));
    // Each signal has its own stream; joining them by message sequence number
    // prints events in the order the bus delivered them.
    let changed = props
        .receive_properties_changed()
        .await
        .map_err(bus)?
        .map(|s| match s.args() {
            Ok(a) if a.interface_name().as_str() == INTERFACE => {
                let mut obj = Map::new();
                for (name, value) in a.changed_properties() {
                    obj.insert((*name).to_string(), value_to_json(value));
                }
                let invalidated = a
                    .invalidated_properties()
                    .iter()
                    .map(|n| n.to_string())
                    .collect();
                Some(Event::Changed(obj, invalidated))
            }
            Ok(_) => None,
            Err(e) => Some(Event::Malformed(e.to_string())),
        });
    let low = meter
        .receive_low_funds()
        .await
        .map_err(bus)?
        .map(|s| match s.args() {
            Ok(a) => Some(Event::LowFunds(*a.descending())),
            Err(e) => Some(Event::Malformed(e.to_string())),
        });
    let locked = meter
        .receive_locked()
        .await
        .map_err(bus)?
        .map(|s| match s.args() {
            Ok(a) => Some(Event::Locked(a.reason().to_string())),
            Err(e) => Some(Event::Malformed(e.to_string())),
        });
    let unlocked = meter
        .receive_unlocked()
        .await
        .map_err(bus)?
        .map(|_| Some(Event::Unlocked));
    let events = ordered_stream::join(
        ordered_stream::join(changed, low),
        ordered_stream::join(locked, unlocked),
    );
    let mut events = std::pin::pin!(events);
    eprintln!("watching {BUS_NAME} on {} (Ctrl-C to stop)", ctx.address());

    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = events.next() => match event {
                Some(Some(event)) => print_event(&event, ctx.json, digits),
                Some(None) => continue,
                None => break,
            },
        }
    }
    Ok(Output::raw(Vec::new()))
}

/// One thing that happened on the meter.
#[derive(Debug)]
pub enum Event {
    /// PropertiesChanged: new values and names invalidated without a value.
    Changed(Map<String, Json>, Vec<String>),
    /// LowFunds(descending).
    LowFunds(u64),
    /// Locked(reason).
    Locked(String),
    /// Unlocked().
    Unlocked,
    /// A signal whose arguments did not decode.
    Malformed(String),
}

fn print_event(event: &Event, json_mode: bool, digits: Option<u8>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let line = if json_mode {
        let mut j = event_json(event);
        if let Json::Object(o) = &mut j {
            o.insert("time".into(), json!(now));
        }
        j.to_string()
    } else {
        format!("{}  {}", format_unix_time(now), event_text(event, digits))
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The JSON line for an event (without the time).
pub fn event_json(event: &Event) -> Json {
    match event {
        Event::Changed(c, inv) => {
            json!({"event": "PropertiesChanged", "changed": c, "invalidated": inv})
        }
        Event::LowFunds(d) => json!({"event": "LowFunds", "descending": d}),
        Event::Locked(r) => json!({"event": "Locked", "reason": r}),
        Event::Unlocked => json!({"event": "Unlocked"}),
        Event::Malformed(m) => json!({"event": "Malformed", "message": m}),
    }
}

/// The registers among the properties: shown as money.
const MONEY_PROPERTIES: [&str; 3] = ["Descending", "Ascending", "ControlTotal"];

/// The human text for an event (without the time); amounts as money when
/// the currency's digits are known.
pub fn event_text(event: &Event, digits: Option<u8>) -> String {
    let money = |minor: u64| match digits {
        Some(d) => format_amount(minor, d, ""),
        None => format!("{minor} minor units"),
    };
    match event {
        Event::Changed(c, inv) => {
            let mut parts: Vec<String> = c
                .iter()
                .map(|(k, v)| match v.as_u64() {
                    Some(n) if MONEY_PROPERTIES.contains(&k.as_str()) => {
                        format!("{k}={}", money(n))
                    }
                    _ => format!("{k}={v}"),
                })
                .collect();
            parts.extend(inv.iter().map(|k| format!("{k} (invalidated)")));
            format!("changed: {}", parts.join(" "))
        }
        Event::LowFunds(d) => format!("LOW FUNDS: descending register {}", money(*d)),
        Event::Locked(r) => format!("LOCKED: {r}"),
        Event::Unlocked => "unlocked".to_string(),
        Event::Malformed(m) => format!("malformed signal: {m}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_render_both_ways() {
        let mut c = Map::new();
        c.insert("Descending".into(), json!(900));
        c.insert("State".into(), json!("ready"));
        let e = Event::Changed(c, vec!["LockReason".into()]);
        assert_eq!(
            event_text(&e, Some(3)),
            "changed: Descending=0.900 State=\"ready\" LockReason (invalidated)"
        );
        assert_eq!(
            event_text(&Event::LowFunds(95_080), Some(3)),
            "LOW FUNDS: descending register 95.080"
        );
        assert_eq!(
            event_text(&Event::LowFunds(5), None),
            "LOW FUNDS: descending register 5 minor units"
        );
        assert_eq!(event_json(&e)["changed"]["Descending"], json!(900));
        assert_eq!(event_json(&Event::LowFunds(5))["descending"], json!(5));
        assert_eq!(
            event_text(&Event::Locked("tamper".into()), None),
            "LOCKED: tamper"
        );
    }
}
