//! `meterctl`: the command-line front of meterd.
//!
//! Parses the command line, runs one subcommand against the meter over D-Bus
//! (through `meter_proto::Meter1Proxy` only), prints the result for people or,
//! with `--json`, for scripts, and leaves with a documented exit code. This is
//! the one place where failures become exit codes.

// Tests may unwrap and panic: a failed assumption is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod amount;
mod cmd;
mod error;
#[path = "../../packaging/gen_docs.rs"]
mod gen_docs;
mod label;
mod output;
mod render;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use meter_proto::exit;

use crate::cmd::Ctx;
use crate::error::CtlError;
use crate::output::Output;

/// Control tool for meterd, the TPM-backed postage and certificate meter.
#[derive(Debug, Parser)]
#[command(
    name = "meterctl",
    version,
    after_help = "Run `meterctl --help` for the exit codes.",
    after_long_help = exit_codes_help()
)]
pub struct Cli {
    /// Print machine-readable JSON on stdout (errors too, as {"error": {...}}).
    #[arg(long, global = true)]
    pub json: bool,

    /// D-Bus address of the meter's bus (default: the system bus, or $DBUS_SYSTEM_BUS_ADDRESS).
    #[arg(long, global = true, value_name = "ADDRESS")]
    pub bus: Option<String>,

    /// Seconds to wait for each reply from meterd.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands, one per meter service.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the meter's keys and write their certificate requests, or install the certificates.
    Provision(cmd::provision::Args),
    /// Show the registers, state and ledger summary.
    Status(cmd::status::Args),
    /// Manage the signed rate table.
    #[command(subcommand)]
    Rates(cmd::rates::RatesCommand),
    /// Credit an authority voucher to the descending register.
    Recharge(cmd::recharge::Args),
    /// Postmark a message: get an RFC 3161 time-stamp token over its SHA-384 digest.
    Postmark(cmd::postmark::Args),
    /// Buy a postage indicium for a mail piece; write it as bytes, PNG or SVG.
    Postage(cmd::postage::Args),
    /// Verify a postage indicium offline with the meter's certificate.
    VerifyIndicium(cmd::verify_indicium::Args),
    /// Verify a postmark token or a user signature against its message (charged).
    Validate(cmd::validate::Args),
    /// Re-check the whole ledger chain and its TPM binding.
    Audit(cmd::audit::Args),
    /// User certificates (admin): request a TPM key's certificate, install it.
    #[command(subcommand)]
    Cert(cmd::cert::CertCommand),
    /// List the user certificates and their states.
    Certs(cmd::certs::Args),
    /// Sign a file (detached CMS) with an installed user certificate.
    Sign(cmd::sign::Args),
    /// Decrypt a CMS envelope with an installed user encryption certificate (charged).
    Decrypt(cmd::decrypt::Args),
    /// Apply an authority-signed clear-lock order.
    ClearLock(cmd::clear_lock::Args),
    /// Make a signed status report for the authority, or apply its acknowledgement (`report ack`).
    Report(cmd::report::Args),
    /// Sync with the provider: upload a report, apply its answer and everything pending.
    Sync(cmd::sync::Args),
    /// Current-account mode: apply authority account orders.
    #[command(subcommand)]
    Account(cmd::account::AccountCommand),
    /// Apply authority lock orders.
    #[command(subcommand)]
    Lock(cmd::lock::LockCommand),
    /// Apply authority trust-anchor updates (root rollover).
    #[command(subcommand)]
    TrustAnchor(cmd::trust_anchor::TrustAnchorCommand),
    /// Set up the meter's agent CA (Fig. 3A): request, then install its certificate.
    #[command(subcommand)]
    AgentCa(cmd::agent::AgentCaCommand),
    /// Issue agent (employee) certificates under the meter's agent CA.
    #[command(subcommand)]
    Agent(cmd::agent::AgentCommand),
    /// The postal secret key (claim 21): request it, import the authority's delivery.
    #[command(subcommand)]
    PostalKey(cmd::postal_key::PostalKeyCommand),
    /// Lines of credit and payment certificates.
    #[command(subcommand)]
    Credit(cmd::credit::CreditCommand),
    /// Print property changes and LowFunds/Locked/Unlocked signals as they happen.
    Watch(cmd::watch::Args),
    /// Print a shell completion script.
    Completions(cmd::completions::Args),
    /// Print the man page (roff).
    Man(cmd::man::Args),
}

/// The exit-code table shown by `--help`, from `meter_proto::exit::TABLE`.
fn exit_codes_help() -> String {
    let mut s = String::from("Exit codes:\n");
    for (code, meaning) in exit::TABLE {
        s.push_str(&format!("  {code:>3}  {meaning}\n"));
    }
    s.push_str(
        "\nEnvironment:\n  DBUS_SYSTEM_BUS_ADDRESS  bus of the meter when --bus is not given\n",
    );
    s
}

