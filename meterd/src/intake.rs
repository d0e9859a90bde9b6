//! Bounded, cancellable reading of a message handed over as a file
//! descriptor (`Postmark`, `Sign`, `Validate`; `Decrypt` keeps the bytes).
//!
//! The descriptor comes from the caller, so it may be anything the caller
//! can open: a pipe whose write end it keeps forever, `/dev/zero`, an
//! eventfd that never becomes readable, a directory, a write-only file. A
//! read without bounds lets one mail client hold a call, its descriptor and
//! (before this module) a reservation of funds for as long as it likes
//! (issue 11, hole 3). So every read here is bounded three ways: a size
//! (`max_message_bytes`, refused as `InvalidInput`), a deadline
//! (`message_read_timeout_seconds`, `TimedOut`), and a cancellation token
//! that the bus layer fires when the caller leaves the bus (`Cancelled`).
//!
//! How a descriptor is read depends on what it is:
//! * pipes, sockets, character devices, eventfds and the like go through
//!   epoll (`AsyncFd`, with `O_NONBLOCK` set for the duration and the
//!   caller's flags restored afterwards, since the open file description
//!   is shared with the caller); a read that would block costs nothing but
//!   a registration, and the deadline or the token ends it at once;
//! * regular files and block devices cannot be polled (epoll refuses them,
//!   and a FUSE file may claim to be readable and then block), and neither
//!   can a few character devices such as `/dev/zero`: they are read on a
//!   blocking thread in chunks, checking the size, the deadline and the
//!   token between chunks. A single `read(2)` the kernel never returns from
//!   (a hung FUSE or NFS file) cannot be interrupted: the caller is still
//!   answered at the deadline, the thread closes the descriptor when the
//!   kernel lets go, and at most [`MAX_BLOCKING_READS`] such reads run at
//!   once (more are refused as `Busy`), so they cannot pile up;
//! * directories, write-only and `O_PATH` descriptors are refused with a
//!   message saying why.
//!
//! The descriptor is owned here and closed on every path (success, error,
//! deadline, cancellation, or the future being dropped).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha384};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::{Result, ServiceError};
use crate::ledger::Digest;

/// Bytes read at a time.
const CHUNK: usize = 64 * 1024;

/// Reads running on blocking threads at once, meter-wide (see the module doc).
pub const MAX_BLOCKING_READS: usize = 64;

/// How much of a message is read, and for how long; owned by the door
/// that reads messages.
#[derive(Debug, Clone)]
pub struct ReadLimits {
    /// Largest message accepted, bytes (`max_message_bytes`).
    pub max_bytes: u64,
    /// Longest a read may take from start to end of file
    /// (`message_read_timeout_seconds`).
    pub deadline: Duration,
    /// Blocking reads in progress (shared by every read under these
    /// limits). A counter, not a lock: it only bounds how many threads
    /// reads that the kernel will not interrupt can hold.
    pub blocking: Arc<AtomicUsize>,
}

impl ReadLimits {
    /// Limits of `max_bytes` and `deadline`, with a fresh blocking-read count.
    pub fn new(max_bytes: u64, deadline: Duration) -> ReadLimits {
        ReadLimits {
            max_bytes,
            deadline,
            blocking: Arc::default(),
        }
    }

    /// The limits configured for the meter.
    pub fn from_config(config: &Config) -> ReadLimits {
        ReadLimits::new(
            config.max_message_bytes,
            Duration::from_secs(config.message_read_timeout_seconds.max(1)),
        )
    }
}

/// SHA-384 of everything readable from `fd`, within `limits`, unless
/// `cancel` fires first. `fd` is closed when this returns (or is dropped).
pub async fn hash_message(
    fd: OwnedFd,
    limits: &ReadLimits,
    cancel: &CancellationToken,
) -> Result<Digest> {
    read_any(fd, limits, cancel, false).await.map(|r| r.digest)
}

/// Everything readable from `fd` (`Decrypt`'s envelope), kept in memory,
/// with its SHA-384; bounded like [`hash_message`].
pub async fn read_message(
    fd: OwnedFd,
    limits: &ReadLimits,
    cancel: &CancellationToken,
) -> Result<Collected> {
    read_any(fd, limits, cancel, true).await
}

/// What a read gave: the SHA-384, and the bytes when they were kept.
#[derive(Debug)]
pub struct Collected {
    /// SHA-384 of the bytes read.
    pub digest: Digest,
    /// The bytes (empty unless asked for).
    pub bytes: Vec<u8>,
}

/// Hashes what is read and keeps it if asked.
struct Sink {
    hasher: Sha384,
    keep: Option<Vec<u8>>,
}

