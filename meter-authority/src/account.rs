//! Current-account orders: the authority puts a meter in current-account
//! mode (credit limit per billing period, billing period in days), or changes
//! its terms, with a signed [`AccountOrder`] carrying a fresh nonce (the meter
//! applies an order once) and the issue time (the meter refuses an order
//! older than the one in force). Applied with `meterctl account apply`.

use meter_pki::account::AccountOrder;
use meter_pki::funds::{FundsOrder, FUNDS_SPLIT};
use meter_pki::payload::Payload;

use crate::{check_meter_id, Authority, Result};

impl Authority {
    /// Signs a current-account order for `meter_id`; returns it and its PEM (label CMS).
    pub fn account_order(
        &self,
        meter_id: &str,
        credit_limit: u64,
        period_days: u32,
        now: i64,
    ) -> Result<(AccountOrder, String)> {
        self.account_order_with(
            meter_id,
            &crate::fresh_nonce_hex(),
            credit_limit,
            period_days,
            now,
        )
    }

    /// Signs a current-account order with the caller's `nonce` (`serve`:
    /// the operator names the order, so a retried request is the same order).
    pub fn account_order_with(
        &self,
        meter_id: &str,
        nonce: &str,
        credit_limit: u64,
        period_days: u32,
        now: i64,
    ) -> Result<(AccountOrder, String)> {
        check_meter_id(meter_id)?;
        let order = AccountOrder {
            meter_id: meter_id.to_owned(),
            credit_limit,
            period_days,
            nonce: nonce.to_owned(),
            issued_at: now,
        };
        order.validate()?;
        let pem = self.sign_payload(&order, now)?;
        Ok((order, pem))
    }

    /// Signs a funds order for `meter_id`: keep postage funds apart (issue 17);
    /// returns it and its PEM (label CMS). Applied with `meterctl account split`.
    pub fn funds_split_order(&self, meter_id: &str, now: i64) -> Result<(FundsOrder, String)> {
        check_meter_id(meter_id)?;
        let order = FundsOrder {
            meter_id: meter_id.to_owned(),
            funds: FUNDS_SPLIT.to_owned(),
            nonce: crate::fresh_nonce_hex(),
            issued_at: now,
        };
        order.validate()?;
        let pem = self.sign_payload(&order, now)?;
        Ok((order, pem))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn account_orders_verify_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authority::init(dir.path(), "Test Root", crate::now()).unwrap();
        let (o1, pem) = a.account_order("MTR-1", 5_000, 30, crate::now()).unwrap();
        let (o2, _) = a.account_order("MTR-1", 5_000, 30, crate::now()).unwrap();
        assert_ne!(o1.nonce, o2.nonce);
        let (back, _) = meter_pki::payload::open::<AccountOrder>(
            pem.as_bytes(),
            std::slice::from_ref(a.root()),
            crate::now(),
        )
        .unwrap();
        assert_eq!(back, o1);
        assert_eq!((back.credit_limit, back.period_days), (5_000, 30));
        assert!(a.account_order("MTR-1", 5_000, 0, crate::now()).is_err());
        assert!(a.account_order("", 5_000, 30, crate::now()).is_err());
    }
}
