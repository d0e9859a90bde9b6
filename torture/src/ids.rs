//! Request ids as an attacker uses them (issue 11, holes 1 and 2), run by
//! the access test after its matrix, as the same real uids.
//!
//! * Internal ids: the plain user sends EVERY form of id the meter keys its
//!   own rows by (`voucher:<seq>`, `settle:<seq>`, `clear-lock:<nonce>`, …,
//!   and the same in the caller-proof `m/<form>/<value>` namespace issue 11
//!   introduces) as the request id of `Report`, `Postmark` and
//!   `PostmarkDigest`. A success is a call after which the ledger holds a
//!   row under exactly that id: the user took an id the meter needs for
//!   itself. Zero are allowed. Then the administrator recharges the voucher
//!   whose id the user tried first: it must still credit.
//! * Shared request ids: two plain users choose the same request id. Each
//!   must be served on its own: a different message is not refused, and the
//!   same message gets a fresh product (not the other user's), charged.

use meter_proto::keys::status as skey;
use meter_proto::Meter1Proxy;
use rusqlite::{Connection, OpenFlags};
use zbus::zvariant::{OwnedValue, Value};

use crate::error::{io, Result, TortureError};
use crate::probe::{call_as, ProbeArgs, PLAIN_USER, SECOND_USER};
use crate::sandbox::{status, Sandbox};
use crate::summary::Tally;

/// The calls a plain user may make that take a request id, with their input types.
const METHODS: &[(&str, &str)] = &[
    ("Report", "s"),
    ("Postmark", "h,s"),
    ("PostmarkDigest", "ay,s"),
];

/// What the user can learn of the meter's next own ids (Status, the authority).
struct Facts {
    next_voucher: u64,
    rows: u64,
    rates_version: u64,
    acknowledged: u64,
    lock_nonce: String,
}

