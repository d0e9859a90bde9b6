//! `meterbench tpm-proxy`: a delaying TCP proxy between a TPM client
//! (meterd, rawsign, tpm2-tools) and swtpm, so that the meter can be
//! measured at the pace of a discrete TPM.
//!
//! swtpm's TCP interface (the `swtpm` TCTI of tpm2-tss) is two ports: the
//! server port carries bare TPM commands and responses (each starts with
//! the 10-byte header tag u16, size u32, code u32, all big-endian, so one
//! frame is exactly `size` bytes), the control port (server port + 1) the
//! swtpm control protocol. The proxy listens on a port pair of its own; it
//! passes the control port through byte for byte, and on the server port
//! reads one whole command, forwards it, reads the whole response and
//! returns it once the command has taken as long as the emulated chip would
//! take ([`Profile`]): swtpm's own time counts, only the rest is slept.
//! Frames are never altered, so with the `zero` profile the proxy is one
//! more TCP hop and nothing else (the bench checks that with rawsign).
//!
//! SIGUSR1 prints the counters so far (`proxy commands=… sign=… …`) on
//! stdout, SIGTERM prints them and exits: `bench/run` takes a snapshot
//! before and after each load and reports the difference.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

use crate::profile::{self, Class, Profile};

/// Largest frame accepted (swtpm's own limit is far below).
const MAX_FRAME: usize = 1 << 20;

/// Where the proxy listens and what it forwards to.
#[derive(Debug, Clone)]
pub struct ProxyOpts {
    /// Server port to listen on (127.0.0.1); the control port is the next.
    pub listen_port: u16,
    /// swtpm's server port on 127.0.0.1; its control port is the next.
    pub upstream_port: u16,
    /// Latencies to emulate.
    pub profile: Profile,
    /// Written (empty) once both ports listen.
    pub ready_file: Option<PathBuf>,
}

#[derive(Default, Clone, Copy)]
struct CodeStats {
    count: u64,
    upstream: Duration,
    held: Duration,
}

#[derive(Default)]
struct Stats {
    connections: u64,
    commands: u64,
    bytes_in: u64,
    bytes_out: u64,
    by_code: BTreeMap<u32, CodeStats>,
    by_class: BTreeMap<&'static str, u64>,
}

impl Stats {
    fn line(&self) -> String {
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        let upstream: Duration = self.by_code.values().map(|c| c.upstream).sum();
        let held: Duration = self.by_code.values().map(|c| c.held).sum();
        let mut out = format!(
            "proxy connections={} commands={} bytes_in={} bytes_out={} upstream_ms={} held_ms={}",
            self.connections,
            self.commands,
            self.bytes_in,
            self.bytes_out,
            ms(upstream),
            ms(held)
        );
        for class in ["sign_p256", "sign_p384", "nv_write", "keygen", "other"] {
            let n = self.by_class.get(class).copied().unwrap_or(0);
            out.push_str(&format!(" class_{class}={n}"));
        }
        let mut unnamed = 0;
        // Every named code always printed, so that snapshots diff key by key.
        let mut named: BTreeMap<&'static str, u64> = BTreeMap::new();
        for code in NAMED_CODES {
            if let Some(n) = profile::name(code) {
                named.insert(n, 0);
            }
        }
        for (code, s) in &self.by_code {
            match profile::name(*code) {
                Some(n) => *named.entry(n).or_default() += s.count,
                None => unnamed += s.count,
            }
        }
        for (n, count) in named {
            out.push_str(&format!(" {n}={count}"));
        }
        out.push_str(&format!(" unnamed={unnamed}"));
        out
    }
}

/// The command codes [`profile::name`] knows, for the stats line.
const NAMED_CODES: [u32; 21] = [
    profile::cc::SIGN,
    profile::cc::NV_INCREMENT,
    profile::cc::NV_WRITE,
    profile::cc::NV_READ,
    profile::cc::NV_DEFINE_SPACE,
    profile::cc::EVICT_CONTROL,
    profile::cc::SHUTDOWN,
    profile::cc::CREATE,
    profile::cc::CREATE_PRIMARY,
    profile::cc::CREATE_LOADED,
    profile::cc::LOAD,
    profile::cc::CONTEXT_LOAD,
    profile::cc::CONTEXT_SAVE,
    profile::cc::FLUSH_CONTEXT,
    profile::cc::READ_CLOCK,
    profile::cc::GET_RANDOM,
    profile::cc::START_AUTH_SESSION,
    profile::cc::CERTIFY,
    profile::cc::GET_TIME,
    profile::cc::QUOTE,
    profile::cc::NV_CERTIFY,
];

