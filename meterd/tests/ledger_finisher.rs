//! Products made inside the commit (`Ledger::commit_finishing`, used by
//! postage): the finisher sees exactly the registers its row gets, under
//! concurrent commits of other rows; its failure refuses only its entry;
//! a retry returns the stored product without running it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::ledger_support;

use std::sync::Arc;

use ledger_support::*;
use meterd::ledger::{Finisher, LedgerError, Outcome, RowContext};
use meterd::money::Amount;

/// A product that spells out the row it was made for.
fn echo() -> Finisher {
    Finisher::new(|row: &RowContext, _h| {
        let r = &row.registers;
        Ok(format!(
            "{}:{}:{}:{}",
            row.seq, r.ascending.0, r.descending.0, r.pieces
        )
        .into_bytes())
    })
}

#[tokio::test]
async fn finisher_sees_its_own_rows_registers_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _c) = create(&db(dir.path()));
    l.commit(credit("voucher:1", 10_000), None).await.unwrap();
    let l = Arc::new(l);
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let l = Arc::clone(&l);
        tasks.push(tokio::spawn(async move {
            let price = Amount(10 + i);
            let r = l.reserve(price).unwrap();
            if i % 2 == 0 {
                let e = debit(&format!("f-{i}"), price.0, &i.to_be_bytes());
                let (out, product) = l.commit_finishing(e, Some(r), echo()).await.unwrap();
                let Outcome::Committed { seq, registers } = out else {
                    panic!("{out:?}")
                };
                let expect = format!(
                    "{seq}:{}:{}:{}",
                    registers.ascending.0, registers.descending.0, registers.pieces
                );
                assert_eq!(String::from_utf8(product).unwrap(), expect);
                Some(seq)
            } else {
                let e = debit(&format!("p-{i}"), price.0, &i.to_be_bytes());
                l.commit(e, Some(r)).await.unwrap();
                None
            }
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        if let Some(s) = t.await.unwrap() {
            seqs.push(s);
        }
    }
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 16);
    let s = l.state();
    assert_eq!(s.registers.pieces, 32);
    assert_eq!(
        s.registers
            .ascending
            .checked_add(s.registers.descending)
            .unwrap(),
        s.registers.control_total
    );
}

#[tokio::test]
async fn failed_finisher_charges_nothing_and_retry_returns_stored_product() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _c) = create(&db(dir.path()));
    l.commit(credit("voucher:1", 1_000), None).await.unwrap();
    let before = l.state();
    let fail = Finisher::new(|_, _| Err(LedgerError::Invalid("signer refused".into())));
    let r = l.reserve(Amount(100)).unwrap();
    let err = l
        .commit_finishing(debit("x-1", 100, b"x"), Some(r), fail)
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::Invalid(_)), "{err:?}");
    assert_eq!(l.state(), before);
    // Nothing reserved is left behind.
    l.reserve(Amount(1_000)).unwrap();

    let (_, first) = l
        .commit_finishing(debit("x-1", 100, b"x"), None, echo())
        .await
        .unwrap();
    let after = l.state();
    let never = Finisher::new(|_, _| panic!("a retry must not make a new product"));
    let (out, again) = l
        .commit_finishing(debit("x-1", 100, b"x"), None, never)
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Existing { .. }));
    assert_eq!(again, first);
    assert_eq!(l.state(), after);
}
