//! The authority objects behind a reconciled segment's rows (see
//! [`super`]): every row that brings value or authority from outside (a
//! credit, an unlock, a lock, account, revoke, rate, anchor or report-ack
//! row) must carry an object this authority signed, for this meter, under
//! the row's own key, applied once. Kept apart from the walk in `reconcile.rs`
//! (chain, registers, times, the report's own claims) because this is the
//! part that opens signed objects and matches them to the row's key and to
//! the book's record (vouchers issued, objects applied); the walk only asks
//! it [`Walk::outside_object`] per row, and [`Walk::open`] for a rate table.

use meter_pki::account::AccountOrder;
use meter_pki::ledger_format::{split_lock_product, split_revoke_product};
use meter_pki::payload::{self, AnchorUpdate, ClearLockOrder, Payload, RateTable, Voucher};
use meter_pki::report::{LockOrder, ReportAck};
use meter_pki::revoke::RevokeOrder;
use meter_pki::segment::{kind, SegmentRow};

use super::Walk;

/// Longest product taken as a bare lock nonce (layout v1 lock-order rows).
const NONCE_MAX: usize = 64;

impl Walk<'_> {
    /// Checks the authority object of a row that brings value or authority.
    pub(super) fn outside_object(&mut self, r: &SegmentRow<'_>) {
        let x = &r.fields;
        let seq = x.seq;
        let key = x
            .request_id
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| k.strip_prefix("m/"))
            .and_then(|k| k.split_once('/'));
        let product = r.product.unwrap_or_default();
        let at = x.time.div_euclid(1000);
        let expected = match x.kind {
            kind::CREDIT => Some("voucher"),
            kind::UNLOCK => None,
            _ => match key {
                Some((
                    w @ ("lock-order" | "account-order" | "revoke-order" | "rates" | "anchor"
                    | "report-ack"),
                    _,
                )) => Some(w),
                _ => None,
            },
        };
        let result = match (x.kind, key) {
            (kind::CREDIT, Some(("voucher", d))) => self.voucher(product, d, x.credit, at),
            (kind::CREDIT, _) => Err("a credit with no voucher key".into()),
            (kind::UNLOCK, Some(("clear-lock", d))) => self
                .open::<ClearLockOrder>(product, at)
                .and_then(|o| self.bound(&o.meter_id, &o.nonce, d)),
            (kind::UNLOCK, Some(("report-ack", d))) => self
                .open::<ReportAck>(product, at)
                .and_then(|a| self.bound(&a.meter_id, &a.report_sequence.to_string(), d)),
            (kind::UNLOCK, _) => Err("an unlock with no authority order".into()),
            // A lock-order row keeps the lock's nonce, a NUL and the signed
            // order (`lock_product`); rows written before keep the nonce
            // only: a lock takes no value.
            (_, Some(("lock-order", d))) if expected.is_some() => {
                match split_lock_product(product) {
                    (_, Some(order)) => self
                        .open::<LockOrder>(order, at)
                        .and_then(|o| self.bound(&o.meter_id, &o.nonce, d)),
                    (nonce, None) if nonce.len() <= NONCE_MAX => Ok(()),
                    (_, None) => Err("a lock-order row whose product is no lock".into()),
                }
            }
            (_, Some(("account-order", d))) if expected.is_some() => self
                .open::<AccountOrder>(product, at)
                .and_then(|o| self.bound(&o.meter_id, &o.nonce, d)),
            // A revoke row keeps the meter's confirmation, then the order it
            // applied (`revoke_product`); rows that keep the confirmation
            // only are taken at their key (the meter's audit checks them).
            (_, Some(("revoke-order", d))) if expected.is_some() => {
                match split_revoke_product(product) {
                    Ok((_, Some(order))) => self
                        .open::<RevokeOrder>(order, at)
                        .and_then(|o| self.bound(&o.meter_id, &o.order_id, d)),
                    Ok((_, None)) => Ok(()),
                    Err(e) => Err(format!(
                        "a revoke row whose product is no confirmation: {e}"
                    )),
                }
            }
            (_, Some(("report-ack", d))) if expected.is_some() => self
                .open::<ReportAck>(product, at)
                .and_then(|a| self.bound(&a.meter_id, &a.report_sequence.to_string(), d)),
            (_, Some(("rates", d))) if expected.is_some() => self
                .open::<RateTable>(product, at)
                .and_then(|t| match format!("v{}", t.version) == d {
                    true => Ok(()),
                    false => Err(format!("rate table version {} under key v{d}", t.version)),
                }),
            // Layout v1 keeps the resulting bundle, not the signed update
            // (piece SEMANTIC stores it): checked when it is there.
            (_, Some(("anchor", _))) if expected.is_some() => {
                match self.open::<AnchorUpdate>(product, at) {
                    Ok(u) if u.meter_id.as_deref().is_some_and(|m| m != self.meter_id) => {
                        Err("an anchor update for another meter".into())
                    }
                    _ => Ok(()),
                }
            }
            _ => return,
        };
        if let Err(e) = result {
            self.f.add(format!("row {seq}: {e}"));
            return;
        }
        if let Some((what, detail)) = key {
            let k = format!("{what}/{detail}");
            let earlier = self
                .book
                .applied
                .get(&k)
                .copied()
                .or_else(|| self.applied.iter().find(|(a, _)| *a == k).map(|(_, s)| *s));
            match earlier {
                Some(s) if s != seq => self.f.add(format!(
                    "row {seq}: {k} was already applied at row {s}; each is good once"
                )),
                _ => self.applied.push((k, seq)),
            }
        }
    }

    /// Opens an authority object, valid at its row's time or, for a row
    /// timed outside the roots' validity (a meter clock moved in tests),
    /// at the inspection's: the signature is what matters.
    pub(super) fn open<T: Payload>(&self, product: &[u8], at: i64) -> Result<T, String> {
        payload::open::<T>(product, self.roots, at)
            .or_else(|_| payload::open::<T>(product, self.roots, self.now))
            .map(|(t, _)| t)
            .map_err(|e| format!("not an object this authority signed: {e}"))
    }

    fn bound(&self, meter: &str, id: &str, key_detail: &str) -> Result<(), String> {
        if meter != self.meter_id {
            return Err(format!("an order for meter {meter}"));
        }
        if id != key_detail {
            return Err(format!("the object says {id}, the row's key {key_detail}"));
        }
        Ok(())
    }

    fn voucher(&self, product: &[u8], detail: &str, credit: u64, at: i64) -> Result<(), String> {
        let v: Voucher = self.open(product, at)?;
        if v.meter_id != self.meter_id {
            return Err(format!(
                "voucher {} is for meter {}",
                v.sequence, v.meter_id
            ));
        }
        if v.sequence.to_string() != detail {
            return Err(format!("voucher {} under key voucher/{detail}", v.sequence));
        }
        if v.amount != credit {
            return Err(format!(
                "credits {credit}, voucher {} says {}",
                v.sequence, v.amount
            ));
        }
        match self.book.vouchers.get(&v.sequence) {
            Some(a) if *a == v.amount => Ok(()),
            Some(a) => Err(format!(
                "voucher {} was issued for {a}, not {}",
                v.sequence, v.amount
            )),
            None => Err(format!(
                "voucher {} of {} is not in this authority's record of vouchers issued to the meter",
                v.sequence, v.amount
            )),
        }
    }
}
