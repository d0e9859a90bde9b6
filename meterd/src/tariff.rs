//! The table of service rates (257, claim 16) as the meter holds it: every
//! installed table, the one in force at a given time, and prices.
//!
//! The one in force is the highest version whose effective date has come,
//! so a table can be sent ahead of a tariff change. Kept apart from the
//! `InstallRates` service (`rates`) because the sale pipeline prices from
//! it and must not import the services.

use meter_pki::cert::Certificate;
use meter_pki::payload::RateTable;

use crate::error::{Result, ServiceError};
use crate::money::Amount;
use crate::service::Service;

/// All installed tables, oldest version first.
#[derive(Debug, Default)]
pub struct RateBook {
    tables: Vec<RateTable>,
}

impl RateBook {
    /// Rebuilds the book from the ledger's Rates rows (re-verified against
    /// the anchors; a row that no longer verifies is skipped and logged).
    pub fn from_products(
        products: &[(u64, String, Vec<u8>)],
        anchors: &[Certificate],
        now: i64,
    ) -> Result<RateBook> {
        let mut tables = Vec::new();
        for (seq, _, signed) in products {
            match open_table(signed, anchors, now) {
                Ok(t) => tables.push(t),
                Err(e) => tracing::warn!(seq, error = %e, "stored rate table no longer verifies"),
            }
        }
        tables.sort_by_key(|t| t.version);
        Ok(RateBook { tables })
    }

    /// Highest version installed (0 when none).
    pub fn latest_version(&self) -> u32 {
        self.tables.last().map(|t| t.version).unwrap_or(0)
    }

    /// The table in force at `now`.
    pub fn current(&self, now: i64) -> Option<&RateTable> {
        self.tables.iter().rev().find(|t| t.effective <= now)
    }

    /// Price of one piece of `service` at `now`.
    pub fn price(&self, service: Service, now: i64) -> Result<Amount> {
        let table = self.current(now).ok_or_else(|| {
            ServiceError::NotProvisioned(
                "no rate table in force: install one signed by the authority (meterctl rates install)".into(),
            )
        })?;
        table
            .rates
            .get(service.name())
            .map(|a| Amount(*a))
            .ok_or(ServiceError::Unpriced {
                service,
                version: table.version,
            })
    }

    /// Currency code and digits in force (defaults: "", 3).
    pub fn currency(&self, now: i64) -> (String, u8) {
        self.current(now)
            .map(|t| (t.currency.clone(), t.digits))
            .unwrap_or_else(|| (String::new(), 3))
    }

    /// This book with `table` added.
    pub fn with(&self, table: RateTable) -> RateBook {
        let mut tables = self.tables.clone();
        tables.push(table);
        tables.sort_by_key(|t| t.version);
        RateBook { tables }
    }
}

/// Verifies a signed table against the anchors and checks its content.
pub fn open_table(signed: &[u8], anchors: &[Certificate], now: i64) -> Result<RateTable> {
    let verified = meter_pki::cms::verify(signed, anchors, Some(&meter_pki::oid::CT_RATES), now)?;
    let table: RateTable = meter_pki::payload::decode(&verified.content)?;
    for name in table.rates.keys() {
        if Service::from_name(name).is_none() {
            return Err(ServiceError::InvalidInput(format!(
                "rate table names unknown service {name:?}"
            )));
        }
    }
    if table.version == 0 {
        return Err(ServiceError::InvalidInput(
            "rate table version must be at least 1".into(),
        ));
    }
    Ok(table)
}
