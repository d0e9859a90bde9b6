//! The cross-check after a fault: what the clients received against what
//! the ledger file holds, then a retry of every request id.
//!
//! * every product a client received has its ledger row, with the same bytes
//!   (else a **loss**; a different product is a **double**);
//! * a retry of an id the ledger holds returns the stored product and charges
//!   nothing (an error is a **miss**: a debit whose product cannot be
//!   retrieved; a different product or a charge is a **double**);
//! * a retry of an id the ledger does not hold is a fresh sale, charged once;
//! * the ascending register moves by exactly the fresh sales' prices;
//! * AR + DR = control total and `Audit()` is clean, before and after.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::error::Result;
use crate::load::{Attempt, Outcome};
use crate::ops::{Mix, PAY_AMOUNT};
use crate::sandbox::{audit, credit_lines, status, CreditLine, Registers, Row, Sandbox};
use crate::summary::Tally;

/// Checks audit and balance; records faults with `when` in the note.
pub async fn invariants(sb: &Sandbox, when: &str, t: &mut Tally) -> Result<Registers> {
    let proxy = sb.connect().await?;
    if let Some(problem) = audit(&proxy).await? {
        t.fault(format!("{when}: audit not clean: {problem}"));
    }
    let regs = status(&proxy).await?;
    if !regs.balanced() {
        t.fault(format!(
            "{when}: AR {} + DR {} != CT {}",
            regs.ar, regs.dr, regs.ct
        ));
    }
    if !regs.postage_balanced() {
        let (ar, dr, ct) = regs.postage;
        t.fault(format!("{when}: postage AR {ar} + DR {dr} != CT {ct}"));
    }
    if regs.state != meter_proto::state::READY {
        t.fault(format!(
            "{when}: meter is {} ({})",
            regs.state, regs.lock_reason
        ));
    }
    if sb.mix.pays() {
        credit(sb, &proxy, when, t).await?;
    }
    Ok(regs)
}

/// The line `pay` draws on: granted = used + remaining, and used = the
/// number of distinct paid request ids in the ledger file × the amount.
async fn credit(
    sb: &Sandbox,
    proxy: &meter_proto::Meter1Proxy<'static>,
    when: &str,
    t: &mut Tally,
) -> Result<()> {
    let serial = &sb.mix.ctx().credit_serial;
    let lines = credit_lines(proxy).await?;
    let Some(line) = lines.iter().find(|l| &l.serial == serial) else {
        t.fault(format!("{when}: credit line {serial} is not listed"));
        return Ok(());
    };
    for problem in credit_problems(line, sb.payment_rows()?) {
        t.fault(format!("{when}: {problem}"));
    }
    Ok(())
}

/// What is wrong with `line` when the ledger holds `paid` payments of
/// [`PAY_AMOUNT`] (empty when nothing).
pub fn credit_problems(line: &CreditLine, paid: u64) -> Vec<String> {
    let mut out = Vec::new();
    if line.used.checked_add(line.remaining) != Some(line.granted) {
        out.push(format!(
            "credit line {}: granted {} != used {} + remaining {}",
            line.serial, line.granted, line.used, line.remaining
        ));
    }
    let expected = paid.saturating_mul(PAY_AMOUNT);
    if line.used != expected {
        out.push(format!(
            "credit line {}: used {} but the ledger holds {paid} payment(s) of {PAY_AMOUNT} ({expected})",
            line.serial, line.used
        ));
    }
    out
}

/// Every product a client received must be in `rows` with the same bytes,
/// debited at the price in force.
pub fn check_delivered(
    mix: &Mix,
    attempts: &[Attempt],
    rows: &HashMap<String, Row>,
    before: &Registers,
    t: &mut Tally,
) {
    for a in attempts {
        if let Outcome::Product(p) = &a.outcome {
            match rows.get(&a.id) {
                None => {
                    t.losses += 1;
                    t.note(format!(
                        "loss: {} ({}) delivered a product with no ledger row",
                        a.id,
                        mix.pick(a.n).name
                    ));
                }
                Some(r) if &r.product != p => {
                    t.doubles += 1;
                    t.note(format!("double: {} ledger holds another product", a.id));
                }
                Some(r) if r.debit != mix.price(before, a.n) => {
                    t.fault(format!(
                        "{} ({}): ledger debit {} differs from the price {}",
                        a.id,
                        mix.pick(a.n).name,
                        r.debit,
                        mix.price(before, a.n)
                    ));
                }
                Some(_) => {}
            }
        }
    }
}

