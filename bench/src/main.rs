//! `meterbench`: a load generator for meterd, used by `bench/run`.
//!
//! It opens one bus connection per client (as that many mail programs
//! would), keeps every client busy with back-to-back calls for a fixed time,
//! and prints one `key=value` line: throughput, errors and latency
//! percentiles. `fake-meter` serves the same two members with a canned reply
//! so the generator and the bus overhead can be measured without a TPM.
//! During a load it can also read, at the exact edges of the window, the
//! CPU time of the processes around it and the NV writes of swtpm
//! (`procstat`). `http` loads the RFC 3161 endpoint instead (`http`).
//! `tpm-proxy` puts a discrete TPM's pace between a client
//! and swtpm (`tpmproxy`, latencies and their sources in `profile`).

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod http;
mod procstat;
mod profile;
mod ready;
mod tpmproxy;

use clap::{Parser, Subcommand};
use meter_proto::{Blob, Meter1Proxy, MeterError};
use sha2::{Digest, Sha384};
use zbus::zvariant::{Fd, OwnedValue, Value};

/// What can go wrong in the generator itself (not in a measured call).
#[derive(Debug, thiserror::Error)]
enum BenchError {
    /// The bus could not be reached or the proxy not built.
    #[error("bus: {0}")]
    Bus(#[from] zbus::Error),
    /// A local file could not be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A client task panicked or was cancelled.
    #[error("client task: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The setup call (postmarking the file to validate) failed.
    #[error("setup: {0}")]
    Setup(String),
    /// Every call failed: the figure would be meaningless.
    #[error("all {0} calls failed; first error: {1}")]
    AllFailed(u64, String),
}

#[derive(Parser)]
#[command(about = "Load generator for meterd over D-Bus")]
struct Cli {
    /// Bus address (default: $DBUS_SYSTEM_BUS_ADDRESS, else the system bus).
    #[arg(long, global = true)]
    bus: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// PostmarkDigest calls, each with a fresh digest and request id.
    Postmark {
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// LABEL=PID (PID `self`: this generator): print `cpu_LABEL_ms=`,
        /// its CPU time over the window. Repeatable.
        #[arg(long = "cpu", value_parser = procstat::parse_watch)]
        cpu: Vec<procstat::Watched>,
        /// swtpm's state directory: print `nv_writes=`, the state-file
        /// writes over the window (inotify).
        #[arg(long)]
        nv_dir: Option<PathBuf>,
        /// PID whose threads to account: print `thr_NAME_ms=USER/SYSTEM`
        /// per thread name over the window.
        #[arg(long)]
        threads: Option<u32>,
        /// Write one line per answered call, in the order each client made
        /// them: `REQUEST_ID LATENCY_US` (join it with the ledger's
        /// request ids to see which rows were slow).
        #[arg(long)]
        trace: Option<PathBuf>,
    },
    /// Validate calls of FILE against a token made once at the start.
    Validate {
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// The message to validate (postmarked once before the run).
        #[arg(long)]
        file: PathBuf,
    },
    /// RFC 3161 time-stamps over HTTP through meter-tsa: CLIENTS keep-alive
    /// connections POSTing DER TimeStampReqs back to back (see `http`).
    Http {
        /// The endpoint, with credentials: http://user:secret@host:port/
        #[arg(long, env = "METERD_TSA_URL")]
        url: String,
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// LABEL=PID: print `cpu_LABEL_ms=` over the window. Repeatable.
        #[arg(long = "cpu", value_parser = procstat::parse_watch)]
        cpu: Vec<procstat::Watched>,
    },
    /// Owns org.meterd.Meter1 and answers PostmarkDigest/Validate with a
    /// canned reply (bus overhead only; no TPM, no ledger).
    FakeMeter,
    /// Starts CMD with NOTIFY_SOCKET set and times it to READY=1; then
    /// reads its idle resident memory and stops it.
    Ready {
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
        /// Idle time before the memory reading.
        #[arg(long, default_value_t = 1.0)]
        idle: f64,
        /// Where the daemon's output goes.
        #[arg(long, default_value = "/dev/null")]
        log: PathBuf,
        /// The daemon and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        cmd: Vec<String>,
    },
    /// Prints the peak VmRSS/RssAnon (KiB) of PID sampled every 50 ms until
    /// it exits or SECONDS pass.
    Rss {
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Delaying proxy between a TPM client and swtpm (127.0.0.1): a
    /// discrete TPM's latency by command code. SIGUSR1 prints its counters.
    TpmProxy {
        /// Server port to listen on; the control port is the next one.
        #[arg(long)]
        listen: u16,
        /// swtpm's server port; its control port is the next one.
        #[arg(long)]
        upstream: u16,
        /// Chip to emulate: slb9670, slb9672, st33ktpm, npct750, or zero
        /// (no delay: the proxy alone).
        #[arg(long, default_value = profile::DEFAULT)]
        profile: String,
        /// NV write time in ms (no published figure; see `profile`).
        #[arg(long)]
        nv_ms: Option<f64>,
        /// P-384 sign time ÷ the chip's published P-256 sign time (2.25:
        /// the pessimistic estimate; see `profile`).
        #[arg(long, default_value_t = 1.0)]
        p384_factor: f64,
        /// File created once the proxy listens.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Prints the latencies of a profile (`tpm-proxy --profile`).
    Profile {
        #[arg(default_value = profile::DEFAULT)]
        name: String,
        #[arg(long)]
        nv_ms: Option<f64>,
        #[arg(long, default_value_t = 1.0)]
        p384_factor: f64,
    },
}

/// Samples the memory of `pid` until it exits or `seconds` pass; prints the peaks.
async fn peak_rss(pid: u32, seconds: f64) {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let (mut rss, mut anon) = (0, 0);
    while Instant::now() < end {
        let Some((r, a)) = ready::rss_kib(pid) else {
            break;
        };
        rss = rss.max(r);
        anon = anon.max(a);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("rss_peak_kib={rss} rss_anon_peak_kib={anon}");
}

/// Result of one client's loop.
#[derive(Default)]
struct ClientStats {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u64>,
    /// The request ids answered, in order, when `--trace` asks for them
    /// (`latencies_us[i]` is `answered[i]`'s).
    answered: Option<Vec<String>>,
}

impl ClientStats {
    /// Counts one request started at `t0`: its latency when it succeeded,
    /// the first error otherwise.
    fn record(&mut self, outcome: Result<(), String>, t0: Instant) {
        match outcome {
            Ok(()) => {
                self.ok += 1;
                let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.latencies_us.push(us);
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Postmark {
            clients,
            seconds,
            cpu,
            nv_dir,
            threads,
            trace,
        } => {
            let watch = Watch {
                cpu,
                nv_dir,
                threads,
                trace,
            };
            run_load(
                "postmarks",
                cli.bus.as_deref(),
                clients,
                seconds,
                None,
                watch,
            )
            .await
        }
        Cmd::Validate {
            clients,
            seconds,
            file,
        } => {
            run_load(
                "validations",
                cli.bus.as_deref(),
                clients,
                seconds,
                Some(file),
                Watch::default(),
            )
            .await
        }
        Cmd::Http {
            url,
            clients,
            seconds,
            cpu,
        } => http::run(&url, clients, seconds, &cpu).await,
        Cmd::FakeMeter => fake_meter(cli.bus.as_deref()).await,
        Cmd::Ready {
            timeout,
            idle,
            log,
            cmd,
        } => ready::run(
            &cmd,
            Duration::from_secs_f64(timeout),
            Duration::from_secs_f64(idle),
            &log,
        )
        .map_err(|e| BenchError::Setup(e.to_string())),
        Cmd::Rss { pid, seconds } => {
            peak_rss(pid, seconds).await;
            Ok(())
        }
        Cmd::TpmProxy {
            listen,
            upstream,
            profile,
            nv_ms,
            p384_factor,
            ready_file,
        } => match chip(&profile, nv_ms, p384_factor) {
            Ok(profile) => tpmproxy::run(tpmproxy::ProxyOpts {
                listen_port: listen,
                upstream_port: upstream,
                profile,
                ready_file,
            })
            .await
            .map_err(|e| BenchError::Setup(format!("tpm-proxy: {e}"))),
            Err(e) => Err(e),
        },
        Cmd::Profile {
            name,
            nv_ms,
            p384_factor,
        } => chip(&name, nv_ms, p384_factor).map(|p| println!("{}", p.describe())),
    };
    if let Err(e) = result {
        eprintln!("meterbench: {e}");
        std::process::exit(1);
    }
}

/// The named chip profile, with the NV write time overridden if given and
/// its P-384 sign at `p384_factor` × its P-256 sign.
fn chip(name: &str, nv_ms: Option<f64>, p384_factor: f64) -> Result<profile::Profile, BenchError> {
    if !(0.5..=10.0).contains(&p384_factor) {
        return Err(BenchError::Setup(format!(
            "--p384-factor {p384_factor} out of range (0.5 to 10)"
        )));
    }
    let mut p = profile::by_name(name).ok_or_else(|| {
        BenchError::Setup(format!(
            "unknown profile {name:?} (one of {})",
            profile::NAMES.join(", ")
        ))
    })?;
    if let Some(ms) = nv_ms {
        if !(0.0..=10_000.0).contains(&ms) {
            return Err(BenchError::Setup(format!("--nv-ms {ms} out of range")));
        }
        p.nv_write = Duration::from_secs_f64(ms / 1000.0);
    }
    Ok(p.with_p384_factor(p384_factor))
}

/// What to read at the edges of a load's window besides the calls.
#[derive(Default)]
struct Watch {
    cpu: Vec<procstat::Watched>,
    nv_dir: Option<PathBuf>,
    threads: Option<u32>,
    trace: Option<PathBuf>,
}

async fn connect(bus: Option<&str>) -> Result<zbus::Connection, zbus::Error> {
    match bus {
        Some(addr) => zbus::connection::Builder::address(addr)?.build().await,
        None => zbus::Connection::system().await,
    }
}

fn open(path: &Path) -> Result<File, BenchError> {
    File::open(path).map_err(|source| BenchError::File {
        path: path.to_path_buf(),
        source,
    })
}

async fn run_load(
    what: &str,
    bus: Option<&str>,
    clients: usize,
    seconds: f64,
    validate_file: Option<PathBuf>,
    watch: Watch,
) -> Result<(), BenchError> {
    // Validation needs a token over the file: make it once, outside the clock.
    let token = match &validate_file {
        Some(path) => {
            let conn = connect(bus).await?;
            let proxy = Meter1Proxy::new(&conn).await?;
            let file = open(path)?;
            let id = format!("bench-setup-{}-{}", std::process::id(), now_nanos());
            let token = proxy
                .postmark(Fd::from(file.as_fd()), &id)
                .await
                .map_err(|e| BenchError::Setup(format!("{}: {}", e.kind(), e.message())))?;
            Some(token)
        }
        None => None,
    };
    // Connect every client before the clock starts.
    let mut proxies = Vec::with_capacity(clients);
    for _ in 0..clients {
        let conn = connect(bus).await?;
        proxies.push((conn.clone(), Meter1Proxy::new(&conn).await?));
    }
    // No inotify (e.g. the per-user instance limit reached): the load still
    // runs, the figure reads n/a.
    let nv = match &watch.nv_dir {
        Some(dir) => match procstat::NvWrites::watch(dir) {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!(
                    "meterbench: inotify on {}: {e}; nv_writes=n/a",
                    dir.display()
                );
                None
            }
        },
        None => None,
    };
    let duration = Duration::from_secs_f64(seconds.max(0.1));
    let nv_before = nv.as_ref().and_then(|n| n.count());
    let cpu_before = procstat::snapshot(&watch.cpu);
    let threads_before = watch.threads.map(procstat::threads);
    let start = Instant::now();
    let deadline = start + duration;
    let run_tag = format!("{}-{}", std::process::id(), now_nanos());
    let tracing = watch.trace.is_some();
    let mut tasks = Vec::with_capacity(clients);
    for (client, (_conn, proxy)) in proxies.into_iter().enumerate() {
        let token = token.clone();
        let file = validate_file.clone();
        let tag = run_tag.clone();
        tasks.push(tokio::spawn(async move {
            let mut stats = ClientStats {
                answered: tracing.then(Vec::new),
                ..ClientStats::default()
            };
            let mut n: u64 = 0;
            while Instant::now() < deadline {
                n += 1;
                let id = format!("bench-{tag}-{client}-{n}");
                let t0 = Instant::now();
                let outcome = match (&token, &file) {
                    (Some(token), Some(path)) => validate_once(&proxy, path, token).await,
                    _ => postmark_once(&proxy, &id).await,
                };
                if outcome.is_ok() {
                    if let Some(ids) = stats.answered.as_mut() {
                        ids.push(id);
                    }
                }
                stats.record(outcome, t0);
            }
            stats
        }));
    }
    let mut all = Vec::with_capacity(clients);
    for task in tasks {
        all.push(task.await?);
    }
    if let Some(path) = &watch.trace {
        write_trace(path, &all)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after = procstat::snapshot(&watch.cpu);
    let threads_after = watch.threads.map(procstat::threads);
    let nv_after = nv.as_ref().and_then(|n| n.count());
    let mut extra = String::new();
    if !watch.cpu.is_empty() {
        extra.push(' ');
        extra.push_str(&procstat::cpu_report(&watch.cpu, &cpu_before, &cpu_after));
    }
    if let (Some(b), Some(a)) = (&threads_before, &threads_after) {
        extra.push(' ');
        extra.push_str(&procstat::threads_report(b, a));
    }
    if watch.nv_dir.is_some() {
        match (nv_before, nv_after) {
            (Some(b), Some(a)) => extra.push_str(&format!(" nv_writes={}", a - b)),
            _ => extra.push_str(" nv_writes=n/a"),
        }
    }
    print_stats(what, all, clients, elapsed, &extra)
}

/// Writes `--trace`: each answered call's request id and latency, client
/// by client in the order they were made.
fn write_trace(path: &Path, all: &[ClientStats]) -> Result<(), BenchError> {
    let mut out = String::new();
    for stats in all {
        for (id, us) in stats.answered.iter().flatten().zip(&stats.latencies_us) {
            out.push_str(&format!("{id} {us}\n"));
        }
    }
    std::fs::write(path, out).map_err(|source| BenchError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Prints the load's `key=value` line: `WHAT_per_sec=`, ok, errors,
/// clients, seconds, p50/p99 (then p90, p99.9 and the slowest) and `extra`; an error if every call failed.
fn print_stats(
    what: &str,
    all: Vec<ClientStats>,
    clients: usize,
    elapsed: f64,
    extra: &str,
) -> Result<(), BenchError> {
    let mut total = ClientStats::default();
    for s in all {
        total.ok += s.ok;
        total.errors += s.errors;
        if total.first_error.is_none() {
            total.first_error = s.first_error;
        }
        total.latencies_us.extend(s.latencies_us);
    }
    if total.ok == 0 {
        return Err(BenchError::AllFailed(
            total.errors,
            total.first_error.unwrap_or_default(),
        ));
    }
    total.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        let idx = ((total.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        total.latencies_us.get(idx).copied().unwrap_or(0) as f64 / 1000.0
    };
    println!(
        "{what}_per_sec={:.1} ok={} errors={} clients={clients} seconds={elapsed:.3} p50_ms={:.2} p99_ms={:.2} p90_ms={:.2} p999_ms={:.2} max_ms={:.2}{extra}",
        total.ok as f64 / elapsed,
        total.ok,
        total.errors,
        pct(0.50),
        pct(0.99),
        pct(0.90),
        pct(0.999),
        pct(1.0),
    );
    if let Some(e) = total.first_error {
        eprintln!("meterbench: first error: {e}");
    }
    Ok(())
}

async fn postmark_once(proxy: &Meter1Proxy<'_>, id: &str) -> Result<(), String> {
    let digest = Sha384::digest(id.as_bytes());
    match proxy.postmark_digest(&digest[..], id).await {
        Ok(token) if !token.is_empty() => Ok(()),
        Ok(_) => Err("empty token".to_string()),
        Err(e) => Err(describe(&e)),
    }
}

async fn validate_once(proxy: &Meter1Proxy<'_>, path: &Path, token: &[u8]) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let report = proxy
        .validate(Fd::from(file.as_fd()), token)
        .await
        .map_err(|e| describe(&e))?;
    match report.get(meter_proto::keys::report::VALID).map(|v| &**v) {
        Some(Value::Bool(true)) => Ok(()),
        other => Err(format!("token reported not valid: {other:?}")),
    }
}

fn describe(e: &MeterError) -> String {
    format!("{}: {}", e.kind(), e.message())
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Stand-in meter: bus overhead only.
struct FakeMeter;

#[zbus::interface(name = "org.meterd.Meter1")]
impl FakeMeter {
    async fn postmark_digest(&self, sha384: Vec<u8>, _request_id: String) -> Blob {
        // A token-sized reply, so the bus moves as many bytes as for real,
        // serialized as meterd serializes its replies.
        let mut token = sha384;
        token.resize(2500, 0x30);
        Blob(token)
    }

    async fn postmark(&self, _message: zbus::zvariant::OwnedFd, _request_id: String) -> Blob {
        Blob(vec![0x30; 2500])
    }

    async fn validate(
        &self,
        _message: zbus::zvariant::OwnedFd,
        _token: Vec<u8>,
    ) -> HashMap<String, OwnedValue> {
        let mut report = HashMap::new();
        report.insert(
            meter_proto::keys::report::VALID.to_string(),
            OwnedValue::from(true),
        );
        report
    }
}

async fn fake_meter(bus: Option<&str>) -> Result<(), BenchError> {
    let builder = match bus {
        Some(addr) => zbus::connection::Builder::address(addr)?,
        None => zbus::connection::Builder::system()?,
    };
    let _conn = builder
        .serve_at(meter_proto::OBJECT_PATH, FakeMeter)?
        .name(meter_proto::BUS_NAME)?
        .build()
        .await?;
    eprintln!("meterbench: fake meter serving {}", meter_proto::BUS_NAME);
    std::future::pending::<()>().await;
    Ok(())
}