fn class_name(c: Class) -> &'static str {
    match c {
        Class::SignP256 => "sign_p256",
        Class::SignP384 => "sign_p384",
        Class::NvWrite => "nv_write",
        Class::KeyGen => "keygen",
        Class::Other => "other",
    }
}

type Shared = Arc<Mutex<Stats>>;

fn print_stats(stats: &Shared) {
    if let Ok(s) = stats.lock() {
        println!("{}", s.line());
    }
}

/// Runs the proxy until SIGTERM or SIGINT.
pub async fn run(opts: ProxyOpts) -> io::Result<()> {
    let server = TcpListener::bind(("127.0.0.1", opts.listen_port)).await?;
    let control_port = opts
        .listen_port
        .checked_add(1)
        .ok_or_else(|| io::Error::other("listen port 65535 has no control port"))?;
    let control = TcpListener::bind(("127.0.0.1", control_port)).await?;
    let upstream_control = opts
        .upstream_port
        .checked_add(1)
        .ok_or_else(|| io::Error::other("upstream port 65535 has no control port"))?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    eprintln!(
        "meterbench: tpm-proxy 127.0.0.1:{} -> 127.0.0.1:{} ({})",
        opts.listen_port,
        opts.upstream_port,
        opts.profile.describe()
    );
    if let Some(path) = &opts.ready_file {
        std::fs::write(path, b"")?;
    }
    let stats: Shared = Arc::default();
    let profile = Arc::new(opts.profile);
    loop {
        tokio::select! {
            accepted = server.accept() => {
                let (client, _) = accepted?;
                let (stats, profile) = (Arc::clone(&stats), Arc::clone(&profile));
                let upstream = opts.upstream_port;
                tokio::spawn(async move {
                    if let Err(e) = serve_tpm(client, upstream, &profile, &stats).await {
                        eprintln!("meterbench: tpm-proxy: connection ended: {e}");
                    }
                });
            }
            accepted = control.accept() => {
                let (mut client, _) = accepted?;
                tokio::spawn(async move {
                    match TcpStream::connect(("127.0.0.1", upstream_control)).await {
                        Ok(mut up) => {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                        }
                        Err(e) => eprintln!("meterbench: tpm-proxy: control port: {e}"),
                    }
                });
            }
            _ = usr1.recv() => print_stats(&stats),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    print_stats(&stats);
    Ok(())
}

/// Reads one TPM frame; `None` at a clean end of stream (before a header).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut head = [0u8; 10];
    let mut got = 0;
    while got < head.len() {
        let n = r.read(&mut head[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += n;
    }
    let size = u32::from_be_bytes([head[2], head[3], head[4], head[5]]);
    let size = usize::try_from(size).map_err(|_| io::Error::other("frame size"))?;
    if !(head.len()..=MAX_FRAME).contains(&size) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame size {size} out of range (not a TPM command stream?)"),
        ));
    }
    let mut frame = Vec::with_capacity(size);
    frame.extend_from_slice(&head);
    frame.resize(size, 0);
    r.read_exact(&mut frame[head.len()..]).await?;
    Ok(Some(frame))
}

