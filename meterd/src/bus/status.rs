//! Dictionaries (`a{sv}`) returned by Status, Validate, Audit and Provision.

use std::collections::HashMap;

use zbus::zvariant::{OwnedValue, Value};

use meter_proto::keys;

use crate::clock;
use crate::ledger::AuditReport;
use crate::meter::Meter;
use crate::provision::Requests;
use crate::service::Service;
use crate::validate::Report;

type Dict = HashMap<String, OwnedValue>;

fn put<'a>(d: &mut Dict, key: &str, v: impl Into<Value<'a>>) {
    // Only file descriptors fail to become owned; none are put here.
    if let Ok(v) = v.into().try_to_owned() {
        d.insert(key.to_owned(), v);
    }
}

/// `Status()`.
pub fn status_dict(meter: &Meter) -> Dict {
    use keys::status as k;
    let mut d = Dict::new();
    let now = clock::now();
    let book = meter.rates();
    let (currency, digits) = book.currency(now);
    put(&mut d, k::METER_ID, meter.meter_id().unwrap_or_default());
    put(&mut d, k::STATE, meter.state_name());
    put(&mut d, k::CURRENCY, currency);
    put(&mut d, k::CURRENCY_DIGITS, digits);
    put(
        &mut d,
        k::RATES_VERSION,
        book.current(now).map(|t| t.version).unwrap_or(0),
    );
    put(
        &mut d,
        k::LOW_FUNDS_THRESHOLD,
        meter.config().low_funds_threshold,
    );
    let rates: HashMap<String, u64> = book
        .current(now)
        .map(|t| t.rates.iter().map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default();
    put(&mut d, k::RATES, rates);
    let bands: Vec<(String, u32, u64)> = book
        .current(now)
        .map(|t| {
            t.postage
                .iter()
                .map(|b| (b.class.clone(), b.max_grams, b.amount))
                .collect()
        })
        .unwrap_or_default();
    put(&mut d, k::POSTAGE_BANDS, bands);
    let state = meter.ledger_state();
    let regs = state
        .as_ref()
        .map(|s| s.registers.clone())
        .unwrap_or_default();
    put(&mut d, k::DESCENDING, regs.descending.0);
    put(&mut d, k::ASCENDING, regs.ascending.0);
    put(&mut d, k::CONTROL_TOTAL, regs.control_total.0);
    put(&mut d, k::PIECE_COUNT, regs.pieces);
    put(
        &mut d,
        k::FUNDS_MODE,
        if regs.split { "split" } else { "combined" },
    );
    put(&mut d, k::POSTAGE_DESCENDING, regs.postage.descending.0);
    put(&mut d, k::POSTAGE_ASCENDING, regs.postage.ascending.0);
    put(
        &mut d,
        k::POSTAGE_CONTROL_TOTAL,
        regs.postage.control_total.0,
    );
    put(&mut d, k::POSTAGE_PIECE_COUNT, regs.postage.pieces);
    put(&mut d, k::PAYMENT_DUE, crate::revoke::payment_due(meter).0);
    let counts: HashMap<String, u64> = Service::ALL
        .iter()
        .map(|s| (s.name().to_owned(), regs.per_service[s.index()]))
        .collect();
    put(&mut d, k::SERVICE_COUNTS, counts);
    let lock = state.as_ref().and_then(|s| s.lock.clone());
    put(
        &mut d,
        k::LOCK_REASON,
        lock.as_ref().map(|l| l.reason.clone()).unwrap_or_default(),
    );
    put(
        &mut d,
        k::LOCK_NONCE,
        lock.map(|l| l.nonce).unwrap_or_default(),
    );
    put(
        &mut d,
        k::LEDGER_ROWS,
        state.as_ref().map(|s| s.rows).unwrap_or(0),
    );
    put(
        &mut d,
        k::LEDGER_HEAD,
        state
            .as_ref()
            .map(|s| hex::encode(s.head))
            .unwrap_or_default(),
    );
    put(
        &mut d,
        k::NV_COUNTER,
        state.as_ref().map(|s| s.nv).unwrap_or(0),
    );
    put(&mut d, k::TPM_LEGACY_AUTH, meter.housing().legacy_auth());
    d
}

/// `Status()`: the snapshot with the inspection schedule and the account.
pub async fn full(meter: &Meter) -> Dict {
    let mut d = status_dict(meter);
    let schedule = match meter.identity() {
        Some(_) => crate::inspection::schedule(meter).await.ok(),
        None => None,
    };
    put_inspection(&mut d, schedule.as_ref());
    put_account(&mut d, meter);
    d
}

/// Adds the inspection schedule to a `Status()` dictionary: the lock
/// deadline (`inspection_due`, as before the warning period existed), the
/// warning deadline and the standing now.
pub fn put_inspection(d: &mut Dict, s: Option<&crate::inspection::Schedule>) {
    use keys::status as k;
    put(d, k::INSPECTION_DUE, s.map_or(0i64, |s| s.lock_at));
    put(
        d,
        k::INSPECTION_PERIOD_DAYS,
        s.map_or(0u32, |s| s.period_days),
    );
    put(d, k::INSPECTION_WARN_AT, s.map_or(0i64, |s| s.warn_at));
    put(d, k::INSPECTION_WARN_DAYS, s.map_or(0u32, |s| s.warn_days));
    put(
        d,
        k::INSPECTION_STATE,
        s.map_or("", |s| s.standing(clock::now()).name()),
    );
    put(
        d,
        k::ACKNOWLEDGED_REPORT,
        s.map_or(0u64, |s| s.acknowledged_sequence),
    );
}

/// Adds the current-account keys to a `Status()` dictionary (all zero/false
/// in prepaid mode).
pub fn put_account(d: &mut Dict, meter: &Meter) {
    use keys::status as k;
    let account = meter.regime().account();
    let ascending = meter
        .ledger_state()
        .map(|s| s.registers.ascending)
        .unwrap_or_default();
    put(d, k::ACCOUNT_MODE, account.is_some());
    put(
        d,
        k::CREDIT_LIMIT,
        account.as_ref().map_or(0u64, |a| a.limit.0),
    );
    put(
        d,
        k::PERIOD_END,
        account.as_ref().map_or(0i64, |a| a.period_end),
    );
    put(
        d,
        k::PERIOD_USED,
        account.as_ref().map_or(0u64, |a| a.used(ascending).0),
    );
}

/// `Validate()` report.
pub fn report_dict(r: Report) -> Dict {
    use keys::report as k;
    let mut d = Dict::new();
    put(&mut d, k::VALID, r.valid);
    put(&mut d, k::STEP, r.step);
    put(&mut d, k::DETAIL, r.detail);
    put(&mut d, k::SIGNER, r.signer);
    put(&mut d, k::TIME, r.time);
    put(&mut d, k::METER_ID, r.meter_id);
    put(&mut d, k::SERIAL, r.serial);
    d
}

/// `Audit()` result.
pub fn audit_dict(r: AuditReport) -> Dict {
    use crate::ledger::Verdict;
    use keys::audit as k;
    let mut d = Dict::new();
    let (ok, problem) = match &r.verdict {
        Verdict::Clean => (true, String::new()),
        Verdict::RolledForward => (
            true,
            "counter rolled forward after an interrupted commit".into(),
        ),
        Verdict::Rollback { ledger_nv, tpm_nv } => (
            false,
            format!("rollback: ledger counter {ledger_nv}, TPM counter {tpm_nv}"),
        ),
        Verdict::Tamper {
            detail,
            first_bad_seq,
        } => (
            false,
            match first_bad_seq {
                Some(seq) => format!("tamper at row {seq}: {detail}"),
                None => format!("tamper: {detail}"),
            },
        ),
    };
    put(&mut d, k::OK, ok);
    put(&mut d, k::PROBLEM, problem);
    put(&mut d, k::ROWS, r.rows);
    put(&mut d, k::BATCHES, r.batches);
    put(&mut d, k::HEAD, hex::encode(r.head));
    put(&mut d, k::NV_COUNTER, r.tpm_nv);
    put(&mut d, k::MILLIS, r.millis);
    d
}

/// `Provision()` result.
pub fn provision_dict(r: Requests) -> Dict {
    use keys::provision as k;
    let mut d = Dict::new();
    put(&mut d, k::METER_ID, r.meter_id);
    put(&mut d, k::IDENTITY_CSR, r.identity_csr);
    put(&mut d, k::POSTMARK_CSR, r.postmark_csr);
    if let Some(a) = r.attestation {
        put(&mut d, k::ATTESTATION, a);
    }
    d
}
