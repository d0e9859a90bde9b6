//! The file store's pending objects (see `store::pending`): purchases from
//! `meters/<id>/purchases/`, refused uploads' lock orders from
//! `meters/<id>/uploads/`, and queued orders in
//! `meters/<id>/orders/<sha256 of the order id>.json`.

use std::path::Path;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{create_dir, unhex, FileStore, StoredAnswer, StoredPurchase};
use crate::book::Shelf;
use crate::state::{read_json, write_json_atomic};
use crate::store::pending::{Queued, QueuedVoucher};
use crate::store::{Result, StoreError};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredOrder {
    order_id: String,
    der_hex: String,
}

/// Every `*.json` of `dir` (none when it does not exist), by file name.
fn all_json<T: DeserializeOwned>(dir: &Path) -> Result<Vec<T>> {
    let mut paths: Vec<_> = match std::fs::read_dir(dir) {
        Ok(d) => d
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect(),
        Err(_) => return Ok(Vec::new()),
    };
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        if let Some(t) = read_json::<T>(&p)? {
            out.push(t);
        }
    }
    Ok(out)
}

impl FileStore {
    pub(super) fn queued_now(&self, meter_id: &str) -> Result<Queued> {
        let _one = self.lock()?;
        let dir = self.meter_dir(meter_id)?;
        let mut q = Queued {
            book: Shelf::of(&self.dir, meter_id)?.read()?,
            ..Queued::default()
        };
        for p in all_json::<StoredPurchase>(&dir.join("purchases"))? {
            q.vouchers.push(QueuedVoucher {
                sequence: p.sequence,
                amount: p.amount,
                der: unhex(&p.voucher_hex)?,
            });
        }
        for a in all_json::<StoredAnswer>(&dir.join("uploads"))? {
            if !a.accepted {
                q.lock_orders.push(unhex(&a.answer_hex)?);
            }
        }
        for o in all_json::<StoredOrder>(&dir.join("orders"))? {
            q.orders.push((o.order_id, unhex(&o.der_hex)?));
        }
        Ok(q)
    }

    pub(super) fn queue_order_now(
        &self,
        meter_id: &str,
        id: &str,
        der: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let _one = self.lock()?;
        let dir = self.meter_dir(meter_id)?.join("orders");
        let path = dir.join(format!("{}.json", hex::encode(Sha256::digest(id))));
        if let Some(o) = read_json::<StoredOrder>(&path)? {
            if o.order_id != id {
                return Err(StoreError::Corrupt(format!(
                    "{}: another order",
                    path.display()
                )));
            }
            return unhex(&o.der_hex);
        }
        create_dir(&dir)?;
        let stored = StoredOrder {
            order_id: id.to_owned(),
            der_hex: hex::encode(&der),
        };
        write_json_atomic(&path, &stored, "order")?;
        Ok(der)
    }
}
