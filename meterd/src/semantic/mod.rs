//! The ledger verifies what it was told (issue 12, item 2).
//!
//! The hash chain and the seal prove that the rows are the ones the meter's
//! key sealed; they cannot prove that the meter was *told* what the rows
//! say, because whoever holds that key (root, on today's key model) can
//! rewrite a row and seal the result. What root cannot make is the
//! authority's signature. So every row that brings value or authority
//! from outside keeps the signed object that brought it, and this module
//! walks those rows in seq order and verifies each object again, against
//! what was in force at that row:
//!
//! | row | what must hold |
//! |---|---|
//! | Provision `installed` | the first; certificates for this meter's identity key, chaining to the root it brings (that root is trusted on first use: the authority alone can tell its own bundle, from the certificate every report embeds) |
//! | Provision `anchor-add`/`anchor-replace` | the signed update after the bundle verifies with an anchor in force; for this meter; the new root is the key's; the new anchor list is the old one plus it |
//! | Rates `v<N>` | signed by an anchor in force; version N = key = note, newer than every table before |
//! | Credit (voucher) | signed by an anchor in force; this meter; credit = amount; key and note = its sequence; a sequence never credited; no current account; the row's register pair is the one the voucher names (postage only after the split) |
//! | Event `funds-split` | the authority's funds order verifies; this meter; key `m/funds/split`; once |
//! | Event `postal-key` | the authority's delivery verifies; this meter; the key names the delivery |
//! | Lock | a known reason; a nonce no lock used before; a lock order's key only on a `forced` lock |
//! | Unlock `clear`/`reanchor` | the clear order verifies; this meter; names the lock in force (and the key names it); `reanchor` exactly for a `tamper` lock |
//! | Unlock or Event `report-ack` | the acknowledgement verifies; this meter; acknowledges a report made before it, as made (request id, sequence, time, digest), newer than the last; as an Unlock, only of the `inspection-overdue` lock the report was made under, or of a `period-closed` lock with an account the report belongs to |
//! | Event `account-order` | verifies; this meter; nonce = key, new; not older than the order in force; no prepaid funds at the row |
//! | Event `agent-ca`, Debit `cert-install` | the certificate chains to an anchor in force (a CA for this meter named by the key; not a CA) |
//! | Debit `revoke` | the meter's confirmation names this meter and the key's order, once; the authority's order kept after it verifies, is for this meter and is the one confirmed (serial, reason, forced); `revoke-paid` debits its fee, `revoke-due` nothing |
//! | Debit `revoke-settle` | settles a due row before it, once, for the amount due |
//! | Debit `credit-line` | the grant verifies and is signed by an anchor itself; this meter's key; the note's serial, once; the first payment shows the whole line |
//! | Debit `payment-certificate` | continues its line (sequence, remaining) |
//! | any row | credit only on a voucher's row or, with a current account in force, a sale booked credit = debit; a debit only on a Debit row; the product is the one the chain holds |
//!
//! Used once: the journal's UNIQUE key column is the meter's first fence,
//! but root can drop it; the walk keeps its own sets (voucher sequences,
//! lock nonces, order ids, line serials), and the key's detail must be the
//! signed object's own identifier, so a replayed object under a fresh key
//! is caught too.
//!
//! A row that does not check out is `tamper` with that row named, exactly
//! as a broken chain is, whatever the seal says. A verified `reanchor` (the
//! authority cleared a `tamper` lock: it accepts the ledger as it stands)
//! forgives what came before it, as it does for the chain.
//!
//! When: at start, on the rows after the last checkpoint, before the meter
//! answers ([`confirm`] on the verdict of the ledger's own audit), and in
//! every full audit. Rows up to the checkpoint are still read, without
//! their signatures verified, for the state later rows are judged by
//! (anchors, the lock, what was used). Signatures are verified at the row's
//! time (see `objects::open`).
//!
//! Trust anchors are tracked while walking: the walk verifies with the
//! anchors it verified itself (the first provisioning's root, then each
//! update signed by one of them). A Provision row whose update does not
//! verify still gives the meter its anchors, but not the walk: only a
//! `reanchor` verified with the walk's anchors accepts them (an anchor
//! planted by a forged row cannot sign its own pardon).
//!
//! Older ledgers: before issue 12 every row that brings value already kept
//! its signed object (voucher, rate table, clear order, acknowledgement,
//! account order, credit grant, certificates) except trust-anchor updates,
//! whose rows kept only the new bundle. Such a row is refused (`tamper`,
//! the row named), not accepted as legacy before some marker row: whoever
//! can rewrite and reseal the ledger can move a marker too, and a root
//! accepted unverified would sign everything after it. The authority
//! accepts the row with a clear order for that `tamper` lock signed by a
//! root the meter trusted before it (after a rollover, its retired root).
//!
//! What it does not do: check that a sale's debit is the price of the rate
//! table in force (the authority re-derives prices from the rows it is
//! sent). Lock rows of a `forced` lock and revoke rows keep the authority's
//! order and it is verified; rows written before they kept it read as
//! `tamper`, which the authority's clear order re-anchors (SECURITY.md,
//! "Upgrading").

