//! `meter-authority`: command line of the reference authority (see the library docs).

use clap::{Parser, Subcommand};
mod cmd_reconcile;
#[path = "../../packaging/gen_docs.rs"]
mod gen_docs;

use meter_authority::money::{show_time, Money};
use meter_authority::{now, read_bounded, write_file, Authority, AuthorityError, Result};
use meter_pki::{cert, pem, revoke};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Reference authority for meterd: a file-based CA that certifies meters and signs
/// vouchers, rate tables and clear-lock orders.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Authority directory (root.key, root.pem, state.json).
    #[arg(long, env = "METER_AUTHORITY_DIR", global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new authority (root key and certificate) in --dir.
    Init {
        /// Common name of the root certificate.
        #[arg(long, default_value = "meterd Reference Authority")]
        name: String,
    },
    /// Certify a meter from its identity and postmark CSRs.
    CertifyMeter {
        /// PKCS#10 request of the identity (communications) key.
        #[arg(long)]
        identity_csr: PathBuf,
        /// PKCS#10 request of the postmark key.
        #[arg(long)]
        postmark_csr: PathBuf,
        /// Directory for the output: credential.json (attested), or meter.pem and
        /// postmark.pem (--unattested).
        #[arg(long)]
        out_dir: PathBuf,
        /// The meter's TPM evidence (attestation.json from `meterctl provision`): the
        /// certificates are then issued only sealed in a credential its TPM activates.
        #[arg(long, requires = "ek_ca")]
        attestation: Option<PathBuf>,
        /// A trusted EK CA certificate (PEM or DER; repeatable): the CA that signed the
        /// TPM's EK certificate (a TPM vendor's, or swtpm's local CA in tests).
        #[arg(long, value_name = "FILE")]
        ek_ca: Vec<PathBuf>,
        /// Certify keys nobody proved to be in a TPM (demos, software housings): writes
        /// meter.pem and postmark.pem in clear.
        #[arg(long, conflicts_with = "attestation")]
        unattested: bool,
        /// With --attestation: also write the issued certificates (public: every
        /// postmark carries them) to this directory, for relying parties and the
        /// authority's records. The meter still receives them only in the credential.
        #[arg(long, value_name = "DIR", requires = "attestation")]
        certs_out: Option<PathBuf>,
    },
    /// Certify a meter's agent CA (Fig. 3A) from its request (`meterctl agent-ca request`).
    CertifyAgentCa {
        /// The request: CMS SignedData by the meter around the agent key's PKCS#10.
        request: PathBuf,
        /// Output: the agent-CA certificate (PEM).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a rate table written in TOML (see rates.example.toml).
    Rates {
        /// The TOML rate file.
        #[arg(long = "in")]
        input: PathBuf,
        /// Output (PEM, label CMS).
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a recharge voucher (next sequence number for the meter).
    Voucher {
        /// Meter id.
        #[arg(long)]
        meter: String,
        /// Amount: `1.50` in the currency of the last rate table signed,
        /// or minor units (`1500`).
        #[arg(long, value_name = "AMOUNT")]
        amount: String,
        /// Output (PEM, label CMS).
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue an order clearing a meter lock.
    ClearLock {
        /// Meter id.
        #[arg(long)]
        meter: String,
        /// The lock's nonce (from the meter's Status).
        #[arg(long)]
        nonce: String,
        /// Output (PEM, label CMS).
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a meter's signed status report, reconcile it with the ledger
    /// rows of its segment (every hash and register re-derived, every
    /// voucher and order checked against what this authority issued) and
    /// issue its acknowledgement (apply with `meterctl report ack ACK`). On
    /// any discrepancy: no acknowledgement, each discrepancy named, and a
    /// forced lock order written (apply with `meterctl lock apply ORDER`).
    /// The TPM's attestation of the report is read from beside it (extension
    /// `.att`, as `meterctl report` writes it); a meter certified with
    /// attestation must send one.
    Inspect {
        /// The report (CMS SignedData, DER or PEM, from `meterctl report`).
        report: PathBuf,
        /// The report's ledger segment (from `meterctl report`); default:
        /// the report's path with extension `.seg`.
        #[arg(long, value_name = "SEG", conflicts_with = "without_segment")]
        segment: Option<PathBuf>,
        /// Acknowledge on the report's word alone, without its rows (meters
        /// older than segments); nothing is reconciled.
        #[arg(long)]
        without_segment: bool,
        /// Output: the acknowledgement (PEM, label CMS).
        #[arg(long)]
        out: PathBuf,
        /// Where the lock order goes when the report is refused; default:
        /// the acknowledgement's path with extension `lock-order.pem`.
        #[arg(long, value_name = "FILE")]
        lock_out: Option<PathBuf>,
        /// Set a new inspection period for the meter, in days: it locks
        /// (`inspection-overdue`) this long after the report without a newer
        /// acknowledgement.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
        period_days: Option<u32>,
        /// Set a new warning period, in days: the inspection falls due (the
        /// meter warns) this long after the report; less than the period.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
        warn_days: Option<u32>,
    },
    /// Issue an order locking a meter (reason `forced`; apply with `meterctl lock apply ORDER`).
    Lock {
        /// Meter id.
        #[arg(long)]
        meter: String,
        /// Why, for the meter's operator.
        #[arg(long)]
        reason: String,
        /// Output (PEM, label CMS).
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a current-account order: the meter sells up to LIMIT per billing period and
    /// must have a report acknowledged each period (apply with `meterctl account apply ORDER`).
    Account {
        /// Meter id.
        #[arg(long)]
        meter: String,
        /// Credit limit per billing period: `1.50` or minor units (`1500`).
        #[arg(long, value_name = "AMOUNT")]
        limit: String,
        /// Billing period, days.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
        period_days: u32,
        /// Output (PEM, label CMS).
        #[arg(long)]
        out: PathBuf,
    },
    /// Roll the root over: new root key and certificate, announced to meters by a
    /// trust-anchor update signed with the current root (apply with
    /// `meterctl trust-anchor update`). The old root is kept as root.<n>.key/.pem.
    Rollover {
        /// Output: the trust-anchor update (PEM, label CMS).
        #[arg(long)]
        out: PathBuf,
        /// `add` (the new root joins the meter's anchors) or `replace` (it becomes the
        /// first, current one; the old ones stay to verify old objects).
        #[arg(long, default_value = "replace", value_parser = ["add", "replace"])]
        mode: String,
        /// Common name of the new root certificate.
        #[arg(long, default_value = "meterd Reference Authority")]
        name: String,
        /// Restrict the update to one meter (default: any meter).
        #[arg(long)]
        meter: Option<String>,
    },
    /// As the creditor: verify a meter's credit request and grant a line of credit.
    CreditGrant {
        /// The meter's credit request (CMS, PEM or DER).
        #[arg(value_name = "REQUEST")]
        request: PathBuf,
        /// Output: the line-of-credit certificate (PEM, label CMS).
        #[arg(long)]
        out: PathBuf,
        /// Amount to grant, `1.50` or minor units (default: the amount
        /// asked; never more).
        #[arg(long, value_name = "AMOUNT")]
        amount: Option<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Authorized use written in the certificate.
        #[arg(long = "use", default_value = "any purchase")]
        authorized_use: String,
    },
    /// As the creditor: verify a payment certificate and settle it (once).
    Settle {
        /// The payment certificate (CMS, PEM or DER).
        #[arg(value_name = "PAYMENT")]
        payment: PathBuf,
    },
    /// Issue a one-time enrolment code for a user (Fig. 5); prints the code.
    Enrol {
        /// Subject of the user certificate, `CN=<name>`.
        #[arg(long)]
        subject: String,
    },
    /// Certify a meter's user-certificate request (`meterctl cert request`): checks the
    /// meter's signature, the PKCS#10 self-signature and the enrolment code (consumed).
    Certify {
        /// The request (CMS, DER or PEM).
        #[arg(value_name = "REQUEST")]
        request: PathBuf,
        /// Output: the user certificate (PEM).
        #[arg(long)]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = meter_authority::enrol::USER_DAYS)]
        days: u32,
        /// Validity ending this many seconds from now instead (for expiry tests).
        #[arg(long, conflicts_with = "days")]
        valid_seconds: Option<u32>,
    },
    /// Answer a meter's revoke request (`meterctl cert revoke`) with a signed,
    /// single-use revoke order; or, with --forced, order a revocation on the
    /// authority's own decision (Fig. 6, 608). Recorded for the CRL.
    Revoke {
        /// The request (CMS, DER or PEM); not with --forced.
        #[arg(value_name = "REQUEST", required_unless_present = "forced")]
        request: Option<PathBuf>,
        /// Forced revocation: no request; give --meter, --serial and --reason.
        #[arg(long, requires_all = ["meter", "serial"], conflicts_with = "request")]
        forced: bool,
        /// Meter holding the certificate (forced).
        #[arg(long)]
        meter: Option<String>,
        /// Serial of the certificate, hex (forced).
        #[arg(long)]
        serial: Option<String>,
        /// Reason (forced): unspecified, keyCompromise, affiliationChanged,
        /// superseded, cessationOfOperation, privilegeWithdrawn.
        #[arg(long, default_value = "unspecified")]
        reason: String,
        /// Output: the revoke order (PEM).
        #[arg(long)]
        out: PathBuf,
    },
    /// Publish a CRL (RFC 5280 v2, signed by the root) of every revocation ordered.
    Crl {
        /// Output: the CRL (PEM).
        #[arg(long)]
        out: PathBuf,
    },
    /// Was this postmark token or indicium reported by its meter? Answers
    /// reported (row, time), not reported yet, or, exit status 3, unreported
    /// though older than the last acknowledged report / reported with
    /// another digest (a duplicate serial): made outside the meter's ledger.
    Lookup {
        /// The token (DER or PEM) or the indicium (221 bytes, binary).
        object: PathBuf,
    },
    /// Answer a meter's postal-key request (`meterctl postal-key request`): a fresh
    /// HMAC-SHA-256 key, kept here and wrapped to the meter's TPM storage parent.
    PostalKey {
        /// The request: CMS SignedData by the meter naming its storage parent.
        request: PathBuf,
        /// Output: the delivery (PEM, label CMS) for `meterctl postal-key import`.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an indicium (221 or 237 bytes, binary); with --postal-key, its MAC with the
    /// postal keys delivered to its meter (exit status 1 when it does not match).
    VerifyIndicium {
        /// The indicium bytes (e.g. from `dmtxread`).
        file: PathBuf,
        /// Check the postal-key MAC (claim 21).
        #[arg(long)]
        postal_key: bool,
    },
    /// Verify a postmark token over a message against this authority's root.
    VerifyToken {
        /// The token (DER or PEM).
        #[arg(long)]
        token: PathBuf,
        /// The message.
        #[arg(long)]
        data: PathBuf,
    },
}

fn run(cli: Cli) -> Result<ExitCode> {
    let dir = cli.dir.as_deref().ok_or_else(|| {
        AuthorityError::Invalid(
            "no authority directory: pass --dir or set METER_AUTHORITY_DIR".into(),
        )
    })?;
    let t = now();
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
                    ))
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
        Cmd::Voucher { meter, amount, out } => {
            let mut a = Authority::open(dir)?;
            let money = Money::load(dir)?;
            let (v, pem) = a.voucher(&meter, money.parse(&amount)?, t)?;
            write_file(&out, pem.as_bytes())?;
            println!(
                "voucher for {} amount {} sequence {} written to {}",
                v.meter_id,
                money.show(v.amount),
                v.sequence,
                out.display()
            );
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
            return cmd_reconcile::inspect(dir, args, t);
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
            let mut a = Authority::open(dir)?;
            let validity = match valid_seconds {
                Some(s) => UserValidity::Seconds(s),
                None => UserValidity::Days(days),
            };
            let c = a.certify_user(&read_bounded(&request)?, validity, t)?;
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
                (false, Some(r), _, _) => a.revoke(&read_bounded(&r)?, t)?,
                _ => {
                    return Err(AuthorityError::Invalid(
                        "give a REQUEST, or --forced --meter ID --serial S".into(),
                    ))
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
        Cmd::Lookup { object } => return cmd_reconcile::lookup(dir, &object, t),
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
fn serial_of(c: &cert::Certificate) -> String {
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
                AuthorityError::Amount(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
