//! `meterctl status` shows the RFC 3161 endpoint while meter-tsa runs (its
//! URL, from meter-tsa's own bus name `org.meterd.TimeStamp1`), and `not
//! running` once it stopped; the name's live interface matches the shipped
//! dbus/org.meterd.TimeStamp1.xml (introspected with busctl).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::sandbox;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandbox::{bin_dir, ok, Sandbox};

fn text_status(sb: &Sandbox) -> String {
    ok(&sb.meterctl(&["status"]), "meterctl status")
}

fn endpoint_line(text: &str) -> &str {
    text.lines()
        .find(|l| l.starts_with("time-stamp endpoint: "))
        .unwrap_or_else(|| panic!("no time-stamp endpoint line in:\n{text}"))
}

#[test]
fn status_shows_the_endpoint_while_it_runs() {
    let sb = Sandbox::up(100_000);
    let (_, url) = sb.tsa_urls();
    assert!(!url.contains('@'), "{url}");

    let text = text_status(&sb);
    assert_eq!(
        endpoint_line(&text),
        format!("time-stamp endpoint: {url} (credentials required)")
    );
    let json = sb.status();
    assert_eq!(
        json["tsa"],
        serde_json::json!({"running": true, "urls": [url], "anonymous_loopback": false}),
        "{json}"
    );

    // The live interface is the shipped one.
    sb.assert_interface_is_shipped("org.meterd.TimeStamp1", "/org/meterd/TimeStamp1");

    // Stop it (SIGTERM, as systemd does) and wait for it to exit.
    let pid = std::fs::read_to_string(sb.path("tsa.pid")).expect("tsa.pid");
    let pid = pid.trim().to_string();
    ok(&sb.run("kill", &["-TERM", &pid]), "kill -TERM meter-tsa");
    let t0 = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "meter-tsa still running 20 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The bus drops the name when it sees the hang-up: poll briefly.
    let t1 = Instant::now();
    let text = loop {
        let text = text_status(&sb);
        if endpoint_line(&text) == "time-stamp endpoint: not running"
            || t1.elapsed() > Duration::from_secs(10)
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(endpoint_line(&text), "time-stamp endpoint: not running");
    let json = sb.status();
    assert_eq!(
        json["tsa"],
        serde_json::json!({"running": false, "urls": [], "anonymous_loopback": false}),
        "{json}"
    );

    // Started again, with --anonymous-loopback: the status says so.
    let port_file = sb.path("tsa-anon.port");
    let mut tsa = Command::new(bin_dir().join("meter-tsa"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--anonymous-loopback",
            "--clients",
        ])
        .arg(sb.path("tsa-clients"))
        .arg("--chain")
        .arg(sb.path("tsa-chain.pem"))
        .arg("--port-file")
        .arg(&port_file)
        .env(
            "DBUS_SYSTEM_BUS_ADDRESS",
            &sb.env["DBUS_SYSTEM_BUS_ADDRESS"],
        )
        .stdin(Stdio::null())
        .spawn()
        .expect("meter-tsa");
    let t2 = Instant::now();
    let port = loop {
        if let Some(p) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok())
        {
            break p;
        }
        assert!(
            t2.elapsed() < Duration::from_secs(30),
            "meter-tsa did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // It takes the name just after writing the port file: poll briefly.
    let want = format!("time-stamp endpoint: http://127.0.0.1:{port}/ (anonymous loopback)");
    let t3 = Instant::now();
    let text = loop {
        let text = text_status(&sb);
        if endpoint_line(&text) == want || t3.elapsed() > Duration::from_secs(10) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = tsa.kill();
    let _ = tsa.wait();
    assert_eq!(endpoint_line(&text), want);
}