mod authority;
mod funds;
mod objects;
mod orders;
mod walk;

use std::time::Instant;

pub use walk::Walk;

use crate::error::{Result, ServiceError};
use crate::ledger::{AuditReport, EntryKind, Ledger, RowFilter, Verdict, SPLIT_NOTE};
use crate::service::Service;

/// Note of the Provision row of the first provisioning.
pub const NOTE_INSTALLED: &str = "installed";
/// Note of a Provision row that adds a trust anchor.
pub const NOTE_ANCHOR_ADD: &str = "anchor-add";
/// Note of a Provision row that puts a new trust anchor first.
pub const NOTE_ANCHOR_REPLACE: &str = "anchor-replace";
/// Note of the Unlock row of a clear order.
pub const NOTE_CLEAR: &str = "clear";
/// Note of the Unlock row of a clear order for a `tamper` lock.
pub const NOTE_REANCHOR: &str = "reanchor";
/// Note of the Event row that records a postal-key delivery (here, with the
/// other notes the audit reads, so the audit imports no service).
pub const NOTE_POSTAL_KEY: &str = "postal-key";
/// Note of the row that records an applied acknowledgement.
pub const NOTE_REPORT_ACK: &str = "report-ack";
/// Note of the row that records an applied account order.
pub const NOTE_ACCOUNT_ORDER: &str = "account-order";
/// Note of the rows that install an agent-CA certificate.
pub const NOTE_AGENT_CA: &str = "agent-ca";
/// Note of the revoke Debit row whose fee was debited.
pub const NOTE_REVOKE_PAID: &str = "revoke-paid";
/// Note of the revoke Debit row (debit 0) whose fee is due.
pub const NOTE_REVOKE_DUE: &str = "revoke-due";
/// Note of the Debit row settling a due fee.
pub const NOTE_REVOKE_SETTLE: &str = "revoke-settle";
/// Note prefix of the row that opened a line of credit.
pub const NOTE_CREDIT_OPEN: &str = "credit-open ";
/// Note prefix of a payment row.
pub const NOTE_CREDIT_PAY: &str = "credit-pay ";

/// Rows read per query: the reader connection is released between pages,
/// so lookups of the sales going on meanwhile do not wait for the walk.
pub const PAGE: usize = 256;

/// A row that does not check out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Its sequence number.
    pub seq: u64,
    /// What is wrong with it.
    pub detail: String,
}

/// What a walk did and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Rows walked (those that bring value or authority, and rows moving money outside a sale).
    pub rows: u64,
    /// Signatures verified.
    pub verified: u64,
    /// Findings forgiven by a verified `reanchor`.
    pub forgiven: u64,
    /// Last row looked at.
    pub upto: u64,
    /// Time taken, ms.
    pub millis: u64,
    /// The first row that does not check out and is not forgiven.
    pub finding: Option<Finding>,
}

