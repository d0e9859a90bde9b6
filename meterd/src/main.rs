//! The meterd daemon: opens the housing and the ledger, audits, serves
//! `org.meterd.Meter1`, and tells systemd it is ready only after the audit.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
#[path = "../../packaging/gen_docs.rs"]
mod gen_docs;
use futures_util::StreamExt;
use tracing_subscriber::prelude::*;

use meterd::app::App;
use meterd::config::Config;
use meterd::housing::tpm::TpmHousing;
use meterd::housing::HousingHandle;

/// Postage and certificate meter daemon.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Configuration file (default /etc/meterd/meterd.toml; env METERD_CONFIG).
    #[arg(long, env = "METERD_CONFIG")]
    config: Option<PathBuf>,
    /// State directory (key blobs, ledger); overrides the file and the environment.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// TPM TCTI, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321.
    #[arg(long)]
    tcti: Option<String>,
    /// `system` (honours DBUS_SYSTEM_BUS_ADDRESS) or a D-Bus address.
    #[arg(long)]
    bus: Option<String>,
}

fn main() -> ExitCode {
    if let Some(code) = gen_docs::hook(<Args as clap::CommandFactory>::command, "8", false) {
        return code;
    }
    // The TSS C library logs to stderr unless told otherwise; our own log
    // carries the decoded errors.
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+NONE");
    }
    let args = Args::parse();
    init_logging();
    // Async workers: one per core (tokio's default) unless METERD_WORKERS
    // says otherwise. What they run is the bus's share of a sale; the
    // ledger, the TPM, file reads and audits have threads of their own.
    // Measured (issue 14, alternating pairs, same binary): one worker
    // spares a lone sale the wake-up of a second (one client: context
    // switches a postmark 8.8 -> 7.7, meterd CPU 0.668 -> 0.600 ms, p99
    // 4.17 -> 3.80 ms) but cost the HTTP time-stamps of 32 clients through
    // meter-tsa ~10 % (lower in 8 of 9 pairs), so the default stays.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("METERD_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "meterd stopped");
            ExitCode::FAILURE
        }
    }
}

/// Journal when systemd gave us one, stderr otherwise.
fn init_logging() {
    // tss-esapi logs each probe of an absent NV index or handle (made at
    // every provisioning) at ERROR; meterd reports real TPM failures itself,
    // with their cause. `METERD_LOG=info,tss_esapi=debug` brings them back.
    // zbus opens an INFO span per method call whose fields are the whole
    // message and header, formatted with Debug (issue 14: a visible share of
    // a sale's CPU); unless METERD_LOG names zbus, its spans stay off.
    let mut spec = std::env::var("METERD_LOG").unwrap_or_else(|_| "info".to_owned());
    if !spec.contains("tss_esapi") {
        spec.push_str(",tss_esapi=off");
    }
    if !spec.contains("zbus") {
        spec.push_str(",zbus=warn");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tss_esapi=off,zbus=warn"));
    let journald = std::env::var_os("JOURNAL_STREAM")
        .is_some()
        .then(|| tracing_journald::layer().ok())
        .flatten();
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(layer) => registry.with(layer).init(),
        None => registry
            .with(
                // Colour only for a person at a terminal, never in a log file.
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(dir) = args.state_dir {
        config.state_dir = dir;
    }
    if let Some(tcti) = args.tcti {
        config.tcti = tcti;
    }
    if let Some(bus) = args.bus {
        config.bus = bus;
    }
    // Before anything reads the time (see clock.rs for when it applies).
    meterd::clock::init_from_env(&config.tcti);
    create_private_dir(&config.state_dir)?;
    tracing::info!(tcti = %config.tcti, state_dir = %config.state_dir.display(), "starting");
    let housing = TpmHousing::open_with(&config.tpm_options())?;
    let handle = HousingHandle::spawn(housing)?;
    let bus = config.bus.clone();
    let app = Arc::new(App::start(config, handle).await?);
    let meter = Arc::clone(&app.meter);
    tracing::info!(state = meter.state_name(), meter_id = ?meter.meter_id(), "meter open");

    // Clock check and inspection deadline: once now, before the first
    // request can arrive, then every check interval.
    meterd::watchdog::start(Arc::clone(&meter)).await;
    let conn = connect(&bus).await?;
    meterd::bus::serve(&conn, Arc::clone(&app)).await?;
    conn.request_name(meter_proto::BUS_NAME).await?;
    tokio::spawn(meterd::bus::watch_and_emit(
        conn.clone(),
        Arc::clone(&meter),
    ));
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tracing::info!(name = meter_proto::BUS_NAME, "ready");
    // The start verified the rows after the last signed checkpoint; the
    // rest of the history is verified now, in the background.
    tokio::spawn(Arc::clone(&meter).audit_history());

    wait_for_stop(&conn).await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    meter.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn connect(bus: &str) -> zbus::Result<zbus::Connection> {
    if bus == "system" {
        zbus::Connection::system().await
    } else {
        zbus::connection::Builder::address(bus)?.build().await
    }
}

/// Returns on SIGTERM, SIGINT, loss of the bus name, or bus disconnection.
async fn wait_for_stop(conn: &zbus::Connection) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return;
        }
    };
    let lost = async {
        let proxy = match zbus::fdo::DBusProxy::new(conn).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the bus");
                return std::future::pending::<()>().await;
            }
        };
        let mut stream = match proxy.receive_name_lost().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the bus name");
                return std::future::pending::<()>().await;
            }
        };
        // The stream ends when the connection closes.
        while let Some(signal) = stream.next().await {
            if signal
                .args()
                .is_ok_and(|a| a.name.as_str() == meter_proto::BUS_NAME)
            {
                break;
            }
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
        _ = lost => tracing::warn!("bus connection or name lost"),
    }
}

fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