fn number(d: &std::collections::HashMap<String, OwnedValue>, k: &str) -> u64 {
    match d.get(k).map(|v| &**v) {
        Some(Value::U64(n)) => *n,
        Some(Value::U32(n)) => u64::from(*n),
        Some(Value::I64(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

/// Every form of internal id the meter uses today, with values near the
/// ones it will use next (`k` shifts them, one set per method).
fn internal_ids(f: &Facts, k: u64) -> Vec<String> {
    let nonce = |tag: u64| format!("{:032x}", 0x7075_0000 + tag * 16 + k);
    let sha = |tag: u64| format!("{:096x}", 0x5ba0_0000 + tag * 16 + k);
    let lock_nonce = if f.lock_nonce.is_empty() {
        nonce(1)
    } else {
        f.lock_nonce.clone()
    };
    vec![
        format!("voucher:{}", f.next_voucher + k),
        format!("settle:{}", f.rows + 1 + k),
        format!("clear-lock:{lock_nonce}"),
        format!("rates:v{}", f.rates_version + 1 + k),
        "provision".to_string(),
        format!("report-ack:{}", f.acknowledged + 1 + k),
        format!("cert-install:user-{:012x}", 0xc0de_0000 + k),
        format!("cert-revoked:{:x}", 0x1000 + k),
        format!("anchor:{}", sha(2)),
        format!("lock-order:{}", nonce(3)),
        format!("revoke-order:{}", nonce(4)),
        format!("account-order:{}", nonce(5)),
        format!("agent-ca:{}", sha(6)),
    ]
}

/// `form:value` as `m/form/value` (`provision` as `m/provision`).
fn meter_namespace(id: &str) -> String {
    match id.split_once(':') {
        Some((form, value)) => format!("m/{form}/{value}"),
        None => format!("m/{id}"),
    }
}

/// Whether the ledger holds a row under exactly `id` (read from the file).
fn has_row(sb: &Sandbox, id: &str) -> Result<bool> {
    let conn = Connection::open_with_flags(
        sb.ledger_path(),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM journal WHERE request_id = ?1",
        [id],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// A voucher from the sandbox authority: (signed bytes, its sequence).
fn voucher(sb: &Sandbox, meter_id: &str) -> Result<(Vec<u8>, u64)> {
    let out_path = sb.dir.join("ids-voucher.pem");
    let bin = sb.bin_dir.join("meter-authority");
    let out = std::process::Command::new(&bin)
        .arg("--dir")
        .arg(&sb.authority)
        .args(["voucher", "--meter", meter_id, "--amount", "1000", "--out"])
        .arg(&out_path)
        .output()
        .map_err(io(&bin))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let seq = text
        .split_whitespace()
        .skip_while(|w| *w != "sequence")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            TortureError::Setup(format!(
                "meter-authority voucher: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })?;
    let bytes = std::fs::read(&out_path).map_err(io(&out_path))?;
    Ok((bytes, seq))
}

/// Both phases; adds to the access test's tally.
pub async fn run(sb: &Sandbox, probe: &str, t: &mut Tally) -> Result<()> {
    let root = sb.connect().await?;
    internal(sb, probe, &root, t).await?;
    shared(sb, probe, &root, t).await
}

async fn internal(sb: &Sandbox, probe: &str, root: &Meter1Proxy<'_>, t: &mut Tally) -> Result<()> {
    let d = root
        .status()
        .await
        .map_err(|e| TortureError::Meter(e.to_string()))?;
    let meter_id = match d.get(skey::METER_ID).map(|v| &**v) {
        Some(Value::Str(s)) => s.as_str().to_string(),
        _ => return Err(TortureError::Meter("Status has no meter id".into())),
    };
    // The voucher is issued now; the user only needs to guess its sequence.
    let (signed, next_voucher) = voucher(sb, &meter_id)?;
    let facts = Facts {
        next_voucher,
        rows: number(&d, skey::LEDGER_ROWS),
        rates_version: number(&d, skey::RATES_VERSION),
        acknowledged: number(&d, skey::ACKNOWLEDGED_REPORT),
        lock_nonce: match d.get(skey::LOCK_NONCE).map(|v| &**v) {
            Some(Value::Str(s)) => s.as_str().to_string(),
            _ => String::new(),
        },
    };
    t.iterations += 1;
    let (mut taken, mut tried, mut first) = (0u64, 0u64, String::new());
    for (k, (method, sig)) in (0u64..).zip(METHODS) {
        for legacy in internal_ids(&facts, k) {
            for id in [meter_namespace(&legacy), legacy] {
                let existed = has_row(sb, &id)?;
                let args = ProbeArgs {
                    request_id: Some(id.clone()),
                    message: Some(format!("torture ids {method} {id}")),
                };
                let (line, _) = call_as(
                    PLAIN_USER,
                    probe,
                    &sb.bus,
                    (meter_proto::INTERFACE, method, None),
                    sig,
                    &args,
                )?;
                t.operations += 1;
                tried += 1;
                let took = !existed && has_row(sb, &id)?;
                if took {
                    taken += 1;
                    t.unauthorized += 1;
                    if first.is_empty() {
                        first = format!("{method} {id:?}");
                    }
                }
                eprintln!(
                    "torture: ids    {PLAIN_USER:<15} {method:<15} {id:.60} got {line:.40} -> {}",
                    if took { "TOOK THE ID" } else { "ok" }
                );
            }
        }
    }
    if taken > 0 {
        t.note(format!(
            "{PLAIN_USER} made ledger rows under the meter's own ids with {taken} of {tried} calls (first: {first})"
        ));
    }
    // What the ids are for: the voucher the user tried first still credits.
    t.operations += 1;
    match root.recharge(&signed).await {
        Ok(_) => {}
        Err(e) => t.fault(format!(
            "after {taken} internal ids taken, the administrator's recharge of voucher {next_voucher} failed: {e}"
        )),
    }
    Ok(())
}

async fn shared(sb: &Sandbox, probe: &str, root: &Meter1Proxy<'_>, t: &mut Tally) -> Result<()> {
    let postmark = |user: &'static str, id: &str, message: &str| {
        let args = ProbeArgs {
            request_id: Some(id.to_string()),
            message: Some(message.to_string()),
        };
        call_as(
            user,
            probe,
            &sb.bus,
            (meter_proto::INTERFACE, "Postmark", None),
            "h,s",
            &args,
        )
        .map(|(line, _)| line)
    };
    t.iterations += 1;
    // Different messages under one id.
    let a = postmark(PLAIN_USER, "torture-shared-1", "alpha")?;
    let b = postmark(SECOND_USER, "torture-shared-1", "beta, not alpha")?;
    t.operations += 2;
    if !a.starts_with("reply") {
        t.fault(format!("{PLAIN_USER} Postmark torture-shared-1: {a}"));
    }
    if !b.starts_with("reply") {
        t.fault(format!(
            "{SECOND_USER} Postmark torture-shared-1 (another uid used the id): refused: {b}"
        ));
    }
    // The same message under one id: each gets a product of its own, charged.
    let before = status(root).await?;
    let a = postmark(PLAIN_USER, "torture-shared-2", "the same message")?;
    let mid = status(root).await?;
    let b = postmark(SECOND_USER, "torture-shared-2", "the same message")?;
    let after = status(root).await?;
    t.operations += 2;
    if !a.starts_with("reply") || !b.starts_with("reply") {
        t.fault(format!("Postmark torture-shared-2: {a} / {b}"));
    } else if a == b {
        t.losses += 1;
        t.note(format!(
            "{SECOND_USER} Postmark torture-shared-2 got {PLAIN_USER}'s token (the same reply), charged {}",
            after.paid().saturating_sub(mid.paid())
        ));
    } else if after.paid() <= mid.paid() || mid.paid() <= before.paid() {
        t.losses += 1;
        t.note("two users' postmarks under one request id were not both charged");
    }
    eprintln!("torture: ids    two users, one request id: {a:.40} / {b:.40}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_in_both_namespaces() {
        let f = Facts {
            next_voucher: 2,
            rows: 4,
            rates_version: 1,
            acknowledged: 0,
            lock_nonce: String::new(),
        };
        let ids = internal_ids(&f, 0);
        assert_eq!(ids.len(), 13);
        assert_eq!(ids[0], "voucher:2");
        assert_eq!(ids[1], "settle:5");
        assert_eq!(ids[3], "rates:v2");
        assert_eq!(meter_namespace("voucher:2"), "m/voucher/2");
        assert_eq!(meter_namespace("provision"), "m/provision");
        // Each method gets ids of its own.
        assert_ne!(internal_ids(&f, 1)[0], ids[0]);
        assert!(ids.iter().all(|i| i.len() <= 128));
    }
}