impl Sink {
    fn new(keep: bool) -> Sink {
        Sink {
            hasher: Sha384::new(),
            keep: keep.then(Vec::new),
        }
    }

    fn update(&mut self, b: &[u8]) {
        self.hasher.update(b);
        if let Some(k) = self.keep.as_mut() {
            k.extend_from_slice(b);
        }
    }

    fn finish(self) -> Collected {
        Collected {
            digest: self.hasher.finalize().into(),
            bytes: self.keep.unwrap_or_default(),
        }
    }
}

async fn read_any(
    fd: OwnedFd,
    limits: &ReadLimits,
    cancel: &CancellationToken,
    keep: bool,
) -> Result<Collected> {
    let deadline = Instant::now() + limits.deadline;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| {
        ServiceError::InvalidInput(format!("cannot inspect the message descriptor: {e}"))
    })?;
    check_readable(&file, &meta.file_type())?;
    let ft = meta.file_type();
    if ft.is_file() || ft.is_block_device() {
        return read_blocking(file, limits, deadline, cancel, keep).await;
    }
    let nb = Nonblocking::set(file).map_err(|e| {
        ServiceError::InvalidInput(format!("cannot use the message descriptor: {e}"))
    })?;
    // SAFETY: `nb` owns its `File`, so the descriptor stays open and the
    // same for as long as the `AsyncFd` owns `nb`.
    match unsafe { AsyncFd::register_with_interest(nb, Interest::READABLE) } {
        Ok(afd) => read_polled(afd, limits, deadline, cancel, keep).await,
        Err(e) => {
            let (nb, cause) = e.into_parts();
            match (nb.into_file(), cause.raw_os_error()) {
                // epoll refuses devices without poll support (/dev/zero,
                // ...): they never block, so a blocking thread with checks
                // between chunks bounds them.
                (Some(file), Some(libc::EPERM)) => {
                    read_blocking(file, limits, deadline, cancel, keep).await
                }
                _ => Err(ServiceError::Internal(format!(
                    "cannot watch the message descriptor: {cause}"
                ))),
            }
        }
    }
}

/// Refuses descriptors that cannot give a message: directories,
/// write-only and `O_PATH` ones.
fn check_readable(file: &File, ft: &std::fs::FileType) -> Result<()> {
    if ft.is_dir() {
        return Err(ServiceError::InvalidInput(
            "the message descriptor is a directory; pass a file or a pipe".into(),
        ));
    }
    let flags = get_flags(file).map_err(|e| {
        ServiceError::InvalidInput(format!("cannot inspect the message descriptor: {e}"))
    })?;
    if flags & libc::O_PATH != 0 {
        return Err(ServiceError::InvalidInput(
            "the message descriptor was opened with O_PATH and cannot be read; open the file for reading".into(),
        ));
    }
    if flags & libc::O_ACCMODE == libc::O_WRONLY {
        return Err(ServiceError::InvalidInput(
            "the message descriptor is open for writing only; pass one open for reading".into(),
        ));
    }
    Ok(())
}

pub(crate) fn get_flags(file: &File) -> std::io::Result<libc::c_int> {
    // SAFETY: F_GETFL on a descriptor we own; no pointers.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(flags)
}

fn set_flags(file: &File, flags: libc::c_int) -> std::io::Result<()> {
    // SAFETY: F_SETFL on a descriptor we own; no pointers.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A descriptor switched to `O_NONBLOCK`, switched back when dropped or
/// given back: the open file description is shared with the caller, who
/// may still use it. (Also used by `outlet`, which writes to one.)
pub(crate) struct Nonblocking {
    file: Option<File>,
    flags: libc::c_int,
}

impl Nonblocking {
    pub(crate) fn set(file: File) -> std::io::Result<Nonblocking> {
        let flags = get_flags(&file)?;
        set_flags(&file, flags | libc::O_NONBLOCK)?;
        Ok(Nonblocking {
            file: Some(file),
            flags,
        })
    }

    pub(crate) fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// The file with its flags as they were (`None` only if taken before).
    pub(crate) fn into_file(mut self) -> Option<File> {
        let file = self.file.take();
        if let Some(f) = &file {
            let _ = set_flags(f, self.flags);
        }
        file
    }
}

impl AsRawFd for Nonblocking {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }
}

impl Drop for Nonblocking {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            let _ = set_flags(f, self.flags);
        }
    }
}

fn too_large(limit: u64) -> ServiceError {
    ServiceError::InvalidInput(format!(
        "message larger than the {limit}-byte limit (max_message_bytes); postmark its SHA-384 with PostmarkDigest instead"
    ))
}

