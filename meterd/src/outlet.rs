//! Bounded, cancellable writing of a stream to a file descriptor the caller
//! handed over (`ReportSegment`): the mirror of `intake`.
//!
//! The descriptor comes from the caller, so it may be a pipe nobody reads,
//! a full disk, `/dev/null` or a file opened for reading only. Whatever it
//! is, the call must not hold its slot, a ledger connection or the meter's
//! memory for longer than the caller keeps up: the producer (the ledger's
//! export) waits on a small bounded channel, and every write is bounded by
//! an *idle* limit (`message_read_timeout_seconds`: no progress for that
//! long is `TimedOut`, a slow but steady reader is fine) and by the call's
//! cancellation (the caller left the bus).
//!
//! Pipes, sockets and the like are written in epoll (`O_NONBLOCK` set for
//! the duration, the caller's flags restored after, as in `intake`);
//! regular files, block devices and devices epoll refuses are written on a
//! blocking thread, one chunk at a time, with the checks between chunks.
//! Directories, `O_PATH` and read-only descriptors are refused. The
//! descriptor is closed on every path.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{Result, ServiceError};
use crate::intake::{get_flags, Nonblocking};

/// A descriptor to write a stream to, with the call's bounds.
#[derive(Debug)]
pub struct Outlet {
    fd: OwnedFd,
    idle: Duration,
    cancel: CancellationToken,
}

impl Outlet {
    /// `fd`, written with at most `idle` without progress, ended when
    /// `cancel` fires.
    pub fn new(fd: OwnedFd, idle: Duration, cancel: CancellationToken) -> Outlet {
        Outlet { fd, idle, cancel }
    }

    /// Checks that the descriptor can take a stream at all (before any
    /// work is done for it).
    pub fn check(&self) -> Result<()> {
        let file = self
            .fd
            .try_clone()
            .map(File::from)
            .map_err(|e| refused(format!("cannot use the output descriptor: {e}")))?;
        let ft = file
            .metadata()
            .map_err(|e| refused(format!("cannot inspect the output descriptor: {e}")))?
            .file_type();
        if ft.is_dir() {
            return Err(refused(
                "the output descriptor is a directory; pass a file or a pipe".into(),
            ));
        }
        let flags = get_flags(&file)
            .map_err(|e| refused(format!("cannot inspect the output descriptor: {e}")))?;
        if flags & libc::O_PATH != 0 || flags & libc::O_ACCMODE == libc::O_RDONLY {
            return Err(refused(
                "the output descriptor is not open for writing; pass one open for writing".into(),
            ));
        }
        Ok(())
    }

    /// Writes every chunk `chunks` yields, in order, until it closes;
    /// returns the bytes written. Dropping `chunks`' receiver (on any
    /// error) stops the producer.
    pub async fn write_all(self, mut chunks: mpsc::Receiver<Vec<u8>>) -> Result<u64> {
        self.check()?;
        let Outlet { fd, idle, cancel } = self;
        let file = File::from(fd);
        let ft = file
            .metadata()
            .map_err(|e| refused(format!("cannot inspect the output descriptor: {e}")))?
            .file_type();
        if ft.is_file() || ft.is_block_device() {
            return write_blocking(file, &mut chunks, idle, &cancel).await;
        }
        let nb = Nonblocking::set(file)
            .map_err(|e| refused(format!("cannot use the output descriptor: {e}")))?;
        // SAFETY: `nb` owns its `File`, so the descriptor stays open and the
        // same for as long as the `AsyncFd` owns `nb`.
        match unsafe { AsyncFd::register_with_interest(nb, Interest::WRITABLE) } {
            Ok(afd) => write_polled(&afd, &mut chunks, idle, &cancel).await,
            Err(e) => {
                let (nb, cause) = e.into_parts();
                match (nb.into_file(), cause.raw_os_error()) {
                    // Devices epoll refuses (/dev/null, ...) never block.
                    (Some(file), Some(libc::EPERM)) => {
                        write_blocking(file, &mut chunks, idle, &cancel).await
                    }
                    _ => Err(ServiceError::Internal(format!(
                        "cannot watch the output descriptor: {cause}"
                    ))),
                }
            }
        }
    }
}

fn refused(m: String) -> ServiceError {
    ServiceError::InvalidInput(m)
}

fn write_error(e: std::io::Error) -> ServiceError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return refused("the reader closed the output descriptor before the end".into());
    }
    refused(format!("cannot write to the output descriptor: {e}"))
}

fn stalled(idle: Duration) -> ServiceError {
    ServiceError::TimedOut(format!(
        "the output descriptor took nothing for {} s (message_read_timeout_seconds); read it as it comes",
        idle.as_secs()
    ))
}

/// The next chunk, or `None` at the end of the stream.
async fn next_chunk(
    chunks: &mut mpsc::Receiver<Vec<u8>>,
    cancel: &CancellationToken,
) -> Result<Option<Vec<u8>>> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(ServiceError::Cancelled),
        c = chunks.recv() => Ok(c),
    }
}

