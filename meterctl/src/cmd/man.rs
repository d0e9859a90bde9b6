//! `meterctl man`: prints the man page (roff), generated from the clap
//! definition so it never drifts from `--help`, exit codes included. Its
//! SUBCOMMANDS section names `meterctl-SUB(1)`: the pages the Debian package
//! installs (`meterctl --generate-docs DIR`, packaging/gen_docs.rs), so the
//! built-in `help` subcommand, which has no page, is left out here too.

use clap::CommandFactory;

use super::Ctx;
use crate::error::CtlError;
use crate::output::Output;

/// Arguments of `meterctl man` (none).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `meterctl man`.
pub async fn run(_ctx: &Ctx, _args: Args) -> Result<Output, CtlError> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(crate::Cli::command().disable_help_subcommand(true))
        .render(&mut buf)
        .map_err(|source| CtlError::Io {
            what: "cannot render the man page",
            source,
        })?;
    Ok(Output::raw(buf))
}
