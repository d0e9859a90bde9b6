//! `meterctl sync`: the meter talks to its provider (`meter-authority
//! serve`) in one command: it makes a report with its ledger segment and
//! attestation, uploads it, applies the answer (the acknowledgement, or the
//! forced lock order of a refused report), fetches what is pending for the
//! meter (vouchers bought for it, lock, clear-lock, revoke and
//! current-account orders, rate tables, trust-anchor updates) with the
//! token the upload's answer carried (`meter-pending-token`: the signed
//! report is the meter's proof, so the list needs no signature of its
//! own), and applies each. A rate table or trust anchor the meter finds
//! stale (it holds that version or a newer one, or that root) is done,
//! like one already applied. After a rollover of the provider's root the
//! answer to the upload is signed by the new root: the pending anchor
//! updates are applied first (see `anchors_first`).
//!
//! Safe to interrupt and rerun at any point: every object is applied by the
//! meter once (its ledger row carries the object's key), so one applied
//! before an interruption comes back from the meter as a replay and counts
//! as "already applied", never as an error or a second credit; the provider
//! lists an object as pending until an acknowledged report shows it
//! applied, so one not applied yet is offered again. A report is made on
//! every run (free when the meter is locked, like any report).
//!
//! The provider's URL: `--provider URL`, else `$METER_PROVIDER_URL`, else
//! the systemd credential `meter-provider` (`$CREDENTIALS_DIRECTORY`), else
//! the first line of `/etc/meterd/provider.url`.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Method;
use meter_proto::MeterError;
use serde_json::{json, Value};

use super::provider::{Answer, Provider};
use super::{Ctx, MAX_OBJECT};
use crate::error::CtlError;
use crate::output::{format_unix_time, Output};

/// Where the provider's URL is read when no flag or variable gives it.
pub const PROVIDER_FILE: &str = "/etc/meterd/provider.url";
/// The media type of a report upload (`meter-authority serve`).
const UPLOAD: &str = "application/vnd.meterd.report-upload";
/// Largest answer to an upload (a signed acknowledgement or lock order).
const MAX_ANSWER: usize = MAX_OBJECT as usize;
/// Largest list of pending objects (at most 256 objects of a few KiB).
const MAX_PENDING: usize = 16 * 1024 * 1024;

/// Arguments of `meterctl sync`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The provider's base URL (http://HOST[:PORT][/PREFIX]); default:
    /// $METER_PROVIDER_URL, the systemd credential `meter-provider`, or /etc/meterd/provider.url.
    #[arg(long, value_name = "URL")]
    pub provider: Option<String>,

    /// Seconds allowed for each request to the provider.
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_timeout: u64,

    /// Stop after this step (`upload`: the answer is applied, pending
    /// objects wait for the next run); for troubleshooting and tests.
    #[arg(long, value_name = "STEP", value_parser = ["upload"])]
    pub stop_after: Option<String>,
}

/// The provider's URL and where it came from.
fn provider_url(flag: Option<String>) -> Result<(String, String), CtlError> {
    if let Some(u) = flag {
        return Ok((u, "--provider".into()));
    }
    if let Ok(u) = std::env::var("METER_PROVIDER_URL") {
        if !u.trim().is_empty() {
            return Ok((u, "METER_PROVIDER_URL".into()));
        }
    }
    let mut files: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::var("CREDENTIALS_DIRECTORY") {
        files.push(Path::new(&d).join("meter-provider"));
    }
    files.push(PathBuf::from(PROVIDER_FILE));
    for f in files {
        if let Ok(text) = std::fs::read_to_string(&f) {
            if let Some(line) = text.lines().map(str::trim).find(|l| !l.is_empty()) {
                return Ok((line.to_owned(), f.display().to_string()));
            }
        }
    }
    Err(CtlError::Usage(format!(
        "no provider: give --provider URL, set METER_PROVIDER_URL, or write the URL to {PROVIDER_FILE}"
    )))
}

