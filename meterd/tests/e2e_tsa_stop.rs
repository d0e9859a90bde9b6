//! meter-tsa stops gracefully on SIGTERM (what systemd sends): a request
//! whose headers were read before the signal still gets its time-stamp, no
//! new connection is accepted, and the process exits 0. The request is
//! built by `openssl ts -query` and the reply read with `openssl ts -reply`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandbox::{bin_dir, ok, write, Sandbox};

#[test]
fn sigterm_answers_the_request_in_flight_then_exits_zero() {
    let sb = Sandbox::up(100_000);
    let bus = sb.env["DBUS_SYSTEM_BUS_ADDRESS"].clone();
    let port_file = sb.path("tsa-stop.port");
    // Our own meter-tsa beside the sandbox's, so its exit status is ours to read.
    let mut tsa = Command::new(bin_dir().join("meter-tsa"))
        .args(["--listen", "127.0.0.1:0", "--clients"])
        .arg(sb.path("tsa-clients"))
        .arg("--chain")
        .arg(sb.path("tsa-chain.pem"))
        .arg("--port-file")
        .arg(&port_file)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
        .stdin(Stdio::null())
        .spawn()
        .expect("meter-tsa");
    let t0 = Instant::now();
    let port = loop {
        if let Ok(p) = std::fs::read_to_string(&port_file) {
            if let Ok(p) = p.trim().parse::<u16>() {
                break p;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "meter-tsa did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (ar0, _, _) = sb.registers();

    let msg = write(&sb, "doc.txt", b"stamped while stopping\n");
    let q = sb.path("q.tsq").to_string_lossy().into_owned();
    ok(
        &sb.run(
            "openssl",
            &[
                "ts", "-query", "-data", &msg, "-sha256", "-cert", "-out", &q,
            ],
        ),
        "openssl ts -query",
    );
    let body = std::fs::read(&q).unwrap();

    // The headers now, the body after the signal: the request is in flight.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic dXNlcjpzZWNyZXQ=\r\nContent-Type: application/timestamp-query\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    ok(
        &sb.run("kill", &["-TERM", &tsa.id().to_string()]),
        "kill -TERM",
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "a new connection was accepted after SIGTERM"
    );
    s.write_all(&body).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let head_end = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP reply")
        + 4;
    let head = String::from_utf8_lossy(&reply[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/timestamp-reply"),
        "{head}"
    );
    let r = sb.path("r.tsr");
    std::fs::write(&r, &reply[head_end..]).unwrap();
    let text = ok(
        &sb.run(
            "openssl",
            &["ts", "-reply", "-in", &r.to_string_lossy(), "-text"],
        ),
        "openssl ts -reply",
    );
    assert!(text.contains("Status: Granted"), "{text}");

    let t1 = Instant::now();
    let status = loop {
        if let Some(st) = tsa.try_wait().unwrap() {
            break st;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(15),
            "meter-tsa still running 15 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    let (ar1, _, _) = sb.registers();
    let price = sb.status()["rates"]["postmark"].as_u64().expect("rate");
    assert_eq!(ar1 - ar0, price, "the answered request was charged once");
}
