//! `meterbench http`: the RFC 3161 endpoint (meter-tsa) under load, the way
//! time-stamp clients use it: CLIENTS keep-alive HTTP/1.1 connections, each
//! POSTing back to back a DER `TimeStampReq` (SHA-256 imprint of a fresh
//! string, a distinct 64-bit nonce, certReq set, as osslsigncode sends it)
//! as `application/timestamp-query`, with the sandbox's Basic credentials.
//!
//! The client is a small raw HTTP/1.1 one (request line, headers,
//! Content-Length body; the reply read by its Content-Length): the figure
//! is meant to measure meter-tsa and meterd, so the generator stays cheap.
//! A reply counts as a success only with status 200 and a `TimeStampResp`
//! whose PKIStatus is granted (0).

use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{procstat, BenchError, ClientStats};

/// Where and as whom to post, parsed from `http://[user:secret@]host:port/path`.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` to connect to and send as Host.
    pub authority: String,
    /// Request path.
    pub path: String,
    /// `Authorization` header value, if credentials were in the URL.
    pub auth: Option<String>,
}

/// Parses the endpoint URL (only plain `http://`, as meter-tsa listens on loopback).
pub fn parse_url(url: &str) -> Result<Target, BenchError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| BenchError::Setup(format!("{url}: only http:// URLs")))?;
    let (hostpart, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (auth, authority) = match hostpart.rsplit_once('@') {
        Some((cred, host)) => (
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(cred)
            )),
            host.to_string(),
        ),
        None => (None, hostpart.to_string()),
    };
    if authority.is_empty() {
        return Err(BenchError::Setup(format!("{url}: no host")));
    }
    Ok(Target {
        authority,
        path,
        auth,
    })
}

/// One keep-alive connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(t: &Target) -> Result<Conn, String> {
        let stream = TcpStream::connect(&t.authority)
            .await
            .map_err(|e| format!("connect {}: {e}", t.authority))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(8192),
        })
    }

    /// Sends one request and reads its reply: (status, body).
    async fn post(&mut self, t: &Target, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let mut req = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/timestamp-query\r\nContent-Length: {}\r\n",
            t.path,
            t.authority,
            body.len()
        );
        if let Some(a) = &t.auth {
            req.push_str("Authorization: ");
            req.push_str(a);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        let mut out = req.into_bytes();
        out.extend_from_slice(body);
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| format!("write: {e}"))?;
        // Headers.
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("bad status line: {:?}", head.lines().next()))?;
        let len = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .ok_or("reply without Content-Length")?;
        while self.buf.len() < head_end + len {
            self.fill().await?;
        }
        let reply = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Ok((status, reply))
    }

    async fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 8192];
        let n = self
            .stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by the server".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether `der` is a `TimeStampResp` with PKIStatus granted (0): the outer
/// SEQUENCE's first element is `SEQUENCE { INTEGER 0 ... }`.
fn granted(der: &[u8]) -> bool {
    let skip = match der {
        [0x30, l, ..] if *l < 0x80 => 2,
        [0x30, l, ..] if (0x81..=0x84).contains(l) => 2 + usize::from(l - 0x80),
        _ => return false,
    };
    matches!(der.get(skip..), Some([0x30, _, 0x02, 0x01, 0x00, ..]))
}

/// The request: SHA-256 of a fresh string, a distinct nonce, certReq set.
fn request(tag: &str, client: usize, n: u64, nonce_base: u64) -> Result<Vec<u8>, String> {
    let imprint = Sha256::digest(format!("bench-http-{tag}-{client}-{n}").as_bytes());
    let nonce = nonce_base ^ ((client as u64) << 40) ^ n;
    meter_pki::tsq::request(
        meter_pki::oid::SHA256,
        &imprint,
        Some(nonce | 1 << 62),
        true,
    )
    .map_err(|e| e.to_string())
}

/// Runs the load and prints the `key=value` line (`timestamps_per_sec=`…).
pub async fn run(
    url: &str,
    clients: usize,
    seconds: f64,
    cpu: &[procstat::Watched],
) -> Result<(), BenchError> {
    let target = parse_url(url)?;
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Conn::open(&target).await.map_err(BenchError::Setup)?);
    }
    let cpu_before = procstat::snapshot(cpu);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds.max(0.1));
    let tag = format!("{}-{}", std::process::id(), crate::now_nanos());
    let nonce_base = u64::try_from(crate::now_nanos() & u128::from(u32::MAX)).unwrap_or(0);
    let mut tasks = Vec::with_capacity(clients);
    for (client, mut conn) in conns.into_iter().enumerate() {
        let target = target.clone();
        let tag = tag.clone();
        tasks.push(tokio::spawn(async move {
            let mut stats = ClientStats::default();
            let mut n: u64 = 0;
            while Instant::now() < deadline {
                n += 1;
                let t0 = Instant::now();
                let outcome = match request(&tag, client, n, nonce_base) {
                    Ok(body) => match conn.post(&target, &body).await {
                        Ok((200, reply)) if granted(&reply) => Ok(()),
                        Ok((200, _)) => Err("reply not granted".to_string()),
                        Ok((status, reply)) => Err(format!(
                            "HTTP {status}: {}",
                            String::from_utf8_lossy(&reply).trim()
                        )),
                        Err(e) => {
                            // A broken connection: reopen it for the next request.
                            if let Ok(c) = Conn::open(&target).await {
                                conn = c;
                            }
                            Err(e)
                        }
                    },
                    Err(e) => Err(e),
                };
                stats.record(outcome, t0);
            }
            stats
        }));
    }
    let mut all = Vec::with_capacity(clients);
    for t in tasks {
        all.push(t.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after = procstat::snapshot(cpu);
    let mut extra = String::new();
    if !cpu.is_empty() {
        extra.push(' ');
        extra.push_str(&procstat::cpu_report(cpu, &cpu_before, &cpu_after));
    }
    crate::print_stats("timestamps", all, clients, elapsed, &extra)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn url_with_credentials() {
        let t = parse_url("http://user:secret@127.0.0.1:3180/").unwrap();
        assert_eq!(t.authority, "127.0.0.1:3180");
        assert_eq!(t.path, "/");
        assert_eq!(t.auth.as_deref(), Some("Basic dXNlcjpzZWNyZXQ="));
        let t = parse_url("http://127.0.0.1:80").unwrap();
        assert_eq!((t.path.as_str(), t.auth), ("/", None));
        assert!(parse_url("https://x/").is_err());
    }

    #[test]
    fn granted_status() {
        assert!(granted(&[
            0x30, 0x82, 0x01, 0x00, 0x30, 0x03, 0x02, 0x01, 0x00
        ]));
        assert!(!granted(&[0x30, 0x10, 0x30, 0x03, 0x02, 0x01, 0x02]));
        assert!(!granted(&[0x02]));
    }

    #[test]
    fn requests_parse_and_differ() {
        let a = request("t", 0, 1, 5).unwrap();
        let b = request("t", 1, 1, 5).unwrap();
        assert_ne!(a, b);
        meter_pki::tsq::parse_request(&a, meter_pki::oid::POSTMARK_POLICY).unwrap();
    }
}
