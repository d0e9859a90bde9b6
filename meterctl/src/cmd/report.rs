//! `meterctl report`: the signed status report, and `meterctl report ack ACK`.
//!
//! The report (CMS SignedData, PEM label `CMS`) goes to the authority, which
//! checks it with `meter-authority inspect` and answers with an
//! acknowledgement; applying it here resets the meter's inspection watchdog
//! (and clears an `inspection-overdue` lock when the report was made under
//! it). A locked meter still reports, free of charge. Like every charged
//! call, a report carries a request id: a retry with the same id returns the
//! same report and charges nothing.

use std::path::PathBuf;

use serde_json::json;

use super::postmark::random_request_id;
use super::{read_input, write_output, Ctx, MAX_OBJECT};
use crate::error::CtlError;
use crate::output::{format_unix_time, Output};

/// Arguments of `meterctl report`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Apply an acknowledgement instead of making a report.
    #[command(subcommand)]
    pub command: Option<ReportCommand>,

    /// Where to write the report (PEM); default report.pem.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Idempotency key: reuse it to retry without a second charge (default: random).
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
}

/// Subcommands of `meterctl report`.
#[derive(Debug, clap::Subcommand)]
pub enum ReportCommand {
    /// Apply the authority's acknowledgement (from `meter-authority inspect`).
    Ack {
        /// The signed acknowledgement (CMS SignedData, PEM or DER).
        #[arg(value_name = "ACK")]
        ack: PathBuf,
    },
}

/// Runs `meterctl report ...`.
pub async fn run(ctx: &Ctx, args: Args) -> Result<Output, CtlError> {
    match args.command {
        Some(ReportCommand::Ack { ack }) => acknowledge(ctx, ack).await,
        None => report(ctx, args.out, args.request_id).await,
    }
}

async fn report(
    ctx: &Ctx,
    out: Option<PathBuf>,
    request_id: Option<String>,
) -> Result<Output, CtlError> {
    let out = out.unwrap_or_else(|| PathBuf::from("report.pem"));
    let request_id = match request_id {
        Some(id) => id,
        None => {
            let id = random_request_id()?;
            eprintln!("request id: {id} (retry with --request-id {id} to avoid a second charge)");
            id
        }
    };
    let meter = ctx.meter().await?;
    let der = meter.report(&request_id).await?;
    if der.is_empty() {
        return Err(CtlError::Reply("Report returned nothing".into()));
    }
    let pem = pem_rfc7468::encode_string("CMS", pem_rfc7468::LineEnding::LF, &der)
        .map_err(|e| CtlError::Reply(format!("cannot PEM-encode the report: {e}")))?;
    write_output(&out, pem.as_bytes())?;
    Ok(Output::new(
        format!(
            "status report written to {} ({} bytes, request id {request_id}); send it to the authority (meter-authority inspect)\n",
            out.display(),
            der.len()
        ),
        json!({"report": out.display().to_string(), "request_id": request_id, "bytes": der.len()}),
    ))
}

async fn acknowledge(ctx: &Ctx, path: PathBuf) -> Result<Output, CtlError> {
    let ack = read_input(&path, MAX_OBJECT)?;
    let meter = ctx.meter().await?;
    let due = meter.acknowledge_report(&ack).await?;
    let state = meter.state().await.unwrap_or_default();
    Ok(Output::new(
        format!(
            "acknowledgement applied; next report due {}; state: {}\n",
            format_unix_time(due),
            if state.is_empty() { "?" } else { &state }
        ),
        json!({"acknowledged": true, "inspection_due": due, "state": state}),
    ))
}
