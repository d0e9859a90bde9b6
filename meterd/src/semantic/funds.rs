//! Rows that bring or owe money: vouchers (the amount credited is the
//! signed amount, once per sequence), revocation fees (the row's debit is
//! what its confirmation states, for the authority's order the row keeps; a
//! debt is settled once, for its amount)
//! and lines of credit (granted by an anchor itself, to this meter; every
//! payment continues the line's registers).

use meter_pki::cert;
use meter_pki::credit::{read_unverified, CreditLine, Payment};
use meter_pki::funds::FundsOrder;
use meter_pki::ledger_format::split_revoke_product;
use meter_pki::payload::Voucher;
use meter_pki::revoke::{self as rv};

use super::objects::{self, key_detail, open, require_detail};
use super::walk::{at, product, Judged, Line, Walk};
use crate::ledger::{FilteredRow, Fund};

impl Walk {
    /// A voucher's Credit row: signed by an anchor in force, for this
    /// meter, credit = the signed amount, key and note = its sequence, a
    /// sequence never credited before, and no current account in force.
    pub(super) fn voucher(&mut self, r: &FilteredRow, verify: bool) -> Judged {
        let v = open::<Voucher>(product(r)?, &self.anchors, at(r), verify)?.body;
        self.count(verify);
        if v.meter_id != self.meter_id {
            return Err(format!("the voucher is for meter {}", v.meter_id));
        }
        if v.amount == 0 || v.amount != r.credit {
            return Err(format!(
                "it credits {}, the voucher it holds is for {}",
                r.credit, v.amount
            ));
        }
        let detail = require_detail(r.key.as_deref(), "voucher")?;
        if detail != v.sequence.to_string() || r.note != format!("seq {}", v.sequence) {
            return Err(format!(
                "the voucher has sequence {}, the row says key {:?}, note {:?}",
                v.sequence, r.key, r.note
            ));
        }
        if self.account.is_some() {
            return Err("a voucher credited in current-account mode".into());
        }
        // The pair it funds is the voucher's word, not the row's: postage
        // money booked on services (or the reverse) is money moved between
        // the post's books and the provider's.
        let postage = v.register.as_deref() == Some(Fund::Postage.name());
        let want = if postage && self.split {
            Fund::Postage
        } else {
            Fund::Services
        };
        if r.register != want.id() {
            return Err(format!(
                "it credits register {}, the voucher funds {}",
                r.register,
                want.name()
            ));
        }
        if !self.vouchers.insert(v.sequence) {
            return Err(format!(
                "voucher sequence {} credited a second time",
                v.sequence
            ));
        }
        Ok(())
    }

    /// A revoke Debit row: the meter's confirmation for this meter and the
    /// order in the key (each order once), and the authority's signed order
    /// it applied, kept after it; `revoke-paid` debits the fee it states,
    /// `revoke-due` debits nothing and owes the fee.
    pub(super) fn revoke(&mut self, r: &FilteredRow, verify: bool) -> Judged {
        let c = rv::stored_confirmation(product(r)?).map_err(|e| e.to_string())?;
        if c.meter_id != self.meter_id {
            return Err(format!("the confirmation is for meter {}", c.meter_id));
        }
        if require_detail(r.key.as_deref(), "revoke-order")? != c.order_id {
            return Err("its key does not name the order its confirmation answers".into());
        }
        if !self.revoke_orders.insert(c.order_id.clone()) {
            return Err(format!("revoke order {} applied a second time", c.order_id));
        }
        // The authority's order itself, not only the meter's word about it:
        // signed by an anchor in force, for this meter, and the very order
        // the confirmation answers.
        let (_, order) = split_revoke_product(product(r)?).map_err(|e| e.to_string())?;
        let order = order.ok_or(
            "a revoke row that keeps no authority revoke order (rows written before revoke rows kept the order read so too: the authority can clear it)",
        )?;
        let order = open::<rv::RevokeOrder>(order, &self.anchors, at(r), verify)?.body;
        self.count(verify);
        if order.meter_id != self.meter_id {
            return Err(format!("the revoke order is for meter {}", order.meter_id));
        }
        if (&order.order_id, &order.serial, &order.reason, order.forced)
            != (&c.order_id, &c.serial, &c.reason, c.forced)
        {
            return Err(format!(
                "the revoke order {} (serial {}, {}) is not the one its confirmation answers ({}, serial {}, {})",
                order.order_id, order.serial, order.reason, c.order_id, c.serial, c.reason
            ));
        }
        match r.note.as_str() {
            super::NOTE_REVOKE_PAID if c.payment == rv::PAID && r.debit == c.fee => Ok(()),
            super::NOTE_REVOKE_DUE if c.payment == rv::PAYMENT_DUE && r.debit == 0 => {
                self.dues.insert(r.seq, (c.amount_due, false));
                Ok(())
            }
            note => Err(format!(
                "row {note:?} debits {} where its confirmation says {} (fee {}, due {})",
                r.debit, c.payment, c.fee, c.amount_due
            )),
        }
    }

