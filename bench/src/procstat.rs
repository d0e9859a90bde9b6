//! What the load costs the processes around it, sampled at the exact edges
//! of a measurement window: CPU time of named processes (meterd, swtpm,
//! dbus-daemon, the generator itself) from `/proc/PID/stat`, and completed
//! writes of swtpm's NV state file seen by inotify.
//!
//! CPU time ÷ wall clock of swtpm is the TPM's busy fraction (swtpm runs one
//! command at a time on one thread, so 100 % means the TPM never waited);
//! meterd's CPU time ÷ postmarks is its cost per sale. swtpm stores its
//! permanent state (`tpm2-00.permall`) by writing a temporary file and
//! renaming it over the old one, so every NV write the TPM commits is one
//! `IN_MOVED_TO` (or, for an in-place store, one `IN_CLOSE_WRITE`) of a
//! `tpm2-*` file: the count is that of real NV writes, whatever command
//! caused them (NV_Increment, NV_Write, an orderly shutdown, a DA counter).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::unistd::{sysconf, SysconfVar};

/// A process watched over a window: its label and pid.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Label in the output (`cpu_<label>_ms=`).
    pub label: String,
    /// Process id; 0 means this process.
    pub pid: u32,
}

/// Parses `LABEL=PID` (PID `self` for the generator itself).
pub fn parse_watch(s: &str) -> Result<Watched, String> {
    let (label, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected LABEL=PID"))?;
    if label.is_empty()
        || !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(format!("{label:?}: label must be [A-Za-z0-9_]+"));
    }
    let pid = if pid == "self" {
        0
    } else {
        pid.parse().map_err(|e| format!("{pid:?}: {e}"))?
    };
    Ok(Watched {
        label: label.to_owned(),
        pid,
    })
}

fn ticks_per_second() -> f64 {
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// User + system CPU time of `pid` (0: this process) in milliseconds,
/// including its reaped threads; `None` once it is gone.
pub fn cpu_ms(pid: u32) -> Option<f64> {
    let path = if pid == 0 {
        "/proc/self/stat".to_owned()
    } else {
        format!("/proc/{pid}/stat")
    };
    let (_, user, system) = stat_times(&std::fs::read_to_string(path).ok()?)?;
    Some(user + system)
}

/// The command name and user and system CPU time in ms of one
/// `/proc/.../stat` line (a process's or a thread's).
fn stat_times(stat: &str) -> Option<(String, f64, f64)> {
    // The command name (field 2) may hold spaces and parentheses: it runs
    // from the first '(' to the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let tick = 1000.0 / ticks_per_second();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((name.to_owned(), user * tick, system * tick))
}

/// CPU readings of the watched processes at one instant.
pub fn snapshot(watched: &[Watched]) -> Vec<Option<f64>> {
    watched.iter().map(|w| cpu_ms(w.pid)).collect()
}

/// `cpu_<label>_ms=<delta>` for each watched process (`n/a` if it vanished).
pub fn cpu_report(watched: &[Watched], before: &[Option<f64>], after: &[Option<f64>]) -> String {
    let mut out = Vec::new();
    for ((w, b), a) in watched.iter().zip(before).zip(after) {
        match (b, a) {
            (Some(b), Some(a)) => out.push(format!("cpu_{}_ms={:.0}", w.label, a - b)),
            _ => out.push(format!("cpu_{}_ms=n/a", w.label)),
        }
    }
    out.join(" ")
}

/// Per-thread CPU of one process at an instant: tid → (name, user, system).
pub type Threads = std::collections::BTreeMap<u32, (String, f64, f64)>;

/// Reads every thread of `pid` (empty if it is gone).
pub fn threads(pid: u32) -> Threads {
    let mut out = Threads::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        if let Some(t) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(stat_times)
        {
            out.insert(tid, t);
        }
    }
    out
}

