//! TPM faults (issue 7, item 3).
//!
//! * Reset under load: swtpm is killed and restarted (`tests/sandbox
//!   restart-tpm`) while clients postmark; meterd must reconnect and reload
//!   its keys; requests during the outage fail with `Housing` and a message;
//!   afterwards the cross-check finds nothing lost or doubled.
//! * Lockout: after the resets (more than the three a DA lockout allows)
//!   meterd's clock check still reads the TPM clock at a start.
//! * Leaks: the TPM's transient-object and loaded-session counts, read with
//!   `tpm2_getcap` while meterd is stopped (swtpm serves one connection), are
//!   the same before and after N operations.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::error::{io, Result, TortureError};
use crate::load::{self, Outcome, Spec};
use crate::sandbox::Sandbox;
use crate::summary::Tally;
use crate::verify::verify;

/// Kinds a request may fail with while the TPM is away.
const OUTAGE_KINDS: &[&str] = &["Housing"];

/// Reset under load, then the leak check over `ops` operations.
pub async fn run(sb: &Sandbox, clients: usize, ops: u64, resets: u64) -> Result<Tally> {
    let mut total = Tally::default();
    for r in 0..resets {
        let t = reset_under_load(sb, clients, r).await?;
        total.absorb(t);
        total.iterations += 1;
    }
    let t = leak_check(sb, clients, ops).await?;
    total.absorb(t);
    total.iterations += 1;
    Ok(total)
}

