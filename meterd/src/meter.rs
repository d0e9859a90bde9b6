//! The meter: the two doors and the state every service shares, and its
//! start-up.
//!
//! Holds the housing handle and the ledger, what is derived from the ledger
//! at start that every sale needs (identity, trust anchors, rate tables),
//! and the [`Regime`] (locks, account, inspection). The ledger is absent
//! until `Provision` creates the keys, because its seals are made with the
//! identity key. State that belongs to one feature (user certificates,
//! credit lines, revocation dues, ...) is owned by that feature and
//! composed in [`crate::app::App`]; this module imports no service, so the
//! services can all import it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use meter_pki::cert::Certificate;

use crate::clock;
use crate::config::Config;
use crate::error::{Result, ServiceError};
use crate::housing::HousingHandle;
use crate::identity::{self, Identity};
use crate::ledger::{EntryKind, HousingSealer, Ledger, LedgerState, Verdict};
use crate::regime::Regime;
use crate::tariff::RateBook;
use crate::timecheck::ClockGuard;

/// How often, at most, sales alone wake the ledger's subscriber (the D-Bus
/// signals task, whose registers' PropertiesChanged has the same cadence):
/// locks, threshold crossings and rows other than sales wake it at once
/// (`ledger::Notice`).
pub const STATE_NOTICE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The meter's two key names live beside the housing's other key names (a
/// door, below every feature); re-exported here for the services.
pub use crate::housing::{IDENTITY_KEY, POSTMARK_KEY};

#[derive(Default)]
struct Inner {
    meter_id: Option<String>,
    ledger: Option<Ledger>,
    identity: Option<Arc<Identity>>,
    rates: Arc<RateBook>,
}

/// Shared state of the daemon; services take `&Meter`.
pub struct Meter {
    config: Config,
    housing: HousingHandle,
    inner: RwLock<Inner>,
    postmark_serial: AtomicU64,
    ledger_ready: tokio::sync::watch::Sender<Option<Ledger>>,
    provisioning: tokio::sync::Mutex<()>,
    chain_cache: Arc<meter_pki::tsp::ChainCache>,
    regime: Regime,
}

impl Meter {
    /// Builds the meter over an already spawned housing and, if the meter
    /// has keys, opens and audits its ledger (locking it when the audit
    /// finds rollback or tamper) and loads identity and rates from it.
    pub async fn start(config: Config, housing: HousingHandle) -> Result<Meter> {
        let (ledger_ready, _) = tokio::sync::watch::channel(None);
        let regime = Regime::new(ClockGuard::new(&config.state_dir));
        let meter = Meter {
            config,
            housing,
            inner: RwLock::new(Inner::default()),
            postmark_serial: AtomicU64::new(serial_base()),
            ledger_ready,
            provisioning: tokio::sync::Mutex::new(()),
            chain_cache: Arc::default(),
            regime,
        };
        let has_identity = meter.housing.call(|h| h.has_key(IDENTITY_KEY)).await?;
        if has_identity {
            meter.open_ledger().await?;
        }
        Ok(meter)
    }

    /// Serializes provisioning steps (key creation must not race).
    pub(crate) fn provisioning(&self) -> &tokio::sync::Mutex<()> {
        &self.provisioning
    }

    /// Locks, account and inspection state.
    pub fn regime(&self) -> &Regime {
        &self.regime
    }

    /// Signer certificates Validate has already chained to the anchors.
    pub fn chain_cache(&self) -> Arc<meter_pki::tsp::ChainCache> {
        Arc::clone(&self.chain_cache)
    }

    /// Configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The housing door.
    pub fn housing(&self) -> &HousingHandle {
        &self.housing
    }

    /// CMS SignedData of `content` (type `content_type`) signed in the TPM
    /// by the meter's identity key, its certificate embedded: the one way
    /// every message the meter itself authors (requests, reports,
    /// confirmations, payment certificates) is signed.
    pub async fn sign_as_meter(
        &self,
        identity: &Identity,
        content_type: meter_pki::ObjectIdentifier,
        content: &[u8],
        signing_time: i64,
    ) -> Result<Vec<u8>> {
        let prepared = meter_pki::cms::prepare(&meter_pki::cms::SignOptions {
            content_type,
            content,
            signer: &identity.meter_cert,
            extra_certs: &[],
            signing_time: Some(signing_time),
            ess_cert_id_v2: true,
        })?;
        let raw = self
            .housing
            .sign_digest(IDENTITY_KEY, prepared.digest())
            .await?;
        Ok(prepared.finish(&raw)?)
    }

    /// Opens (creating if missing) the ledger sealed by the identity key,
    /// audits it, locks on damage, and loads identity and rates from it.
    pub(crate) async fn open_ledger(&self) -> Result<()> {
        let public = self.housing.call(|h| h.public_key(IDENTITY_KEY)).await?;
        let meter_id = identity::meter_id_from_key(&public);
        let index = self.config.nv_index;
        self.housing.call(move |h| h.counter_define(index)).await?;
        let path = self.config.ledger_path();
        let sealer = HousingSealer::new(
            self.housing.clone(),
            IDENTITY_KEY,
            index,
            public,
            std::sync::Arc::new(crate::product_seal::PkiSealReader),
        );
        let id = meter_id.clone();
        let epoch_rows = self.config.epoch_rows;
        let notice = crate::ledger::Notice {
            below: self.config.low_funds_threshold,
            every: STATE_NOTICE_EVERY,
        };
        let (ledger, report) = tokio::task::spawn_blocking(move || {
            let opts = crate::ledger::Options {
                create: true,
                from_checkpoint: true,
                epoch_rows,
                notice,
            };
            Ledger::open_with(&path, Box::new(sealer), &id, opts)
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("ledger open task: {e}")))??;
        // The rows' signed objects, verified again (issue 12): at start
        // those after the signed checkpoint; the rest in `audit_history`.
        let report = crate::semantic::confirm_start(&ledger, &meter_id, report).await?;
        tracing::info!(
            meter_id = %meter_id,
            rows = report.rows,
            batches = report.batches,
            millis = report.millis,
            verdict = ?report.verdict,
            "ledger audited"
        );
        {
            let mut inner = self.write_inner()?;
            inner.meter_id = Some(meter_id.clone());
            inner.ledger = Some(ledger.clone());
        }
        self.ledger_ready.send_replace(Some(ledger.clone()));
        // Provisioning creates the ledger before the postmark key, so a
        // postmark key with a ledger this open had to create (no file, or a
        // file without rows: its WAL deleted, the file cut) means the
        // history was lost, not that provisioning was interrupted.
        let lost = report.created && self.housing.call(|h| h.has_key(POSTMARK_KEY)).await?;
        let lock = match &report.verdict {
            Verdict::Clean | Verdict::RolledForward if lost => {
                tracing::error!("key blobs exist but the ledger had no history (file missing, WAL deleted or file cut): locking (tamper)");
                Some(meter_proto::lock_reason::TAMPER)
            }
            Verdict::Clean | Verdict::RolledForward => None,
            Verdict::Rollback { ledger_nv, tpm_nv } => {
                tracing::error!(ledger_nv, tpm_nv, "ledger rollback detected");
                Some(meter_proto::lock_reason::ROLLBACK)
            }
            Verdict::Tamper {
                detail,
                first_bad_seq,
            } => {
                tracing::error!(%detail, ?first_bad_seq, "ledger tamper detected");
                Some(meter_proto::lock_reason::TAMPER)
            }
        };
        if let Some(reason) = lock {
            self.regime.engage(&ledger, reason).await?;
        }
        self.load_from_ledger(&ledger).await
    }

    /// The full ledger audit after a start from the signed checkpoint
    /// (design 12-14 §3), run once the meter is READY: the chain from
    /// genesis, then every row's signed objects (`semantic`, issue 12; the
    /// start checked only those after the checkpoint). Damage found locks
    /// the meter at once (`Locked` signal), as the start would have. Ends
    /// with the log line "background audit done" (tests wait for it).
    pub async fn audit_history(self: Arc<Self>) {
        let Some(ledger) = self.ledger() else {
            return;
        };
        let meter_id = self.meter_id().unwrap_or_default();
        let checked = match ledger.verify_history().await {
            Ok(r) => {
                if matches!(r.verdict, Verdict::Clean | Verdict::RolledForward) {
                    tracing::info!(rows = r.rows, millis = r.millis, "ledger history verified");
                }
                crate::semantic::confirm(&ledger, &meter_id, 0, r).await
            }
            Err(e) => Err(e.into()),
        };
        match checked {
            Ok(r) => {
                if let Verdict::Tamper {
                    detail,
                    first_bad_seq,
                } = &r.verdict
                {
                    tracing::error!(%detail, ?first_bad_seq, "ledger tamper found by the background audit");
                    if let Err(e) = self
                        .regime
                        .engage(&ledger, meter_proto::lock_reason::TAMPER)
                        .await
                    {
                        tracing::error!(error = %e, "cannot lock after the background audit");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "background ledger audit failed"),
        }
        tracing::info!("background audit done");
    }

    /// Re-derives identity and rate tables from the ledger's rows.
    pub(crate) async fn load_from_ledger(&self, ledger: &Ledger) -> Result<()> {
        let bundles = ledger.products(EntryKind::Provision).await?;
        if let Some((_, _, bundle)) = bundles.last() {
            let meter_id = self.meter_id().unwrap_or_default();
            let identity = Identity::from_bundle(&meter_id, bundle)?;
            self.write_inner()?.identity = Some(Arc::new(identity));
        }
        let anchors = self.anchors();
        let tables = ledger.products(EntryKind::Rates).await?;
        let book = RateBook::from_products(&tables, &anchors, clock::now())?;
        self.write_inner()?.rates = Arc::new(book);
        Ok(())
    }

    fn write_inner(&self) -> Result<std::sync::RwLockWriteGuard<'_, Inner>> {
        self.inner
            .write()
            .map_err(|_| ServiceError::Internal("meter state lock poisoned".into()))
    }

    fn read_inner(&self) -> Option<std::sync::RwLockReadGuard<'_, Inner>> {
        self.inner.read().ok()
    }

    /// Meter id, once keys exist.
    pub fn meter_id(&self) -> Option<String> {
        self.read_inner()?.meter_id.clone()
    }

    /// The ledger, once keys exist.
    pub fn ledger(&self) -> Option<Ledger> {
        self.read_inner()?.ledger.clone()
    }

    /// The ledger or a `NotProvisioned` error.
    pub fn require_ledger(&self) -> Result<Ledger> {
        self.ledger().ok_or_else(not_provisioned)
    }

    /// Provisioned identity, if any.
    pub fn identity(&self) -> Option<Arc<Identity>> {
        self.read_inner()?.identity.clone()
    }

    /// Identity or `NotProvisioned`.
    pub fn require_identity(&self) -> Result<Arc<Identity>> {
        self.identity().ok_or_else(not_provisioned)
    }

    /// Identity and ledger, or `NotProvisioned`: every operation that
    /// records something needs both. A ledger that lost its history (and so
    /// the identity rows) is locked `tamper`: that lock is the answer then.
    pub fn provisioned(&self) -> Result<(Arc<Identity>, Ledger)> {
        let ledger = self.require_ledger()?;
        match self.identity() {
            Some(identity) => Ok((identity, ledger)),
            None => Err(match ledger.state().lock {
                Some(lock) => ServiceError::Locked {
                    reason: lock.reason,
                },
                None => not_provisioned(),
            }),
        }
    }

    /// Trust anchors (empty before provisioning).
    pub fn anchors(&self) -> Vec<Certificate> {
        self.identity()
            .map(|i| i.anchors.clone())
            .unwrap_or_default()
    }

    /// Rate tables installed.
    pub fn rates(&self) -> Arc<RateBook> {
        self.read_inner()
            .map(|i| Arc::clone(&i.rates))
            .unwrap_or_default()
    }

    pub(crate) fn set_identity(&self, identity: Identity) -> Result<()> {
        self.write_inner()?.identity = Some(Arc::new(identity));
        Ok(())
    }

    pub(crate) fn set_rates(&self, book: RateBook) -> Result<()> {
        self.write_inner()?.rates = Arc::new(book);
        Ok(())
    }

    /// Ledger state, if the ledger is open.
    pub fn ledger_state(&self) -> Option<LedgerState> {
        self.ledger().map(|l| l.state())
    }

    /// Fires when the ledger opens (at start or at provisioning).
    pub fn ledger_opened(&self) -> tokio::sync::watch::Receiver<Option<Ledger>> {
        self.ledger_ready.subscribe()
    }

    /// `unprovisioned`, `ready` or `locked`.
    pub fn state_name(&self) -> &'static str {
        match (self.identity(), self.ledger_state()) {
            (_, Some(s)) if s.lock.is_some() => meter_proto::state::LOCKED,
            (Some(_), Some(_)) => meter_proto::state::READY,
            _ => meter_proto::state::UNPROVISIONED,
        }
    }

    /// Why the meter may not sell now, if it may not: a lock in force, or
    /// a billing period closed (the watchdog records the Lock row for the
    /// latter at its next tick; sales stop at once).
    pub fn refusal(&self, ledger: &Ledger, now: i64) -> Option<ServiceError> {
        if let Some(lock) = ledger.state().lock {
            return Some(ServiceError::Locked {
                reason: lock.reason,
            });
        }
        if self.regime.account().is_some_and(|a| a.closed(now)) {
            return Some(ServiceError::Locked {
                reason: meter_proto::lock_reason::PERIOD_CLOSED.into(),
            });
        }
        None
    }

    /// Next postmark serial: unique across restarts because the base is the
    /// start time in milliseconds shifted past any count one run can reach.
    pub fn next_postmark_serial(&self) -> u64 {
        self.postmark_serial.fetch_add(1, Ordering::Relaxed)
    }

    /// Stops the doors: the ledger finishes the batch in hand, then the
    /// housing flushes its objects and sends TPM2_Shutdown(STATE) (a power
    /// cut without it costs the TPM's dictionary-attack counter and, on some
    /// TPMs, NV writes), before the process exits.
    pub async fn close(&self) {
        if let Some(ledger) = self.ledger() {
            if let Err(e) = ledger.close().await {
                tracing::warn!(error = %e, "ledger close");
            }
        }
        // The housing thread runs what is queued, then flushes and sends
        // TPM2_Shutdown; wait for it (systemd's stop timeout is longer).
        if !self.housing.close_and_wait(CLOSE_WAIT).await {
            tracing::warn!(
                seconds = CLOSE_WAIT.as_secs(),
                "the housing thread did not end in time; TPM objects may stay loaded"
            );
        }
    }
}

/// How long a stop waits for the housing thread's last jobs and TPM2_Shutdown.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn not_provisioned() -> ServiceError {
    ServiceError::NotProvisioned(
        "the meter is not provisioned: run meterctl provision, have the authority certify the requests, then meterctl provision --install".into(),
    )
}

fn serial_base() -> u64 {
    let ms = u64::try_from(clock::now_millis()).unwrap_or(0);
    ms.saturating_mul(1 << 20)
}