/// The full cross-check of `attempts` (ids under `prefix`), retrying with
/// `clients` connections. Counts go into the returned tally.
pub async fn verify(
    sb: &Sandbox,
    prefix: &str,
    attempts: &[Attempt],
    clients: usize,
) -> Result<Tally> {
    let mut t = Tally::default();
    let before = invariants(sb, "after the fault", &mut t).await?;
    let rows = sb.ledger_rows(prefix)?;

    check_delivered(&sb.mix, attempts, &rows, &before, &mut t);

    let orphans = attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Failed { .. }) && rows.contains_key(&a.id))
        .count();
    if orphans > 0 {
        eprintln!(
            "torture: {orphans} request(s) failed at the client but were debited: their retries must return the stored product"
        );
    }

    // Retry every id, `clients` at a time.
    let queue: Arc<Mutex<Vec<Attempt>>> = Arc::new(Mutex::new(attempts.to_vec()));
    let rows = Arc::new(rows);
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let proxy = sb.connect().await?;
        let queue = queue.clone();
        let rows = rows.clone();
        let regs = before.clone();
        let mix = sb.mix.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut fresh_charge = 0u64;
            let mut fresh = Vec::new();
            loop {
                let Some(a) = queue.lock().await.pop() else {
                    break;
                };
                t.operations += 1;
                let got = mix.call(&proxy, a.n, &a.id).await;
                match (rows.get(&a.id), got) {
                    (Some(r), Ok(p)) if p == r.product => {}
                    (Some(_), Ok(_)) => {
                        t.doubles += 1;
                        t.note(format!("double: retry of {} made a new product", a.id));
                    }
                    (Some(_), Err(e)) => {
                        t.missed += 1;
                        t.note(format!(
                            "missed: {} is debited but its retry failed: {}: {}",
                            a.id,
                            e.kind(),
                            e.message()
                        ));
                    }
                    (None, Ok(_)) => {
                        fresh_charge += mix.price(&regs, a.n);
                        fresh.push(a.id.clone());
                    }
                    (None, Err(e)) => t.fault(format!(
                        "retry of never-sold {} failed: {}: {}",
                        a.id,
                        e.kind(),
                        e.message()
                    )),
                }
            }
            (t, fresh_charge, fresh)
        }));
    }
    let mut expected = 0u64;
    let mut fresh = Vec::new();
    for task in tasks {
        let (sub, charge, ids) = task.await?;
        t.absorb(sub);
        expected += charge;
        fresh.extend(ids);
    }

    let after = invariants(sb, "after the retries", &mut t).await?;
    let moved = after.paid().saturating_sub(before.paid());
    let unit = attempts
        .first()
        .map(|a| sb.mix.price(&before, a.n))
        .unwrap_or(1)
        .max(1);
    if moved > expected {
        t.doubles += (moved - expected).div_ceil(unit);
        t.note(format!(
            "double: retries charged {moved}, expected {expected} (fresh sales only)"
        ));
    } else if moved < expected {
        t.losses += (expected - moved).div_ceil(unit);
        t.note(format!(
            "loss: retries charged {moved}, expected {expected}"
        ));
    }
    let rows_after = sb.ledger_rows(prefix)?;
    for id in fresh {
        if !rows_after.contains_key(&id) {
            t.losses += 1;
            t.note(format!("loss: retry of {id} delivered with no ledger row"));
        }
    }
    let mut per_id: HashMap<&str, u64> = HashMap::new();
    for a in attempts {
        *per_id.entry(a.id.as_str()).or_default() += 1;
    }
    if rows_after.len() > per_id.len() {
        t.doubles += (rows_after.len() - per_id.len()) as u64;
        t.note("double: more ledger rows than request ids sent");
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(price: u64) -> Registers {
        Registers {
            ar: 0,
            dr: 0,
            ct: 0,
            state: "ready".into(),
            lock_reason: String::new(),
            rates: [("postmark".to_string(), price)].into_iter().collect(),
            postage: (0, 0, 0),
        }
    }

    fn got(id: &str, product: &[u8]) -> Attempt {
        Attempt {
            id: id.into(),
            n: 0,
            outcome: Outcome::Product(product.to_vec()),
        }
    }

    fn row(debit: u64, product: &[u8]) -> Row {
        Row {
            debit,
            product: product.to_vec(),
        }
    }

    #[test]
    fn delivered_products_are_matched_against_the_ledger() {
        let rows: HashMap<String, Row> = [
            ("a".to_string(), row(500, b"tok-a")),
            ("b".to_string(), row(500, b"other")),
            ("c".to_string(), row(499, b"tok-c")),
        ]
        .into_iter()
        .collect();
        let failed = Attempt {
            id: "d".into(),
            n: 0,
            outcome: Outcome::Failed {
                kind: "Bus",
                message: "gone".into(),
            },
        };
        let attempts = vec![
            got("a", b"tok-a"),
            got("b", b"tok-b"),
            got("c", b"tok-c"),
            got("e", b"tok-e"),
            failed,
        ];
        let mut t = Tally::default();
        check_delivered(&Mix::basic(), &attempts, &rows, &regs(500), &mut t);
        assert_eq!(t.losses, 1, "e has no row: {:?}", t.notes);
        assert_eq!(t.doubles, 1, "b's row holds another product");
        assert_eq!(t.faults, 1, "c debited 499, price 500");
        assert!(t.failed());

        let mut clean = Tally::default();
        check_delivered(&Mix::basic(), &attempts[..1], &rows, &regs(500), &mut clean);
        assert!(!clean.failed(), "{:?}", clean.notes);
    }

    #[test]
    fn credit_line_must_match_the_paid_ids() {
        let line = |granted, used, remaining| CreditLine {
            serial: "CL1".into(),
            granted,
            used,
            remaining,
            state: "open".into(),
        };
        assert!(credit_problems(&line(100, 7, 93), 7).is_empty());
        // Registers that do not add up.
        assert_eq!(credit_problems(&line(100, 7, 92), 7).len(), 1);
        // A payment on the line without its ledger row, or a row not on the line.
        assert_eq!(credit_problems(&line(100, 8, 92), 7).len(), 1);
        assert_eq!(credit_problems(&line(100, 6, 94), 7).len(), 1);
    }
}
