//! `meter-authority`: command line of the reference authority (see the library docs).

use clap::Parser;
mod args;
mod cmd_reconcile;
mod cmd_serve;
mod cmd_store;
use args::{Cli, Cmd};
#[path = "../../packaging/gen_docs.rs"]
mod gen_docs;

use meter_authority::money::{show_time, Money};
use meter_authority::store::{marker, marker::refuse_files, StoreError};
use meter_authority::{now, read_bounded, write_file, Authority, AuthorityError, Result};
use meter_pki::{cert, pem, revoke};
use std::path::Path;
use std::process::ExitCode;

fn run(cli: Cli) -> std::result::Result<ExitCode, StoreError> {
    let dir = cli.dir.as_deref().ok_or_else(|| {
        AuthorityError::Invalid(
            "no authority directory: pass --dir or set METER_AUTHORITY_DIR".into(),
        )
    })?;
    let t = now();
    let db = cli.database.as_deref();
    match cli.cmd {
        Cmd::Init { name } => {
            let a = Authority::init(dir, &name, t)?;
            println!("authority initialized in {}", dir.display());
            println!("root certificate: {}", dir.join("root.pem").display());
            println!(
                "root serial {} valid until {}",
                serial_of(a.root()),
                show_time(cert::not_after(a.root()))
            );
        }
        Cmd::CertifyMeter {
            identity_csr,
            postmark_csr,
            out_dir,
            attestation,
            ek_ca,
            unattested,
            certs_out,
        } => {
            if let Some(url) = db {
                let args = cmd_store::CertifyMeterArgs {
                    identity_csr,
                    postmark_csr,
                    out_dir,
                    attestation,
                    ek_ca,
                    unattested,
                    certs_out,
                };
                return cmd_store::certify_meter(dir, url, args, t);
            }
            refuse_files(dir, "certify-meter")?;
            let mut a = Authority::open(dir)?;
            let (id, pm) = (read_bounded(&identity_csr)?, read_bounded(&postmark_csr)?);
            let create = |d: &Path| {
                std::fs::create_dir_all(d).map_err(|e| AuthorityError::Io {
                    path: d.to_path_buf(),
                    source: e,
                })
            };
            match (attestation, unattested) {
                (Some(ev), _) => {
                    let cas = meter_authority::attest::read_ek_cas(&ek_ca)?;
                    let (certs, sealed) =
                        a.certify_meter_attested(&id, &pm, &read_bounded(&ev)?, &cas, t)?;
                    create(&out_dir)?;
                    write_file(&out_dir.join("credential.json"), &sealed.to_json()?)?;
                    if let Some(d) = certs_out {
                        create(&d)?;
                        write_cert(&d.join("meter.pem"), &certs.identity)?;
                        write_cert(&d.join("postmark.pem"), &certs.postmark)?;
                    }
                    eprintln!(
                        "attested: keys in the TPM of a trusted EK; certificates sealed in {}",
                        out_dir.join("credential.json").display()
                    );
                    println!("{}", certs.meter_id);
                }
                (None, true) => {
                    let certs = a.certify_meter(&id, &pm, t)?;
                    create(&out_dir)?;
                    write_cert(&out_dir.join("meter.pem"), &certs.identity)?;
                    write_cert(&out_dir.join("postmark.pem"), &certs.postmark)?;
                    eprintln!("UNATTESTED: nothing proves these keys are in a TPM");
                    println!("{}", certs.meter_id);
                }
                (None, false) => {
                    return Err(AuthorityError::Invalid(
                        "refusing unattested keys: give --attestation and --ek-ca, or --unattested"
                            .into(),
                    )
                    .into())
                }
            }
        }
        Cmd::CertifyAgentCa { request, out } => {
            let mut a = Authority::open(dir)?;
            let c = a.certify_agent_ca(&read_bounded(&request)?, t)?;
            write_cert(&out, &c)?;
            println!(
                "agent-CA certificate for {} (serial {}) written to {}",
                cert::subject_cn(&c).unwrap_or_default(),
                serial_of(&c),
                out.display()
            );
        }
        Cmd::Rates { input, out } => {
            let a = Authority::open(dir)?;
            let text = String::from_utf8(read_bounded(&input)?)
                .map_err(|_| AuthorityError::Invalid("rate file is not UTF-8".into()))?;
            let (table, pem) = a.rates(&text, t)?;
            write_file(&out, pem.as_bytes())?;
            Money::remember(dir, &table.currency, table.digits)?;
            println!(
                "rate table version {} ({} services, {} postage rows) written to {}",
                table.version,
                table.rates.len(),
                table.postage.len(),
                out.display()
            );
        }
        Cmd::Voucher {
            meter,
            amount,
            register,
            purchase_id,
            out,
        } => {
            if db.is_some() || purchase_id.is_some() {
                let args = cmd_store::VoucherArgs {
                    meter,
                    amount,
                    register,
                    purchase_id,
                    out,
                };
                return cmd_store::voucher(dir, db, args, t);
            }
            refuse_files(dir, "voucher")?;
            let mut a = Authority::open(dir)?;
            let money = Money::load(dir)?;
            let (v, pem) = a.voucher_for(&meter, money.parse(&amount)?, register.as_deref(), t)?;
            write_file(&out, pem.as_bytes())?;
            let line = cmd_store::voucher_line(
                &v.meter_id,
                &money.show(v.amount),
                v.sequence,
                v.register.as_deref(),
                &out,
            );
            println!("{line}");
        }
        Cmd::ClearLock { meter, nonce, out } => {
            let a = Authority::open(dir)?;
            write_file(&out, a.clear_lock(&meter, &nonce, t)?.as_bytes())?;
            println!("clear-lock order for {meter} written to {}", out.display());
        }
        Cmd::Inspect {
            report,
            segment,
            without_segment,
            out,
            lock_out,
            period_days,
            warn_days,
        } => {
            let args = cmd_reconcile::InspectArgs {
                report,
                segment,
                without_segment,
                out,
                lock_out,
                periods: meter_authority::inspect::Periods {
                    period_days,
                    warn_days,
                },
            };
            if let Some(url) = db {
                return cmd_store::inspect(dir, url, args, t);
            }
            refuse_files(dir, "inspect")?;
            return Ok(cmd_reconcile::inspect(dir, args, t)?);
        }
        Cmd::Lock { meter, reason, out } => {
            let a = Authority::open(dir)?;
            let (order, pem) = a.lock_order(&meter, &reason, t)?;
            write_file(&out, pem.as_bytes())?;
            println!(
                "lock order {} for {meter} written to {}",
                order.nonce,
                out.display()
            );
        }
        Cmd::Account {
            meter,
            limit,
            period_days,
            out,
        } => {
            let a = Authority::open(dir)?;
            let money = Money::load(dir)?;
            let limit = money.parse(&limit)?;
            let (order, pem) = a.account_order(&meter, limit, period_days, t)?;
            write_file(&out, pem.as_bytes())?;
            println!(
                "account order {} for {meter} (limit {}, period {period_days} days) written to {}",
                order.nonce,
                money.show(limit),
                out.display()
            );
        }
        Cmd::FundsSplit { meter, out } => {
            let a = Authority::open(dir)?;
            let (order, pem) = a.funds_split_order(&meter, t)?;
            write_file(&out, pem.as_bytes())?;
            println!(
                "funds-split order {} for {meter} written to {}",
                order.nonce,
                out.display()
            );
        }
        Cmd::Rollover {
            out,
            mode,
            name,
            meter,
        } => {
            let mut a = Authority::open(dir)?;
            let (msg, n) = a.rollover(&name, &mode, meter.as_deref(), t)?;
            write_file(&out, msg.as_bytes())?;
            println!("trust-anchor update ({mode}) written to {}", out.display());
            println!(
                "new root serial {}; the old root is kept as root.{n}.pem",
                serial_of(a.root())
            );
        }
        Cmd::CreditGrant {
            request,
            out,
            amount,
            days,
            authorized_use,
        } => {
            let mut a = Authority::open(dir)?;
            let money = Money::load(dir)?;
            let amount = amount.map(|m| money.parse(&m)).transpose()?;
            let (line, pem) =
                a.credit_grant(&read_bounded(&request)?, amount, days, &authorized_use, t)?;
            write_file(&out, pem.as_bytes())?;
            println!(
                "line of credit {} for {} amount {} valid until {} written to {}",
                line.serial,
                line.holder,
                money.show(line.amount),
                show_time(line.not_after),
                out.display()
            );
        }
        Cmd::Settle { payment } => {
            if let Some(url) = db {
                return cmd_store::settle(dir, url, &payment, t);
            }
            refuse_files(dir, "settle")?;
            let mut a = Authority::open(dir)?;
            let s = a.settle(&read_bounded(&payment)?, t)?;
            let money = Money::load(dir)?;
            println!(
                "settled payment {} of {} to {}; line {}: {} of {} settled",
                s.serial,
                money.show(s.amount),
                s.payee,
                s.credit_serial,
                money.show(s.settled_total),
                money.show(s.line_amount)
            );
        }
        Cmd::Enrol { subject } => {
            let a = Authority::open(dir)?;
            let (cn, code) = a.enrol(&subject, t)?;
            eprintln!("enrolment code for CN={cn} (give it to the user; single use):");
            println!("{code}");
        }
        Cmd::Certify {
            request,
            out,
            days,
            valid_seconds,
        } => {
            use meter_authority::enrol::UserValidity;
            let validity = match valid_seconds {
                Some(s) => UserValidity::Seconds(s),
                None => UserValidity::Days(days),
            };
            if let Some(url) = db {
                return cmd_store::certify_user(dir, url, &request, validity, &out, t);
            }
            // Not refused on a database directory: a user certificate's
            // serial and record, and the enrolment codes, are the
            // directory's in either mode; only a meter the database
            // certified is unknown here (refused below, with the hint).
            let mut a = Authority::open(dir)?;
            let c = match a.certify_user(&read_bounded(&request)?, validity, t) {
                Err(AuthorityError::Invalid(m)) if marker::marked(dir)?.is_some() => {
                    return Err(AuthorityError::Invalid(format!(
                        "{m} (a meter the database certified is known with --database only)"
                    ))
                    .into())
                }
                other => other?,
            };
            write_cert(&out, &c)?;
            println!("{}", serial_of(&c));
        }
        Cmd::Revoke {
            request,
            forced,
            meter,
            serial,
            reason,
            out,
        } => {
            let a = Authority::open(dir)?;
            let (order, pem) = match (forced, request, meter, serial) {
                (true, _, Some(m), Some(s)) => a.revoke_forced(&m, &s, &reason, t)?,
                (false, Some(r), _, _) => {
                    let r = read_bounded(&r)?;
                    // A meter the database certified is known to its register only.
                    let known = match db {
                        Some(url) => {
                            let meter = a.revoke_request_meter(&r, t)?;
                            cmd_store::meter_certificates(dir, url, &meter, "revoke")?
                        }
                        None => Vec::new(),
                    };
                    a.revoke_known(&r, &known, t)?
                }
                _ => {
                    return Err(AuthorityError::Invalid(
                        "give a REQUEST, or --forced --meter ID --serial S".into(),
                    )
                    .into())
                }
            };
            write_file(&out, pem.as_bytes())?;
            println!(
                "{}revoke order {} for serial {} of meter {} ({}) written to {}",
                if order.forced { "forced " } else { "" },
                order.order_id,
                revoke::display_serial(&order.serial)?,
                order.meter_id,
                order.reason,
                out.display()
            );
        }
        Cmd::Crl { out } => {
            let a = Authority::open(dir)?;
            let (pem, number, count) = a.crl(t)?;
            write_file(&out, pem.as_bytes())?;
            println!(
                "CRL {number} ({count} revoked) written to {}",
                out.display()
            );
        }
        Cmd::Lookup { object } => {
            if let Some(url) = db {
                return cmd_store::lookup(dir, url, &object, t);
            }
            refuse_files(dir, "lookup")?;
            return Ok(cmd_reconcile::lookup(dir, &object, t)?);
        }
        Cmd::Serve {
            listen,
            connections,
            max_upload,
            operator_token_file,
        } => {
            return Ok(cmd_serve::serve(cmd_serve::ServeArgs {
                dir: dir.to_owned(),
                listen,
                database: cli.database,
                connections,
                max_upload,
                operator_token_file,
            })?)
        }
        Cmd::PostalKey { request, out } => {
            let a = Authority::open(dir)?;
            let d = a.postal_key(&read_bounded(&request)?, t)?;
            write_file(&out, d.pem.as_bytes())?;
            println!(
                "postal key {} for {} written to {} (wrapped to its TPM)",
                d.delivery_id,
                d.meter_id,
                out.display()
            );
        }
        Cmd::VerifyIndicium { file, postal_key } => {
            let a = Authority::open(dir)?;
            let bytes = read_bounded(&file)?;
            if postal_key {
                let (ind, id) = a.verify_indicium_mac(&bytes)?;
                println!("postal MAC valid (key {id})");
                println!("meter: {}", ind.body.meter_id);
                println!("seq: {}", ind.body.seq);
            } else {
                let ind = meter_pki::indicium::decode(&bytes)?;
                println!("indicium version {}", if ind.mac.is_some() { 2 } else { 1 });
                println!("meter: {}", ind.body.meter_id);
                println!("seq: {}", ind.body.seq);
            }
        }
        Cmd::VerifyToken { token, data } => {
            let a = Authority::open(dir)?;
            let msg = std::fs::read(&data).map_err(|e| AuthorityError::Io {
                path: data.clone(),
                source: e,
            })?;
            let info = meter_authority::verify_token(&read_bounded(&token)?, &msg, a.root(), t)?;
            println!("valid postmark");
            println!("meter: {}", info.signer_cn.as_deref().unwrap_or("?"));
            println!("serial: {}", hex::encode(&info.serial));
            println!("time: {}", info.gen_time);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A certificate's serial as `openssl x509 -serial` prints it (uppercase,
/// even length), the one form meterctl shows too.
pub(crate) fn serial_of(c: &cert::Certificate) -> String {
    let hex = cert::serial_hex(c);
    revoke::display_serial(&hex).unwrap_or(hex)
}

fn write_cert(path: &Path, c: &cert::Certificate) -> Result<()> {
    write_file(
        path,
        pem::encode("CERTIFICATE", &cert::to_der(c)?).as_bytes(),
    )
}

fn main() -> ExitCode {
    if let Some(code) = gen_docs::hook(<Cli as clap::CommandFactory>::command, "1", true) {
        return code;
    }
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meter-authority: {e}");
            match e {
                // A malformed amount is a usage error, like clap's own.
                StoreError::Authority(AuthorityError::Amount(_)) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
