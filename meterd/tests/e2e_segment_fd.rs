//! Issue 12, `ReportSegment` handed a descriptor that never drains: a raw D-Bus client
//! (zbus in this test, as root: an administrator) makes a pipe shrunk to one page
//! (F_SETPIPE_SZ, so a small segment fills it), keeps its read end without reading (or
//! closes it) and hands the write end to `ReportSegment`. While that call hangs, other
//! callers keep being served (`Status` through meterctl answers each time), and the call
//! ends with a named error (InvalidInput: "the output descriptor took nothing for N s")
//! within the configured deadline
//! (`message_read_timeout_seconds`); nothing in the ledger changes.
//!
//! Before this test (main at 74e8a2a) the same held: the outlet's idle deadline and the
//! per-caller lanes (issue 11) already covered it; this pins it for `ReportSegment`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use sandbox::{ok, Sandbox};

const DEADLINE_S: u64 = 3;

/// `ReportSegment(rid, fd)` on its own thread over a raw connection; the pipe's read end
/// is kept unread (`keep`) or closed first. Returns (seconds, error name or "ok").
fn call(sb: &Sandbox, rid: &str, keep: bool) -> std::thread::JoinHandle<(f64, String)> {
    let addr = sb.env["DBUS_SYSTEM_BUS_ADDRESS"].clone();
    let rid = rid.to_owned();
    std::thread::spawn(move || {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: pipe2 succeeded: both are fresh and ours.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: plain fcntl on our descriptor.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
        let reader = keep.then_some(r);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let t0 = Instant::now();
        let said = rt.block_on(async {
            let c = zbus::connection::Builder::address(addr.as_str())
                .unwrap()
                .build()
                .await
                .unwrap();
            let body = (rid.as_str(), zbus::zvariant::Fd::from(w.as_fd()));
            match c
                .call_method(
                    Some(meter_proto::BUS_NAME),
                    meter_proto::OBJECT_PATH,
                    Some(meter_proto::INTERFACE),
                    "ReportSegment",
                    &body,
                )
                .await
            {
                Ok(_) => "ok".to_owned(),
                Err(e) => e.to_string(),
            }
        });
        drop(reader);
        (t0.elapsed().as_secs_f64(), said)
    })
}

#[test]
fn a_segment_pipe_that_never_drains_ends_at_the_deadline_and_wedges_no_one() {
    let sb = Sandbox::up_with(&[
        ("SANDBOX_FUNDS", "100000"),
        (
            "SANDBOX_METERD_CONFIG",
            &format!("message_read_timeout_seconds = {DEADLINE_S}\n"),
        ),
    ]);
    for i in 0..30 {
        ok(&sb.postmark_id(&format!("p{i}")).2, "postmark");
    }
    let rep = sb.path("rep1.pem").to_string_lossy().into_owned();
    sb.meterctl_json(&["report", "-o", &rep, "--request-id", "rep1"]);
    let before = (sb.registers(), sb.status()["ledger_rows"].clone());

    let stuck = call(&sb, "rep1", true);
    // Others are served while the call hangs.
    let t0 = Instant::now();
    let mut slowest = Duration::ZERO;
    while !stuck.is_finished() && t0.elapsed() < Duration::from_secs(DEADLINE_S * 5) {
        let t = Instant::now();
        sb.status();
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    let (secs, said) = stuck.join().unwrap();
    assert!(said.contains("took nothing for 3 s"), "{said}");
    assert!(
        secs < (DEADLINE_S * 3) as f64,
        "ended after {secs} s, deadline {DEADLINE_S} s: {said}"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "Status took {slowest:?} while the segment call hung"
    );

    let (secs2, said) = call(&sb, "rep1", false).join().unwrap();
    assert!(secs2 < DEADLINE_S as f64, "{secs2} s: {said}");
    assert!(said.contains("closed"), "{said}");

    let after = (sb.registers(), sb.status()["ledger_rows"].clone());
    assert_eq!(before, after, "the ledger moved");
    eprintln!("stuck call ended after {secs:.2} s; slowest Status meanwhile {slowest:?}");
}
