//! `meter-torture`: the driver of the torture suite (`tests/torture`).
//!
//! Each subcommand runs one torture test against a sandbox made by
//! `tests/sandbox up DIR`, checks its invariants with zero tolerance and
//! prints one tab-separated `ROW` line (test, iterations, operations,
//! losses, doubles, missed, unauthorized, faults, seconds, verdict) that
//! `tests/torture` gathers into its summary table. Exit status 1 when the
//! test found anything, 2 when it could not run.

mod access;
mod crash;
mod error;
mod ids;
mod load;
mod ops;
mod probe;
mod regs;
mod sandbox;
mod setup;
mod storage;
mod summary;
mod tamper;
mod tpm;
mod verify;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};

use crate::sandbox::Sandbox;
use crate::summary::Tally;

#[derive(Parser)]
#[command(about = "Torture tests for meterd on a tests/sandbox sandbox")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the sandbox is.
#[derive(clap::Args)]
struct Where {
    /// The sandbox directory (`tests/sandbox up DIR`).
    #[arg(long)]
    dir: PathBuf,
    /// Path of the `tests/sandbox` script.
    #[arg(long, default_value = "tests/sandbox")]
    sandbox: PathBuf,
}

/// Which operations the load mixes.
#[derive(clap::Args)]
struct MixArgs {
    /// Postmark only: skip the setup (certificate, credit line, postage
    /// rates) that mixes sign, postage and pay into the load.
    #[arg(long)]
    postmark_only: bool,
    /// Amount of the credit line the setup opens (minor units).
    #[arg(long, default_value_t = 100_000_000)]
    credit: u64,
}

impl MixArgs {
    /// Opens the sandbox and, unless postmark only, sets it up for every operation.
    async fn open(&self, at: &Where) -> error::Result<Sandbox> {
        let mut sb = Sandbox::open(&at.dir, &at.sandbox)?;
        if !self.postmark_only {
            sb.mix = setup::run(&sb, self.credit).await?;
        }
        Ok(sb)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Item 1: SIGKILL meterd at random moments under load.
    Crash {
        #[command(flatten)]
        at: Where,
        /// Kill-and-restart loops.
        #[arg(long, default_value_t = 10)]
        iterations: u64,
        /// Concurrent clients (one bus connection each).
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Seed of the kill moments (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
        #[command(flatten)]
        mix: MixArgs,
    },
    /// Item 2: rollback and tamper cases against the real meterd.
    Tamper {
        #[command(flatten)]
        at: Where,
        /// Another meter's sandbox directory (taken down), for the swap case.
        #[arg(long)]
        other: PathBuf,
    },
    /// Item 3: TPM resets under load, then the handle leak check.
    Tpm {
        #[command(flatten)]
        at: Where,
        /// Concurrent clients (one bus connection each).
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Operations of the leak check.
        #[arg(long, default_value_t = 1_000)]
        ops: u64,
        /// TPM resets under load.
        #[arg(long, default_value_t = 1)]
        resets: u64,
        #[command(flatten)]
        mix: MixArgs,
    },
    /// Item 4: full and read-only state directory (root only).
    Storage {
        #[command(flatten)]
        at: Where,
        /// Concurrent clients (one bus connection each).
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Requests sent while the fault is in place.
        #[arg(long, default_value_t = 300)]
        ops: u64,
    },
    /// Item 6: every method, as three real uids (root only).
    Access {
        #[command(flatten)]
        at: Where,
        /// The shipped introspection XML.
        #[arg(long, default_value = "dbus/org.meterd.Meter1.xml")]
        xml: PathBuf,
        /// `policy`: the shipped bus policy is in force (either fence may
        /// refuse); `daemon`: the bus lets everything through, so refusals
        /// must be the daemon's `org.meterd.Meter1.Error.AccessDenied`.
        #[arg(long, default_value = "policy")]
        fence: String,
        /// Write this run's verdicts (user, call, allowed/denied) here.
        #[arg(long)]
        verdicts_out: Option<PathBuf>,
        /// Fault every call whose verdict differs from this file's (the
        /// shipped-policy run's), so the two fences are shown to agree.
        #[arg(long)]
        verdicts_in: Option<PathBuf>,
    },
    /// Internal: one call as the current uid (used by `access`).
    Probe {
        /// Bus address.
        #[arg(long)]
        bus: String,
        /// Interface of the call: org.meterd.Meter1, or
        /// org.freedesktop.DBus.Properties (Get, GetAll, Set on the meter's).
        #[arg(long, default_value = "org.meterd.Meter1")]
        iface: String,
        /// Member to call.
        #[arg(long)]
        method: String,
        /// Input types, comma-separated (org.meterd.Meter1 members).
        #[arg(long, default_value = "")]
        sig: String,
        /// Request id for every `s` argument (default: a placeholder).
        #[arg(long)]
        request_id: Option<String>,
        /// Message for every `h` (its bytes) and `ay` (its SHA-384) argument.
        #[arg(long)]
        message: Option<String>,
        /// Property named by Get and Set.
        #[arg(long)]
        property: Option<String>,
    },
}

fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

fn skip(name: &str, why: &str) -> i32 {
    println!("SKIP\t{name}\t{why}");
    0
}

async fn run(cmd: Cmd) -> error::Result<i32> {
    let start = Instant::now();
    let (name, tally): (&str, Tally) = match cmd {
        Cmd::Probe {
            bus,
            iface,
            method,
            sig,
            request_id,
            message,
            property,
        } => {
            let sig: Vec<String> = sig
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            let args = probe::ProbeArgs {
                request_id,
                message,
            };
            probe::probe(&bus, &iface, &method, &sig, property.as_deref(), &args).await?;
            return Ok(0);
        }
        Cmd::Crash {
            at,
            iterations,
            clients,
            seed,
            mix,
        } => {
            let sb = mix.open(&at).await?;
            let seed = seed.unwrap_or_else(seed_from_clock);
            (
                "crash-loop",
                crash::run(&sb, iterations, clients, seed).await?,
            )
        }
        Cmd::Tamper { at, other } => {
            let sb = Sandbox::open(&at.dir, &at.sandbox)?;
            ("rollback-tamper", tamper::run(&sb, &other).await?)
        }
        Cmd::Tpm {
            at,
            clients,
            ops,
            resets,
            mix,
        } => {
            let sb = mix.open(&at).await?;
            ("tpm-faults", tpm::run(&sb, clients, ops, resets).await?)
        }
        Cmd::Storage { at, clients, ops } => {
            if !storage::is_root() {
                return Ok(skip("storage-faults", "needs root to mount a tmpfs"));
            }
            let sb = Sandbox::open(&at.dir, &at.sandbox)?;
            ("storage-faults", storage::run(&sb, clients, ops).await?)
        }
        Cmd::Access {
            at,
            xml,
            fence,
            verdicts_out,
            verdicts_in,
        } => {
            let name = if fence == "daemon" {
                "access-daemon"
            } else {
                "access"
            };
            if !storage::is_root() {
                return Ok(skip(name, "needs root to create users and switch uid"));
            }
            let sb = Sandbox::open(&at.dir, &at.sandbox)?;
            let files = access::VerdictFiles {
                out: verdicts_out,
                compare: verdicts_in,
            };
            (
                name,
                access::run_matrix(&sb, &xml, fence == "daemon", &files).await?,
            )
        }
    };
    tally.print_row(name, start);
    Ok(if tally.failed() { 1 } else { 0 })
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match run(cli.cmd).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("meter-torture: {e}");
            2
        }
    };
    std::process::exit(code);
}
