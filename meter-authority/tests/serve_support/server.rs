//! `meter-authority serve` as a child process and a minimal HTTP/1.1
//! client, for the `serve` tests here and meterd's end-to-end sync test
//! (which includes this file with `#[path]`), so it needs only std.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `meter-authority serve` on a free loopback port; stopped when dropped.
pub struct Server {
    pub addr: String,
    child: Child,
}

impl Server {
    /// `bin serve --dir DIR --listen 127.0.0.1:0 [--database URL] [extra]`,
    /// once it prints the address it listens on.
    pub fn spawn(bin: &Path, dir: &Path, database: Option<&str>, extra: &[&str]) -> Server {
        let mut c = Command::new(bin);
        c.arg("serve")
            .arg("--dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"]);
        if let Some(url) = database {
            c.args(["--database", url]);
        }
        c.args(extra);
        let mut child = c
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("serve did not start: {line:?}"))
            .to_owned();
        Server { addr, child }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// An HTTP answer: status, headers (lower-case names), body.
pub struct Reply {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// One HTTP/1.1 request on its own connection.
pub fn http(addr: &str, method: &str, path: &str, media: &str, body: &[u8]) -> Reply {
    try_http(addr, method, path, media, body, None).unwrap()
}

/// One HTTP/1.1 request on its own connection, with a bearer token; an
/// error when the connection fails or closes without an answer.
pub fn try_http(
    addr: &str,
    method: &str,
    path: &str,
    media: &str,
    body: &[u8],
    bearer: Option<&str>,
) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {media}\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let Some(split) = all.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(std::io::Error::other("no answer"));
    };
    let head = String::from_utf8(all[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: all[split + 4..].to_vec(),
    })
}
