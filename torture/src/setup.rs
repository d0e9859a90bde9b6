//! The once-per-sandbox setup that lets the load mix every chargeable
//! service, not only `postmark`: a rate table with the postage band the
//! `postage` operation buys, one installed user certificate (for `sign`),
//! one open line of credit big enough for the run (for `pay`), and the
//! registers split by the authority's order with the postage pair funded
//! (issue 17), so that every check covers both register pairs. It goes
//! through the same programs an operator uses (`meterctl`, the sandbox's
//! `meter-authority`), then reads the serials back over D-Bus.

use std::path::Path;
use std::process::Command;

use crate::error::{io, Result, TortureError};
use crate::ops::{self, Ctx, Mix};
use crate::sandbox::{certificates, credit_lines, Sandbox};
use meter_proto::keys::status as skey;

/// Rates version the setup installs (the sandbox's own table is version 1).
const RATES_VERSION: u32 = 2;

/// Subject of the torture user certificate.
const CN: &str = "Torture Signer";

/// The rate table: the example prices, and one postage band priced at
/// [`ops::POSTAGE_PRICE`] for the pieces `postage` sends.
fn rates_toml() -> String {
    format!(
        r#"version = {RATES_VERSION}
effective = "2026-01-01T00:00:00Z"
currency = "USD"
digits = 3
[rates]
postmark = 500
validate = 100
sign = 200
certificate-install = 5000
agent-certificate = 3000
revoke = 1000
credit-line = 2000
payment-certificate = 300
status-report = 0
postage = 0
[[postage]]
class = "{class}"
max_grams = {grams}
amount = {price}
"#,
        class = ops::POSTAGE_CLASS,
        grams = ops::POSTAGE_MAX_GRAMS,
        price = ops::POSTAGE_PRICE,
    )
}

impl Sandbox {
    /// Runs `meterctl ARGS` (on the sandbox's bus) or `meter-authority
    /// --dir A ARGS`; returns its stdout, failing with its stderr.
    fn tool(&self, program: &str, args: &[&str]) -> Result<String> {
        let path = self.bin_dir.join(program);
        let mut cmd = Command::new(&path);
        if program == "meter-authority" {
            cmd.arg("--dir").arg(&self.authority);
        }
        let out = cmd
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
            .env("METER_AUTHORITY_DIR", &self.authority)
            .output()
            .map_err(io(&path))?;
        if !out.status.success() {
            return Err(TortureError::Setup(format!(
                "setup: {program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Sets the sandbox up for every operation (`credit` minor units on the
/// line) and returns the full [`Mix`].
pub async fn run(sb: &Sandbox, credit: u64) -> Result<Mix> {
    let dir = sb.dir.join("torture-setup");
    let scratch = sb.dir.join("torture-sign");
    for d in [&dir, &scratch] {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }

    // Rates with the postage band.
    let toml = dir.join("rates.toml");
    std::fs::write(&toml, rates_toml()).map_err(io(&toml))?;
    let table = dir.join("rates.pem");
    sb.tool(
        "meter-authority",
        &["rates", "--in", &s(&toml), "--out", &s(&table)],
    )?;
    sb.tool("meterctl", &["rates", "install", &s(&table)])?;

    // Postage funds apart (issue 17): the authority's order splits the
    // registers, and a postage voucher funds the postage pair with as much
    // as the services pair holds, so the load moves both pairs and every
    // check (AR + DR = CT, charged once, nothing lost) covers both.
    let proxy = sb.connect().await?;
    let status = proxy.status().await?;
    let meter = status
        .get(skey::METER_ID)
        .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
        .ok_or_else(|| TortureError::Setup("setup: Status has no meter_id".into()))?;
    let services = crate::sandbox::status(&proxy).await?.dr;
    let order = dir.join("funds-split.pem");
    sb.tool(
        "meter-authority",
        &["funds-split", "--meter", &meter, "--out", &s(&order)],
    )?;
    sb.tool("meterctl", &["account", "split", &s(&order)])?;
    let voucher = dir.join("postage-voucher.pem");
    sb.tool(
        "meter-authority",
        &[
            "voucher",
            "--meter",
            &meter,
            "--amount",
            &services.to_string(),
            "--register",
            "postage",
            "--out",
            &s(&voucher),
        ],
    )?;
    sb.tool("meterctl", &["recharge", &s(&voucher)])?;

    // One user certificate: enrol, request, certify, install.
    let subject = format!("CN={CN}");
    let code = sb.tool("meter-authority", &["enrol", "--subject", &subject])?;
    let req = dir.join("cert.req.der");
    sb.tool(
        "meterctl",
        &[
            "--json",
            "cert",
            "request",
            "--subject",
            &subject,
            "--code",
            &code,
            "-o",
            &s(&req),
            "--request-id",
            "torture-cert-request",
        ],
    )?;
    let cert = dir.join("cert.pem");
    let serial = sb.tool(
        "meter-authority",
        &["certify", &s(&req), "--out", &s(&cert)],
    )?;
    sb.tool("meterctl", &["--json", "cert", "install", &s(&cert)])?;

    // One line of credit: request, grant, open.
    let creq = dir.join("credit.req.pem");
    let grant = dir.join("credit.grant.pem");
    let amount = credit.to_string();
    sb.tool(
        "meterctl",
        &[
            "--json",
            "credit",
            "request",
            "--creditor",
            "Torture-Bank",
            "--amount",
            &amount,
            "-o",
            &s(&creq),
            "--request-id",
            "torture-credit-request",
        ],
    )?;
    sb.tool(
        "meter-authority",
        &[
            "credit-grant",
            &s(&creq),
            "--out",
            &s(&grant),
            "--days",
            "30",
        ],
    )?;
    sb.tool(
        "meterctl",
        &[
            "--json",
            "credit",
            "open",
            &s(&grant),
            "-o",
            &s(&dir.join("credit.p0.pem")),
            "--request-id",
            "torture-credit-open",
        ],
    )?;

    // Read back what the meter holds.
    let cert_serial = certificates(&proxy)
        .await?
        .into_iter()
        .find(|(sn, state)| state == "active" && sn.eq_ignore_ascii_case(serial.trim()))
        .map(|(sn, _)| sn)
        .ok_or_else(|| TortureError::Setup(format!("setup: certificate {serial} is not active")))?;
    let line = credit_lines(&proxy)
        .await?
        .into_iter()
        .find(|l| l.granted == credit && l.used == 0)
        .ok_or_else(|| TortureError::Setup("setup: the credit line is not listed".into()))?;
    let mix = Mix::full(Ctx {
        cert_serial,
        credit_serial: line.serial,
        scratch,
    });
    eprintln!(
        "torture: setup: rates v{RATES_VERSION} with postage, certificate {}, credit line {} of {credit}; mix {:?}",
        mix.ctx().cert_serial,
        mix.ctx().credit_serial,
        mix.names()
    );
    Ok(mix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_table_prices_the_postage_band() {
        let t = rates_toml();
        assert!(t.contains(&format!("amount = {}", ops::POSTAGE_PRICE)));
        assert!(t.contains(&format!("max_grams = {}", ops::POSTAGE_MAX_GRAMS)));
        assert!(t.contains("payment-certificate = 300") && t.contains("sign = 200"));
    }
}
