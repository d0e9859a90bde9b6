//! meter-tsa: an RFC 3161 time-stamp endpoint over HTTP, a D-Bus client of
//! meterd, so that code signers, PDF signers and every other time-stamp
//! client buy postmarks at a TSA URL while charging and access stay in one
//! place (meterd's `TimeStamp`).
//!
//! Paths follow sigstore's timestamp-authority and uts-server: POST
//! `/api/v1/timestamp` or `/` with `application/timestamp-query` →
//! `application/timestamp-reply` (exactly: pyHanko refuses anything else);
//! GET `/api/v1/timestamp/certchain` or `/ca.pem` → the PEM chain.
//!
//! Nobody spends the meter's funds unless the administrator allowed it:
//! a client presents Basic or bearer credentials checked against a file of
//! salted hashes (see [`clients`]), or, only with `--anonymous-loopback`, a
//! loopback client without credentials is served as `anonymous`. A request
//! without them gets 401 before meterd is asked, so nothing is charged.
//!
//! The request id given to meterd is `<client>.<SHA-256 of the DER>`: a
//! client that retries the same request (a lost reply) gets the stored
//! token, charged once.
//!
//! Listens on loopback by default, or on the socket systemd passes
//! (`LISTEN_FDS`, see `systemd/meter-tsa.socket`). SIGTERM stops it
//! gracefully: no new connections, requests in flight answered (at most
//! 10 s), exit 0.
//!
//! While it runs it owns `org.meterd.TimeStamp1` on the bus (see
//! [`status`]), so `meterctl status` shows the URL.

mod clients;
mod serve;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
#[path = "../../packaging/gen_docs.rs"]
mod gen_docs;

use clients::Clients;

/// RFC 3161 time-stamp endpoint in front of meterd.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on when systemd passes no socket.
    #[arg(long, env = "METER_TSA_LISTEN", default_value = "127.0.0.1:3180")]
    listen: SocketAddr,
    /// File of allowed clients (`name:sha256:SALT_HEX:HASH_HEX` lines).
    #[arg(
        long,
        env = "METER_TSA_CLIENTS",
        default_value = "/etc/meterd/tsa-clients"
    )]
    clients: PathBuf,
    /// Serve loopback clients that present no credentials, as `anonymous`.
    #[arg(long, env = "METER_TSA_ANONYMOUS_LOOPBACK")]
    anonymous_loopback: bool,
    /// PEM chain served at the certchain paths (postmark certificate, then
    /// the authority root).
    #[arg(
        long,
        env = "METER_TSA_CHAIN",
        default_value = "/etc/meterd/tsa-chain.pem"
    )]
    chain: PathBuf,
    /// D-Bus address of meterd's bus (default: the system bus).
    #[arg(long, env = "DBUS_SYSTEM_BUS_ADDRESS")]
    bus: Option<String>,
    /// Write the port listened on to this file once listening (tests).
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// Largest request body accepted (bytes); larger: 413.
    #[arg(long, default_value_t = 16 * 1024)]
    max_body: usize,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints the client-file line for NAME with the secret read from stdin.
    HashSecret {
        /// Client name ([A-Za-z0-9._-], at most 48).
        name: String,
    },
}

/// What stops the endpoint.
#[derive(Debug, thiserror::Error)]
enum TsaError {
    #[error(transparent)]
    Clients(#[from] clients::ClientsError),
    #[error("cannot read the certificate chain {0}: {1}")]
    Chain(String, std::io::Error),
    #[error("cannot connect to meterd's bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("cannot listen: {0}")]
    Listen(std::io::Error),
    #[error("invalid client name {0:?}: [A-Za-z0-9._-], at most 48")]
    Name(String),
    #[error("cannot read the secret from stdin: {0}")]
    Stdin(std::io::Error),
}

fn main() -> std::process::ExitCode {
    if let Some(code) = gen_docs::hook(<Args as clap::CommandFactory>::command, "8", false) {
        return code;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("METER_TSA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meter-tsa: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meter-tsa: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), TsaError> {
    if let Some(Command::HashSecret { name }) = &args.command {
        if !clients::valid_name(name) {
            return Err(TsaError::Name(name.clone()));
        }
        let mut secret = String::new();
        std::io::stdin()
            .read_line(&mut secret)
            .map_err(TsaError::Stdin)?;
        println!(
            "{}",
            clients::line(name, secret.trim_end_matches(['\r', '\n']))
        );
        return Ok(());
    }
    let clients = if args.clients.exists() || !args.anonymous_loopback {
        Clients::load(&args.clients)?
    } else {
        Clients::default()
    };
    if clients.is_empty() && !args.anonymous_loopback {
        tracing::warn!(
            "no client in the client file and no --anonymous-loopback: every request gets 401"
        );
    }
    let chain = std::fs::read(&args.chain)
        .map_err(|e| TsaError::Chain(args.chain.display().to_string(), e))?;
    let builder = match &args.bus {
        Some(a) => zbus::connection::Builder::address(a.as_str())?,
        None => zbus::connection::Builder::system()?,
    };
    let conn = builder.build().await?;
    let meter = meter_proto::proxy::Meter1Proxy::new(&conn).await?;
    let listener = serve::listener(args.listen).map_err(TsaError::Listen)?;
    let local = listener.local_addr().map_err(TsaError::Listen)?;
    // On the bus before the port file: whoever waits for that file (the
    // sandbox) then sees the endpoint in `meterctl status` at once.
    status::publish(&conn, local, args.anonymous_loopback).await;
    if let Some(f) = &args.port_file {
        std::fs::write(f, format!("{}\n", local.port())).map_err(TsaError::Listen)?;
    }
    tracing::info!(
        %local,
        clients = clients.len(),
        anonymous_loopback = args.anonymous_loopback,
        "meter-tsa listening"
    );
    let state = Arc::new(serve::State {
        meter,
        clients,
        anonymous_loopback: args.anonymous_loopback,
        chain,
        max_body: args.max_body,
    });
    serve::serve(listener, state)
        .await
        .map_err(TsaError::Listen)
}
