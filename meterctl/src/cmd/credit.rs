//! `meterctl credit request|open|list|pay`: lines of credit and payment
//! certificates (patent Figs. 7A–9).
//!
//! `request` asks the meter for a signed, postmarked credit request to hand
//! to a creditor; `open` installs the creditor's line-of-credit certificate
//! and writes the first payment certificate; `pay` makes a payment
//! certificate for a merchant; `list` shows each line's registers. Products
//! are written as PEM (label CMS): `openssl cms -verify -CAfile root.pem
//! -in FILE` opens them. Each charged call carries a request id (printed to
//! stderr before the call when generated) so a retry is never charged twice.

use std::path::{Path, PathBuf};

use meter_pki::credit::{read_unverified, Payment};
use meter_proto::keys::credit_line as k;
use serde_json::json;

use super::postmark::random_request_id;
use super::{read_input, Ctx, Sink, MAX_OBJECT};
use crate::amount::{Currency, TypedAmount};
use crate::error::CtlError;
use crate::output::Output;
use crate::output::{dict_to_json, format_unix_time, Dict, Table};

/// Subcommands of `meterctl credit`.
#[derive(Debug, clap::Subcommand)]
pub enum CreditCommand {
    /// Make a signed, postmarked credit request for a creditor (admin).
    Request {
        /// Creditor asked.
        #[arg(long, value_name = "NAME")]
        creditor: String,
        /// Line amount asked: `1.50` in the meter's currency, or minor units (`1500`).
        #[arg(long, value_name = "AMOUNT", value_parser = TypedAmount::parse)]
        amount: TypedAmount,
        /// Where to write the request (PEM).
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: PathBuf,
        /// Idempotency key (default: random).
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
    },
    /// Open the line of credit a creditor granted; writes the first payment certificate (admin).
    Open {
        /// The line-of-credit certificate (CMS, PEM or DER).
        #[arg(value_name = "CERT")]
        certificate: PathBuf,
        /// Where to write the first payment certificate (PEM).
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: PathBuf,
        /// Idempotency key (default: random).
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
    },
    /// List the lines of credit and their registers.
    List,
    /// Pay a merchant from a line of credit; writes the payment certificate.
    Pay {
        /// Serial of the line (see `meterctl credit list`).
        #[arg(long, value_name = "SERIAL")]
        line: String,
        /// Amount: `1.50` in the meter's currency, or minor units (`1500`).
        #[arg(long, value_name = "AMOUNT", value_parser = TypedAmount::parse)]
        amount: TypedAmount,
        /// Who is paid.
        #[arg(long, value_name = "NAME")]
        payee: String,
        /// Where to write the payment certificate (PEM).
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: PathBuf,
        /// Idempotency key (default: random).
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
    },
}

fn request_id_or_new(id: Option<String>) -> Result<String, CtlError> {
    match id {
        Some(id) => Ok(id),
        None => {
            let id = random_request_id()?;
            eprintln!("request id: {id} (retry with --request-id {id} to avoid a second charge)");
            Ok(id)
        }
    }
}

fn save(sink: Sink, der: &[u8], member: &str) -> Result<(), CtlError> {
    if der.is_empty() {
        return Err(CtlError::Reply(format!("{member} returned nothing")));
    }
    sink.commit(meter_pki::pem::encode("CMS", der).as_bytes())
}

fn payment_json(
    der: &[u8],
    request_id: &str,
    out: &Path,
    money: &Currency,
) -> (String, serde_json::Value) {
    match read_unverified::<Payment>(der) {
        Ok(p) => (
            format!(
                "payment certificate {} on line {}: {} to {}, {} remaining; written to {}\n",
                p.serial,
                p.credit_serial,
                money.show(p.amount),
                p.payee,
                money.show(p.credit_remaining),
                out.display()
            ),
            json!({
                "request_id": request_id, "out": out, "serial": p.serial,
                "credit_serial": p.credit_serial, "amount": p.amount, "payee": p.payee,
                "credit_remaining": p.credit_remaining, "sequence": p.sequence,
            }),
        ),
        // The certificate is written either way; only the summary is missing.
        Err(_) => (
            format!("payment certificate written to {}\n", out.display()),
            json!({"request_id": request_id, "out": out}),
        ),
    }
}