fn timed_out(limits: &ReadLimits) -> ServiceError {
    ServiceError::TimedOut(format!(
        "the message was not read to its end within {} s (message_read_timeout_seconds); \
         close the write end when the message is complete, or send its SHA-384 with PostmarkDigest",
        limits.deadline.as_secs()
    ))
}

fn read_error(e: std::io::Error) -> ServiceError {
    ServiceError::InvalidInput(format!(
        "cannot read the message from its file descriptor: {e}"
    ))
}

/// Reads a pollable descriptor on the runtime, waiting in epoll.
async fn read_polled(
    afd: AsyncFd<Nonblocking>,
    limits: &ReadLimits,
    deadline: Instant,
    cancel: &CancellationToken,
    keep: bool,
) -> Result<Collected> {
    let mut hasher = Sink::new(keep);
    let mut buf = vec![0u8; CHUNK];
    let mut total: u64 = 0;
    loop {
        let mut guard = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(ServiceError::Cancelled),
            _ = tokio::time::sleep_until(deadline) => return Err(timed_out(limits)),
            ready = afd.readable() => ready.map_err(read_error)?,
        };
        let n = match guard.try_io(|inner| match inner.get_ref().file() {
            Some(mut f) => f.read(&mut buf),
            None => Ok(0),
        }) {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(read_error(e)),
            Err(_would_block) => continue,
        };
        total = total.saturating_add(n as u64);
        if total > limits.max_bytes {
            return Err(too_large(limits.max_bytes));
        }
        hasher.update(&buf[..n]);
        // A fast writer must not keep this worker from other calls.
        tokio::task::yield_now().await;
    }
    Ok(hasher.finish())
}

/// One slot of [`ReadLimits::blocking`], released when the thread ends.
struct BlockingSlot(Arc<AtomicUsize>);

impl BlockingSlot {
    fn take(count: &Arc<AtomicUsize>) -> Result<BlockingSlot> {
        let prev = count.fetch_add(1, Ordering::AcqRel);
        if prev >= MAX_BLOCKING_READS {
            count.fetch_sub(1, Ordering::AcqRel);
            return Err(ServiceError::Busy(format!(
                "{MAX_BLOCKING_READS} messages are being read from files already; retry shortly"
            )));
        }
        Ok(BlockingSlot(Arc::clone(count)))
    }
}

impl Drop for BlockingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads a file (or a device epoll refuses) on a blocking thread, checking
/// the size, the deadline and `stop` between chunks.
async fn read_blocking(
    file: File,
    limits: &ReadLimits,
    deadline: Instant,
    cancel: &CancellationToken,
    keep: bool,
) -> Result<Collected> {
    let slot = BlockingSlot::take(&limits.blocking)?;
    // Fires when the caller leaves, and when this future ends for any
    // reason (deadline, drop), so that the thread stops at its next chunk.
    let stop = cancel.child_token();
    let _stop_on_return = stop.clone().drop_guard();
    let std_deadline = deadline.into_std();
    let max = limits.max_bytes;
    let task = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        hash_blocking(file, max, std_deadline, &stop, keep)
    });
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(ServiceError::Cancelled),
        _ = tokio::time::sleep_until(deadline) => Err(timed_out(limits)),
        joined = task => match joined {
            Ok(Ok(digest)) => Ok(digest),
            Ok(Err(Stopped::TooLarge)) => Err(too_large(max)),
            Ok(Err(Stopped::Io(e))) => Err(read_error(e)),
            Ok(Err(Stopped::Deadline)) => Err(timed_out(limits)),
            Ok(Err(Stopped::Cancelled)) => Err(ServiceError::Cancelled),
            Err(e) => Err(ServiceError::Internal(format!("the message reader died: {e}"))),
        },
    }
}

/// Why a blocking read stopped early.
#[derive(Debug)]
enum Stopped {
    TooLarge,
    Deadline,
    Cancelled,
    Io(std::io::Error),
}

fn hash_blocking(
    mut file: File,
    max: u64,
    deadline: std::time::Instant,
    stop: &CancellationToken,
    keep: bool,
) -> std::result::Result<Collected, Stopped> {
    let mut hasher = Sink::new(keep);
    let mut buf = vec![0u8; CHUNK];
    let mut total: u64 = 0;
    loop {
        if stop.is_cancelled() {
            return Err(Stopped::Cancelled);
        }
        if std::time::Instant::now() >= deadline {
            return Err(Stopped::Deadline);
        }
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Stopped::Io(e)),
        };
        total = total.saturating_add(n as u64);
        if total > max {
            return Err(Stopped::TooLarge);
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

#[cfg(test)]
#[path = "intake_tests.rs"]
mod tests;
