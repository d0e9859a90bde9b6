//! The door every member call passes: who is calling (and may they), a
//! place in the right lane, the caller's request key, the message read
//! within bounds, and the one mapping of the service's answer to the wire.
//!
//! Lanes: sales (postmark, validate, sign, postage, pay) and everything
//! else (status, reports, admin calls) have separate capacity, so a flood
//! of sales — or of calls stuck reading a message — never queues Status or
//! an administrator behind it.

use std::sync::Arc;

use tokio::sync::{Semaphore, SemaphorePermit};
use zbus::message::Header;
use zbus::zvariant::OwnedFd;
use zbus::Connection;

use meter_proto::MeterError;

use super::auth::{Authorizer, Caller, Role};
use super::errors;
use crate::config::Config;
use crate::error::ServiceError;
use crate::ledger::{Digest, Key};

/// Which capacity a member draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Chargeable sales from users.
    Sale,
    /// Reads, reports and administration.
    Control,
}

/// The door: authorization and admission.
pub struct Door {
    auth: Arc<Authorizer>,
    sales: Semaphore,
    control: Semaphore,
    max_message: u64,
}

/// One admitted call.
pub struct Call<'a> {
    member: &'static str,
    caller: Caller,
    _slot: SemaphorePermit<'a>,
    max_message: u64,
}

impl Door {
    /// A door with the configured groups and capacities.
    pub fn new(config: &Config) -> Door {
        Door {
            auth: Arc::new(Authorizer::new(&config.user_group, &config.admin_group)),
            sales: Semaphore::new(config.max_in_flight.max(1)),
            control: Semaphore::new(config.max_in_flight.max(1)),
            max_message: config.max_message_bytes,
        }
    }

    /// Admits a call to `member`, which needs `needed`, in `lane`.
    pub async fn enter(
        &self,
        conn: &Connection,
        header: &Header<'_>,
        member: &'static str,
        needed: Role,
        lane: Lane,
    ) -> Result<Call<'_>, MeterError> {
        let caller = self.require(conn, header, member, needed).await?;
        let pool = match lane {
            Lane::Sale => &self.sales,
            Lane::Control => &self.control,
        };
        let slot = pool
            .acquire()
            .await
            .map_err(|_| MeterError::Busy("the meter is shutting down".into()))?;
        Ok(Call {
            member,
            caller,
            _slot: slot,
            max_message: self.max_message,
        })
    }

    /// The caller, if it may call `member` (which needs `needed`).
    pub async fn require(
        &self,
        conn: &Connection,
        header: &Header<'_>,
        member: &str,
        needed: Role,
    ) -> Result<Caller, MeterError> {
        self.auth.admit(conn, header, member, needed).await
    }

    /// For property getters: `None` header is the daemon's own read (for
    /// change signals), always allowed.
    pub async fn may_read(
        &self,
        conn: &Connection,
        header: Option<&Header<'_>>,
        property: &str,
    ) -> zbus::fdo::Result<()> {
        self.auth.read_property(conn, header, property).await
    }

    /// The authorizer (shared with the Properties gate, see `props`).
    pub fn auth(&self) -> Arc<Authorizer> {
        Arc::clone(&self.auth)
    }
}

impl Call<'_> {
    /// The caller's request id as a ledger key scoped to its uid.
    pub fn key(&self, request_id: &str) -> Result<Key, MeterError> {
        Key::caller(self.caller.uid, request_id).map_err(|e| self.refuse(ServiceError::from(e)))
    }

    /// SHA-384 of the message behind `fd`, within the configured size.
    pub async fn hash(&self, fd: OwnedFd) -> Result<Digest, MeterError> {
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(fd));
        crate::digest::sha384_file(file, self.max_message)
            .await
            .map_err(|e| self.refuse(e))
    }

    /// The service's answer on the wire; a refusal is logged with the caller.
    pub fn done<T>(&self, r: Result<T, ServiceError>) -> Result<T, MeterError> {
        r.map_err(|e| self.refuse(e))
    }

    fn refuse(&self, e: ServiceError) -> MeterError {
        tracing::warn!(
            member = self.member,
            uid = self.caller.uid,
            pid = ?self.caller.pid,
            error = %e,
            "refused"
        );
        errors::to_dbus(self.member, e)
    }
}
