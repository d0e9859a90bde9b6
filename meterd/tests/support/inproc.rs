//! A whole meter in the test process, for fast service tests.
//!
//! [`InProc::up`] builds a [`Meter`] over a [`SoftwareHousing`] (keys,
//! counter and clock in memory) with its ledger in a temporary state
//! directory, serves it with `meterd::bus::serve` on a peer-to-peer D-Bus
//! connection over `UnixStream::pair()` (no bus daemon, no swtpm, no child
//! process), and provisions it end to end through the typed client exactly
//! as `tests/sandbox` does with meterctl, the reference authority being used
//! as a library: `Provision`, certify, `InstallProvisioning`, a signed rate
//! table, a voucher. It comes up in tens of milliseconds, so service tests
//! can each have their own meter.
//!
//! What it does not cover, by design: the bus policy and the daemon's
//! group check (on a peer-to-peer connection there is no sender, and the
//! daemon treats the peer as Admin), the TPM itself, and the binaries. Each
//! service keeps its end-to-end test on the sandbox for those.
//!
//! Reuse it from any integration test with:
//!
//! ```ignore
//! #[path = "support/inproc.rs"]
//! mod inproc;
//! ```
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;

use meter_authority::Authority;
use meter_proto::Meter1Proxy;
use meterd::app::App;
use meterd::config::Config;
use meterd::housing::soft::{SoftwareHousing, SoftwareHousingControl, SoftwareOptions};
use meterd::housing::HousingHandle;
use meterd::meter::Meter;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedValue, Value};

/// The rate table installed by default (version 1, in force since 2020):
/// the prices of `meter-authority/rates.example.toml`.
pub const RATES: &str = r#"
version = 1
effective = "2020-01-01T00:00:00Z"
currency = "USD"
digits = 3

[rates]
postmark = 500
validate = 100
sign = 200
certificate-install = 5000
agent-certificate = 3000
revoke = 1000
credit-line = 2000
payment-certificate = 300
status-report = 0
postage = 0

[[postage]]
class = "letter"
max_grams = 20
amount = 730
"#;

/// Price of a postmark in [`RATES`].
pub const POSTMARK_PRICE: u64 = 500;
/// Price of a validation in [`RATES`].
pub const VALIDATE_PRICE: u64 = 100;

/// How to bring a meter up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Voucher credited after provisioning (0: none).
    pub funds: u64,
    /// Rate table (TOML for `meter-authority rates`); `None`: no table.
    pub rates: Option<String>,
    /// Stop after `Provision` (keys and ledger made, nothing installed).
    pub provision: bool,
    /// Options of the software housing (seed, clock).
    pub housing: SoftwareOptions,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            funds: 100_000,
            rates: Some(RATES.to_owned()),
            provision: true,
            housing: SoftwareOptions::default(),
        }
    }
}

/// A provisioned meter served on a peer-to-peer connection, and its client.
pub struct InProc {
    /// The meter itself (services can also be called directly).
    pub meter: Arc<Meter>,
    /// Typed client on the peer-to-peer connection (no property cache).
    pub client: Meter1Proxy<'static>,
    /// Faults, clock and counters of the software "TPM".
    pub tpm: SoftwareHousingControl,
    /// The reference authority that certified the meter.
    pub authority: Authority,
    /// Meter id (empty when not provisioned).
    pub meter_id: String,
    /// Configuration the meter runs with (state dir under [`Self::dir`]).
    pub config: Config,
    /// Temporary directory (in `/dev/shm` when possible): `state/` (ledger)
    /// and `authority/`.
    pub dir: tempfile::TempDir,
    server: zbus::Connection,
}

impl InProc {
    /// A provisioned meter with the default rates, funded with `funds`.
    pub async fn up(funds: u64) -> InProc {
        InProc::up_with(Options {
            funds,
            ..Options::default()
        })
        .await
    }

    /// A meter brought up as `options` say.
    pub async fn up_with(options: Options) -> InProc {
        let dir = temp_dir();
        let config = Config {
            state_dir: dir.path().join("state"),
            ..Config::default()
        };
        std::fs::create_dir_all(&config.state_dir).expect("state dir");
        let authority = Authority::init(
            &dir.path().join("authority"),
            "In-process Authority",
            meter_authority::now(),
        )
        .expect("authority init");
        let (housing, tpm) = SoftwareHousing::new(options.housing.clone());
        let (meter, server, client) = start(config.clone(), housing).await;
        let mut m = InProc {
            meter,
            client,
            tpm,
            authority,
            meter_id: String::new(),
            config,
            dir,
            server,
        };
        if options.provision {
            m.provision().await;
            if let Some(rates) = &options.rates {
                m.install_rates(rates).await.expect("InstallRates");
            }
            if options.funds > 0 {
                let voucher = m.voucher(options.funds);
                m.client.recharge(&voucher).await.expect("Recharge");
            }
        }
        m
    }

