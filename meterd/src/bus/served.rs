//! The served object and its door: who may call, on which lane, and how it is put on
//! the bus. Apart from `mod.rs` because zbus wants every member of the interface in
//! one `impl` block there; what they share lives here.

use std::sync::Arc;

use zbus::message::Header;
use zbus::{fdo, Connection};

use meter_proto::MeterError;

use super::auth::Role;
use super::callers::Lane;
use super::door::{Call, Door};
use super::props;
use crate::app::App;

pub(super) type Admitted<'a> = Result<Call<'a>, MeterError>;

/// The served object.
pub struct MeterIface {
    pub(super) app: Arc<App>,
    pub(super) door: Door,
    /// The connection it is served on (asked who is calling).
    pub(super) conn: Connection,
}

impl MeterIface {
    /// Interface over `app` served on `conn`, with the configured groups
    /// and capacities.
    pub fn new(app: Arc<App>, conn: Connection) -> MeterIface {
        let door = Door::new(app.meter.config());
        MeterIface { app, door, conn }
    }

    /// An administrator's call (control lane).
    pub(super) async fn admin(&self, h: &Header<'_>, member: &'static str) -> Admitted<'_> {
        self.enter(h, member, Role::Admin, Lane::Control).await
    }

    /// A user's read, report or audit (control lane).
    pub(super) async fn user(&self, h: &Header<'_>, member: &'static str) -> Admitted<'_> {
        self.enter(h, member, Role::User, Lane::Control).await
    }

    /// A user's sale (sale lane).
    pub(super) async fn seller(&self, h: &Header<'_>, member: &'static str) -> Admitted<'_> {
        self.enter(h, member, Role::User, Lane::Sale).await
    }

    pub(super) async fn enter(
        &self,
        h: &Header<'_>,
        m: &'static str,
        r: Role,
        l: Lane,
    ) -> Admitted<'_> {
        let currency = self.app.meter.rates().currency(crate::clock::now());
        self.door.enter(&self.conn, h, m, r, l, currency).await
    }

    /// A property read: the caller must be a user (`None` header: the
    /// daemon's own read for change signals).
    pub(super) async fn read<T>(
        &self,
        header: Option<Header<'_>>,
        property: &str,
        f: impl FnOnce(&App) -> T,
    ) -> fdo::Result<T> {
        self.door
            .may_read(&self.conn, header.as_ref(), property)
            .await?;
        Ok(f(&self.app))
    }
}

pub(super) fn registers(app: &App) -> crate::ledger::Registers {
    app.meter
        .ledger_state()
        .map(|s| s.registers)
        .unwrap_or_default()
}

/// Why the meter is locked, empty otherwise (property `LockReason`).
pub(super) fn lock_reason(a: &App) -> String {
    a.meter
        .ledger_state()
        .and_then(|s| s.lock)
        .map(|l| l.reason)
        .unwrap_or_default()
}

/// Digits of the minor unit (property `CurrencyDigits`).
pub(super) fn currency_digits(a: &App) -> u8 {
    a.meter.rates().currency(crate::clock::now()).1
}

/// Rate table version in force, 0 for none (property `RatesVersion`).
pub(super) fn rates_version(a: &App) -> u32 {
    a.meter
        .rates()
        .current(crate::clock::now())
        .map(|t| t.version)
        .unwrap_or(0)
}

/// Serves the interface on `conn` (bus or peer-to-peer) at the object path.
/// Every member and every property checks its caller, and
/// `Properties.GetAll` is refused as a whole (`props`).
pub async fn serve(conn: &Connection, app: Arc<App>) -> zbus::Result<()> {
    let iface = MeterIface::new(app, conn.clone());
    let auth = iface.door.auth();
    iface.door.watch(conn).await;
    conn.object_server()
        .at(meter_proto::OBJECT_PATH, iface)
        .await?;
    props::install(conn, auth).await
}
