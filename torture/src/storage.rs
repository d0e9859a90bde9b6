//! Storage faults (issue 7, item 4): the state directory on a small tmpfs
//! that is then filled up, and the same file system remounted read-only.
//! Requests must fail with `Storage`, nothing may be charged without its
//! product, and service must resume once space (or write access) returns.
//! Mounting needs root; the caller prints a SKIP line otherwise.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{io, Result, TortureError};
use crate::load::{self, Attempt, Outcome, Spec};
use crate::sandbox::{status, Sandbox};
use crate::summary::Tally;
use crate::verify::verify;

/// True when the process may mount file systems.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn sh(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(io(program))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TortureError::Setup(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

async fn script(sb: &Sandbox, verb: &'static str) -> Result<bool> {
    let sb2 = sb.clone();
    tokio::task::spawn_blocking(move || sb2.try_script(verb, &[])).await?
}

async fn must(sb: &Sandbox, verb: &'static str) -> Result<()> {
    if script(sb, verb).await? {
        Ok(())
    } else {
        Err(TortureError::Setup(format!(
            "tests/sandbox {verb} failed:\n{}",
            sb.log_tail(15)
        )))
    }
}

/// Fills the file system holding `dir` with a filler file; returns its path.
fn fill(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join("torture-filler");
    let mut f = std::fs::File::create(&path).map_err(io(&path))?;
    let chunk = vec![0xa5u8; 16 * 1024];
    while f.write_all(&chunk).is_ok() {}
    // Byte by byte for the last partial block.
    while f.write_all(&[0xa5]).is_ok() {}
    let _ = f.sync_all();
    Ok(path)
}

/// Checks the failures of a faulty phase: only `Storage`, with a message.
fn only_storage(attempts: &[Attempt], what: &str, t: &mut Tally) -> u64 {
    let mut storage = 0;
    for a in attempts {
        if let Outcome::Failed { kind, message } = &a.outcome {
            if *kind == "Storage" && !message.trim().is_empty() {
                storage += 1;
            } else {
                t.fault(format!(
                    "{what}: {} failed with {kind}, expected Storage: {message}",
                    a.id
                ));
            }
        }
    }
    storage
}

/// Sends `n` requests after a fault is removed; the service must be back
/// (a few seconds of grace for the first one), every request answered.
async fn resumes(sb: &Sandbox, prefix: &str, n: u64, t: &mut Tally) -> Result<Vec<Attempt>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut all = Vec::new();
    let mut k = 0;
    loop {
        let first = load::run(sb, Spec::new(1, 1, &format!("{prefix}probe{k}-"))).await?;
        k += 1;
        let ok = load::products(&first) == 1;
        all.extend(first);
        if ok {
            break;
        }
        if Instant::now() > deadline {
            t.fault(format!("{prefix}: service did not resume within 10 s"));
            return Ok(all);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let rest = load::run(sb, Spec::new(4, n, prefix)).await?;
    if load::products(&rest) != n {
        t.fault(format!(
            "{prefix}: after the fault only {} of {n} succeeded: {:?}",
            load::products(&rest),
            load::failure_kinds(&rest)
        ));
    }
    all.extend(rest);
    Ok(all)
}

/// AR moved by exactly the price of the products delivered.
async fn charged_for_products(
    sb: &Sandbox,
    ar0: u64,
    attempts: &[Attempt],
    what: &str,
    t: &mut Tally,
) -> Result<()> {
    let regs = status(&sb.connect().await?).await?;
    let expected: u64 = attempts
        .iter()
        .filter(|a| matches!(a.outcome, crate::load::Outcome::Product(_)))
        .map(|a| sb.mix.price(&regs, a.n))
        .sum();
    let moved = regs.paid().saturating_sub(ar0);
    if moved != expected {
        t.fault(format!(
            "{what}: AR moved {moved}, expected {expected} for {} products",
            load::products(attempts)
        ));
    }
    Ok(())
}

/// Runs both faults on the sandbox; leaves it running on its disk state.
pub async fn run(sb: &Sandbox, clients: usize, ops: u64) -> Result<Tally> {
    let state = sb.state.clone();
    let disk = sb.dir.join("state.disk");
    let state_s = state.to_string_lossy().into_owned();
    must(sb, "stop-meterd").await?;
    std::fs::rename(&state, &disk).map_err(io(&state))?;
    std::fs::create_dir(&state).map_err(io(&state))?;
    let size = dir_bytes(&disk) + 3 * 1024 * 1024;
    sh(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
            &state_s,
        ],
    )?;
    let result = faults(sb, clients, ops).await;
    // Back to the disk, whatever happened.
    let _ = script(sb, "stop-meterd").await;
    let _ = sh(
        "cp",
        &["-a", &format!("{state_s}/."), &disk.to_string_lossy()],
    );
    let _ = std::fs::remove_file(disk.join("torture-filler"));
    sh("umount", &[&state_s])?;
    std::fs::remove_dir(&state).map_err(io(&state))?;
    std::fs::rename(&disk, &state).map_err(io(&disk))?;
    must(sb, "start-meterd").await?;
    result
}

