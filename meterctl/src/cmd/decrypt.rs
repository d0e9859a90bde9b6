//! `meterctl decrypt SERIAL -i ENVELOPE -o OUT`: opens a CMS envelope (DER or
//! PEM, e.g. from `openssl cms -encrypt -aes256 -recip cert.pem`) with an
//! installed user encryption certificate, the key agreement done in the
//! meter's TPM (charged as `decrypt`).
//!
//! The meter writes the plaintext straight into the descriptor passed here:
//! stdout for `-o -`, otherwise `OUT.tmp` renamed over `OUT` once the meter
//! answered (so a failure leaves no half file). The output is opened before
//! the paid call, so a bad path costs nothing.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde_json::json;
use zbus::zvariant::Fd;

use super::postmark::random_request_id;
use super::{is_stdio, mark_data_on_stdout, open_message, Ctx};
use crate::error::CtlError;
use crate::output::Output;

/// Arguments of `meterctl decrypt`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Serial (hex) of the user encryption certificate (see `meterctl certs`).
    #[arg(value_name = "SERIAL")]
    pub serial: String,
    /// The envelope (CMS EnvelopedData, DER or PEM); `-` reads stdin.
    #[arg(short = 'i', long = "in", value_name = "ENVELOPE")]
    pub input: PathBuf,
    /// Where to write the plaintext; `-` writes stdout.
    #[arg(short = 'o', long = "out", value_name = "OUT")]
    pub out: PathBuf,
    /// Idempotency key: reuse it to retry without a second charge (default: random).
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
}

enum Target {
    Stdout(std::os::fd::OwnedFd),
    Direct(File),
    Temp(PathBuf, File),
}

fn file_err(path: &Path, source: std::io::Error) -> CtlError {
    CtlError::File {
        path: path.to_path_buf(),
        source,
    }
}

fn open_target(path: &Path) -> Result<Target, CtlError> {
    if is_stdio(path) {
        let fd = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| file_err(path, e))?;
        return Ok(Target::Stdout(fd));
    }
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| file_err(path, e))?;
        return Ok(Target::Direct(f));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let f = File::create(&tmp).map_err(|e| file_err(&tmp, e))?;
    Ok(Target::Temp(tmp, f))
}

/// Runs `meterctl decrypt`.
pub async fn run(ctx: &Ctx, args: Args) -> Result<Output, CtlError> {
    let envelope = open_message(&args.input)?;
    let target = open_target(&args.out)?;
    let request_id = match args.request_id {
        Some(id) => id,
        None => {
            let id = random_request_id()?;
            eprintln!("request id: {id} (retry with --request-id {id} to avoid a second charge)");
            id
        }
    };
    let meter = ctx.meter().await;
    let meter = match meter {
        Ok(m) => m,
        Err(e) => {
            if let Target::Temp(tmp, _) = &target {
                let _ = std::fs::remove_file(tmp);
            }
            return Err(e);
        }
    };
    let out_fd = match &target {
        Target::Stdout(fd) => fd.as_fd(),
        Target::Direct(f) | Target::Temp(_, f) => f.as_fd(),
    };
    let answer = meter
        .decrypt(
            &args.serial,
            Fd::from(&envelope),
            Fd::from(out_fd),
            &request_id,
        )
        .await;
    let bytes = match answer {
        Ok(n) => n,
        Err(e) => {
            if let Target::Temp(tmp, _) = &target {
                let _ = std::fs::remove_file(tmp);
            }
            return Err(e.into());
        }
    };
    if let Target::Temp(tmp, f) = target {
        if let Err(e) = f.sync_all() {
            let _ = std::fs::remove_file(&tmp);
            return Err(file_err(&tmp, e));
        }
        std::fs::rename(&tmp, &args.out).map_err(|e| file_err(&args.out, e))?;
    }
    let human = if is_stdio(&args.out) {
        mark_data_on_stdout();
        String::new()
    } else {
        format!(
            "plaintext written to {} ({bytes} bytes); request id {request_id}\n",
            args.out.display()
        )
    };
    Ok(Output::new(
        human,
        json!({"out": args.out, "bytes": bytes, "request_id": request_id, "serial": args.serial}),
    ))
}