async fn serve_tpm(
    mut client: TcpStream,
    upstream_port: u16,
    profile: &Profile,
    stats: &Shared,
) -> io::Result<()> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream_port)).await?;
    client.set_nodelay(true)?;
    up.set_nodelay(true)?;
    if let Ok(mut s) = stats.lock() {
        s.connections += 1;
    }
    while let Some(cmd) = read_frame(&mut client).await? {
        let code = profile::command_code(&cmd).unwrap_or(0);
        let class = profile::classify(&cmd);
        let t0 = Instant::now();
        up.write_all(&cmd).await?;
        let rsp = read_frame(&mut up)
            .await?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let took = t0.elapsed();
        let hold = profile.latency(class).saturating_sub(took);
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        // Counted before the reply, so that a snapshot taken once the
        // client has its answer includes the command.
        if let Ok(mut s) = stats.lock() {
            s.commands += 1;
            s.bytes_in += cmd.len() as u64;
            s.bytes_out += rsp.len() as u64;
            let c = s.by_code.entry(code).or_default();
            c.count += 1;
            c.upstream += took;
            c.held += hold;
            *s.by_class.entry(class_name(class)).or_default() += 1;
        }
        client.write_all(&rsp).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_split_on_the_size_field() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&[0x80, 0x01, 0, 0, 0, 12, 0, 0, 1, 0x7B, 0, 8]);
        bytes.extend_from_slice(&[0x80, 0x01, 0, 0, 0, 10, 0, 0, 1, 0x81]);
        let mut r = &bytes[..];
        assert_eq!(read_frame(&mut r).await.unwrap().unwrap().len(), 12);
        assert_eq!(read_frame(&mut r).await.unwrap().unwrap().len(), 10);
        assert!(read_frame(&mut r).await.unwrap().is_none());
        // A cut header or body is an error, not a clean end.
        let mut cut = &bytes[..5];
        assert!(read_frame(&mut cut).await.is_err());
        let mut cut = &bytes[..11];
        assert!(read_frame(&mut cut).await.is_err());
        // A size below the header's: not a TPM stream.
        let bad = [0x80, 0x01, 0, 0, 0, 3, 0, 0, 1, 0x7B];
        let mut r = &bad[..];
        assert!(read_frame(&mut r).await.is_err());
    }

    /// A fake swtpm: answers every command with a 10-byte success response.
    async fn fake_swtpm() -> u16 {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    while let Ok(Some(_cmd)) = read_frame(&mut conn).await {
                        let rsp = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0];
                        if conn.write_all(&rsp).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn holds_each_command_for_its_class_and_counts_it() {
        let upstream = fake_swtpm().await;
        let mut profile = profile::by_name("zero").unwrap();
        profile.nv_write = Duration::from_millis(200);
        let stats: Shared = Arc::default();
        let front = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let front_port = front.local_addr().unwrap().port();
        let s2 = Arc::clone(&stats);
        tokio::spawn(async move {
            let (conn, _) = front.accept().await.unwrap();
            serve_tpm(conn, upstream, &profile, &s2).await.unwrap();
        });
        let mut client = TcpStream::connect(("127.0.0.1", front_port)).await.unwrap();
        let mut cmd = vec![0x80, 0x01, 0, 0, 0, 10];
        cmd.extend_from_slice(&profile::cc::NV_INCREMENT.to_be_bytes());
        let t0 = Instant::now();
        client.write_all(&cmd).await.unwrap();
        let rsp = read_frame(&mut client).await.unwrap().unwrap();
        let nv_took = t0.elapsed();
        assert_eq!(rsp, [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0]);
        assert!(nv_took >= Duration::from_millis(200), "{nv_took:?}");
        // A command of another class is not held.
        let mut other = vec![0x80, 0x01, 0, 0, 0, 10];
        other.extend_from_slice(&profile::cc::READ_CLOCK.to_be_bytes());
        client.write_all(&other).await.unwrap();
        read_frame(&mut client).await.unwrap().unwrap();
        drop(client);
        // What the proxy held each command for, as it booked it (not a stopwatch: a
        // loaded machine may be slow, the booked hold is exact).
        {
            let s = stats.lock().unwrap();
            let held = |code: u32| s.by_code.get(&code).map(|c| c.held);
            assert_eq!(held(profile::cc::READ_CLOCK), Some(Duration::ZERO));
            assert!(held(profile::cc::NV_INCREMENT).is_some_and(|h| !h.is_zero()));
        }
        let line = stats.lock().unwrap().line();
        assert!(line.contains(" commands=2 "), "{line}");
        assert!(line.contains(" nv_increment=1 "), "{line}");
        assert!(line.contains(" class_nv_write=1 "), "{line}");
        assert!(line.contains(" read_clock=1 "), "{line}");
    }

    #[test]
    fn stats_line_names_every_code() {
        let mut s = Stats::default();
        s.by_code.insert(
            profile::cc::SIGN,
            CodeStats {
                count: 3,
                ..Default::default()
            },
        );
        s.by_code.insert(
            0x999,
            CodeStats {
                count: 2,
                ..Default::default()
            },
        );
        let line = s.line();
        assert!(line.contains(" sign=3"), "{line}");
        assert!(line.contains(" nv_increment=0"), "{line}");
        assert!(line.contains(" unnamed=2"), "{line}");
    }
}