/// `thr_<name>_ms=USER/SYSTEM` for each thread name of the process (threads
/// of one name summed: tokio's workers are all `tokio-rt-worker`), over the
/// window. A thread born inside the window counts from zero; one that ended
/// inside it is missing (the kernel folds it into the process's total only).
/// Says where a postmark's CPU goes: the bus and services on the workers,
/// the commit on `ledger`, the TPM on `housing`.
pub fn threads_report(before: &Threads, after: &Threads) -> String {
    let mut by_name: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for (tid, (name, user, system)) in after {
        let (u0, s0) = match before.get(tid) {
            Some((_, u, s)) => (*u, *s),
            None => (0.0, 0.0),
        };
        let label: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let e = by_name.entry(label).or_default();
        e.0 += user - u0;
        e.1 += system - s0;
    }
    by_name
        .iter()
        .map(|(name, (u, s))| format!("thr_{name}_ms={u:.0}/{s:.0}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Counts completed writes of swtpm's state files in a directory, on a
/// thread of its own (so the kernel's event queue never overflows).
pub struct NvWrites {
    count: Arc<AtomicU64>,
    overflow: Arc<AtomicBool>,
}

impl NvWrites {
    /// Starts watching `dir` (swtpm's `--tpmstate dir=`).
    pub fn watch(dir: &Path) -> Result<NvWrites, nix::Error> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(
            dir,
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE,
        )?;
        let count = Arc::new(AtomicU64::new(0));
        let overflow = Arc::new(AtomicBool::new(false));
        let (c, o) = (Arc::clone(&count), Arc::clone(&overflow));
        // Blocks in read(2); it ends with the process (the generator exits
        // right after printing).
        std::thread::Builder::new()
            .name("nv-writes".into())
            .spawn(move || loop {
                let Ok(events) = inotify.read_events() else {
                    return;
                };
                for e in events {
                    if e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                        o.store(true, Ordering::Relaxed);
                    }
                    let state_file = e
                        .name
                        .as_ref()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("tpm2-"));
                    if state_file {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .map_err(|_| nix::Error::EAGAIN)?;
        Ok(NvWrites { count, overflow })
    }

    /// Writes seen so far; `None` if the kernel dropped events.
    pub fn count(&self) -> Option<u64> {
        if self.overflow.load(Ordering::Relaxed) {
            None
        } else {
            Some(self.count.load(Ordering::Relaxed))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_watch_specs() {
        let w = parse_watch("meterd=42").unwrap();
        assert_eq!((w.label.as_str(), w.pid), ("meterd", 42));
        assert_eq!(parse_watch("client=self").unwrap().pid, 0);
        assert!(parse_watch("nolabel").is_err());
        assert!(parse_watch("bad label=1").is_err());
        assert!(parse_watch("x=notapid").is_err());
    }

    #[test]
    fn reads_own_cpu_time() {
        let a = cpu_ms(0).unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let b = cpu_ms(0).unwrap();
        assert!(b >= a);
        assert!(cpu_ms(u32::MAX).is_none());
    }

    #[test]
    fn reads_a_threads_name_and_times() {
        let tick = 1000.0 / ticks_per_second();
        let stat = "77 (tokio-rt-worker) S 1 1 1 0 -1 4194368 0 0 0 0 250 40 0 0 20 0 6 0 1";
        let (name, u, s) = stat_times(stat).unwrap();
        assert_eq!(name, "tokio-rt-worker");
        assert_eq!((u, s), (250.0 * tick, 40.0 * tick));
        assert!(stat_times("77 (cut").is_none());
        // This process's own threads: at least the main one, named.
        assert!(!threads(std::process::id()).is_empty());
        assert!(threads(u32::MAX).is_empty());
    }

    #[test]
    fn sums_threads_of_one_name_over_the_window() {
        let mut before = Threads::new();
        before.insert(1, ("ledger".into(), 100.0, 50.0));
        before.insert(2, ("tokio-rt-worker".into(), 10.0, 5.0));
        let mut after = before.clone();
        after.insert(1, ("ledger".into(), 130.0, 70.0));
        after.insert(2, ("tokio-rt-worker".into(), 20.0, 5.0));
        after.insert(3, ("tokio-rt-worker".into(), 4.0, 1.0));
        assert_eq!(
            threads_report(&before, &after),
            "thr_ledger_ms=30/20 thr_tokio_rt_worker_ms=14/1"
        );
    }

    #[test]
    fn counts_renamed_state_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let w = NvWrites::watch(dir.path()).unwrap();
        for i in 0..3 {
            let tmp = dir.path().join("TMP2-00.permall");
            std::fs::write(&tmp, [i]).unwrap();
            std::fs::rename(&tmp, dir.path().join("tpm2-00.permall")).unwrap();
        }
        std::fs::write(dir.path().join("other"), b"x").unwrap();
        // The watcher thread is asynchronous: wait for it (bounded).
        for _ in 0..200 {
            if w.count() == Some(3) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(w.count(), Some(3));
    }
}