async fn write_polled(
    afd: &AsyncFd<Nonblocking>,
    chunks: &mut mpsc::Receiver<Vec<u8>>,
    idle: Duration,
    cancel: &CancellationToken,
) -> Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = next_chunk(chunks, cancel).await? {
        let mut at = 0;
        while at < chunk.len() {
            let mut guard = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(ServiceError::Cancelled),
                _ = tokio::time::sleep(idle) => return Err(stalled(idle)),
                ready = afd.writable() => ready.map_err(write_error)?,
            };
            match guard.try_io(|inner| match inner.get_ref().file() {
                Some(mut f) => f.write(&chunk[at..]),
                None => Ok(0),
            }) {
                Ok(Ok(0)) => return Err(write_error(std::io::ErrorKind::WriteZero.into())),
                Ok(Ok(n)) => at += n,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(write_error(e)),
                Err(_would_block) => {}
            }
        }
        total += chunk.len() as u64;
    }
    Ok(total)
}

async fn write_blocking(
    mut file: File,
    chunks: &mut mpsc::Receiver<Vec<u8>>,
    idle: Duration,
    cancel: &CancellationToken,
) -> Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = next_chunk(chunks, cancel).await? {
        let len = chunk.len() as u64;
        let task = tokio::task::spawn_blocking(move || {
            let r = file.write_all(&chunk);
            (file, r)
        });
        // A write the kernel never returns from (a hung NFS file) keeps its
        // thread until it does; the caller is answered at the idle limit.
        let (back, written) = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(ServiceError::Cancelled),
            _ = tokio::time::sleep(idle) => return Err(stalled(idle)),
            joined = task => joined
                .map_err(|e| ServiceError::Internal(format!("the output writer died: {e}")))?,
        };
        written.map_err(write_error)?;
        file = back;
        total += len;
    }
    file.flush().map_err(write_error)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::io::Read;

    use super::*;

    fn chunks(parts: Vec<Vec<u8>>) -> mpsc::Receiver<Vec<u8>> {
        let (tx, rx) = mpsc::channel(parts.len().max(1));
        for p in parts {
            tx.try_send(p).unwrap();
        }
        rx
    }

    /// (read end, write end), close-on-exec.
    fn pipe() -> (File, OwnedFd) {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into the array we own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and are owned here alone.
        unsafe {
            use std::os::fd::FromRawFd;
            (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
        }
    }

    fn outlet(fd: OwnedFd, idle_ms: u64) -> Outlet {
        Outlet::new(fd, Duration::from_millis(idle_ms), CancellationToken::new())
    }

    #[tokio::test]
    async fn writes_a_file_and_a_pipe() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let fd = OwnedFd::from(File::open(file.path()).unwrap());
        // Open for reading only: refused.
        assert!(outlet(fd, 1000).check().is_err());
        let w = std::fs::OpenOptions::new()
            .write(true)
            .open(file.path())
            .unwrap();
        let n = outlet(OwnedFd::from(w), 1000)
            .write_all(chunks(vec![b"abc".to_vec(), b"def".to_vec()]))
            .await
            .unwrap();
        assert_eq!(n, 6);
        assert_eq!(std::fs::read(file.path()).unwrap(), b"abcdef");

        let (mut r, w) = pipe();
        let big = vec![7u8; 1 << 20];
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            r.read_to_end(&mut all).unwrap();
            all
        });
        let n = outlet(w, 5000)
            .write_all(chunks(vec![big.clone(), big.clone()]))
            .await
            .unwrap();
        assert_eq!(n, 2 << 20);
        assert_eq!(reader.join().unwrap().len(), 2 << 20);
    }

    #[tokio::test]
    async fn a_pipe_nobody_reads_times_out_and_a_closed_one_is_named() {
        let (r, w) = pipe();
        let e = outlet(w, 200)
            .write_all(chunks(vec![vec![0u8; 1 << 20]]))
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::TimedOut(_)), "{e}");
        drop(r);
        let (r, w) = pipe();
        drop(r);
        let e = outlet(w, 1000)
            .write_all(chunks(vec![vec![0u8; 10]]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("closed"), "{e}");
    }

    #[tokio::test]
    async fn dev_null_takes_everything_and_cancellation_ends_a_stuck_write() {
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        let n = outlet(OwnedFd::from(null), 1000)
            .write_all(chunks(vec![vec![1u8; 4096]]))
            .await
            .unwrap();
        assert_eq!(n, 4096);
        let (_r, w) = pipe();
        let cancel = CancellationToken::new();
        let o = Outlet::new(w, Duration::from_secs(60), cancel.clone());
        let t = tokio::spawn(o.write_all(chunks(vec![vec![0u8; 1 << 20]])));
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
        let e = t.await.unwrap().unwrap_err();
        assert!(matches!(e, ServiceError::Cancelled), "{e}");
    }
}