/// The upload body `meter-authority serve` reads: u32 (big-endian) length
/// and bytes of the report, u32 length and bytes of the attestation, then
/// the segment (`meter_authority::serve::frame_upload`).
fn frame_upload(report: &[u8], attestation: &[u8], segment: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + report.len() + attestation.len() + segment.len());
    for part in [report, attestation] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(segment);
    out
}

/// What applying one object came to.
fn outcome(r: Result<(), MeterError>) -> (&'static str, Option<String>) {
    match r {
        Ok(()) => ("applied", None),
        Err(MeterError::Replay(_)) => ("already-applied", None),
        Err(MeterError::Stale(m)) => ("stale", Some(m)),
        Err(e) => ("failed", Some(CtlError::from(e).message())),
    }
}

/// Runs `meterctl sync`.
pub async fn run(ctx: &Ctx, args: Args) -> Result<Output, CtlError> {
    let (url, source) = provider_url(args.provider)?;
    let provider = Provider::parse(&url, Duration::from_secs(args.http_timeout))?;
    let meter = ctx.meter().await?;
    let meter_id = meter
        .meter_id()
        .await
        .map_err(|e| CtlError::from(MeterError::from(e)))?;
    if meter_id.is_empty() {
        return Err(MeterError::NotProvisioned("the meter has no identity yet".into()).into());
    }
    let mut human = format!(
        "provider {} (from {source}), meter {meter_id}\n",
        provider.url()
    );

    // 1. The report, its segment (an unlinked temporary file) and attestation.
    let request_id = format!("sync-{}", super::postmark::random_request_id()?);
    let report = meter.report(&request_id).await?;
    let seg_path = std::env::temp_dir().join(format!("meterctl-{request_id}.seg"));
    let file_err = |source| CtlError::File {
        path: seg_path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&seg_path)
        .map_err(file_err)?;
    let _ = std::fs::remove_file(&seg_path);
    let (first, last, bytes) =
        super::report::segment_into(&meter, &request_id, &file, &seg_path).await?;
    let mut segment = Vec::with_capacity(usize::try_from(bytes).unwrap_or(0));
    file.rewind()
        .and_then(|()| file.read_to_end(&mut segment))
        .map_err(file_err)?;
    let attestation = meter.report_attestation(&request_id).await?;
    human.push_str(&format!(
        "report {request_id}: rows {first}..={last} ({bytes} bytes of segment)\n"
    ));

    // 2. The upload and its answer.
    let path = format!("/v1/meters/{meter_id}/reports");
    let body = frame_upload(&report, &attestation, &segment);
    let a = provider
        .call(Method::POST, &path, Some(UPLOAD), None, body, MAX_ANSWER)
        .await?;
    let token = a.pending_token.clone();
    let mut out = json!({
        "provider": provider.url(),
        "meter_id": meter_id,
        "report": {"request_id": request_id, "segment_first": first, "segment_last": last, "segment_bytes": bytes},
    });
    let rollover = Rollover {
        meter: &meter,
        provider: &provider,
        meter_id: &meter_id,
        token: token.as_deref(),
    };
    match a.status {
        200 => {
            let due = rollover
                .applying(&mut human, || meter.acknowledge_report(&a.body))
                .await??;
            human.push_str(&format!(
                "report acknowledged; next report due {}\n",
                format_unix_time(due)
            ));
            out["upload"] = json!("acknowledged");
            out["inspection_due"] = json!(due);
        }
        409 => {
            let findings: Value = a
                .findings
                .as_deref()
                .and_then(|f| serde_json::from_str(f).ok())
                .unwrap_or(Value::Null);
            let r = rollover
                .applying(&mut human, || meter.apply_lock_order(&a.body))
                .await?;
            let (result, error) = outcome(r);
            human.push_str(&format!(
                "report REFUSED by the provider: {findings}\nits lock order: {result}{}\n",
                error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
            out["upload"] = json!("refused");
            out["findings"] = findings;
            out["lock_order"] = json!({"result": result, "error": error});
        }
        _ => return Err(provider.refused("report upload", &a)),
    }
    if args.stop_after.as_deref() == Some("upload") {
        human.push_str("stopped after the upload (--stop-after upload)\n");
        out["stopped_after"] = json!("upload");
        return Ok(Output::new(human, out));
    }

    // 3. What is pending, applied in the provider's order.
    // The upload's answer carries the token that lets this meter read its
    // pending list (none: an older provider, or one that lets the caller in).
    let a = provider
        .call(
            Method::GET,
            &format!("/v1/meters/{meter_id}/pending"),
            None,
            token.as_deref(),
            Vec::new(),
            MAX_PENDING,
        )
        .await?;
    let (applied, more, failed) = apply_pending(&meter, &provider, &a, &mut human).await?;
    out["pending"] = Value::Array(applied);
    out["more"] = json!(more);
    let state = meter.state().await.unwrap_or_default();
    let descending = meter.descending().await.ok();
    human.push_str(&format!(
        "state: {}; descending register: {} minor units\n",
        if state.is_empty() { "?" } else { &state },
        descending.map_or("?".into(), |d| d.to_string())
    ));
    out["state"] = json!(state);
    out["descending"] = json!(descending);
    let mut o = Output::new(human, out);
    if let Some(code) = failed {
        o.warnings
            .push("some pending objects were not applied (see above); run sync again".into());
        o.code = code;
    }
    Ok(o)
}

/// What a sync needs to take the provider's new root before its answer.
struct Rollover<'a> {
    meter: &'a meter_proto::Meter1Proxy<'a>,
    provider: &'a Provider,
    meter_id: &'a str,
    token: Option<&'a str>,
}

impl Rollover<'_> {
    /// `apply`s the upload's answer; on `BadSignature`, applies the pending
    /// anchor updates first ([`anchors_first`]) and `apply`s it once more.
    /// The outer error is the pending list's; the inner, the answer's.
    async fn applying<T, F, Fut>(
        &self,
        human: &mut String,
        apply: F,
    ) -> Result<Result<T, MeterError>, CtlError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, MeterError>>,
    {
        match apply().await {
            Err(MeterError::BadSignature(why)) => {
                anchors_first(self, human, why).await?;
                Ok(apply().await)
            }
            r => Ok(r),
        }
    }
}

