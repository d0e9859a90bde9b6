//! The least a lone postmark can cost on this stack, measured as a whole:
//! a meter cut down to what no postmark can do without, in one process on
//! one thread.
//!
//! `bench/run` prints a floor for meterd's CPU per postmark at one client
//! as the sum of three parts measured apart, each in its own tight loop
//! (`rawsign`'s signature, `rawcommit`'s durable commit, the fake meter's
//! bus call). A loop keeps its caches warm and its thread awake; a lone
//! postmark does not: it wakes for the call, waits for the TPM and for the
//! disk, and on a shared machine the TPM's own work runs between. This
//! stand-in pays those too, and nothing else: it owns
//! `org.meterd.Meter1` on the bus (meterd stopped) and answers each
//! `PostmarkDigest` on the one thread that read it, with no hop to
//! another: one TPM signature of the caller's digest ([`TpmHousing`],
//! password session, key kept loaded, as `rawsign`), one durable one-row
//! commit of the product (`common/scratch_ledger.rs`, as `rawcommit`), and
//! the reply (serialized as meterd's are, `meter_proto::Blob`). What meterd spends above this stand-in's CPU per postmark is
//! meterd's own (its threads, its checks, its products); what this
//! stand-in spends is the stack's.
//!
//! `lonemeter --tcti T --dir STATE_DIR [--product-bytes N]` serves until
//! killed. Two switches add back, one at a time, what meterd has and this
//! has not, to weigh each: `--hop` signs and commits on another thread
//! and comes back (meterd's ledger thread), `--workers N` serves on N
//! async workers instead of one thread (meterd: one per core). the bus is the system bus (`DBUS_SYSTEM_BUS_ADDRESS`). The
//! product is the signature padded to N bytes (a postmark token's size by
//! default). Its throwaway key and scratch ledger vanish on a clean exit;
//! `bench/run` kills it, and both live in temporary directories.

use std::sync::{Arc, Mutex};

use clap::Parser;
use meter_proto::Blob;
use meterd::housing::tpm::TpmHousing;
use meterd::housing::Housing;
use zbus::fdo;

#[path = "common/scratch_ledger.rs"]
mod scratch_ledger;
use scratch_ledger::ScratchLedger;

#[derive(Parser)]
#[command(about = "A minimal meter on one thread: the floor of a lone postmark")]
struct Args {
    /// TCTI, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    #[arg(long, default_value = "device:/dev/tpmrm0")]
    tcti: String,
    /// Directory for the scratch database (the meter's state filesystem).
    #[arg(long)]
    dir: std::path::PathBuf,
    /// Bytes of each product (stored and returned).
    #[arg(long, default_value_t = 1140)]
    product_bytes: usize,
    /// Sign and commit on another thread (tokio's blocking pool) and come
    /// back, as meterd's ledger thread does: the cost of one hop there and
    /// back, against the default.
    #[arg(long)]
    hop: bool,
    /// Serve on a multi-thread runtime with this many workers (meterd's
    /// default is one per core) instead of the one thread.
    #[arg(long)]
    workers: Option<usize>,
}

const KEY: &str = "lonemeter";

/// The stand-in's state. The lock is this value's own and is never
/// contended: one thread serves every call (`main` takes it back at the
/// end to flush the key).
struct Lone {
    parts: Arc<Mutex<Parts>>,
    product_bytes: usize,
    hop: bool,
}

struct Parts {
    housing: TpmHousing,
    ledger: ScratchLedger,
}

#[zbus::interface(name = "org.meterd.Meter1")]
impl Lone {
    async fn postmark_digest(&self, sha384: Vec<u8>, _request_id: String) -> fdo::Result<Blob> {
        let digest: [u8; 48] = sha384
            .try_into()
            .map_err(|_| fdo::Error::InvalidArgs("a SHA-384 digest is 48 bytes".into()))?;
        if !self.hop {
            return postmark(&self.parts, &digest, self.product_bytes).map(Blob);
        }
        let (parts, size) = (Arc::clone(&self.parts), self.product_bytes);
        tokio::task::spawn_blocking(move || postmark(&parts, &digest, size))
            .await
            .map_err(|e| fdo::Error::Failed(format!("the worker thread: {e}")))?
            .map(Blob)
    }
}

/// What no postmark can do without: sign the digest, store the product
/// durably, return it.
fn postmark(parts: &Mutex<Parts>, digest: &[u8; 48], size: usize) -> fdo::Result<Vec<u8>> {
    let mut parts = parts
        .lock()
        .map_err(|_| fdo::Error::Failed("an earlier call panicked".into()))?;
    let signature = parts
        .housing
        .sign_digest(KEY, digest)
        .map_err(|e| fdo::Error::Failed(format!("sign: {e}")))?;
    let mut product = signature.to_vec();
    product.resize(size.max(product.len()), 0x30);
    parts
        .ledger
        .commit(&product)
        .map_err(|e| fdo::Error::Failed(format!("commit: {e}")))?;
    Ok(product)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.product_bytes > 1 << 20 {
        return Err("--product-bytes must be at most 1 MiB".into());
    }
    let keys = tempfile::tempdir()?;
    let mut housing = TpmHousing::open(&args.tcti, keys.path())?;
    housing.create_key(KEY)?;
    // Load the key once, before the first call.
    housing.sign_digest(KEY, &[0u8; 48])?;
    let ledger = ScratchLedger::open(&args.dir)?;
    let parts = Arc::new(Mutex::new(Parts { housing, ledger }));
    let lone = Lone {
        parts: Arc::clone(&parts),
        product_bytes: args.product_bytes,
        hop: args.hop,
    };
    // One thread: the call is read, signed, committed and answered on it.
    let runtime = match args.workers {
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.clamp(1, 64))
            .enable_all()
            .build()?,
    };
    runtime.block_on(async {
        let _conn = zbus::connection::Builder::system()?
            .serve_at(meter_proto::OBJECT_PATH, lone)?
            .name(meter_proto::BUS_NAME)?
            .build()
            .await?;
        eprintln!("lonemeter: serving {}", meter_proto::BUS_NAME);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    drop(runtime);
    // swtpm has no resource manager: flush the key's transient object (a
    // later meterd needs the slot), as rawsign does.
    let mut parts = parts.lock().map_err(|_| "a call panicked")?;
    parts.housing.destroy_key(KEY)?;
    parts.housing.shutdown()?;
    Ok(())
}
