//! `meterctl completions SHELL`: prints a completion script for packagers.

use clap::CommandFactory;
use clap_complete::Shell;

use super::Ctx;
use crate::error::CtlError;
use crate::output::Output;

/// Arguments of `meterctl completions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to generate for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Runs `meterctl completions`.
pub async fn run(_ctx: &Ctx, args: Args) -> Result<Output, CtlError> {
    let mut cmd = crate::Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "meterctl", &mut buf);
    Ok(Output::raw(buf))
}