/// The provider's answer to the upload does not verify under the roots the
/// meter holds: after `meter-authority rollover` the provider signs with its
/// new root, which the meter takes only from the anchor update its current
/// root signed, and that update waits in the pending list. So the list is
/// fetched (the upload's answer carried the token) and its anchor updates
/// are applied first; the caller then applies the answer once more. With
/// no anchor update pending (none applied, none already held) the answer's
/// signature error stands: it is not the provider's rollover.
async fn anchors_first(r: &Rollover<'_>, human: &mut String, why: String) -> Result<(), CtlError> {
    let (meter, provider, meter_id, token) = (r.meter, r.provider, r.meter_id, r.token);
    let a = provider
        .call(
            Method::GET,
            &format!("/v1/meters/{meter_id}/pending"),
            None,
            token,
            Vec::new(),
            MAX_PENDING,
        )
        .await?;
    if a.status != 200 {
        return Err(provider.refused("pending objects", &a));
    }
    let list: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
    let mut taken = 0;
    for o in list["objects"].as_array().into_iter().flatten() {
        if o["kind"] != "anchor" {
            continue;
        }
        let Some(der) = o["der_hex"].as_str().and_then(|h| hex::decode(h).ok()) else {
            continue;
        };
        let (result, error) = outcome(meter.update_trust_anchor(&der).await.map(|_| ()));
        human.push_str(&format!(
            "{} (before the answer, which its new root signed): {result}{}\n",
            o["id"].as_str().unwrap_or("?"),
            error.map(|e| format!(" ({e})")).unwrap_or_default()
        ));
        if result != "failed" {
            taken += 1;
        }
    }
    if taken == 0 {
        return Err(MeterError::BadSignature(why).into());
    }
    Ok(())
}

