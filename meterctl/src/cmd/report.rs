//! `meterctl report`: the signed status report and its ledger segment, and
//! `meterctl report ack ACK`.
//!
//! The report (CMS SignedData, PEM label `CMS`) and its segment (the ledger
//! rows since the last acknowledged report, binary, `ReportSegment`; by
//! default next to the report, extension `.seg`) go to the authority, which
//! re-derives every register from the rows with `meter-authority inspect
//! REPORT --segment SEG` and answers with an acknowledgement (or, on any
//! discrepancy, a lock order); applying it here resets the meter's inspection watchdog
//! (and clears an `inspection-overdue` lock when the report was made under
//! it). With the segment comes the TPM's attestation of the report
//! (`ReportAttestation`, written next to the report with extension `.att`;
//! none from a meter that does not attest), which `inspect` reads from there.
//! A locked meter still reports, free of charge. Like every charged
//! call, a report carries a request id: a retry with the same id returns the
//! same report and charges nothing.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde_json::json;
use zbus::zvariant::Fd;

use super::postmark::random_request_id;
use super::{read_input, write_output, Ctx, Sink, MAX_OBJECT};
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

    /// Where to write the report's ledger segment; default: the report's
    /// path with extension `.seg`. Needs an administrator (meteradmin).
    #[arg(long, value_name = "FILE", conflicts_with = "no_segment")]
    pub segment: Option<PathBuf>,

    /// Make the report only, without its segment (what a plain user of
    /// group `meter` may do: the segment holds every caller's rows).
    #[arg(long)]
    pub no_segment: bool,

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
        None => {
            let out = args.out.unwrap_or_else(|| PathBuf::from("report.pem"));
            let asked = args.segment.is_some();
            let segment = match (args.no_segment, args.segment) {
                (true, _) => None,
                (false, Some(s)) => Some(s),
                (false, None) => Some(out.with_extension("seg")),
            };
            report(ctx, out, segment, asked, args.request_id).await
        }
    }
}

async fn report(
    ctx: &Ctx,
    out: PathBuf,
    segment: Option<PathBuf>,
    segment_asked: bool,
    request_id: Option<String>,
) -> Result<Output, CtlError> {
    // The report is charged: its file is opened first, so a bad path costs nothing.
    let sink = Sink::open(&out)?;
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
    sink.commit(pem.as_bytes())?;
    let Some(seg) = segment else {
        return Ok(Output::new(
            format!(
                "status report written to {} ({} bytes, request id {request_id}); no segment asked for\n",
                out.display(),
                der.len()
            ),
            json!({"report": out.display().to_string(), "request_id": request_id, "bytes": der.len()}),
        ));
    };
    let (first, last, bytes) = match write_segment(&meter, &request_id, &seg).await {
        Ok(w) => w,
        // The default segment of a caller who may not have it (a user of
        // group `meter`): the report stands (it is charged); an
        // administrator gets the segment with the same request id, free.
        Err(e) if !segment_asked => {
            return Ok(Output::new(
                format!(
                    "status report written to {} ({} bytes, request id {request_id})\n\
                     NO ledger segment ({e}); an administrator gets it, free, with: meterctl report -o {} --request-id {request_id}\n",
                    out.display(),
                    der.len(),
                    out.display(),
                ),
                json!({
                    "report": out.display().to_string(),
                    "request_id": request_id,
                    "bytes": der.len(),
                    "segment": null,
                    "segment_error": e.to_string(),
                }),
            ));
        }
        Err(e) => return Err(e),
    };
    // The TPM's attestation over the report's digest, beside the report (it
    // cannot be inside the CMS it attests); a meter that cannot attest gives none.
    let att = meter.report_attestation(&request_id).await?;
    let att_path = out.with_extension("att");
    let att_line = match att.is_empty() {
        true => "no TPM attestation (this meter's housing does not attest)\n".to_owned(),
        false => {
            write_output(&att_path, &att)?;
            format!("TPM attestation written to {}\n", att_path.display())
        }
    };
    Ok(Output::new(
        format!(
            "status report written to {} ({} bytes, request id {request_id})\n\
             ledger segment (rows {first}..={last}, {bytes} bytes) written to {}\n\
             {att_line}\
             send them to the authority: meter-authority inspect {} --segment {} --out ACK\n",
            out.display(),
            der.len(),
            seg.display(),
            out.display(),
            seg.display(),
        ),
        json!({
            "report": out.display().to_string(),
            "request_id": request_id,
            "bytes": der.len(),
            "segment": seg.display().to_string(),
            "segment_first": first,
            "segment_last": last,
            "segment_bytes": bytes,
            "attestation": (!att.is_empty()).then(|| att_path.display().to_string()),
        }),
    ))
}

/// Has the meter write the report's segment into `path` (through a
/// temporary file renamed at the end, so a failure leaves no half segment).
async fn write_segment(
    meter: &meter_proto::Meter1Proxy<'_>,
    request_id: &str,
    path: &Path,
) -> Result<(u64, u64, u64), CtlError> {
    let file_err = |p: &Path, source| CtlError::File {
        path: p.to_path_buf(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let file = File::create(&tmp).map_err(|e| file_err(&tmp, e))?;
    let (first, last, bytes) = match segment_into(meter, request_id, &file, &tmp).await {
        Ok(a) => a,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    file.sync_all().map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))?;
    Ok((first, last, bytes))
}

/// Has the meter write the segment of report `request_id` into `file`
/// (`path` names it in errors) and checks the size it says it wrote; returns
/// (first row, last row, bytes). Shared with `meterctl sync`.
pub(crate) async fn segment_into(
    meter: &meter_proto::Meter1Proxy<'_>,
    request_id: &str,
    file: &File,
    path: &Path,
) -> Result<(u64, u64, u64), CtlError> {
    let (first, last, bytes) = meter.report_segment(request_id, Fd::from(file)).await?;
    let len = file
        .metadata()
        .map_err(|source| CtlError::File {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if len != bytes {
        return Err(CtlError::Reply(format!(
            "ReportSegment said {bytes} bytes, the file holds {len}"
        )));
    }
    Ok((first, last, bytes))
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
