//! Raw TPM throughput, the baseline for meterd's postmark rate.
//!
//! `rawsign --tcti T --seconds N` creates a throwaway key in a temporary key
//! directory, signs SHA-384 digests through [`TpmHousing`] (password
//! session, key kept loaded) for N seconds, then increments an NV counter
//! for N seconds, and prints two machine-readable lines:
//!
//! ```text
//! raw_signs_per_sec=<x>
//! raw_nv_increments_per_sec=<y>
//! ```
//!
//! With `--busy-pid PID` (swtpm's), a third line gives that process's CPU
//! time over exactly the sign window, in clock ticks, and the window:
//! `busy_cpu_ticks=<t> sign_seconds=<s>` — how busy one client feeding it
//! back to back keeps the TPM on this machine (`bench/run` divides by
//! `getconf CLK_TCK`).
//!
//! A fourth line, `self_cpu_ticks=<t>`, gives this process's own CPU time
//! over the same window: what one TPM signature costs a client on this
//! machine through tss-esapi and the TCTI (the floor of meterd's CPU per
//! postmark, which makes one such signature).
//!
//! The counter is defined at `--nv-index` (default 0x01500fff) and left in
//! place, with an authorization value drawn from the key directory's
//! secret; the key blobs vanish with the temporary directory. A second run
//! on the same TPM therefore cannot increment it: it prints
//! `raw_nv_increments_per_sec=n/a` and why, unless it is given the first
//! run's `--keys DIR` (or another `--nv-index`).

use std::time::{Duration, Instant};

use clap::Parser;
use meterd::housing::tpm::TpmHousing;
use meterd::housing::Housing;
use sha2::{Digest, Sha384};

#[derive(Parser)]
#[command(about = "Measure raw TPM sign and NV-increment rates")]
struct Args {
    /// TCTI, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    #[arg(long, default_value = "device:/dev/tpmrm0")]
    tcti: String,
    /// Seconds per measurement (signs, then NV increments).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// NV index of the scratch counter.
    #[arg(long, default_value = "0x01500fff", value_parser = parse_index)]
    nv_index: u32,
    /// Report this process's CPU time over the sign window (swtpm's pid).
    #[arg(long)]
    busy_pid: Option<u32>,
    /// Key directory to keep between runs (default: a temporary one).
    #[arg(long)]
    keys: Option<std::path::PathBuf>,
}

/// utime + stime of `pid` in clock ticks (/proc/PID/stat fields 14, 15;
/// the name, field 2, may hold spaces).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn parse_index(s: &str) -> Result<u32, String> {
    let hex = s.strip_prefix("0x").unwrap_or(s);
    u32::from_str_radix(hex, 16).map_err(|e| format!("bad NV index {s:?}: {e}"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err("--seconds must be in (0, 3600]".into());
    }
    let window = Duration::from_secs_f64(args.seconds);
    let scratch = tempfile::tempdir()?;
    let keys = args.keys.as_deref().unwrap_or(scratch.path());
    let mut housing = TpmHousing::open(&args.tcti, keys)?;
    housing.create_key("rawsign")?;

    let mut digest: [u8; 48] = Sha384::digest(b"rawsign").into();
    // Warm up: load the key once, outside the measurement.
    housing.sign_digest("rawsign", &digest)?;
    let busy_before = args.busy_pid.and_then(cpu_ticks);
    let self_before = cpu_ticks(std::process::id());
    let start = Instant::now();
    let mut signs = 0u64;
    while start.elapsed() < window {
        digest[..8].copy_from_slice(&signs.to_be_bytes());
        housing.sign_digest("rawsign", &digest)?;
        signs += 1;
    }
    let sign_seconds = start.elapsed().as_secs_f64();
    let busy_after = args.busy_pid.and_then(cpu_ticks);
    let self_after = cpu_ticks(std::process::id());
    let sign_rate = signs as f64 / sign_seconds;

    // The NV figure is the second one: a counter this run cannot use
    // (another run's, see the module doc) costs it, not the sign figure.
    let nv_rate = match nv_window(&mut housing, args.nv_index, window) {
        Ok(rate) => format!("{rate:.1}"),
        Err(e) => {
            eprintln!("rawsign: NV counter {:#010x}: {e}", args.nv_index);
            "n/a".to_string()
        }
    };

    housing.destroy_key("rawsign")?;
    housing.shutdown()?;
    println!("raw_signs_per_sec={sign_rate:.1}");
    println!("raw_nv_increments_per_sec={nv_rate}");
    if let (Some(b), Some(a)) = (busy_before, busy_after) {
        println!(
            "busy_cpu_ticks={} sign_seconds={sign_seconds:.3}",
            a.saturating_sub(b)
        );
    }
    if let (Some(b), Some(a)) = (self_before, self_after) {
        println!("self_cpu_ticks={} signs={signs}", a.saturating_sub(b));
    }
    Ok(())
}

/// Increments the scratch counter back to back for `window`: increments a second.
fn nv_window(
    housing: &mut TpmHousing,
    index: u32,
    window: Duration,
) -> Result<f64, meterd::housing::HousingError> {
    housing.counter_define(index)?;
    let start = Instant::now();
    let mut increments = 0u64;
    while start.elapsed() < window {
        housing.counter_increment(index)?;
        increments += 1;
    }
    Ok(increments as f64 / start.elapsed().as_secs_f64())
}
