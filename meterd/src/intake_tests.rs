//! Unit tests of [`super::hash_message`], one per kind of descriptor a
//! caller can pass.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha384};
use tokio_util::sync::CancellationToken;

use super::{hash_message, ReadLimits};
use crate::error::ServiceError;

fn limits(max_bytes: u64, deadline_ms: u64) -> ReadLimits {
    ReadLimits::new(max_bytes, Duration::from_millis(deadline_ms))
}

/// `hash_message` of `fd` within `l` must refuse it as invalid input
/// saying `why`.
async fn refused(fd: OwnedFd, l: ReadLimits, why: &str) {
    let e = hash_message(fd, &l, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ServiceError::InvalidInput(m) if m.contains(why)),
        "{e:?}"
    );
}

fn pipe() -> (OwnedFd, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors, owned here.
    unsafe {
        (
            OwnedFd::from_raw_fd(fds[0]),
            std::fs::File::from(OwnedFd::from_raw_fd(fds[1])),
        )
    }
}

fn socketpair() -> (OwnedFd, std::os::unix::net::UnixStream) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    (OwnedFd::from(a), b)
}

fn eventfd() -> OwnedFd {
    // SAFETY: no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fresh descriptor, owned here.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn dup(fd: &OwnedFd) -> OwnedFd {
    fd.try_clone().unwrap()
}

fn nonblocking(fd: &OwnedFd) -> bool {
    // SAFETY: F_GETFL on an open descriptor.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    flags & libc::O_NONBLOCK != 0
}

/// The reader's end is closed: writing to the other end fails with EPIPE.
fn reader_closed(w: &mut impl Write) -> bool {
    matches!(w.write(b"x"), Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// A token cancelled 100 ms from now (the caller "leaves"). The reads it guards use a
/// deadline of an hour, so only the cancellation can end them: the error kind, not a
/// stopwatch, shows that it did.
fn cancelled_soon() -> CancellationToken {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.cancel();
    });
    cancel
}

/// A read deadline no test waits for.
const HOUR_MS: u64 = 3_600_000;

fn sha(data: &[u8]) -> [u8; 48] {
    Sha384::digest(data).into()
}

#[tokio::test]
async fn closed_pipe_gives_the_digest_and_restores_the_flags() {
    let (r, mut w) = pipe();
    let shared = dup(&r);
    let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    let writer = std::thread::spawn(move || w.write_all(&data).map(|_| data));
    let d = hash_message(r, &limits(1 << 20, 5_000), &CancellationToken::new())
        .await
        .unwrap();
    let data = writer.join().unwrap().unwrap();
    assert_eq!(d, sha(&data));
    assert!(
        !nonblocking(&shared),
        "O_NONBLOCK left on the caller's description"
    );
}

#[tokio::test]
async fn pipe_never_closed_times_out_and_is_closed() {
    let (r, mut w) = pipe();
    w.write_all(b"partial message").unwrap();
    let t = Instant::now();
    let e = hash_message(r, &limits(1 << 20, 300), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::TimedOut(_)), "{e:?}");
    // Not before the deadline (a lower bound only: a loaded machine is late, never early).
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(reader_closed(&mut w), "the read end is still open");
}

#[tokio::test]
async fn pipe_over_the_size_limit_is_refused() {
    let (r, mut w) = pipe();
    let writer = std::thread::spawn(move || {
        let chunk = [1u8; 4096];
        while w.write_all(&chunk).is_ok() {}
    });
    refused(r, limits(100_000, 5_000), "100000-byte").await;
    // The writer stops once the read end is gone.
    writer.join().unwrap();
}

#[tokio::test]
async fn socket_cancelled_when_the_caller_leaves() {
    let (r, mut peer) = socketpair();
    let cancel = cancelled_soon();
    let e = hash_message(r, &limits(1 << 20, HOUR_MS), &cancel)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Cancelled), "{e:?}");
    assert!(reader_closed(&mut peer), "the socket is still open");
}

#[tokio::test]
async fn eventfd_ends_on_cancellation() {
    let fd = eventfd();
    let cancel = cancelled_soon();
    let e = hash_message(fd, &limits(1 << 20, HOUR_MS), &cancel)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Cancelled), "{e:?}");
}

#[tokio::test]
async fn eventfd_ends_at_the_deadline() {
    let e = hash_message(eventfd(), &limits(1 << 20, 200), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::TimedOut(_)), "{e:?}");
}

#[tokio::test]
async fn regular_file_gives_the_digest_and_its_limit_holds() {
    let mut f = tempfile::tempfile().unwrap();
    let data = vec![7u8; 200_000];
    f.write_all(&data).unwrap();
    let reopen = |f: &std::fs::File| {
        let path = format!("/proc/self/fd/{}", f.as_raw_fd());
        OwnedFd::from(std::fs::File::open(path).unwrap())
    };
    let d = hash_message(
        reopen(&f),
        &limits(200_000, 5_000),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(d, sha(&data));
    let e = hash_message(
        reopen(&f),
        &limits(199_999, 5_000),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ServiceError::InvalidInput(_)), "{e:?}");
}

#[tokio::test]
async fn dev_zero_stops_at_the_size_limit() {
    let zero = OwnedFd::from(std::fs::File::open("/dev/zero").unwrap());
    refused(zero, limits(16 << 20, HOUR_MS), "max_message_bytes").await;
}

#[tokio::test]
async fn dev_zero_stops_at_the_deadline_and_on_cancellation() {
    let zero = || OwnedFd::from(std::fs::File::open("/dev/zero").unwrap());
    let e = hash_message(zero(), &limits(u64::MAX, 300), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::TimedOut(_)), "{e:?}");

    let cancel = cancelled_soon();
    let e = hash_message(zero(), &limits(u64::MAX, HOUR_MS), &cancel)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Cancelled), "{e:?}");
}

#[tokio::test]
async fn directory_write_only_and_path_descriptors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = OwnedFd::from(std::fs::File::open(dir.path()).unwrap());
    refused(d, limits(1 << 20, 1_000), "directory").await;

    let path = dir.path().join("w");
    let w = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    refused(OwnedFd::from(w), limits(1 << 20, 1_000), "writing only").await;

    let (_r, w) = pipe();
    refused(OwnedFd::from(w), limits(1 << 20, 1_000), "writing only").await;

    use std::os::unix::fs::OpenOptionsExt;
    let p = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(&path)
        .unwrap();
    refused(OwnedFd::from(p), limits(1 << 20, 1_000), "O_PATH").await;
}

#[tokio::test]
async fn empty_message_has_the_empty_digest() {
    let (r, w) = pipe();
    drop(w);
    let d = hash_message(r, &limits(1 << 20, 1_000), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(d, sha(b""));
}
