//! `meterctl postage`: buys a postage indicium for one mail piece and
//! writes it as bytes (`-o`), and/or prints it as a DataMatrix with the
//! human-readable lines beside it (`--png`, `--svg`), or on a 4 × 2 in label
//! (`--pdf`).
//!
//! The meter prices the piece by class and weight band; the indicium carries
//! the registers after its own debit (layout: `docs/INDICIUM.md`). As for
//! postmarks, every call has a request id, printed before the call when
//! generated, so a retry never charges twice.

use std::path::PathBuf;

use meter_pki::indicium;
use serde_json::json;

use super::postmark::random_request_id;
use super::{Ctx, Sink};
use crate::error::CtlError;
use crate::label;
use crate::output::Output;
use crate::render;

/// Arguments of `meterctl postage`. At least one output is required, so a
/// purchase is never thrown away.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("output").required(true).multiple(true).args(["out", "png", "svg", "pdf"])))]
pub struct Args {
    /// Mail class, as named in the rate table (e.g. `letter`).
    #[arg(long, value_name = "CLASS")]
    pub class: String,

    /// Weight of the piece in grams.
    #[arg(long, value_name = "GRAMS")]
    pub grams: u32,

    /// Origin data, e.g. the sender's postal code (1–16 printable ASCII).
    #[arg(long = "from", value_name = "ORIGIN")]
    pub origin: String,

    /// Destination data, e.g. the recipient's postal code (1–16 printable ASCII).
    #[arg(long = "to", value_name = "DESTINATION")]
    pub destination: String,

    /// Write the indicium bytes here (`-` = stdout).
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Write a PNG of the DataMatrix and the human-readable lines.
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,

    /// Write an SVG of the DataMatrix and the human-readable lines.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// Write a label-sized PDF (4 × 2 in) holding the imprint at 203 dpi.
    #[arg(long, value_name = "FILE")]
    pub pdf: Option<PathBuf>,

    /// Idempotency key: reuse it to retry without a second charge (default: random).
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
}

/// Runs `meterctl postage`.
pub async fn run(ctx: &Ctx, args: Args) -> Result<Output, CtlError> {
    // Every output is opened before the purchase: a bad path costs nothing.
    let open = |p: &Option<PathBuf>| p.as_deref().map(Sink::open).transpose();
    let (out, png, svg, pdf) = (
        open(&args.out)?,
        open(&args.png)?,
        open(&args.svg)?,
        open(&args.pdf)?,
    );
    let request_id = match args.request_id {
        Some(id) => id,
        None => {
            let id = random_request_id()?;
            eprintln!("request id: {id} (retry with --request-id {id} to avoid a second charge)");
            id
        }
    };
    let meter = ctx.meter().await?;
    let bytes = meter
        .postage(
            &args.class,
            args.grams,
            &args.origin,
            &args.destination,
            &request_id,
        )
        .await?;
    let ind = indicium::decode(&bytes)
        .map_err(|e| CtlError::Reply(format!("Postage returned a bad indicium: {e}")))?;
    if let Some(sink) = out {
        sink.commit(&bytes)?;
    }
    let lines = render::human_lines(&ind.body);
    let mut symbol_side = None;
    if png.is_some() || svg.is_some() || pdf.is_some() {
        let sym = render::symbol(&bytes)?;
        symbol_side = Some(sym.side);
        if let Some(sink) = png {
            sink.commit(&render::png(&sym, &lines)?)?;
        }
        if let Some(sink) = pdf {
            let title = format!("postage indicium, request id {request_id}");
            sink.commit(&label::pdf(&render::raster(&sym, &lines)?, &title)?)?;
        }
        if let Some(sink) = svg {
            sink.commit(render::svg(&sym, &lines).as_bytes())?;
        }
    }
    let mut human = lines.join("\n");
    human.push_str(&format!(
        "\n{} bytes; request id {request_id}\n",
        bytes.len()
    ));
    let mut j = render::indicium_json(&ind.body);
    j["request_id"] = json!(request_id);
    j["bytes"] = json!(bytes.len());
    j["indicium_hex"] = json!(hex::encode(&bytes));
    j["symbol"] = json!(symbol_side.map(|s| format!("{s}x{s}")));
    Ok(Output::new(human, j))
}