/// Runs `meterctl credit ...`.
pub async fn run(ctx: &Ctx, args: CreditCommand) -> Result<Output, CtlError> {
    match args {
        CreditCommand::Request {
            creditor,
            amount,
            out,
            request_id,
        } => {
            let sink = Sink::open(&out)?;
            let meter = ctx.meter().await?;
            let money = Currency::query(&meter).await;
            let amount = amount.minor(&money)?;
            let id = request_id_or_new(request_id)?;
            let der = meter.request_credit(&creditor, amount, &id).await?;
            save(sink, &der, "RequestCredit")?;
            Ok(Output::new(
                format!(
                    "credit request to {creditor} for {} written to {}\n",
                    money.show(amount),
                    out.display()
                ),
                json!({"request_id": id, "out": out, "creditor": creditor, "amount": amount}),
            ))
        }
        CreditCommand::Open {
            certificate,
            out,
            request_id,
        } => {
            let cert = read_input(&certificate, MAX_OBJECT)?;
            let sink = Sink::open(&out)?;
            let id = request_id_or_new(request_id)?;
            let meter = ctx.meter().await?;
            let der = meter.open_credit_line(&cert, &id).await?;
            save(sink, &der, "OpenCreditLine")?;
            let money = Currency::query(&meter).await;
            let (human, json) = payment_json(&der, &id, &out, &money);
            Ok(Output::new(format!("line opened; {human}"), json))
        }
        CreditCommand::Pay {
            line,
            amount,
            payee,
            out,
            request_id,
        } => {
            let sink = Sink::open(&out)?;
            let meter = ctx.meter().await?;
            let money = Currency::query(&meter).await;
            let amount = amount.minor(&money)?;
            let id = request_id_or_new(request_id)?;
            let der = meter.pay(&line, amount, &payee, &id).await?;
            save(sink, &der, "Pay")?;
            let (human, json) = payment_json(&der, &id, &out, &money);
            Ok(Output::new(human, json))
        }
        CreditCommand::List => {
            let meter = ctx.meter().await?;
            let lines = meter.list_credit_lines().await?;
            let money = Currency::query(&meter).await;
            let mut human = String::new();
            if lines.is_empty() {
                human.push_str("no lines of credit\n");
            }
            for l in &lines {
                let d = Dict(l);
                let mut t = Table::default();
                let num = |key: &str| d.u64(key).map(|v| v.to_string()).unwrap_or_default();
                let cash = |key: &str| d.u64(key).map(|v| money.show(v)).unwrap_or_default();
                t.row("line", d.str(k::SERIAL).unwrap_or_default())
                    .row("issuer", d.str(k::ISSUER).unwrap_or_default())
                    .row("state", d.str(k::STATE).unwrap_or_default())
                    .row("granted", cash(k::GRANTED))
                    .row("used", cash(k::USED))
                    .row("remaining", cash(k::REMAINING))
                    .row("certificates", num(k::CERTIFICATES))
                    .row(
                        "valid until",
                        d.i64(k::NOT_AFTER)
                            .map(format_unix_time)
                            .unwrap_or_default(),
                    )
                    .row("use", d.str(k::AUTHORIZED_USE).unwrap_or_default());
                human.push_str(&t.render());
                human.push('\n');
            }
            let json: Vec<_> = lines.iter().map(dict_to_json).collect();
            Ok(Output::new(human, json!({ "lines": json })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<crate::Cli, clap::Error> {
        crate::Cli::try_parse_from(std::iter::once("meterctl").chain(args.iter().copied()))
    }

    #[test]
    fn pay_needs_line_amount_payee_and_out() {
        let cli = parse(&[
            "credit", "pay", "--line", "CL1", "--amount", "5", "--payee", "shop", "-o", "p.pem",
        ])
        .unwrap();
        let crate::Command::Credit(CreditCommand::Pay {
            line,
            amount,
            request_id,
            ..
        }) = cli.command
        else {
            panic!("not credit pay")
        };
        assert_eq!(amount.plain(), Some(5));
        assert_eq!((line.as_str(), request_id), ("CL1", None));
        assert!(parse(&[
            "credit", "pay", "--line", "CL1", "--amount", "1,5", "--payee", "s", "-o", "p"
        ])
        .is_err());
        assert!(parse(&["credit", "pay", "--line", "CL1", "--amount", "5", "-o", "p"]).is_err());
        assert!(parse(&[
            "credit", "pay", "--line", "CL1", "--amount", "-5", "--payee", "s", "-o", "p"
        ])
        .is_err());
        assert!(parse(&["credit", "request", "--creditor", "B", "--amount", "1"]).is_err());
        assert!(parse(&["credit", "list", "--json"]).is_ok());
    }
}
