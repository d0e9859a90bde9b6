//! Ledger benchmark: builds a ledger of N rows (default 1,000,000) through the
//! normal commit API with a software sealer, then times a full audit and a
//! reopen and measures the journal's size on disk.
//!
//! `cargo run --release -p meterd --example ledger_bench [-- ROWS [DIR]]`
//! or `... -- ROWS --db PATH`: keep the ledger at PATH and, when PATH already
//! holds a ledger (of a previous run), skip the build and time it again.
//! Prints `rows=… build_s=… batches=… audit_1m_ms=… reopen_ms=… bytes_per_row=…`
//! (audit time scaled to 1,000,000 rows when ROWS differs).

use std::time::Instant;

use meterd::ledger::{Entry, Key, Ledger, Options, SoftwareSealer, Verdict};
use meterd::money::Amount;
use meterd::service::Service;
use sha2::{Digest as _, Sha384};

const WORKERS: u64 = 512;

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rows: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let (_dir, path) = match args.next().as_deref() {
        Some("--db") => {
            let p = std::path::PathBuf::from(args.next().ok_or("--db needs a path")?);
            (None, p)
        }
        Some(d) => {
            let t = tempfile::TempDir::new_in(d)?;
            let p = t.path().join("ledger.db");
            (Some(t), p)
        }
        None => {
            let t = tempfile::tempdir()?;
            let p = t.path().join("ledger.db");
            (Some(t), p)
        }
    };
    if path.exists() {
        return time_existing(&path, rows);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (sealer, control) = SoftwareSealer::new(&[0x33; 48], 1)?;

    let started = Instant::now();
    let (ledger, _) = Ledger::open(&path, Box::new(sealer), "bench-meter", true)?;
    let debits = rows.saturating_sub(2);
    rt.block_on(async {
        let credit = Entry::credit(
            Key::meter("voucher", 1),
            [1; 48],
            Amount(u64::MAX / 2),
            b"voucher".to_vec(),
            "",
        );
        ledger.commit(credit, None).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..WORKERS {
            let l = ledger.clone();
            tasks.spawn(async move {
                let mut i = w;
                while i < debits {
                    let id = request_id(i);
                    let input: [u8; 48] = Sha384::digest(id.as_bytes()).into();
                    let key = Key::caller(1000, &id)?;
                    let e = Entry::debit(
                        Some(Service::Postmark),
                        Some(key),
                        input,
                        Amount(1 + i % 997),
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
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    let build_s = started.elapsed().as_secs_f64();

    let report = rt.block_on(ledger.audit())?;
    if report.verdict != Verdict::Clean {
        return Err(format!("audit verdict {:?}", report.verdict).into());
    }
    let audit_ms = report.millis;
    rt.block_on(ledger.close())?;

    let (sealer, _) = SoftwareSealer::new(&[0x33; 48], control.counter())?;
    let t = Instant::now();
    let (ledger, reopened) = Ledger::open(&path, Box::new(sealer), "bench-meter", false)?;
    let reopen_ms = t.elapsed().as_millis();
    // Layout v2: the ledger adds its own epoch rows (every start, every
    // `epoch_rows` rows, every orderly stop) to the rows written here.
    if reopened.verdict != Verdict::Clean || reopened.rows < rows {
        return Err(format!("reopen: {:?} rows {}", reopened.verdict, reopened.rows).into());
    }
    rt.block_on(ledger.close())?;

    print_sizes(&path, rows, build_s, audit_ms, reopen_ms, reopened.batches)
}

/// Reopens (full audit at open) a ledger kept by an earlier run.
fn time_existing(path: &std::path::Path, rows: u64) -> Result<(), Box<dyn std::error::Error>> {
    let nv: i64 = rusqlite::Connection::open(path)?.query_row(
        "SELECT nv FROM batches ORDER BY batch DESC LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    let (sealer, control) = SoftwareSealer::new(&[0x33; 48], u64::try_from(nv)?)?;
    let t = Instant::now();
    let (ledger, reopened) = Ledger::open(path, Box::new(sealer), "bench-meter", false)?;
    let reopen_ms = t.elapsed().as_millis();
    // Layout v2: the ledger adds its own epoch rows (every start, every
    // `epoch_rows` rows, every orderly stop) to the rows written here.
    if reopened.verdict != Verdict::Clean || reopened.rows < rows {
        return Err(format!("reopen: {:?} rows {}", reopened.verdict, reopened.rows).into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(ledger.audit())?;
    rt.block_on(ledger.close())?;
    print_sizes(path, rows, 0.0, report.millis, reopen_ms, reopened.batches)?;
    // The open and the close each advanced the epoch (layout v2): the
    // counter is the sealer's now, not the last batch's before them.
    checkpoint_open(path, rows, control.counter())
}

/// Opens from the checkpoint the full audits above wrote, with a few rows
/// appended after it (a restart after some work): `checkpoint_open_ms=…`.
fn checkpoint_open(
    path: &std::path::Path,
    rows: u64,
    nv: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let (sealer, _) = SoftwareSealer::new(&[0x33; 48], nv)?;
    let t = Instant::now();
    let (ledger, r) = Ledger::open_with(
        path,
        Box::new(sealer),
        "bench-meter",
        Options::FROM_CHECKPOINT,
    )?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if r.verdict != Verdict::Clean || r.rows < rows {
        return Err(format!("checkpoint open: {:?} rows {}", r.verdict, r.rows).into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(ledger.close())?;
    println!("checkpoint_open_ms={ms:.1} rows_after_checkpoint=0");
    Ok(())
}

fn print_sizes(
    path: &std::path::Path,
    rows: u64,
    build_s: f64,
    audit_ms: u64,
    reopen_ms: u128,
    batches: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let c = rusqlite::Connection::open(path)?;
    let mut sizes = std::collections::BTreeMap::new();
    let mut stmt = c.prepare("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")?;
    for r in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (name, size) = r?;
        sizes.insert(name, size);
    }
    let size = |n: &str| sizes.get(n).copied().unwrap_or(0);
    let journal = size("journal") + size("sqlite_autoindex_journal_1") + size("batches");
    let file = std::fs::metadata(path)?.len();
    let scale = 1_000_000.0 / rows as f64;
    println!(
        "rows={rows} build_s={build_s:.1} batches={} audit_ms={audit_ms} audit_1m_ms={:.0} reopen_ms={reopen_ms} \
         bytes_per_row={:.1} journal_table={} request_id_index={} batches_table={} products={} file={file}",
        batches,
        audit_ms as f64 * scale,
        journal as f64 / rows as f64,
        size("journal"),
        size("sqlite_autoindex_journal_1"),
        size("batches"),
        size("products"),
    );
    Ok(())
}