/// The rows the walk reads (see the table in the module doc).
pub fn filter() -> RowFilter {
    RowFilter {
        kinds: vec![
            EntryKind::Provision,
            EntryKind::Rates,
            EntryKind::Credit,
            EntryKind::Lock,
            EntryKind::Unlock,
        ],
        event_notes: [
            NOTE_ACCOUNT_ORDER,
            NOTE_REPORT_ACK,
            NOTE_AGENT_CA,
            NOTE_POSTAL_KEY,
            SPLIT_NOTE,
        ]
        .map(String::from)
        .to_vec(),
        debit_services: vec![
            Service::Revoke,
            Service::CreditLine,
            Service::PaymentCertificate,
            Service::StatusReport,
            Service::CertificateInstall,
        ],
        debit_notes: vec![NOTE_REVOKE_SETTLE.into()],
    }
}

/// Walks the ledger of `meter_id` up to its last row now, verifying the
/// signatures of rows after `verify_after` (0: all of them). Pages are read
/// on the ledger's reader connection and judged on a blocking thread.
pub async fn check(ledger: &Ledger, meter_id: &str, verify_after: u64) -> Result<Summary> {
    let started = Instant::now();
    let upto = ledger.state().rows;
    let mut walk = Walk::new(meter_id, verify_after);
    let mut after = 0;
    loop {
        let rows = ledger.rows(after, upto, PAGE, filter()).await?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        let more = rows.len() == PAGE;
        walk = tokio::task::spawn_blocking(move || {
            for r in &rows {
                walk.row(r);
            }
            walk
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("ledger object check task: {e}")))?;
        if !more {
            break;
        }
    }
    Ok(Summary {
        upto,
        millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        ..walk.finish()
    })
}

/// The hook after the ledger's audit at start (issue 14): that audit
/// verified the rows after its signed checkpoint (`report.from_seq`); the
/// rows up to it are the background audit's
/// ([`crate::meter::Meter::audit_history`], which walks them all with
/// [`confirm`] and locks on a finding). When no row after the checkpoint
/// is one the walk reads (the usual case: sales since), the start reads
/// only those rows. Otherwise the walk runs from genesis, as the earlier
/// rows make the state later ones are judged by, and verifies signatures
/// only after the checkpoint.
pub async fn confirm_start(
    ledger: &Ledger,
    meter_id: &str,
    report: AuditReport,
) -> Result<AuditReport> {
    if !matches!(report.verdict, Verdict::Clean | Verdict::RolledForward) {
        return Ok(report);
    }
    let from = report.from_seq;
    if from > 0 {
        let upto = ledger.state().rows;
        if ledger.rows(from, upto, 1, filter()).await?.is_empty() {
            tracing::info!(
                after = from,
                "no ledger objects after the checkpoint; earlier ones are verified in the background"
            );
            return Ok(report);
        }
    }
    confirm(ledger, meter_id, from, report).await
}

/// The hook after the ledger's own audit (at start and in every full
/// audit): when its verdict is clean, walks the rows (see [`check`]) and
/// turns a finding into `tamper` with the row named; any other verdict
/// stands as it is. The walk's time is added to the report's.
pub async fn confirm(
    ledger: &Ledger,
    meter_id: &str,
    verify_after: u64,
    mut report: AuditReport,
) -> Result<AuditReport> {
    if !matches!(report.verdict, Verdict::Clean | Verdict::RolledForward) {
        return Ok(report);
    }
    let s = check(ledger, meter_id, verify_after).await?;
    report.millis = report.millis.saturating_add(s.millis);
    match s.finding {
        None => tracing::info!(
            rows = s.rows,
            verified = s.verified,
            forgiven = s.forgiven,
            millis = s.millis,
            "ledger objects verified"
        ),
        Some(f) => {
            tracing::error!(seq = f.seq, detail = %f.detail, "ledger object check failed");
            report.verdict = Verdict::Tamper {
                detail: format!("row {}: {}", f.seq, f.detail),
                first_bad_seq: Some(f.seq),
            };
        }
    }
    Ok(report)
}