    /// `Provision`, the authority's certification, `InstallProvisioning`.
    pub async fn provision(&mut self) {
        let requests = self.client.provision().await.expect("Provision");
        let identity_csr = bytes(&requests, meter_proto::keys::provision::IDENTITY_CSR);
        let postmark_csr = bytes(&requests, meter_proto::keys::provision::POSTMARK_CSR);
        let certs = self
            .authority
            .certify_meter(&identity_csr, &postmark_csr, meter_authority::now())
            .expect("certify meter");
        let der = |c| meter_pki::cert::to_der(c).expect("certificate DER");
        self.client
            .install_provisioning(
                &der(&certs.identity),
                &der(&certs.postmark),
                &self.root_der(),
            )
            .await
            .expect("InstallProvisioning");
        self.meter_id = certs.meter_id;
    }

    /// Signs `toml` with the authority and installs it.
    pub async fn install_rates(&self, toml: &str) -> Result<(), meter_proto::MeterError> {
        let (_, pem) = self
            .authority
            .rates(toml, meter_authority::now())
            .expect("sign rates");
        self.client.install_rates(pem.as_bytes()).await
    }

    /// A fresh voucher (PEM) for this meter from the authority.
    pub fn voucher(&mut self, amount: u64) -> Vec<u8> {
        let (_, pem) = self
            .authority
            .voucher(&self.meter_id, amount, meter_authority::now())
            .expect("voucher");
        pem.into_bytes()
    }

    /// The authority's root certificate (DER), the meter's trust anchor.
    pub fn root_der(&self) -> Vec<u8> {
        meter_pki::cert::to_der(self.authority.root()).expect("root DER")
    }

    /// (ascending, descending, control total) from the properties,
    /// asserting AR + DR = CT.
    pub async fn registers(&self) -> (u64, u64, u64) {
        let ar = self.client.ascending().await.expect("Ascending");
        let dr = self.client.descending().await.expect("Descending");
        let ct = self.client.control_total().await.expect("ControlTotal");
        assert_eq!(ar + dr, ct, "AR + DR must equal the control total");
        (ar, dr, ct)
    }

    /// A file under the temporary directory holding `data`, opened for
    /// reading: pass `zbus::zvariant::Fd::from(&file)` to `Postmark`.
    pub fn message(&self, name: &str, data: &[u8]) -> std::fs::File {
        let path = self.dir.path().join(name);
        std::fs::write(&path, data).expect("write message");
        std::fs::File::open(&path).expect("open message")
    }

    /// Stops the meter (ledger closed, housing shut down) and starts it
    /// again on the same state directory and the same software "TPM", with
    /// a new peer-to-peer connection: a meterd restart.
    pub async fn restart(self) -> InProc {
        self.restart_with(|_| {}).await
    }

    /// [`Self::restart`], calling `while_stopped` on the software "TPM"
    /// between the stop and the start (e.g. to move its counter or clock).
    pub async fn restart_with(self, while_stopped: impl FnOnce(&SoftwareHousingControl)) -> InProc {
        objects_verify(&self.meter, &self.meter_id).await;
        self.restart_unchecked(while_stopped).await
    }

    /// [`Self::restart_with`] without checking the ledger's signed objects
    /// first (for a meter whose ledger was tampered with).
    pub async fn restart_unchecked(
        self,
        while_stopped: impl FnOnce(&SoftwareHousingControl),
    ) -> InProc {
        let InProc {
            meter,
            client,
            tpm,
            authority,
            meter_id,
            config,
            dir,
            server,
        } = self;
        meter.close().await;
        drop((client, server, meter));
        while_stopped(&tpm);
        let (meter, server, client) = start(config.clone(), tpm.housing()).await;
        InProc {
            meter,
            client,
            tpm,
            authority,
            meter_id,
            config,
            dir,
            server,
        }
    }

    /// Stops the meter: the ledger finishes, the housing shuts down.
    pub async fn down(self) {
        objects_verify(&self.meter, &self.meter_id).await;
        self.meter.close().await;
    }
}