/// Applies each object of a pending answer; returns the results, whether
/// more wait, and the exit code of the first failure.
async fn apply_pending(
    meter: &meter_proto::Meter1Proxy<'_>,
    provider: &Provider,
    a: &Answer,
    human: &mut String,
) -> Result<(Vec<Value>, bool, Option<i32>), CtlError> {
    if a.status != 200 {
        return Err(provider.refused("pending objects", a));
    }
    let bad = |why: &str| CtlError::Provider {
        url: provider.url().to_owned(),
        message: format!("pending objects: {why}"),
    };
    let list: Value = serde_json::from_slice(&a.body).map_err(|_| bad("not JSON"))?;
    let objects = list["objects"]
        .as_array()
        .ok_or_else(|| bad("no objects"))?;
    let (mut results, mut failed) = (Vec::new(), None);
    for o in objects {
        let id = o["id"].as_str().unwrap_or("?");
        let kind = o["kind"].as_str().unwrap_or("?");
        let der = hex::decode(o["der_hex"].as_str().unwrap_or_default())
            .map_err(|_| bad("an object's der_hex is not hex"))?;
        let r = match kind {
            "voucher" => meter.recharge(&der).await.map(|_| ()),
            "clear-lock" => meter.clear_lock(&der).await,
            "lock-order" => meter.apply_lock_order(&der).await,
            "rates" => meter.install_rates(&der).await,
            "revoke-order" => meter.apply_revoke_order(&der).await.map(|_| ()),
            "account-order" => meter.set_account_mode(&der).await.map(|_| ()),
            "anchor" => meter.update_trust_anchor(&der).await.map(|_| ()),
            _ => {
                human.push_str(&format!("{id}: kind {kind} not known here: skipped\n"));
                results.push(json!({"id": id, "kind": kind, "result": "skipped"}));
                continue;
            }
        };
        let code = r.as_ref().err().map(MeterError::exit_code);
        let (result, error) = outcome(r);
        if result == "failed" && failed.is_none() {
            failed = code;
        }
        let amount = o["amount"].as_u64();
        human.push_str(&format!(
            "{id}{}: {result}{}\n",
            amount
                .map(|a| format!(" ({a} minor units)"))
                .unwrap_or_default(),
            error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
        results.push(
            json!({"id": id, "kind": kind, "amount": amount, "result": result, "error": error}),
        );
    }
    if objects.is_empty() {
        human.push_str("nothing pending\n");
    }
    let more = list["more"].as_bool().unwrap_or(false);
    if more {
        human.push_str("more objects wait: run sync again\n");
    }
    Ok((results, more, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upload_frame_is_what_serve_reads() {
        assert_eq!(
            frame_upload(b"ab", b"", b"xyz"),
            [&[0, 0, 0, 2][..], b"ab", &[0, 0, 0, 0], b"xyz"].concat()
        );
    }

    #[test]
    fn a_replay_is_already_applied_not_a_failure() {
        assert_eq!(outcome(Ok(())).0, "applied");
        assert_eq!(
            outcome(Err(MeterError::Replay("voucher 3 used".into()))).0,
            "already-applied"
        );
        assert_eq!(outcome(Err(MeterError::Stale("x".into()))).0, "stale");
        assert_eq!(outcome(Err(MeterError::Locked("x".into()))).0, "failed");
    }

    #[test]
    fn the_flag_wins_over_the_environment() {
        let (u, s) = provider_url(Some("http://a".into())).unwrap();
        assert_eq!((u.as_str(), s.as_str()), ("http://a", "--provider"));
    }
}
