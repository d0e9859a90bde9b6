//! The attacker's side of `attack_wedge.rs`: a raw D-Bus client that hands
//! meterd descriptors that never end (pipes whose write end it keeps,
//! `/dev/zero`, an eventfd) or an `h` with no descriptor attached, and
//! reports each reply on stdout as `ATTACK reply INDEX KIND MS`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Instant;

/// An `h` whose index points at no attached descriptor.
struct FakeFd(u32);

impl zbus::zvariant::Type for FakeFd {
    const SIGNATURE: &'static zbus::zvariant::Signature = &zbus::zvariant::Signature::Fd;
}

impl serde::Serialize for FakeFd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded; both descriptors are fresh and ours.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn eventfd() -> OwnedFd {
    // SAFETY: no pointers involved.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: eventfd succeeded; the descriptor is fresh and ours.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn postmark_call<B>(body: &B) -> zbus::Message
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    zbus::Message::method_call(meter_proto::OBJECT_PATH, "Postmark")
        .unwrap()
        .destination(meter_proto::BUS_NAME)
        .unwrap()
        .interface(meter_proto::INTERFACE)
        .unwrap()
        .build(body)
        .unwrap()
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ATTACK {line}");
    let _ = out.flush();
}

/// Prints `reply I KIND MS` for every reply to the calls in `serials`.
async fn report_replies(
    conn: zbus::Connection,
    mut stream: zbus::MessageStream,
    serials: std::collections::HashMap<u32, usize>,
    t0: Instant,
) {
    use futures_util::StreamExt;
    let _keep = conn;
    let mut left = serials.len();
    while left > 0 {
        let Some(Ok(msg)) = stream.next().await else {
            return;
        };
        let header = msg.header();
        let Some(idx) = header
            .reply_serial()
            .and_then(|s| serials.get(&s.get()).copied())
        else {
            continue;
        };
        let kind = match header.message_type() {
            zbus::message::Type::MethodReturn => "ok".to_owned(),
            _ => header
                .error_name()
                .map(|n| {
                    let n = n.as_str();
                    n.strip_prefix("org.meterd.Meter1.Error.")
                        .unwrap_or(n)
                        .to_owned()
                })
                .unwrap_or_else(|| "?".into()),
        };
        say(&format!("reply {idx} {kind} {}", t0.elapsed().as_millis()));
        left -= 1;
    }
}

/// Runs the attack `mode` (`stuck N`, `devzero`, `eventfd`, `nofd`) on `bus`.
pub async fn attack(mode: &str, bus: &str) {
    let mut words = mode.split_whitespace();
    let what = words.next().unwrap_or("");
    let n: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(1);
    // The bus lets one connection wait for at most 128 replies: spread the
    // calls over connections of one process, as a client could.
    let per_conn = 100;
    let mut conns = Vec::new();
    for _ in 0..n.div_ceil(per_conn) {
        let c = zbus::connection::Builder::address(bus)
            .unwrap()
            .build()
            .await
            .expect("connect to the sandbox bus");
        let stream = zbus::MessageStream::from(&c);
        conns.push((c, stream, std::collections::HashMap::new()));
    }
    let mut kept: Vec<OwnedFd> = Vec::new();
    let t0 = Instant::now();
    for i in 0..n {
        let id = format!("wedge-{}-{i}", std::process::id());
        let msg = match what {
            "stuck" => {
                let (r, w) = pipe();
                let m = postmark_call(&(zbus::zvariant::Fd::from(r.as_fd()), id.as_str()));
                kept.push(w);
                m
            }
            "devzero" => {
                let f = OwnedFd::from(std::fs::File::open("/dev/zero").unwrap());
                let m = postmark_call(&(zbus::zvariant::Fd::from(f.as_fd()), id.as_str()));
                kept.push(f);
                m
            }
            "eventfd" => {
                let e = eventfd();
                let m = postmark_call(&(zbus::zvariant::Fd::from(e.as_fd()), id.as_str()));
                kept.push(e);
                m
            }
            "nofd" => postmark_call(&(FakeFd(0), id.as_str())),
            other => panic!("unknown ATTACK_MODE {other}"),
        };
        let (conn, _, serials) = &mut conns[i / per_conn];
        serials.insert(msg.primary_header().serial_num().get(), i);
        conn.send(&msg).await.expect("send the call");
    }
    say(&format!("sent {n}"));
    let mut tasks = Vec::new();
    for (conn, stream, serials) in conns {
        tasks.push(tokio::spawn(report_replies(conn, stream, serials, t0)));
    }
    // Wait for the observer to close our stdin; then leave with everything.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
    })
    .await;
    drop(kept);
    std::process::exit(0);
}
