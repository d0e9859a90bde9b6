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
use rusqlite::{params, Connection};

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
    let scratch = tempfile::tempdir_in(&args.dir)?;
    let mut conn = Connection::open(scratch.path().join("commit.sqlite"))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        return Err(format!("journal_mode is {mode}, not wal").into());
    }
    conn.execute_batch(
        "PRAGMA synchronous=FULL; PRAGMA cache_size=-16384;
         CREATE TABLE journal(seq INTEGER PRIMARY KEY, time INTEGER NOT NULL,
             request_id TEXT UNIQUE, registers BLOB NOT NULL, digest BLOB NOT NULL,
             hash BLOB NOT NULL);
         CREATE TABLE products(seq INTEGER PRIMARY KEY, input_digest BLOB NOT NULL,
             product BLOB NOT NULL);
         CREATE TABLE batches(first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL,
             head BLOB NOT NULL, seal BLOB NOT NULL, time INTEGER NOT NULL);",
    )?;
    let product = vec![0x5a_u8; args.product_bytes];
    let registers = [7u8; 80];
    let digest = [9u8; 48];
    let window = Duration::from_secs_f64(args.seconds);
    let mut lat: Vec<Duration> = Vec::with_capacity(4096);
    let before = self_ticks();
    let start = Instant::now();
    let mut seq = 0i64;
    while start.elapsed() < window {
        seq += 1;
        let t = Instant::now();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.prepare_cached(
            "INSERT INTO journal(seq, time, request_id, registers, digest, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            seq,
            seq * 7,
            format!("c/1000/req-{seq}"),
            &registers[..],
            &digest[..],
            &digest[..]
        ])?;
        tx.prepare_cached("INSERT INTO products(seq, input_digest, product) VALUES (?1, ?2, ?3)")?
            .execute(params![seq, &digest[..], &product])?;
        tx.prepare_cached(
            "INSERT INTO batches(first_seq, last_seq, head, seal, time) VALUES (?1, ?1, ?2, x'', ?3)",
        )?
        .execute(params![seq, &digest[..], seq * 7])?;
        tx.commit()?;
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