/// Asserts that every signed object the ledger keeps verifies again
/// (`meterd::semantic`): whatever a test did through the services, the
/// meter's own rows must pass the check it runs at every start. Called at
/// every [`InProc::restart`] and [`InProc::down`]; tests that tamper with
/// the ledger stop the meter with `meter.close()` instead.
pub async fn objects_verify(meter: &Meter, meter_id: &str) {
    let Ok(ledger) = meter.require_ledger() else {
        return;
    };
    if meter_id.is_empty() {
        return;
    }
    let s = meterd::semantic::check(&ledger, meter_id, 0)
        .await
        .expect("ledger object check");
    assert!(
        s.finding.is_none(),
        "the meter's own rows do not pass the object check: {:?}",
        s.finding
    );
}

/// A fresh temporary directory, in memory (`/dev/shm`) when there is one:
/// the ledger fsyncs every commit (`synchronous=FULL`), which costs ~3 ms a
/// time on a disk and nothing on tmpfs; durability is the ledger tests'
/// business, not these.
fn temp_dir() -> tempfile::TempDir {
    let mut builder = tempfile::Builder::new();
    builder.prefix("meterd-inproc-");
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = builder.tempdir_in(shm) {
            return dir;
        }
    }
    builder.tempdir().expect("tempdir")
}

/// Starts a meter over `housing` and serves it on a fresh peer-to-peer pair.
async fn start(
    config: Config,
    housing: SoftwareHousing,
) -> (Arc<Meter>, zbus::Connection, Meter1Proxy<'static>) {
    let handle = HousingHandle::spawn(housing).expect("housing thread");
    let app = Arc::new(App::start(config, handle).await.expect("App::start"));
    // meterd runs the rest of the audit in the background after READY
    // (main.rs); here it is awaited, so a test sees its lock at once.
    Arc::clone(&app.meter).audit_history().await;
    let meter = Arc::clone(&app.meter);
    let (server, client) = p2p_pair().await;
    meterd::bus::serve(&server, app).await.expect("serve");
    let proxy = Meter1Proxy::builder(&client)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("proxy");
    (meter, server, proxy)
}

/// Served by the harness so that the server connection's object server is
/// running before `build()` returns (see [`p2p_pair`]).
struct Ready;

#[zbus::interface(name = "org.meterd.Test.Ready")]
impl Ready {
    fn ping(&self) {}
}

/// A server and a client connection talking D-Bus over a socket pair
/// (authenticated with EXTERNAL, the server side holding a fresh GUID), as
/// oo7 runs its portal in tests.
///
/// The server serves a placeholder object from its builder: zbus starts the
/// object server's dispatch task on first use and that task subscribes to
/// incoming calls asynchronously, so with `Connection::object_server()`
/// alone (which `bus::serve` uses) a call sent right after could be lost
/// and never answered. A builder with an interface waits until the task
/// listens; `bus::serve` then only adds to the running object server.
pub async fn p2p_pair() -> (zbus::Connection, zbus::Connection) {
    let (a, b) = tokio::net::UnixStream::pair().expect("socketpair");
    let guid = zbus::Guid::generate();
    let server = zbus::connection::Builder::unix_stream(a)
        .server(guid)
        .expect("server builder")
        .p2p()
        .serve_at("/org/meterd/Test/Ready", Ready)
        .expect("serve placeholder")
        .build();
    let client = zbus::connection::Builder::unix_stream(b).p2p().build();
    let (server, client) = tokio::try_join!(server, client).expect("p2p handshake");
    (server, client)
}

/// The bytes of an `ay` entry of an `a{sv}` reply.
pub fn bytes(dict: &HashMap<String, OwnedValue>, key: &str) -> Vec<u8> {
    fn of(v: &Value<'_>) -> Option<Vec<u8>> {
        match v {
            Value::Array(a) => a
                .inner()
                .iter()
                .map(|e| match e {
                    Value::U8(b) => Some(*b),
                    _ => None,
                })
                .collect(),
            Value::Value(inner) => of(inner),
            _ => None,
        }
    }
    of(dict.get(key).unwrap_or_else(|| panic!("no key {key:?}")))
        .unwrap_or_else(|| panic!("{key:?} is not ay"))
}

/// A string entry of an `a{sv}` reply.
pub fn string(dict: &HashMap<String, OwnedValue>, key: &str) -> String {
    match &**dict.get(key).unwrap_or_else(|| panic!("no key {key:?}")) {
        Value::Str(s) => s.as_str().to_owned(),
        other => panic!("{key:?} is not a string: {other:?}"),
    }
}

/// A boolean entry of an `a{sv}` reply.
pub fn boolean(dict: &HashMap<String, OwnedValue>, key: &str) -> bool {
    match &**dict.get(key).unwrap_or_else(|| panic!("no key {key:?}")) {
        Value::Bool(b) => *b,
        other => panic!("{key:?} is not a boolean: {other:?}"),
    }
}