async fn faults(sb: &Sandbox, clients: usize, ops: u64) -> Result<Tally> {
    let mut t = Tally::default();
    let state_s = sb.state.to_string_lossy().into_owned();
    sh(
        "cp",
        &[
            "-a",
            &format!("{}/.", sb.dir.join("state.disk").to_string_lossy()),
            &state_s,
        ],
    )?;
    must(sb, "start-meterd").await?;

    // 1. Full file system.
    t.iterations += 1;
    let ar0 = status(&sb.connect().await?).await?.paid();
    let filler = fill(&sb.state)?;
    let attempts = load::run(sb, Spec::new(clients, ops, "full-")).await?;
    let storage = only_storage(&attempts, "full disk", &mut t);
    eprintln!(
        "torture: storage: disk full: {} calls, {} products, {storage} Storage errors (e.g. {:?})",
        attempts.len(),
        load::products(&attempts),
        attempts.iter().find_map(|a| match &a.outcome {
            Outcome::Failed { message, .. } => Some(message.clone()),
            _ => None,
        })
    );
    if storage == 0 {
        t.fault("disk full: no request failed with Storage");
    }
    std::fs::remove_file(&filler).map_err(io(&filler))?;
    let mut all = attempts;
    all.extend(resumes(sb, "full-resume-", 20, &mut t).await?);
    charged_for_products(sb, ar0, &all, "disk full", &mut t).await?;
    t.operations += all.len() as u64;
    t.absorb(verify(sb, "full-", &all, clients).await?);

    // 2. Read-only state directory (remounted while meterd is stopped: a
    // file system with files open for writing cannot be remounted).
    t.iterations += 1;
    let ar0 = status(&sb.connect().await?).await?.paid();
    must(sb, "stop-meterd").await?;
    sh("mount", &["-o", "remount,ro", &state_s])?;
    let log_from = sb.log_len();
    let mut all = Vec::new();
    if script(sb, "start-meterd").await? {
        let attempts = load::run(sb, Spec::new(clients, ops.min(100), "ro-")).await?;
        let storage = only_storage(&attempts, "read-only", &mut t);
        eprintln!(
            "torture: storage: read-only: meterd started; {} calls, {} products, {storage} Storage errors",
            attempts.len(),
            load::products(&attempts)
        );
        if storage == 0 {
            t.fault("read-only: no request failed with Storage");
        }
        all.extend(attempts);
        must(sb, "stop-meterd").await?;
    } else {
        let log = sb.log_since(log_from);
        // A refusal to start must name the cause: the Storage error, or the
        // read-only file system it met first (meterd touches its key store
        // before the ledger).
        let marks = crate::tamper::STORAGE_MARKS;
        match log
            .lines()
            .rev()
            .find(|l| l.contains("Read-only file system") || marks.iter().any(|m| l.contains(m)))
        {
            Some(l) => eprintln!(
                "torture: storage: read-only: meterd refused to start: {}",
                l.trim()
            ),
            None => t.fault(format!(
                "read-only: meterd failed to start without naming the cause: {}",
                log.lines().last().unwrap_or_default()
            )),
        }
    }
    sh("mount", &["-o", "remount,rw", &state_s])?;
    must(sb, "start-meterd").await?;
    all.extend(resumes(sb, "ro-resume-", 20, &mut t).await?);
    charged_for_products(sb, ar0, &all, "read-only", &mut t).await?;
    t.operations += all.len() as u64;
    t.absorb(verify(sb, "ro-", &all, clients).await?);
    Ok(t)
}
