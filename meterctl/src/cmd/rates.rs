//! `meterctl rates install FILE`: sends an authority-signed rate table.
//! `meterctl rates show`: the table in force, service prices and postage
//! bands, so that a person sees what a piece will cost before buying it.
//!
//! The meter checks the signature and refuses a table older than the one in
//! force; meterctl only reads the file (bounded) and reports the new version.
//! `show` reads the meter's `Status()` (keys `rates`, `postage_bands`): the
//! meter prices from the table it holds, not from a file the user may have.

use std::collections::HashMap;
use std::path::PathBuf;

use meter_proto::keys::status as key;
use serde_json::json;
use zbus::zvariant::{OwnedValue, Value};

use super::{read_input, Ctx, MAX_OBJECT};
use crate::error::CtlError;
use crate::output::{format_amount, Dict, Output};

/// Subcommands of `meterctl rates`.
#[derive(Debug, clap::Subcommand)]
pub enum RatesCommand {
    /// Install a signed rate table (CMS SignedData, PEM or DER).
    Install {
        /// The signed rate table.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Show the rate table in force: service prices and postage bands
    /// (class, weight range, price).
    Show,
}

/// Runs `meterctl rates ...`.
pub async fn run(ctx: &Ctx, args: RatesCommand) -> Result<Output, CtlError> {
    match args {
        RatesCommand::Install { file } => {
            let table = read_input(&file, MAX_OBJECT)?;
            let meter = ctx.meter().await?;
            meter.install_rates(&table).await?;
            // Informational only: the install already succeeded.
            let version = meter.rates_version().await.ok();
            let human = match version {
                Some(v) => format!("rate table installed; version {v} in force\n"),
                None => "rate table installed\n".to_string(),
            };
            Ok(Output::new(
                human,
                json!({"installed": true, "rates_version": version}),
            ))
        }
        RatesCommand::Show => {
            let meter = ctx.meter().await?;
            Ok(show(&meter.status().await?))
        }
    }
}

/// One postage band as the meter prices it: pieces of `class` weighing
/// `min_grams..=max_grams` cost `amount` (minor units).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Band {
    /// Mail class.
    pub class: String,
    /// Lightest weight of the band: one more than the class's previous band.
    pub min_grams: u32,
    /// Heaviest weight of the band (inclusive).
    pub max_grams: u32,
    /// Price in minor units.
    pub amount: u64,
}

/// The `postage_bands` entry (`a(sut)`), sorted by class then weight, with
/// each band's lower bound; an entry of another shape is skipped.
pub fn bands(status: &HashMap<String, OwnedValue>) -> Vec<Band> {
    let mut raw: Vec<(String, u32, u64)> = Vec::new();
    if let Some(Value::Array(a)) = status.get(key::POSTAGE_BANDS).map(|v| unwrap(v)) {
        for entry in a.inner() {
            if let Value::Structure(st) = unwrap(entry) {
                if let [Value::Str(c), Value::U32(g), Value::U64(p)] = st.fields() {
                    raw.push((c.as_str().to_string(), *g, *p));
                }
            }
        }
    }
    raw.sort();
    let mut out: Vec<Band> = Vec::with_capacity(raw.len());
    for (class, max_grams, amount) in raw {
        let min_grams = match out.last() {
            Some(prev) if prev.class == class => prev.max_grams.saturating_add(1),
            _ => 0,
        };
        out.push(Band {
            class,
            min_grams,
            max_grams,
            amount,
        });
    }
    out
}

fn unwrap<'a, 'v>(v: &'a Value<'v>) -> &'a Value<'v> {
    match v {
        Value::Value(inner) => unwrap(inner),
        other => other,
    }
}