    /// A settlement: of a due row before it, not settled before, for the
    /// amount due.
    pub(super) fn settle(&mut self, r: &FilteredRow) -> Judged {
        let detail = require_detail(r.key.as_deref(), "settle")?;
        let due_row: u64 = detail
            .parse()
            .map_err(|_| format!("its key names no row: {detail:?}"))?;
        if product(r)? != detail.as_bytes() {
            return Err("its product does not name the row its key names".into());
        }
        let (amount, settled) = self
            .dues
            .get_mut(&due_row)
            .ok_or_else(|| format!("it settles row {due_row}, which owes nothing"))?;
        if *settled {
            return Err(format!("row {due_row}'s fee settled a second time"));
        }
        if r.debit != *amount {
            return Err(format!("it debits {} to settle {} due", r.debit, amount));
        }
        *settled = true;
        Ok(())
    }

    /// An opened line of credit: granted by a trust anchor itself (a
    /// certificate the root issued grants nothing), to this meter's
    /// identity key, for the serial in the note, once; the first payment
    /// certificate shows the whole line remaining.
    pub(super) fn open_line(&mut self, r: &FilteredRow, verify: bool) -> Judged {
        let serial = r
            .note
            .strip_prefix(super::NOTE_CREDIT_OPEN)
            .ok_or("a credit-line sale whose note names no line")?;
        let (first, grant) = objects::first_element(product(r)?)?;
        let opened = open::<CreditLine>(grant, &self.anchors, at(r), verify)?;
        self.count(verify);
        if !self.anchors.contains(&opened.signer) {
            return Err("the line of credit is not signed by a trust anchor itself".into());
        }
        let line = opened.body;
        let (meter_cert, _) = self
            .certs
            .as_ref()
            .ok_or("a line of credit before the meter was provisioned")?;
        let our_key = hex::encode(cert::public_key_sec1(meter_cert).map_err(|e| e.to_string())?);
        if line.holder != self.meter_id || !line.holder_key_hex.eq_ignore_ascii_case(&our_key) {
            return Err(format!("the line of credit is for {}", line.holder));
        }
        if line.serial != serial {
            return Err(format!(
                "the line is {}, the row says {serial}",
                line.serial
            ));
        }
        if self.lines.contains_key(serial) {
            return Err(format!("line of credit {serial} opened a second time"));
        }
        let digest_hex = objects::sha384_hex(grant);
        let p: Payment = read_unverified(first).map_err(|e| e.to_string())?;
        if p.meter_id != self.meter_id
            || p.credit_serial != line.serial
            || p.credit_line_digest_hex != digest_hex
            || p.sequence != 0
            || p.amount != 0
            || p.credit_remaining != line.amount
        {
            return Err("the first payment certificate does not show the whole line".into());
        }
        self.lines.insert(
            line.serial,
            Line {
                remaining: line.amount,
                next_sequence: 1,
                digest_hex,
            },
        );
        Ok(())
    }

    /// A payment: on an open line, next in sequence, its remaining the
    /// line's remaining less its amount.
    pub(super) fn pay(&mut self, r: &FilteredRow) -> Judged {
        let serial = r
            .note
            .strip_prefix(super::NOTE_CREDIT_PAY)
            .ok_or("a payment-certificate sale whose note names no line")?;
        let p: Payment = read_unverified(product(r)?).map_err(|e| e.to_string())?;
        let line = self
            .lines
            .get_mut(serial)
            .ok_or_else(|| format!("a payment on line {serial}, which is not open"))?;
        let remaining = line.remaining.checked_sub(p.amount);
        if p.meter_id != self.meter_id
            || p.credit_serial != serial
            || p.credit_line_digest_hex != line.digest_hex
            || p.sequence != line.next_sequence
            || remaining != Some(p.credit_remaining)
        {
            return Err(format!(
                "payment {} does not continue line {serial} ({} remaining, next {})",
                p.serial, line.remaining, line.next_sequence
            ));
        }
        line.remaining = p.credit_remaining;
        line.next_sequence += 1;
        Ok(())
    }

    /// The split row: the authority's signed funds order, for this meter,
    /// under the one key a split has (so a meter splits once). Without it,
    /// root could plant a split (or the authority's order under another
    /// meter's name) and burn the real order: it would be refused as a
    /// replay of the planted one.
    pub(super) fn funds_split(&mut self, r: &FilteredRow, verify: bool) -> Judged {
        let order = open::<FundsOrder>(product(r)?, &self.anchors, at(r), verify)?.body;
        self.count(verify);
        if order.meter_id != self.meter_id {
            return Err(format!("the funds order is for meter {}", order.meter_id));
        }
        if key_detail(r.key.as_deref(), "funds") != Some("split") {
            return Err(format!("a funds split under the key {:?}", r.key));
        }
        if std::mem::replace(&mut self.split, true) {
            return Err("the funds split a second time".into());
        }
        Ok(())
    }
}
