//! The ledger's reads: lookups by key and the queries of the services, the audit and the
//! report, each on the separate read-only connection (`read`), so that none waits behind
//! a group commit that is sealing in the TPM. A child of `handle` because it reads the
//! handle's private fields.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::super::schema;
use super::super::writer::Request;
use super::Ledger;
use crate::ledger::{EntryKind, LedgerError, Result, Stored};
use crate::money::Amount;

impl Ledger {
    /// The row stored under `key`, if any (for a meter key, also its
    /// schema-1 form: check the row's kind, see [`crate::ledger::Key::legacy`]).
    ///
    /// Served by a separate read-only connection, so a lookup does not wait
    /// behind a group commit that is busy sealing in the TPM. A row committed
    /// after the lookup is still caught: the commit refuses a second row
    /// with the same key.
    pub async fn lookup(&self, key: &crate::ledger::Key) -> Result<Option<Stored>> {
        let key = key.clone();
        self.read(move |c| crate::ledger::rows::lookup_in(c, &key))
            .await
    }

    /// Runs a read-only query on the reader connection (opened on first use).
    pub(super) async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<R> + Send + 'static,
    {
        let reader = Arc::clone(&self.reader);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = reader
                .lock()
                .map_err(|_| LedgerError::Storage("ledger reader lock poisoned".into()))?;
            let conn = match guard.take() {
                Some(c) => guard.insert(c),
                None => guard.insert(schema::open_reader(&path)?),
            };
            f(conn)
        })
        .await
        .map_err(|_| LedgerError::Stopped)?
    }

    /// Every row charged to `service` as (seq, note, product), in seq order,
    /// read on the reader connection (a commit in flight is not waited for).
    pub async fn service_products(
        &self,
        service: crate::service::Service,
    ) -> Result<Vec<(u64, String, Vec<u8>)>> {
        self.read(move |c| crate::ledger::query::service_products_in(c, service))
            .await
    }

    /// Pieces, amounts and credits over rows `after < seq <= upto`.
    pub async fn usage_since(&self, after: u64, upto: u64) -> Result<crate::ledger::Usage> {
        self.read(move |c| crate::ledger::query::usage_in(c, after, upto))
            .await
    }

    /// (seq, time in Unix ms, product) of the last row of `service` at or before row `upto`.
    pub async fn last_of_service(
        &self,
        service: crate::service::Service,
        upto: u64,
    ) -> Result<Option<(u64, i64, Vec<u8>)>> {
        self.read(move |c| crate::ledger::query::last_of_service_in(c, service, upto))
            .await
    }

    /// (seq, time in Unix ms, product) of the row that made `service`'s
    /// count reach `count` (status report number `count`, say).
    pub async fn nth_of_service(
        &self,
        service: crate::service::Service,
        count: u64,
    ) -> Result<Option<(u64, i64, Vec<u8>)>> {
        self.read(move |c| crate::ledger::query::nth_of_service_in(c, service, count))
            .await
    }

    /// (time in Unix ms, ascending register) of row `seq` (`None`: no such row).
    pub async fn time_and_ascending_at(&self, seq: u64) -> Result<Option<(i64, Amount)>> {
        self.read(move |c| crate::ledger::query::time_and_ascending_in(c, seq))
            .await
    }

    /// Rows `after < seq <= upto` that `filter` names or that move money
    /// outside a sale, at most `limit`, in seq order, on the reader
    /// connection (see [`crate::ledger::RowFilter`]); page with the last seq as the
    /// next `after`.
    pub async fn rows(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
        filter: crate::ledger::RowFilter,
    ) -> Result<Vec<crate::ledger::FilteredRow>> {
        self.read(move |c| crate::ledger::query::rows_in(c, after, upto, limit, &filter))
            .await
    }

    /// Time (Unix ms, the writer's clock) of the last row.
    pub async fn last_time(&self) -> Result<Option<i64>> {
        self.read(crate::ledger::query::last_time_in).await
    }

    /// (seq, product) of the last row with note `note` among rows `after < seq <= upto`.
    pub async fn last_with_note(
        &self,
        note: &str,
        after: u64,
        upto: u64,
    ) -> Result<Option<(u64, Vec<u8>)>> {
        let note = note.to_owned();
        self.read(move |c| crate::ledger::query::last_with_note_in(c, &note, after, upto))
            .await
    }

    /// Streams rows `after < seq <= upto` as a report segment
    /// ([`meter_pki::segment`]) to `sink`, chunk by chunk, from a read-only
    /// connection of its own (see `ledger/export.rs`); `sink` returns false
    /// to stop, and the export then returns `None`.
    pub async fn export_segment(
        &self,
        meter_id: &str,
        after: u64,
        upto: u64,
        mut sink: impl FnMut(Vec<u8>) -> bool + Send + 'static,
    ) -> Result<Option<crate::ledger::Exported>> {
        if upto > self.state().rows {
            return Err(LedgerError::Invalid(format!(
                "segment up to row {upto}, the ledger has {} rows",
                self.state().rows
            )));
        }
        let path = self.path.clone();
        let meter_id = meter_id.to_owned();
        tokio::task::spawn_blocking(move || {
            crate::ledger::export::export(&path, &meter_id, after, upto, &mut sink)
        })
        .await
        .map_err(|_| LedgerError::Stopped)?
    }

    /// Every row of `kind` as (seq, note, product), in seq order.
    pub async fn products(&self, kind: EntryKind) -> Result<Vec<(u64, String, Vec<u8>)>> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Products(kind, reply))?;
        rx.await.map_err(|_| LedgerError::Stopped)?
    }

    /// Rows of `kind` whose note is exactly `note`, as (seq, note, product), in seq order.
    pub async fn products_noted(
        &self,
        kind: EntryKind,
        note: &str,
    ) -> Result<Vec<(u64, String, Vec<u8>)>> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::ProductsNoted(kind, note.to_owned(), reply))?;
        rx.await.map_err(|_| LedgerError::Stopped)?
    }
}
