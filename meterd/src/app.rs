//! The application: the meter and the state each feature owns, composed.
//!
//! Each feature owns its state (user certificates, credit lines, the dues
//! of revocation, the report sequence, the agent CA) and rebuilds it from
//! the ledger at start and after provisioning ([`App::load`]); the
//! [`Meter`] below owns only what every sale needs. The bus sits on top of
//! this and hands each member to one service with the state it needs, so
//! no service reaches for another's state through a global.

use std::sync::Arc;

use crate::agent::AgentBook;
use crate::certs::CertStore;
use crate::config::Config;
use crate::credit::CreditBook;
use crate::error::Result;
use crate::housing::HousingHandle;
use crate::meter::Meter;
use crate::report::Reports;
use crate::revoke::Dues;
use crate::{account, provision, revoke};

/// The meter and every feature's state.
pub struct App {
    /// Doors, identity, rates, regime.
    pub meter: Arc<Meter>,
    /// User certificates (Fig. 5).
    pub certs: CertStore,
    /// Lines of credit (Figs. 7–9).
    pub credit: CreditBook,
    /// Revocation fees due (Fig. 6).
    pub dues: Dues,
    /// Status report sequence.
    pub reports: Reports,
    /// The agent CA (Fig. 3A).
    pub agent: AgentBook,
}

impl App {
    /// Opens the meter over `housing` and loads every feature from its ledger.
    pub async fn start(config: Config, housing: HousingHandle) -> Result<App> {
        let meter = Arc::new(Meter::start(config, housing).await?);
        let app = App::over(meter);
        app.load().await?;
        Ok(app)
    }

    /// An application over an open meter, features not loaded yet.
    pub fn over(meter: Arc<Meter>) -> App {
        App {
            meter,
            certs: CertStore::default(),
            credit: CreditBook::default(),
            dues: Dues::default(),
            reports: Reports::default(),
            agent: AgentBook::default(),
        }
    }

    /// Rebuilds every feature's state from the ledger (no-op before the
    /// ledger exists). Order: certificates before revocations (which mark
    /// them), the account before anything sells.
    pub async fn load(&self) -> Result<()> {
        let Some(ledger) = self.meter.ledger() else {
            return Ok(());
        };
        self.certs.load(&ledger).await?;
        if self.meter.identity().is_some() {
            revoke::load(&self.meter, &self.certs, &self.dues).await?;
            let held = self.meter.regime().hold().await;
            account::reload(&self.meter, &held).await?;
        }
        self.agent.load(&ledger).await
    }

    /// `InstallProvisioning`: installs the authority's certificates, then
    /// loads the features the new identity makes available.
    pub async fn install_provisioning(
        &self,
        meter_cert: &[u8],
        postmark_cert: &[u8],
        root: &[u8],
    ) -> Result<()> {
        provision::install(&self.meter, meter_cert, postmark_cert, root).await?;
        self.load().await
    }

    /// `InstallCredential`: activates the credential, then as `install_provisioning`.
    pub async fn install_credential(&self, credential: &[u8], root: &[u8]) -> Result<()> {
        let (meter_cert, postmark_cert) =
            crate::attest::open_credential(&self.meter, credential).await?;
        provision::install(&self.meter, &meter_cert, &postmark_cert, root).await?;
        self.load().await
    }
}
