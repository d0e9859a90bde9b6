//! `meterctl postmark`: buys an RFC 3161 time-stamp token for a message.
//!
//! The message travels as a file descriptor (the meter hashes it, any size);
//! `--digest` sends a SHA-384 the caller computed instead. Every call carries
//! a request id: a retry with the same id returns the token already made and
//! charges nothing, so a generated id is printed to stderr *before* the call.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::json;
use zbus::zvariant::Fd;

use super::{is_stdio, open_message, read_input, Ctx, Sink};
use crate::error::CtlError;
use crate::output::Output;

/// Length of a SHA-384 digest in bytes.
pub const SHA384_LEN: usize = 48;

/// Arguments of `meterctl postmark`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The message to postmark (`-` = stdin).
    #[arg(
        value_name = "FILE",
        required_unless_present_any = ["digest", "tsq"],
        conflicts_with_all = ["digest", "tsq"]
    )]
    pub file: Option<PathBuf>,

    /// Where to write the token (DER; `-` = stdout); default FILE.tsr.
    #[arg(
        short = 'o',
        long = "out",
        value_name = "TOKEN",
        required_unless_present = "file"
    )]
    pub out: Option<PathBuf>,

    /// Idempotency key: reuse it to retry without a second charge (default: random).
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,

    /// Postmark this SHA-384 digest (96 hex digits) instead of a file.
    #[arg(long, value_name = "HEX", conflicts_with = "tsq")]
    pub digest: Option<String>,

    /// Send this RFC 3161 TimeStampReq (DER, e.g. from `openssl ts -query`)
    /// and write the TimeStampResp to -o (`TimeStamp`).
    #[arg(long, value_name = "FILE", requires = "out")]
    pub tsq: Option<PathBuf>,
}

/// Runs `meterctl postmark`.
pub async fn run(ctx: &Ctx, args: Args) -> Result<Output, CtlError> {
    if let (Some(tsq), Some(out)) = (&args.tsq, &args.out) {
        return time_stamp(ctx, tsq, out, args.request_id.clone()).await;
    }
    let digest = args.digest.as_deref().map(parse_digest).transpose()?;
    let out_path = match (&args.out, &args.file) {
        (Some(out), _) => out.clone(),
        (None, Some(file)) if is_stdio(file) => {
            return Err(CtlError::Usage(
                "a message on stdin needs -o TOKEN (`-o -` for stdout)".into(),
            ))
        }
        (None, Some(file)) => default_token_path(file),
        (None, None) => return Err(CtlError::Usage("--digest needs -o TOKEN".into())),
    };
    // Open the message and the token's file before anything is charged, so
    // a typo costs nothing.
    let message = match (&args.file, &digest) {
        (Some(file), None) => Some(open_message(file)?),
        _ => None,
    };
    let sink = Sink::open(&out_path)?;
    let request_id = match args.request_id {
        Some(id) => id,
        None => {
            let id = random_request_id()?;
            eprintln!("request id: {id} (retry with --request-id {id} to avoid a second charge)");
            id
        }
    };

    let meter = ctx.meter().await?;
    let token = match (&message, &digest) {
        (Some(file), _) => meter.postmark(Fd::from(file), &request_id).await?,
        (None, Some(d)) => meter.postmark_digest(d, &request_id).await?,
        (None, None) => return Err(CtlError::Usage("postmark needs FILE or --digest".into())),
    };
    if token.is_empty() {
        return Err(CtlError::Reply("Postmark returned an empty token".into()));
    }
    sink.commit(&token)?;

    let human = format!(
        "postmark token written to {} ({} bytes); request id {request_id}\n",
        out_path.display(),
        token.len()
    );
    let json = json!({
        "request_id": request_id,
        "token_file": out_path,
        "bytes": token.len(),
    });
    Ok(Output::new(human, json))
}

/// `--tsq`: a TimeStampReq over D-Bus, the TimeStampResp written to `out`
/// (also when rejected, then an error that quotes the status string).
async fn time_stamp(
    ctx: &Ctx,
    tsq: &Path,
    out: &Path,
    request_id: Option<String>,
) -> Result<Output, CtlError> {
    // A TimeStampReq is a few hundred bytes; the meter refuses more than this.
    let request = read_input(tsq, meter_pki::tsq::MAX_REQUEST as u64)?;
    // Opened before the paid call: an unwritable output charges nothing.
    let sink = Sink::open(out)?;
    let request_id = match request_id {
        Some(id) => id,
        None => {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(&request))
        }
    };
    let meter = ctx.meter().await?;
    let reply = meter.time_stamp(&request, &request_id).await?;
    sink.commit(&reply)?;
    let parsed = meter_pki::tsq::parse_response(&reply)
        .map_err(|e| CtlError::Reply(format!("TimeStamp returned no TimeStampResp: {e}")))?;
    if parsed.status > 1 {
        return Err(CtlError::Reply(format!(
            "time-stamp rejected (reply written to {}): {} (failInfo bits {:?})",
            out.display(),
            parsed.text.unwrap_or_default(),
            parsed.fail_bits
        )));
    }
    let human = format!(
        "time-stamp reply written to {} ({} bytes); request id {request_id}\n",
        out.display(),
        reply.len()
    );
    let json = json!({
        "request_id": request_id,
        "reply_file": out,
        "bytes": reply.len(),
        "status": parsed.status,
    });
    Ok(Output::new(human, json))
}

/// `mail.eml` → `mail.eml.tsr`.
pub fn default_token_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".tsr");
    PathBuf::from(name)
}

/// Parses a SHA-384 digest given as 96 hex digits.
pub fn parse_digest(text: &str) -> Result<Vec<u8>, CtlError> {
    let bytes = hex::decode(text.trim())
        .map_err(|e| CtlError::Usage(format!("--digest is not hex: {e}")))?;
    if bytes.len() != SHA384_LEN {
        return Err(CtlError::Usage(format!(
            "--digest must be a SHA-384 digest ({} hex digits), got {} bytes",
            2 * SHA384_LEN,
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// 16 random bytes from the kernel, as 32 hex digits.
pub fn random_request_id() -> Result<String, CtlError> {
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|source| CtlError::Io {
            what: "cannot read /dev/urandom for a request id",
            source,
        })?;
    Ok(hex::encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_path_appends_tsr() {
        assert_eq!(
            default_token_path(Path::new("a/mail.eml")),
            PathBuf::from("a/mail.eml.tsr")
        );
        assert_eq!(default_token_path(Path::new("m")), PathBuf::from("m.tsr"));
    }

    #[test]
    fn digest_must_be_sha384_hex() {
        let good = "0f".repeat(48);
        assert_eq!(parse_digest(&good).unwrap(), vec![0x0f; 48]);
        assert!(matches!(
            parse_digest(&"0f".repeat(32)),
            Err(CtlError::Usage(_))
        ));
        assert!(matches!(
            parse_digest(&"zz".repeat(48)),
            Err(CtlError::Usage(_))
        ));
        assert!(matches!(parse_digest("abc"), Err(CtlError::Usage(_))));
    }

    #[test]
    fn request_ids_are_random_hex() {
        let a = random_request_id().unwrap();
        let b = random_request_id().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