/// Renders the table in force from a `Status()` reply.
pub fn show(status: &HashMap<String, OwnedValue>) -> Output {
    let d = Dict(status);
    let currency = d.str(key::CURRENCY).unwrap_or_default();
    let digits = d
        .u64(key::CURRENCY_DIGITS)
        .and_then(|n| u8::try_from(n).ok())
        .unwrap_or(0);
    let version = d.u64(key::RATES_VERSION).unwrap_or(0);
    let money = |m: u64| format_amount(m, digits, &currency);
    let services = d.counts(key::RATES).unwrap_or_default();
    let bands = bands(status);
    let mut human = if version == 0 {
        "no rate table installed\n".to_string()
    } else {
        format!("rate table version {version}, {currency}\n")
    };
    if !services.is_empty() {
        human.push_str("\nservice prices\n");
        let width = services.iter().map(|(s, _)| s.len()).max().unwrap_or(0);
        for (service, price) in &services {
            // Postage is priced by band; its flat entry means nothing.
            let shown = match (service.as_str(), bands.is_empty()) {
                ("postage", false) => "by class and weight, below".to_string(),
                _ => money(*price),
            };
            human.push_str(&format!("  {service:<width$}  {shown}\n"));
        }
    }
    if bands.is_empty() {
        if version != 0 {
            human.push_str("\nno postage bands: this table sells no postage\n");
        }
    } else {
        human.push_str(&format!(
            "\n  {:<10} {:>17}  {}\n",
            "CLASS", "WEIGHT", "PRICE"
        ));
        for b in &bands {
            let range = format!("{}-{} g", b.min_grams, b.max_grams);
            human.push_str(&format!(
                "  {:<10} {:>17}  {}\n",
                b.class,
                range,
                money(b.amount)
            ));
        }
    }
    let json = json!({
        "rates_version": version,
        "currency": currency,
        "currency_digits": digits,
        "services": services
            .iter()
            .map(|(s, p)| (s.clone(), json!(p)))
            .collect::<serde_json::Map<_, _>>(),
        "postage_bands": bands.iter().map(|b| json!({
            "class": b.class,
            "min_grams": b.min_grams,
            "max_grams": b.max_grams,
            "amount": b.amount,
        })).collect::<Vec<_>>(),
    });
    Output::new(human, json)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn status() -> HashMap<String, OwnedValue> {
        let mut d = HashMap::new();
        let mut put = |k: &str, v: Value<'_>| {
            d.insert(k.to_string(), v.try_to_owned().unwrap());
        };
        put(key::CURRENCY, Value::from("EUR"));
        put(key::CURRENCY_DIGITS, Value::from(3u8));
        put(key::RATES_VERSION, Value::from(2u32));
        let rates: HashMap<String, u64> =
            [("postmark".to_string(), 500), ("postage".to_string(), 0)].into();
        put(key::RATES, Value::from(rates));
        let bands: Vec<(String, u32, u64)> = vec![
            ("parcel".into(), 2000, 4990),
            ("letter".into(), 100, 1550),
            ("letter".into(), 20, 950),
        ];
        put(key::POSTAGE_BANDS, Value::from(bands));
        d
    }

    #[test]
    fn bands_are_sorted_with_their_lower_bounds() {
        let b = bands(&status());
        let got: Vec<_> = b
            .iter()
            .map(|b| (b.class.as_str(), b.min_grams, b.max_grams, b.amount))
            .collect();
        assert_eq!(
            got,
            [
                ("letter", 0, 20, 950),
                ("letter", 21, 100, 1550),
                ("parcel", 0, 2000, 4990)
            ]
        );
    }

    #[test]
    fn show_prints_bands_in_currency() {
        let out = show(&status());
        assert!(out.human.contains("letter"), "{}", out.human);
        assert!(out.human.contains("21-100 g"), "{}", out.human);
        assert!(out.human.contains("1.550 EUR"), "{}", out.human);
        assert!(out.human.contains("postmark  0.500 EUR"), "{}", out.human);
        assert!(!out.human.contains("0.000 EUR"), "{}", out.human);
        assert_eq!(out.json["postage_bands"][1]["min_grams"], 21);
        assert_eq!(out.json["postage_bands"][1]["amount"], 1550);
        assert_eq!(out.json["services"]["postmark"], 500);
    }

    #[test]
    fn no_table_says_so() {
        let out = show(&HashMap::new());
        assert_eq!(out.human, "no rate table installed\n");
        assert_eq!(out.json["postage_bands"], json!([]));
    }
}
