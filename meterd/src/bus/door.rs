//! The door every member call passes: who is calling (and may they), a
//! place in the right lane, the caller's request key, the message read
//! within bounds, and the one mapping of the service's answer to the wire.
//!
//! Lanes (`callers`): sales (postmark, validate, sign, postage, pay) and
//! everything else (status, reports, admin calls) have separate capacity,
//! and each uid a cap per lane, so a flood of sales — or of calls stuck
//! reading a message — never queues Status, another user or an
//! administrator behind it.

use std::sync::{Arc, OnceLock};

use zbus::message::Header;
use zbus::Connection;

use meter_proto::MeterError;

use super::auth::{Authorizer, Caller, Role};
use super::callers::{CallGuard, Callers, Lane};
use super::errors;
use super::fd_arg::MessageFd;
use crate::config::Config;
use crate::error::ServiceError;
use crate::intake::{self, ReadLimits};
use crate::ledger::{Digest, Key};
use crate::outlet::Outlet;
use meter_proto::Blob;

/// The door: authorization and admission.
pub struct Door {
    auth: Arc<Authorizer>,
    callers: Callers,
    limits: ReadLimits,
}

/// One admitted call.
pub struct Call<'a> {
    member: &'static str,
    caller: Caller,
    guard: CallGuard,
    limits: &'a ReadLimits,
    /// Currency code and digits in force, for amounts in refusals.
    currency: (String, u8),
    /// The caller's request id, once [`Call::key`] accepted it: a refusal
    /// after that point is logged with it (`REQUEST_ID=` in the journal),
    /// like the sale line, so an operator finds both by the caller's id.
    request_id: OnceLock<String>,
}

impl Door {
    /// A door with the configured groups and capacities.
    pub fn new(config: &Config) -> Door {
        Door {
            auth: Arc::new(Authorizer::new(&config.user_group, &config.admin_group)),
            callers: Callers::new(config.max_in_flight, config.max_in_flight_per_caller),
            limits: ReadLimits::from_config(config),
        }
    }

    /// Admits a call to `member`, which needs `needed`, in `lane`;
    /// `currency` (code, digits) shows the amounts of its refusals.
    pub async fn enter(
        &self,
        conn: &Connection,
        header: &Header<'_>,
        member: &'static str,
        needed: Role,
        lane: Lane,
        currency: (String, u8),
    ) -> Result<Call<'_>, MeterError> {
        let caller = self.require(conn, header, member, needed).await?;
        let unique = (!caller.unique.is_empty()).then_some(caller.unique.as_str());
        let guard = self.callers.enter(unique, caller.uid, lane).await?;
        Ok(Call {
            member,
            caller,
            guard,
            limits: &self.limits,
            currency,
            request_id: OnceLock::new(),
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

    /// Watches the bus for callers that leave (their reads are cancelled);
    /// on a peer-to-peer connection reads end at their deadline instead.
    pub async fn watch(&self, conn: &Connection) {
        if let Err(e) = self.callers.watch(conn).await {
            tracing::debug!(error = %e, "not watching callers (peer-to-peer?): reads end at their deadline");
        }
    }
}

impl Call<'_> {
    /// The caller's request id as a ledger key scoped to its uid; the id
    /// is recorded for the call's refusal line. An id the key refuses (not
    /// printable, too long) is not recorded, so nothing unchecked reaches
    /// the log.
    pub fn key(&self, request_id: &str) -> Result<Key, MeterError> {
        let key = Key::caller(self.caller.uid, request_id)
            .map_err(|e| self.refuse(ServiceError::from(e)))?;
        let _ = self.request_id.set(request_id.to_owned());
        Ok(key)
    }

    /// SHA-384 of the message behind `fd`: read before anything is
    /// reserved, within the configured size and time, ended if the caller
    /// leaves the bus (see `intake`).
    pub async fn hash(&self, fd: MessageFd) -> Result<Digest, MeterError> {
        let fd = fd.into_fd()?;
        intake::hash_message(fd, self.limits, self.guard.cancel())
            .await
            .map_err(|e| self.refuse(e))
    }

    /// The bytes behind `fd` (an envelope), read like [`Self::hash`]'s message.
    pub async fn read(&self, fd: MessageFd) -> Result<Vec<u8>, MeterError> {
        let fd = fd.into_fd()?;
        intake::read_message(fd, self.limits, self.guard.cancel())
            .await
            .map(|c| c.bytes)
            .map_err(|e| self.refuse(e))
    }

    /// A descriptor the caller handed over for the meter to write a stream
    /// to (see `outlet`): no progress for the configured message read time
    /// is `TimedOut`, and it ends if the caller leaves the bus.
    pub fn outlet(&self, fd: MessageFd) -> Result<Outlet, MeterError> {
        let fd = fd.into_fd()?;
        Ok(Outlet::new(
            fd,
            self.limits.deadline,
            self.guard.cancel().clone(),
        ))
    }

    /// The service's answer on the wire; a refusal is logged with the caller.
    pub fn done<T>(&self, r: Result<T, ServiceError>) -> Result<T, MeterError> {
        r.map_err(|e| self.refuse(e))
    }

    /// [`Self::done`] for a byte-array answer, written in one copy.
    pub fn blob(&self, r: Result<Vec<u8>, ServiceError>) -> Result<Blob, MeterError> {
        self.done(r).map(Blob)
    }

    fn refuse(&self, e: ServiceError) -> MeterError {
        let detail = e.message_in(self.currency.1, &self.currency.0);
        let named = errors::to_dbus(self.member, e, &self.currency);
        tracing::warn!(
            member = self.member,
            error_name = named.kind(),
            uid = self.caller.uid,
            pid = ?self.caller.pid,
            request_id = self.request_id.get().map_or("-", String::as_str),
            error = %detail,
            "refused"
        );
        named
    }
}

/// Largest signed object (voucher, table, order, certificate) accepted as bytes.
const MAX_OBJECT: usize = meter_pki::MAX_OBJECT;

/// Refuses an object argument larger than [`MAX_OBJECT`] before anything
/// parses it.
pub fn bounded(what: &str, bytes: &[u8]) -> Result<(), MeterError> {
    if bytes.len() > MAX_OBJECT {
        return Err(MeterError::InvalidInput(format!(
            "{what} of {} bytes exceeds the {MAX_OBJECT}-byte limit",
            bytes.len()
        )));
    }
    Ok(())
}
