//! A provisioned meter's own TPM objects, for `bench/run` (meterd stopped:
//! swtpm serves one connection at a time).
//!
//! The configuration is meterd's: `METERD_CONFIG` (optional),
//! `METERD_STATE_DIR` and `METERD_TCTI` (what `tests/sandbox env` exports),
//! `--tcti` overriding the last.
//!
//! ```text
//! meter_tpm counter        prints nv_counter=<value of the meter's NV counter>
//! meter_tpm fill ROWS      appends ROWS rows to the meter's ledger
//! ```
//!
//! `counter` is how the bench counts TPM2_NV_Increment commands: the
//! counter's value before and after a load, whatever commit path produced
//! them (one increment per batch, or per epoch).
//!
//! `fill` makes a large ledger meterd itself will open: the rows are
//! committed through [`Ledger::commit`] with the meter's own sealer (its
//! identity key and NV counter, as meterd builds it in `meter.rs`), 512
//! commits in flight so that batches are full, then a full audit writes the
//! signed checkpoint. The rows are validation debits of 1 minor unit under
//! caller keys of uid 4242 (no product a start-up check re-verifies), so
//! that "start to READY with N rows" is measured on a real meter ledger
//! rather than estimated. It prints `filled=… seconds=… batches=…`.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};
use meterd::config::Config;
use meterd::housing::tpm::TpmHousing;
use meterd::housing::HousingHandle;
use meterd::identity::meter_id_from_key;
use meterd::ledger::{Entry, HousingSealer, Key, Ledger, Verdict};
use meterd::meter::IDENTITY_KEY;
use meterd::money::Amount;
use meterd::service::Service;
use sha2::{Digest as _, Sha384};

/// Commits kept in flight while filling (the writer batches up to 256).
const WORKERS: u64 = 512;

#[derive(Parser)]
#[command(about = "Read the meter's NV counter or fill its ledger (meterd stopped)")]
struct Args {
    /// TCTI (default: the configuration's, i.e. $METERD_TCTI).
    #[arg(long, global = true)]
    tcti: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Prints `nv_counter=<value>` (or `nv_counter=none` if undefined).
    Counter,
    /// Appends ROWS debit rows to the meter's ledger and audits it.
    Fill { rows: u64 },
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let config_path = std::env::var_os("METERD_CONFIG").map(PathBuf::from);
    let mut config = Config::load(config_path.as_deref())?;
    if let Some(tcti) = args.tcti {
        config.tcti = tcti;
    }
    let housing = TpmHousing::open(&config.tcti, &config.key_dir())?;
    let handle = HousingHandle::spawn(housing)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = match args.cmd {
        Cmd::Counter => {
            let index = config.nv_index;
            let value = rt.block_on(handle.call(move |h| h.counter_read(index)))?;
            match value {
                Some(v) => println!("nv_counter={v}"),
                None => println!("nv_counter=none"),
            }
            Ok(())
        }
        Cmd::Fill { rows } => rt.block_on(fill(&config, &handle, rows)),
    };
    // Orderly: the housing thread sends TPM2_Shutdown(STATE) when closed.
    handle.close();
    std::thread::sleep(std::time::Duration::from_millis(100));
    result
}

fn request_id(i: u64) -> String {
    // UUID-shaped and spread over the key space, like callers' ids.
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!(
        "{:08x}-{:04x}-4000-8000-{:012x}",
        h >> 32,
        i & 0xffff,
        h & 0xffff_ffff_ffff
    )
}

async fn fill(
    config: &Config,
    handle: &HousingHandle,
    rows: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let public = handle.call(|h| h.public_key(IDENTITY_KEY)).await?;
    let meter_id = meter_id_from_key(&public);
    let sealer = HousingSealer::new(
        handle.clone(),
        IDENTITY_KEY,
        config.nv_index,
        public,
        std::sync::Arc::new(meterd::product_seal::PkiSealReader),
    );
    let path = config.ledger_path();
    let (ledger, report) = tokio::task::spawn_blocking(move || {
        Ledger::open(&path, Box::new(sealer), &meter_id, false)
    })
    .await??;
    if report.verdict != Verdict::Clean {
        return Err(format!("the meter's ledger opens {:?}", report.verdict).into());
    }
    let batches_before = report.batches;
    // A distinct run tag, so that a second fill never repeats a request key.
    let tag = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let l = ledger.clone();
        tasks.spawn(async move {
            let mut i = w;
            while i < rows {
                let id = format!("fill-{tag}-{}", request_id(i));
                let input: [u8; 48] = Sha384::digest(id.as_bytes()).into();
                let key = Key::caller(4242, &id)?;
                let e = Entry::debit(
                    Some(Service::Validate),
                    Some(key),
                    input,
                    Amount(1),
                    input[..32].to_vec(),
                    "",
                );
                l.commit(e, None).await?;
                i += WORKERS;
            }
            Ok::<_, meterd::ledger::LedgerError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| format!("worker: {e}"))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    // A clean full audit writes the signed checkpoint a later start uses.
    let audit = ledger.audit().await?;
    if audit.verdict != Verdict::Clean {
        return Err(format!("audit after the fill: {:?}", audit.verdict).into());
    }
    ledger.close().await?;
    println!(
        "filled={rows} seconds={seconds:.1} rows={} batches={} audit_ms={}",
        audit.rows,
        audit.batches.saturating_sub(batches_before),
        audit.millis
    );
    Ok(())
}