/// Runs the chosen subcommand.
async fn dispatch(ctx: &Ctx, command: Command) -> Result<Output, CtlError> {
    match command {
        Command::Provision(a) => cmd::provision::run(ctx, a).await,
        Command::Status(a) => cmd::status::run(ctx, a).await,
        Command::Rates(a) => cmd::rates::run(ctx, a).await,
        Command::Recharge(a) => cmd::recharge::run(ctx, a).await,
        Command::Postmark(a) => cmd::postmark::run(ctx, a).await,
        Command::Postage(a) => cmd::postage::run(ctx, a).await,
        Command::VerifyIndicium(a) => cmd::verify_indicium::run(ctx, a).await,
        Command::Validate(a) => cmd::validate::run(ctx, a).await,
        Command::Audit(a) => cmd::audit::run(ctx, a).await,
        Command::Cert(a) => cmd::cert::run(ctx, a).await,
        Command::Certs(a) => cmd::certs::run(ctx, a).await,
        Command::Sign(a) => cmd::sign::run(ctx, a).await,
        Command::Decrypt(a) => cmd::decrypt::run(ctx, a).await,
        Command::ClearLock(a) => cmd::clear_lock::run(ctx, a).await,
        Command::Report(a) => cmd::report::run(ctx, a).await,
        Command::Sync(a) => cmd::sync::run(ctx, a).await,
        Command::Lock(a) => cmd::lock::run(ctx, a).await,
        Command::Account(a) => cmd::account::run(ctx, a).await,
        Command::TrustAnchor(a) => cmd::trust_anchor::run(ctx, a).await,
        Command::AgentCa(a) => cmd::agent::run_ca(ctx, a).await,
        Command::Agent(a) => cmd::agent::run(ctx, a).await,
        Command::PostalKey(a) => cmd::postal_key::run(ctx, a).await,
        Command::Credit(a) => cmd::credit::run(ctx, a).await,
        Command::Watch(a) => cmd::watch::run(ctx, a).await,
        Command::Completions(a) => cmd::completions::run(ctx, a).await,
        Command::Man(a) => cmd::man::run(ctx, a).await,
    }
}

