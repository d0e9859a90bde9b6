//! `meterbench ready`: start-to-READY time and resident memory of a daemon
//! started the way systemd starts a `Type=notify` unit.
//!
//! It binds a datagram socket, points `NOTIFY_SOCKET` at it, spawns the
//! command and waits for `READY=1` (what `systemd` waits for before it calls
//! the unit started). Then it reads the daemon's resident set once it has
//! been idle for a moment, stops it with SIGTERM and reaps it.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a start could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    /// Socket or process plumbing failed.
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    /// The daemon exited or never said READY=1 in time.
    #[error("{0}")]
    NotReady(String),
}

/// Resident memory of `pid` from /proc: (VmRSS, RssAnon) in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("VmRSS:")?, field("RssAnon:")?))
}

fn stop(child: &mut Child) {
    // SIGTERM by pid: the daemon's own graceful stop.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts `cmd`, waits up to `timeout` for READY=1, waits `idle`, reads its
/// memory, stops it. Prints `start_to_ready_ms=… rss_idle_kib=… rss_anon_idle_kib=…`.
pub fn run(
    cmd: &[String],
    timeout: Duration,
    idle: Duration,
    log: &Path,
) -> Result<(), ReadyError> {
    let dir = tempfile_dir()?;
    let sock_path = dir.join("notify.sock");
    let sock =
        UnixDatagram::bind(&sock_path).map_err(|e| ReadyError::Io("bind notify socket", e))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| ReadyError::Io("socket timeout", e))?;
    let (prog, args) = cmd
        .split_first()
        .ok_or_else(|| ReadyError::NotReady("no command".into()))?;
    let logf = std::fs::File::create(log).map_err(|e| ReadyError::Io("daemon log", e))?;
    let logf2 = logf
        .try_clone()
        .map_err(|e| ReadyError::Io("daemon log", e))?;
    let started = Instant::now();
    let mut child = Command::new(prog)
        .args(args)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(logf)
        .stderr(logf2)
        .spawn()
        .map_err(|e| ReadyError::Io("spawn", e))?;
    let mut buf = [0u8; 4096];
    let ready_at = loop {
        if started.elapsed() > timeout {
            stop(&mut child);
            return Err(ReadyError::NotReady(format!(
                "no READY=1 within {timeout:?}"
            )));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ReadyError::NotReady(format!(
                "exited before READY=1: {status}"
            )));
        }
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
            if msg.lines().any(|l| l == "READY=1") {
                break started.elapsed();
            }
        }
    };
    std::thread::sleep(idle);
    let rss = rss_kib(child.id());
    stop(&mut child);
    let _ = std::fs::remove_dir_all(&dir);
    let (rss, anon) = rss.unwrap_or((0, 0));
    println!(
        "start_to_ready_ms={:.1} rss_idle_kib={rss} rss_anon_idle_kib={anon}",
        ready_at.as_secs_f64() * 1000.0
    );
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf, ReadyError> {
    let base = std::env::temp_dir().join(format!("meterbench-ready-{}", std::process::id()));
    std::fs::create_dir_all(&base).map_err(|e| ReadyError::Io("temp dir", e))?;
    Ok(base)
}
