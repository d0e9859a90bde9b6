//! The PostgreSQL store's pending objects (see `store::pending`): the
//! meter's book, its purchases, the lock orders of its refused uploads and
//! the `orders` table (migration 0002), read under the meter's row lock.

use super::{lock_meter, u64_of, PgStore};
use crate::store::pending::{Queued, QueuedVoucher};
use crate::store::Result;

impl PgStore {
    pub(super) async fn queued_in(&self, meter_id: &str) -> Result<Queued> {
        crate::check_meter_id(meter_id)?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let (book, _) = lock_meter(&tx, meter_id, self.history.as_deref()).await?;
        let mut q = Queued {
            book,
            ..Queued::default()
        };
        for r in tx
            .query(
                "SELECT sequence, amount, voucher FROM purchases WHERE meter_id = $1 ORDER BY sequence",
                &[&meter_id],
            )
            .await?
        {
            q.vouchers.push(QueuedVoucher {
                sequence: u64_of(r.get(0), "sequence")?,
                amount: u64_of(r.get(1), "amount")?,
                der: r.get(2),
            });
        }
        for r in tx
            .query(
                "SELECT answer FROM uploads WHERE meter_id = $1 AND NOT accepted ORDER BY created_at",
                &[&meter_id],
            )
            .await?
        {
            q.lock_orders.push(r.get(0));
        }
        for r in tx
            .query(
                "SELECT order_id, der FROM orders WHERE meter_id = $1 ORDER BY order_id",
                &[&meter_id],
            )
            .await?
        {
            q.orders.push((r.get(0), r.get(1)));
        }
        // Nothing changed: the meter's row (made if absent) need not stay.
        tx.rollback().await?;
        Ok(q)
    }

    pub(super) async fn queue_order_in(
        &self,
        meter_id: &str,
        id: &str,
        der: Vec<u8>,
    ) -> Result<Vec<u8>> {
        crate::check_meter_id(meter_id)?;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // The meter's row, locked (and made if absent: the order references it).
        lock_meter(&tx, meter_id, self.history.as_deref()).await?;
        if let Some(r) = tx
            .query_opt(
                "SELECT der FROM orders WHERE meter_id = $1 AND order_id = $2",
                &[&meter_id, &id],
            )
            .await?
        {
            tx.rollback().await?;
            return Ok(r.get(0));
        }
        tx.execute(
            "INSERT INTO orders (meter_id, order_id, der) VALUES ($1, $2, $3)",
            &[&meter_id, &id, &der],
        )
        .await?;
        tx.commit().await?;
        Ok(der)
    }
}