fn main() -> ExitCode {
    if let Some(code) = gen_docs::hook(<Cli as clap::CommandFactory>::command, "1", true) {
        return code;
    }
    // Usage errors exit here with clap's code 2 (`exit::USAGE`); --help/--version with 0.
    let cli = Cli::parse();
    let ctx = Ctx {
        json: cli.json,
        bus: cli.bus,
        timeout: Duration::from_secs(cli.timeout),
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| CtlError::Io {
            what: "cannot start the async runtime",
            source,
        })
        .and_then(|rt| rt.block_on(dispatch(&ctx, cli.command)));
    let code = match result {
        Ok(out) => {
            output::emit(&out, ctx.json);
            out.code
        }
        Err(e) => {
            output::emit_error(&e, ctx.json);
            e.exit_code()
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("meterctl").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["status", "--json", "--bus", "unix:path=/x"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.bus.as_deref(), Some("unix:path=/x"));
        assert_eq!(cli.timeout, 120);
        assert!(matches!(cli.command, Command::Status(_)));
        assert!(parse(&["--timeout", "0", "status"]).is_err());
    }

    #[test]
    fn provision_has_two_exclusive_modes() {
        let cli = parse(&["provision", "--out-dir", "d"]).unwrap();
        let Command::Provision(a) = cli.command else {
            panic!("not provision")
        };
        assert_eq!(a.out_dir.as_deref(), Some(std::path::Path::new("d")));
        assert!(!a.install);

        let cli = parse(&[
            "provision",
            "--install",
            "--meter-cert",
            "m.pem",
            "--postmark-cert",
            "p.pem",
            "--root",
            "r.pem",
        ])
        .unwrap();
        let Command::Provision(a) = cli.command else {
            panic!("not provision")
        };
        assert!(a.install);
        assert_eq!(a.root.as_deref(), Some(std::path::Path::new("r.pem")));

        assert!(parse(&["provision"]).is_err());
        assert!(parse(&["provision", "--install", "--meter-cert", "m"]).is_err());
        assert!(parse(&["provision", "--out-dir", "d", "--install"]).is_err());
        assert!(parse(&["provision", "--out-dir", "d", "--root", "r"]).is_err());
    }

    #[test]
    fn postmark_takes_a_file_or_a_digest() {
        let cli = parse(&["postmark", "mail.eml"]).unwrap();
        let Command::Postmark(a) = cli.command else {
            panic!("not postmark")
        };
        assert_eq!(a.file.as_deref(), Some(std::path::Path::new("mail.eml")));
        assert!(a.request_id.is_none() && a.out.is_none() && a.digest.is_none());

        let cli = parse(&["postmark", "m", "-o", "t.tsr", "--request-id", "r1"]).unwrap();
        let Command::Postmark(a) = cli.command else {
            panic!("not postmark")
        };
        assert_eq!(a.request_id.as_deref(), Some("r1"));
        assert_eq!(a.out.as_deref(), Some(std::path::Path::new("t.tsr")));

        let hex = "ab".repeat(48);
        assert!(parse(&["postmark", "--digest", &hex, "-o", "t"]).is_ok());
        assert!(parse(&["postmark", "--digest", &hex]).is_err(), "-o needed");
        assert!(parse(&["postmark", "m", "--digest", &hex, "-o", "t"]).is_err());
        assert!(parse(&["postmark"]).is_err());
    }

    #[test]
    fn other_subcommands_parse() {
        assert!(matches!(
            parse(&["rates", "install", "r.cms"]).unwrap().command,
            Command::Rates(cmd::rates::RatesCommand::Install { .. })
        ));
        assert!(matches!(
            parse(&["recharge", "v.cms"]).unwrap().command,
            Command::Recharge(_)
        ));
        assert!(matches!(
            parse(&["validate", "m", "m.tsr"]).unwrap().command,
            Command::Validate(_)
        ));
        assert!(parse(&["validate", "m"]).is_err());
        assert!(matches!(
            parse(&["audit"]).unwrap().command,
            Command::Audit(_)
        ));
        assert!(matches!(
            parse(&["clear-lock", "o.cms"]).unwrap().command,
            Command::ClearLock(_)
        ));
        assert!(matches!(
            parse(&["trust-anchor", "update", "m.pem"]).unwrap().command,
            Command::TrustAnchor(_)
        ));
        assert!(parse(&["trust-anchor", "update"]).is_err());
        let Command::Report(r) = parse(&["report", "-o", "r.pem"]).unwrap().command else {
            panic!("not report")
        };
        assert!(r.command.is_none() && r.out.is_some());
        let Command::Report(r) = parse(&["report", "ack", "a.pem"]).unwrap().command else {
            panic!("not report ack")
        };
        assert!(matches!(
            r.command,
            Some(cmd::report::ReportCommand::Ack { .. })
        ));
        assert!(parse(&["report", "-o", "r.pem", "ack", "a.pem"]).is_err());
        assert!(matches!(
            parse(&["lock", "apply", "o.pem"]).unwrap().command,
            Command::Lock(_)
        ));
        assert!(parse(&["lock", "apply"]).is_err());
        assert!(matches!(
            parse(&["account", "apply", "o.pem"]).unwrap().command,
            Command::Account(_)
        ));
        assert!(parse(&["account", "apply"]).is_err());
        assert!(matches!(
            parse(&["agent-ca", "request", "-o", "r.pem"])
                .unwrap()
                .command,
            Command::AgentCa(_)
        ));
        assert!(matches!(
            parse(&[
                "agent",
                "issue",
                "--cn",
                "A",
                "--receiver",
                "r",
                "--out-cert",
                "c",
                "--out-key",
                "k"
            ])
            .unwrap()
            .command,
            Command::Agent(_)
        ));
        assert!(parse(&["agent", "issue", "--cn", "A"]).is_err());
        assert!(matches!(
            parse(&["postal-key", "import", "d.pem"]).unwrap().command,
            Command::PostalKey(_)
        ));
        assert!(parse(&["postal-key", "request"]).is_err());
        assert!(matches!(
            parse(&["completions", "bash"]).unwrap().command,
            Command::Completions(_)
        ));
        assert!(parse(&["completions", "cmd.exe"]).is_err());
        assert!(parse(&["frobnicate"]).is_err());
    }

    #[test]
    fn certificate_subcommands_parse() {
        let cli = parse(&["cert", "request", "--subject", "CN=A", "--code", "C"]).unwrap();
        let Command::Cert(cmd::cert::CertCommand::Request {
            out, request_id, ..
        }) = cli.command
        else {
            panic!("not cert request")
        };
        assert_eq!(out, std::path::PathBuf::from("cert-request.der"));
        assert!(request_id.is_none());
        assert!(
            parse(&["cert", "request", "--subject", "CN=A"]).is_err(),
            "--code needed"
        );
        assert!(matches!(
            parse(&["cert", "install", "c.pem"]).unwrap().command,
            Command::Cert(cmd::cert::CertCommand::Install { .. })
        ));
        assert!(parse(&["cert", "install"]).is_err());
        assert!(matches!(
            parse(&["certs"]).unwrap().command,
            Command::Certs(_)
        ));
        let cli = parse(&["sign", "--cert", "0a", "doc.txt", "-o", "d.p7s"]).unwrap();
        let Command::Sign(a) = cli.command else {
            panic!("not sign")
        };
        assert_eq!(a.serial, "0a");
        assert_eq!(a.out.as_deref(), Some(std::path::Path::new("d.p7s")));
        assert!(parse(&["sign", "doc.txt"]).is_err(), "--cert needed");
    }

    #[test]
    fn long_help_lists_every_exit_code() {
        let help = Cli::command().render_long_help().to_string();
        for (code, meaning) in exit::TABLE {
            assert!(
                help.contains(&format!("{code:>3}  {meaning}")),
                "missing exit code {code} in --help"
            );
        }
    }
}
