//! The durable commit a lone postmark cannot do without, measured alone:
//! the other half (with `rawsign`) of the floor `bench/run` prints.
//!
//! `rawcommit --dir D --seconds N` opens a scratch SQLite file in D (put it
//! on the meter's state filesystem: the fsync is the filesystem's) with the
//! ledger's settings (WAL, `synchronous=FULL`) and, for N seconds, commits
//! one transaction at a time the way a one-row batch is written: a journal
//! row (~300 bytes), its product (`--product-bytes`, a postmark token's
//! size by default) and a batch row. It prints one line:
//!
//! ```text
//! commits_per_sec=<x> p50_ms=<a> p99_ms=<b> self_cpu_ticks=<t> commits=<n>
//! ```
//!
//! `self_cpu_ticks` is this process's CPU time over the window (user and
//! system: the kernel's share of the fsync is charged to the caller, as it
//! is to meterd's ledger thread). The scratch file is removed at the end.

use std::time::{Duration, Instant};

use clap::Parser;

#[path = "common/scratch_ledger.rs"]
mod scratch_ledger;
use scratch_ledger::ScratchLedger;

#[derive(Parser)]
#[command(about = "Measure one-row durable SQLite commits (the ledger's settings)")]
struct Args {
    /// Directory for the scratch database (the meter's state filesystem).
    #[arg(long)]
    dir: std::path::PathBuf,
    /// Seconds to measure.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Bytes of the product stored with each row.
    #[arg(long, default_value_t = 1140)]
    product_bytes: usize,
}

/// utime + stime of this process in clock ticks (/proc/self/stat 14, 15).
fn self_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err("--seconds must be in (0, 3600]".into());
    }
    if args.product_bytes > 1 << 20 {
        return Err("--product-bytes must be at most 1 MiB".into());
    }
    let mut ledger = ScratchLedger::open(&args.dir)?;
    let product = vec![0x5a_u8; args.product_bytes];
    let window = Duration::from_secs_f64(args.seconds);
    let mut lat: Vec<Duration> = Vec::with_capacity(4096);
    let before = self_ticks();
    let start = Instant::now();
    while start.elapsed() < window {
        let t = Instant::now();
        ledger.commit(&product)?;
        lat.push(t.elapsed());
    }
    let secs = start.elapsed().as_secs_f64();
    let after = self_ticks();
    lat.sort_unstable();
    let pick = |q: f64| {
        let i = ((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1000.0
    };
    if lat.is_empty() {
        return Err("no commit finished in the window".into());
    }
    let ticks = match (before, after) {
        (Some(b), Some(a)) => a.saturating_sub(b).to_string(),
        _ => "n/a".into(),
    };
    println!(
        "commits_per_sec={:.1} p50_ms={:.2} p99_ms={:.2} self_cpu_ticks={ticks} commits={}",
        lat.len() as f64 / secs,
        pick(0.50),
        pick(0.99),
        lat.len()
    );
    Ok(())
}
