//! What a meter must still apply: the vouchers bought for it and the orders
//! queued for it, less what its last acknowledged report shows applied.
//!
//! A store hands over everything it holds for the meter ([`Queued`]: its
//! book, every purchase, the lock order of every refused upload, every
//! order the operator queued); [`pending`] keeps what the book does not
//! list in `applied`, each under the key the meter's ledger row carries
//! (`voucher/<sequence>`, `lock-order/<nonce>`, `clear-lock/<nonce>`,
//! `revoke-order/<order id>`, `account-order/<nonce>`, `anchor/<hex SHA-384
//! of the new root>`, `rates/v<version>`: a table is also done when a newer
//! one is applied), so
//! the meter can skip what it applied since its last report and the answer
//! is the same for every request until a new report is acknowledged.
//! Nothing is deleted: the book is the record of what was applied.

use meter_pki::cert::Certificate;
use meter_pki::report::LockOrder;

use crate::book::Book;

/// Most objects in one answer (the rest come after the next report).
pub const MAX_PENDING: usize = 256;

/// A voucher bought through `serve` (a purchase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedVoucher {
    /// Its sequence for the meter.
    pub sequence: u64,
    /// Minor units.
    pub amount: u64,
    /// The signed voucher (CMS, DER).
    pub der: Vec<u8>,
}

/// Everything a store holds for one meter that the meter may have to apply.
#[derive(Debug, Clone, Default)]
pub struct Queued {
    /// The meter's book (what its acknowledged reports showed applied).
    pub book: Book,
    /// Every purchase, by sequence.
    pub vouchers: Vec<QueuedVoucher>,
    /// The lock orders of refused uploads (CMS, DER).
    pub lock_orders: Vec<Vec<u8>>,
    /// Orders the operator queued: (key, CMS DER), e.g. `clear-lock/<nonce>`.
    pub orders: Vec<(String, Vec<u8>)>,
}

/// One object the meter must apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its stable id: the key of the ledger row that applies it.
    pub id: String,
    /// `lock-order`, `voucher`, or the queued order's key up to its `/`
    /// (`clear-lock`, `rates`, `revoke-order`, `account-order`, `anchor`).
    pub kind: String,
    /// A voucher's amount (minor units).
    pub amount: Option<u64>,
    /// The signed object (CMS, DER).
    pub der: Vec<u8>,
}

/// The objects of `q` its book does not show applied, in the order to apply
/// them: lock orders, then the queued orders by key (account, anchor,
/// clear-lock, lock, rates, revoke), then vouchers by sequence.
/// Lock orders are opened with `roots` for their nonce (one that does not
/// open is left out). At most [`MAX_PENDING`]; the flag says more wait.
pub fn pending(q: &Queued, roots: &[Certificate], now: i64) -> (Vec<Pending>, bool) {
    let applied = |k: &str| q.book.applied.contains_key(k) || superseded(&q.book, k);
    let mut out = Vec::new();
    for der in &q.lock_orders {
        let Ok((o, _)) = meter_pki::payload::open::<LockOrder>(der, roots, now) else {
            continue;
        };
        let id = format!("lock-order/{}", o.nonce);
        if !applied(&id) && !out.iter().any(|p: &Pending| p.id == id) {
            out.push(Pending {
                id,
                kind: "lock-order".into(),
                amount: None,
                der: der.clone(),
            });
        }
    }
    let mut orders: Vec<&(String, Vec<u8>)> = q.orders.iter().collect();
    orders.sort_by(|a, b| a.0.cmp(&b.0));
    for (id, der) in orders {
        if applied(id) {
            continue;
        }
        let kind = id.split_once('/').map_or(id.as_str(), |(k, _)| k);
        out.push(Pending {
            id: id.clone(),
            kind: kind.to_owned(),
            amount: None,
            der: der.clone(),
        });
    }
    let credited = q.book.credited();
    let mut vouchers: Vec<&QueuedVoucher> = q
        .vouchers
        .iter()
        .filter(|v| !credited.contains(&v.sequence))
        .collect();
    vouchers.sort_by_key(|v| v.sequence);
    for v in vouchers {
        out.push(Pending {
            id: format!("voucher/{}", v.sequence),
            kind: "voucher".into(),
            amount: Some(v.amount),
            der: v.der.clone(),
        });
    }
    let more = out.len() > MAX_PENDING;
    out.truncate(MAX_PENDING);
    (out, more)
}

/// The version of a `rates/v<N>` key.
fn rates_version(k: &str) -> Option<u32> {
    k.strip_prefix("rates/v")?.parse().ok()
}

/// A rate table the meter need not install: it applied this version or a
/// newer one (the meter refuses a table not newer than its own as stale).
fn superseded(book: &Book, k: &str) -> bool {
    rates_version(k).is_some_and(|n| {
        book.applied
            .keys()
            .filter_map(|a| rates_version(a))
            .any(|m| m >= n)
    })
}

/// Checks an order's nonce: 1 to 64 visible ASCII characters (as a ledger key).
pub fn check_nonce(nonce: &str) -> crate::Result<()> {
    if nonce.is_empty() || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(crate::AuthorityError::Invalid(
            "a nonce is 1 to 64 visible ASCII characters".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_objects_are_not_pending_and_the_order_is_stable() {
        let mut q = Queued::default();
        for s in [3u64, 1, 2] {
            q.vouchers.push(QueuedVoucher {
                sequence: s,
                amount: s * 10,
                der: vec![s as u8],
            });
        }
        q.orders.push(("clear-lock/b".into(), vec![9]));
        q.orders.push(("clear-lock/a".into(), vec![8]));
        q.lock_orders.push(b"not an order".to_vec());
        q.book.applied.insert("voucher/2".into(), 5);
        q.book.applied.insert("clear-lock/b".into(), 6);
        q.orders.push(("rates/v2".into(), vec![7]));
        q.orders.push(("rates/v4".into(), vec![6]));
        q.book.applied.insert("rates/v3".into(), 7);
        let (p, more) = pending(&q, &[], 0);
        let ids: Vec<&str> = p.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["clear-lock/a", "rates/v4", "voucher/1", "voucher/3"]);
        assert_eq!(p[2].amount, Some(10));
        assert_eq!(p[0].kind, "clear-lock");
        assert!(!more);
        assert!(check_nonce("abc").is_ok());
        assert!(check_nonce("").is_err() && check_nonce("a b").is_err());
        assert!(check_nonce(&"x".repeat(65)).is_err());
    }
}