async fn reset_under_load(sb: &Sandbox, clients: usize, round: u64) -> Result<Tally> {
    let prefix = format!("tpmreset-{round}-");
    let mut spec = Spec::new(clients, 50_000, &prefix);
    // While the TPM is away calls fail at once: a longer pause keeps the
    // thousands of Housing errors (each retried by the cross-check) in bounds.
    spec.backoff = Duration::from_millis(100);
    let stop = spec.stop.clone();
    let sb2 = sb.clone();
    let started = Instant::now();
    let load = tokio::spawn(async move { load::run(&sb2, spec).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let reset_at = started.elapsed();
    let sb2 = sb.clone();
    tokio::task::spawn_blocking(move || sb2.script("restart-tpm", &[])).await??;
    // Keep the load on until it has seen the TPM come back (bounded).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    stop.store(true, Ordering::Relaxed);
    let attempts = load.await??;

    let mut t = Tally::default();
    let mut housing = 0u64;
    for a in &attempts {
        if let Outcome::Failed { kind, message } = &a.outcome {
            if !OUTAGE_KINDS.contains(kind) {
                t.fault(format!(
                    "{}: failed with {kind} during a TPM reset, expected Housing: {message}",
                    a.id
                ));
            } else if message.trim().is_empty() {
                t.fault(format!("{}: Housing error without a message", a.id));
            } else {
                housing += 1;
            }
        }
    }
    // Service came back: the last calls of the run succeeded.
    let mut last: Vec<_> = attempts.iter().collect();
    last.sort_by_key(|a| a.n);
    let recovered = last
        .iter()
        .rev()
        .take(clients)
        .any(|a| matches!(a.outcome, Outcome::Product(_)));
    if !recovered {
        t.fault("no postmark succeeded after the TPM reset");
    }
    let sample = attempts.iter().find_map(|a| match &a.outcome {
        Outcome::Failed { message, .. } => Some(message.clone()),
        _ => None,
    });
    eprintln!(
        "torture: tpm reset {round} at {:.2} s: {} calls, {} products, {housing} Housing errors (e.g. {:?})",
        reset_at.as_secs_f64(),
        attempts.len(),
        load::products(&attempts),
        sample.unwrap_or_default()
    );
    let v = verify(sb, &prefix, &attempts, clients).await?;
    t.absorb(v);
    t.operations += attempts.len() as u64;
    Ok(t)
}

/// `tpm2_getcap` handle counts: (transient objects, loaded sessions).
pub fn tpm_counts(sb: &Sandbox) -> Result<(usize, usize)> {
    let tcti = sb.tcti.clone();
    let count = |what: &str| -> Result<usize> {
        let out = Command::new("tpm2_getcap")
            .arg(what)
            .env("TPM2TOOLS_TCTI", &tcti)
            .env("TSS2_LOG", "all+NONE")
            .output()
            .map_err(io("tpm2_getcap"))?;
        if !out.status.success() {
            return Err(TortureError::Setup(format!(
                "tpm2_getcap {what}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.trim_start().starts_with("- 0x"))
            .count())
    };
    Ok((
        count("handles-transient")?,
        count("handles-loaded-session")?,
    ))
}

/// The last TPM clock reading meterd's clock check accepted, as written in
/// `clock.json` (its `tpm_last` object, as text); `None` when there is none.
fn tpm_reading(sb: &Sandbox) -> Option<String> {
    let text = std::fs::read_to_string(sb.state.join("clock.json")).ok()?;
    let from = text.find("\"tpm_last\"")?;
    let rest = &text[from..];
    let end = rest.find('}')?;
    Some(rest[..=end].to_string()).filter(|r| !r.contains("null"))
}

async fn stop_meterd(sb: &Sandbox) -> Result<()> {
    let sb2 = sb.clone();
    tokio::task::spawn_blocking(move || sb2.script("stop-meterd", &[])).await?
}

async fn start_meterd(sb: &Sandbox) -> Result<()> {
    let sb2 = sb.clone();
    tokio::task::spawn_blocking(move || sb2.script("start-meterd", &[])).await?
}

/// Kills meterd with SIGKILL (so it cannot tidy up) and reads the TPM's
/// handle counts: what meterd really held at that moment.
async fn counts_after_crash(sb: &Sandbox) -> Result<(usize, usize)> {
    let sb2 = sb.clone();
    tokio::task::spawn_blocking(move || sb2.kill_meterd()).await??;
    let counts = tpm_counts(sb)?;
    start_meterd(sb).await?;
    Ok(counts)
}

async fn leak_check(sb: &Sandbox, clients: usize, ops: u64) -> Result<Tally> {
    let mut t = Tally::default();
    // Orderly stop: meterd must leave nothing behind.
    stop_meterd(sb).await?;
    let idle = tpm_counts(sb)?;
    let read_before = tpm_reading(sb);
    start_meterd(sb).await?;
    // After the resets (more than a DA lockout allows), the start's clock
    // check must still read the TPM clock: a DA-protected key in its path
    // is refused in lockout and the check loses its TPM witness.
    let read_after = tpm_reading(sb);
    if read_after.is_none() || read_after == read_before {
        t.fault(format!(
            "after the TPM resets meterd's clock check did not read the TPM clock at its start \
             (clock.json's TPM reading {read_before:?} -> {read_after:?}): {}",
            sb.log_tail(3)
        ));
    }
    if idle != (0, 0) {
        t.fault(format!(
            "after an orderly stop the TPM holds {idle:?} (transient, sessions)"
        ));
    }
    // Warm up (hot keys loaded), then the baseline as meterd holds it.
    let warm = load::run(sb, Spec::new(clients, 2 * clients as u64, "tpmwarm-")).await?;
    let base = counts_after_crash(sb).await?;
    let prefix = "tpmleak-";
    let attempts = load::run(sb, Spec::new(clients, ops, prefix)).await?;
    let done = load::products(&attempts);
    if done != ops {
        t.fault(format!(
            "leak run: {done} of {ops} operations succeeded; failures {:?}",
            load::failure_kinds(&attempts)
        ));
    }
    let after = counts_after_crash(sb).await?;
    stop_meterd(sb).await?;
    let idle_after = tpm_counts(sb)?;
    start_meterd(sb).await?;
    eprintln!(
        "torture: tpm leak check over {ops} operations: held by meterd (read after kill -9) transient {} -> {}, sessions {} -> {}; after orderly stop {idle:?} -> {idle_after:?}",
        base.0, after.0, base.1, after.1
    );
    if after != base || idle_after != idle {
        t.fault(format!(
            "TPM handles leaked over {ops} operations: transient {} -> {}, sessions {} -> {}, idle {idle:?} -> {idle_after:?}",
            base.0, after.0, base.1, after.1
        ));
    }
    t.absorb(verify(sb, "tpmwarm-", &warm, clients).await?);
    t.absorb(verify(sb, prefix, &attempts, clients).await?);
    t.operations += (warm.len() + attempts.len()) as u64;
    Ok(t)
}
