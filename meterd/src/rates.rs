//! The table of service rates (257, claim 16): install and look up prices.
//!
//! Tables are authority-signed CMS messages, versioned and with an effective
//! date. Every installed table stays in the ledger; the one in force is the
//! highest version whose effective date has come, so a table can be sent
//! ahead of a tariff change. A table not newer than the newest installed is
//! refused (`Stale`).

use crate::clock;
use crate::digest::input_digest;
use crate::error::{Result, ServiceError};
use crate::ledger::{EntryKind, Key};
use crate::meter::Meter;
use crate::sale::{self, Spec};
use crate::tariff::open_table;

/// `InstallRates`: verifies the table and records it (key `m/rates/v<N>`);
/// returns its version. A table not newer than the newest installed is
/// refused (`Stale`).
pub async fn install(meter: &Meter, signed: &[u8]) -> Result<u32> {
    let identity = meter.require_identity()?;
    let table = open_table(signed, &identity.anchors, clock::now())?;
    let book = meter.rates();
    if table.version <= book.latest_version() {
        return Err(ServiceError::Stale(format!(
            "rate table version {} is not newer than the installed version {}; ask the authority for a newer table",
            table.version,
            book.latest_version()
        )));
    }
    let version = table.version;
    let spec = Spec::record(
        EntryKind::Rates,
        Key::meter("rates", format!("v{version}")),
        input_digest("rates", &[signed]),
        format!("v{version}"),
    );
    sale::record_once(meter, spec, signed.to_vec(), || {
        ServiceError::Stale(format!("rate table version {version} is already installed"))
    })
    .await?;
    meter.set_rates(book.with(table))?;
    tracing::info!(version, "rate table installed");
    Ok(version)
}
