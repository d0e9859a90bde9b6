//! `meter-authority serve`: the provider's HTTP/1.1 API (hyper, with
//! `meter-tsa`'s connection loop and body reader: the `meter-http` crate), with its state in a [`Store`] (the authority directory, or
//! PostgreSQL with `--database`).
//!
//! The signing key and the root stay in the authority directory (`--dir`),
//! read when the server starts and again when `root.pem` changes (a root
//! rolled over meanwhile, see [`Service::authority`]). The register of issued certificates and the serial counter
//! are the store's (`store::certify`): `state.json` in the directory, or a
//! table and a sequence in PostgreSQL, read per meter at each report upload
//! (with the directory's register for a meter the command line certified).
//! Every request body is bounded (its
//! `Content-Length` checked first, then the bytes read), headers must arrive
//! within [`HEADER_TIMEOUT`] and the body within [`BODY_TIMEOUT`]. On SIGTERM
//! or SIGINT the listener closes and requests in flight get [`DRAIN`] to
//! finish: a state change is one transaction, so one cut short is rolled
//! back and its retry starts over.
//!
//! Routes (see `routes`, `enrol`, `settle`): `POST /v1/meters/{id}/certify`,
//! `POST /v1/settle`, `POST /v1/meters/{id}/topups`, `POST
//! /v1/meters/{id}/reports`, `GET /v1/meters/{id}/pending`, `POST
//! /v1/meters/{id}/orders/{clear-lock,lock,rates,revoke,account,anchor}`,
//! `POST /v1/lookup`, `GET /v1/crl`, `GET /healthz`.

mod routes;
pub mod shared;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;

use crate::store::{Store, StoreError};
use crate::Authority;

pub use routes::{frame_upload, UPLOAD};

/// The bounds every client gets (shared with `meter-tsa`).
pub use meter_http::{BODY_TIMEOUT, DRAIN, HEADER_TIMEOUT};
/// Largest body of a top-up request (JSON).
pub const MAX_TOPUP_BODY: usize = 4096;

/// The name of the pending-list token key among the store's shared
/// secrets (`pending-token.secret` in the authority directory, a row of
/// `shared_secrets` in PostgreSQL).
pub const PENDING_SECRET: &str = "pending-token";

/// What every connection shares.
pub struct Service {
    /// The authority directory (keys, roots, revocations, credit lines).
    pub dir: PathBuf,
    /// The authority as opened at start: signs vouchers and CRLs.
    pub signer: Authority,
    /// Where the state is kept.
    pub store: Arc<dyn Store>,
    /// Largest report upload (report + attestation + segment), bytes.
    pub max_upload: usize,
    /// SHA-256 of the operator's bearer token: required of top-up purchases
    /// when set; without it only loopback clients may buy.
    pub operator_token: Option<[u8; 32]>,
    /// The key of the tokens that let a meter read its pending objects
    /// (`routes::meter_auth`): the store's shared secret
    /// [`PENDING_SECRET`], so every server on the store accepts them.
    pub pending_key: [u8; 32],
    /// The last CRL signed, and the revocation file state it was signed for.
    /// Also held while a revoke order is recorded in `revocations.json`, so
    /// a CRL signed meanwhile cannot write back a list without it.
    pub(crate) crl: Mutex<Option<routes::CachedCrl>>,
    /// The authority as last opened, and the state of `root.pem` then.
    keys: Mutex<(Option<FileState>, Arc<Authority>)>,
}

/// A file's modification time and length: what tells that it changed.
pub(crate) type FileState = (std::time::SystemTime, u64);

/// The state of the file at `path` (`None` when it cannot be read).
pub(crate) fn file_state(path: &std::path::Path) -> Option<FileState> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Service {
    /// A service for the authority in `dir` keeping its state in `store`,
    /// with the pending-list token key the store shares among its servers
    /// ([`Store::shared_secret`] of [`PENDING_SECRET`], drawn on first use).
    pub async fn new(
        dir: PathBuf,
        store: Arc<dyn Store>,
        max_upload: usize,
        operator_token: Option<[u8; 32]>,
    ) -> std::result::Result<Service, StoreError> {
        let signer = Authority::open_keys(&dir)?;
        let keys = Mutex::new((
            file_state(&dir.join("root.pem")),
            Arc::new(Authority::open_keys(&dir)?),
        ));
        let mut fresh = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut fresh);
        let pending_key = store.shared_secret(PENDING_SECRET, fresh).await?;
        Ok(Service {
            keys,
            dir,
            signer,
            store,
            max_upload,
            operator_token,
            pending_key,
            crl: Mutex::new(None),
        })
    }
}

impl Service {
    /// The authority (its keys and roots) as the directory holds it now:
    /// opened again when `root.pem` changed (a rollover by the command
    /// line), else the one opened before. Opening checks that the key
    /// matches the root, a P-384 multiplication: a tenth of a
    /// certification's cost when it was done per request.
    pub fn authority(&self) -> crate::Result<Arc<Authority>> {
        let now = file_state(&self.dir.join("root.pem"));
        let mut keys = self
            .keys
            .lock()
            .map_err(|_| crate::AuthorityError::Corrupt("authority cache poisoned".into()))?;
        if now.is_none() || keys.0 != now {
            *keys = (now, Arc::new(Authority::open_keys(&self.dir)?));
        }
        Ok(keys.1.clone())
    }
}

/// Binds `addr` (port 0: any free port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves connections until SIGTERM or SIGINT, then drains (see module docs
/// and [`meter_http::serve`]).
pub async fn serve(listener: TcpListener, service: Arc<Service>) -> std::io::Result<()> {
    meter_http::serve(listener, "meter-authority serve", move |peer, req| {
        let service = service.clone();
        async move { routes::handle(&service, peer, req).await }
    })
    .await
}
