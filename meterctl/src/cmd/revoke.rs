//! `meterctl cert revoke|apply-revoke`: revocation of a user certificate (Fig. 6).
//!
//! `revoke` asks the meter to sign a request for the authority
//! (`meter-authority revoke REQUEST --out ORDER`); `apply-revoke` applies the
//! authority's order, which destroys the key in the TPM, marks the
//! certificate revoked and charges `revoke` — or, when the funds are short,
//! revokes anyway and confirms the payment due (the next recharge settles
//! it). Both write PEM (`openssl cms -verify -CAfile root.pem -purpose any`
//! opens them).

use std::path::PathBuf;

use meter_pki::revoke::{RevokeConfirmation, PAYMENT_DUE, REASONS};
use serde_json::json;

use super::certs::shown_serial;
use super::postmark::random_request_id;
use super::{read_input, Ctx, Sink, MAX_OBJECT};
use crate::amount::Currency;
use crate::error::CtlError;
use crate::output::Output;

/// `meterctl cert revoke SERIAL --reason R [-o FILE]`.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// Serial of the installed certificate (hex, as `meterctl certs` shows it).
    #[arg(value_name = "SERIAL")]
    pub serial: String,
    /// Reason: unspecified, keyCompromise, affiliationChanged, superseded,
    /// cessationOfOperation, privilegeWithdrawn.
    #[arg(long, value_name = "R", default_value = "unspecified")]
    pub reason: String,
    /// Where to write the request (PEM); default revoke-request.pem.
    #[arg(
        short = 'o',
        long,
        value_name = "FILE",
        default_value = "revoke-request.pem"
    )]
    pub out: PathBuf,
    /// Idempotency key: reuse it to get the same request back (default: random).
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
}

/// `meterctl cert apply-revoke ORDER [-o FILE]`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The authority's revoke order (PEM or DER).
    #[arg(value_name = "ORDER")]
    pub order: PathBuf,
    /// Where to write the confirmation (PEM); default revoke-confirmation.pem.
    #[arg(
        short = 'o',
        long,
        value_name = "FILE",
        default_value = "revoke-confirmation.pem"
    )]
    pub out: PathBuf,
}

fn check_reason(reason: &str) -> Result<(), CtlError> {
    if REASONS.iter().any(|(n, _)| *n == reason) {
        return Ok(());
    }
    Err(CtlError::Usage(format!(
        "--reason {reason:?}: give one of {}",
        REASONS.map(|(n, _)| n).join(", ")
    )))
}

/// Runs `meterctl cert revoke`.
pub async fn request(ctx: &Ctx, a: RevokeArgs) -> Result<Output, CtlError> {
    check_reason(&a.reason)?;
    // Any spelling the meter accepts (`4`, `04`, `0x04`, any case); shown
    // back in the one form.
    let serial = meter_pki::revoke::display_serial(&a.serial)
        .map_err(|e| CtlError::Usage(format!("serial {:?}: {e}", a.serial)))?;
    let request_id = match a.request_id {
        Some(id) => id,
        None => random_request_id()?,
    };
    let sink = Sink::open(&a.out)?;
    let meter = ctx.meter().await?;
    let der = meter.revoke(&serial, &a.reason, &request_id).await?;
    sink.commit(meter_pki::pem::encode("CMS", &der).as_bytes())?;
    let human = format!(
        "revoke request for certificate {} ({}) written to {}; request id {request_id}\n\
         next: meter-authority revoke {} --out order.pem, then meterctl cert apply-revoke order.pem\n",
        serial,
        a.reason,
        a.out.display(),
        a.out.display()
    );
    Ok(Output::new(
        human,
        json!({"serial": serial, "reason": a.reason, "request_file": a.out, "request_id": request_id}),
    ))
}

/// Runs `meterctl cert apply-revoke`.
pub async fn apply(ctx: &Ctx, a: ApplyArgs) -> Result<Output, CtlError> {
    let order = read_input(&a.order, MAX_OBJECT)?;
    let sink = Sink::open(&a.out)?;
    let meter = ctx.meter().await?;
    let der = meter.apply_revoke_order(&order).await?;
    let c: RevokeConfirmation = meter_pki::credit::read_unverified(&der)
        .map_err(|e| CtlError::Reply(format!("the confirmation does not parse: {e}")))?;
    sink.commit(meter_pki::pem::encode("CMS", &der).as_bytes())?;
    let money = Currency::query(&meter).await;
    let payment = if c.payment == PAYMENT_DUE {
        format!(
            "PAYMENT DUE: {}, settled first by the next recharge",
            money.show(c.amount_due)
        )
    } else {
        format!("fee of {} paid", money.show(c.fee))
    };
    let serial = shown_serial(&c.serial);
    let mut out =
        Output::new(
            format!(
            "certificate {} revoked{} ({}); key destroyed; {payment}; confirmation written to {}\n",
            serial,
            if c.forced { " by order of the authority" } else { "" },
            c.reason,
            a.out.display()
        ),
            json!({
                "serial": serial,
                "reason": c.reason,
                "order_id": c.order_id,
                "forced": c.forced,
                "fee": c.fee,
                "payment": c.payment,
                "amount_due": c.amount_due,
                "confirmation_file": a.out,
            }),
        );
    if c.payment == PAYMENT_DUE {
        out.warnings.push(format!(
            "payment due: {}; recharge the meter (meterctl recharge VOUCHER)",
            money.show(c.amount_due)
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_checked_before_the_bus() {
        assert!(check_reason("keyCompromise").is_ok());
        assert!(matches!(check_reason("oops"), Err(CtlError::Usage(_))));
    }
}
