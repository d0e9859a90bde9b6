//! `inspect` and `lookup` of the command line (see the library's
//! `inspect`, `reconcile` and `lookup`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use meter_authority::inspect::{Inspection, Periods};
use meter_authority::lookup::{Answer, Looked};
use meter_authority::{read_bounded, write_file, Authority, AuthorityError, Result};

/// Exit status of a refused inspection.
pub const REFUSED: u8 = 3;
/// Exit status of a lookup that flags the object.
const FLAGGED: u8 = 3;
/// Largest segment read.
const MAX_SEGMENT: u64 = 1 << 31;

/// The arguments of `inspect`.
pub struct InspectArgs {
    pub report: PathBuf,
    pub segment: Option<PathBuf>,
    pub without_segment: bool,
    pub out: PathBuf,
    pub lock_out: Option<PathBuf>,
    pub periods: Periods,
}

pub fn read_segment(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .map_err(|e| AuthorityError::io(path, e))?
        .len();
    if len > MAX_SEGMENT {
        return Err(AuthorityError::Invalid(format!(
            "{}: a segment of {len} bytes is more than {MAX_SEGMENT}",
            path.display()
        )));
    }
    std::fs::read(path).map_err(|e| AuthorityError::io(path, e))
}

/// `meter-authority inspect`.
pub fn inspect(dir: &Path, args: InspectArgs, t: i64) -> Result<ExitCode> {
    let InspectArgs {
        report,
        segment,
        without_segment,
        out,
        lock_out,
        periods,
    } = args;

    check_periods(&periods)?;
    let a = Authority::open(dir)?;
    let signed = read_bounded(&report)?;
    let i = if without_segment {
        a.inspect(&signed, periods, t)?
    } else {
        let seg_path = segment.unwrap_or_else(|| report.with_extension("seg"));
        let seg = read_segment(&seg_path)?;
        // The TPM's attestation comes beside the report (`meterctl report`
        // writes REPORT.att); a meter that does not attest sends none.
        let att_path = report.with_extension("att");
        let att = match att_path.exists() {
            true => Some(read_bounded(&att_path)?),
            false => None,
        };
        match a.inspect_segment(&signed, &seg, att.as_deref(), periods, t) {
            Ok(i) => i,
            Err(AuthorityError::Discrepancy {
                meter_id,
                report_sequence,
                findings,
                lock_order,
            }) => {
                let lock_path = lock_out.unwrap_or_else(|| out.with_extension("lock-order.pem"));
                write_file(&lock_path, lock_order.1.as_bytes())?;
                print_refused(
                    &meter_id,
                    report_sequence,
                    &findings,
                    Some(&lock_order.0.nonce),
                    &lock_path,
                );
                return Ok(ExitCode::from(REFUSED));
            }
            Err(e) => return Err(e),
        }
    };
    write_file(&out, i.pem.as_bytes())?;
    print_ack(&i, &out);
    Ok(ExitCode::SUCCESS)
}

/// Refuses a warning period at or past the lock.
pub fn check_periods(periods: &Periods) -> Result<()> {
    if let (Some(p), Some(w)) = (periods.period_days, periods.warn_days) {
        if w >= p {
            return Err(AuthorityError::Invalid(format!(
                "--warn-days {w} must be less than --period-days {p}: the meter warns that the inspection is due before it locks"
            )));
        }
    }
    Ok(())
}

/// What `inspect` says of a refused report (on stderr).
pub fn print_refused(
    meter_id: &str,
    report_sequence: u64,
    findings: &[String],
    nonce: Option<&str>,
    lock_path: &Path,
) {
    eprintln!(
        "meter-authority: report {report_sequence} of meter {meter_id} REFUSED ({} discrepancies):",
        findings.len()
    );
    for f in findings {
        eprintln!("  - {f}");
    }
    eprintln!(
        "forced lock order {}for {meter_id} written to {} (apply with meterctl lock apply)",
        nonce.map(|n| format!("{n} ")).unwrap_or_default(),
        lock_path.display()
    );
}

/// What `inspect` says of a report it acknowledged, written to `out`.
pub fn print_ack(i: &Inspection, out: &Path) {
    let r = &i.report;
    println!(
        "report {} of meter {} verified (time {}, AR {} + DR {} = CT {}, {} pieces{})",
        r.sequence,
        r.meter_id,
        r.time,
        r.ascending,
        r.descending,
        r.control_total,
        r.pieces,
        if r.lock_reason.is_empty() {
            String::new()
        } else {
            format!(", locked: {}", r.lock_reason)
        }
    );
    match &i.reconciled {
        Some(rec) => println!(
            "rows {}..={} reconciled: head {}, control total {} of {} issued{}",
            rec.rows.0,
            rec.rows.1,
            rec.point.head,
            rec.point
                .registers
                .control_total
                .saturating_add(rec.point.registers.postage.control_total),
            rec.issued,
            if rec.outstanding.is_empty() {
                String::new()
            } else {
                format!(" (vouchers not credited yet: {:?})", rec.outstanding)
            }
        ),
        None => println!("NOT reconciled: acknowledged on the report's word (--without-segment)"),
    }
    if let Some(rec) = &i.reconciled {
        println!(
            "unclean starts: {} in this segment{}, {} in all reports so far",
            rec.unclean.len(),
            match rec.unclean.is_empty() {
                true => String::new(),
                false => format!(" (rows {:?})", rec.unclean),
            },
            rec.unclean_total
        );
    }
    println!("acknowledgement written to {}", out.display());
}

/// `meter-authority lookup`.
pub fn lookup(dir: &Path, object: &Path, t: i64) -> Result<ExitCode> {
    let a = Authority::open(dir)?;
    let l = a.lookup(&read_bounded(object)?, t)?;
    Ok(print_looked(l))
}

/// What `lookup` says of an answer, and its exit status.
pub fn print_looked(l: Looked) -> ExitCode {
    let (line, flagged) = match l.answer {
                Answer::Reported { seq, time_ms } => (
                    format!("reported: row {seq}, time {time_ms} ms"),
                    false,
                ),
                Answer::NotReportedYet { acknowledged_rows } => (
                    format!("not reported yet (rows acknowledged so far: {acknowledged_rows})"),
                    false,
                ),
                Answer::Unreported {
                    acknowledged_rows,
                    acknowledged_time_ms,
                } => (
                    format!(
                        "UNREPORTED: older than the last acknowledged row ({acknowledged_rows}, time {acknowledged_time_ms} ms) yet in no reported row: made outside the meter's ledger"
                    ),
                    true,
                ),
                Answer::AnotherDigest { seq, time_ms } => (
                    format!(
                        "REPORTED WITH ANOTHER DIGEST: row {seq} (time {time_ms} ms) holds another product under this serial (duplicate serial)"
                    ),
                    true,
                ),
            };
    println!(
        "{} of meter {} (time {}): {line}",
        l.what, l.meter_id, l.time
    );
    match flagged {
        true => ExitCode::from(FLAGGED),
        false => ExitCode::SUCCESS,
    }
}
