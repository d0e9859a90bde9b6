//! `BIN --generate-docs DIR`: writes the man pages and shell completions of a
//! binary from its clap definition, so the package's pages never drift from
//! `--help` and the package builder needs no extra build step
//! (`packaging/build-deb` calls it on the release binaries).
//!
//! Shared source file, included by each binary's `main.rs` with
//! `#[path = "../../packaging/gen_docs.rs"] mod gen_docs;`. It is checked
//! before clap parses the command line, so it adds no option to `--help`.
//!
//! Writes `DIR/man/NAME.SECTION` plus one `NAME-SUB.SECTION` per visible
//! subcommand (recursively, the names clap_mangen lists under SUBCOMMANDS),
//! and, when `completions` is set, `DIR/completions/NAME.bash`, `_NAME` and
//! `NAME.fish`.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

/// Runs the generator when the command line is exactly
/// `BIN --generate-docs DIR`; `None` otherwise (the binary goes on as usual).
pub fn hook(
    cmd: impl FnOnce() -> clap::Command,
    section: &str,
    completions: bool,
) -> Option<ExitCode> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if argv.len() != 3 || argv[1] != "--generate-docs" {
        return None;
    }
    let dir = Path::new(&argv[2]);
    match generate(cmd(), section, completions, dir) {
        Ok(()) => Some(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!(
                "cannot write the man pages and completions to {}: {e}",
                dir.display()
            );
            Some(ExitCode::FAILURE)
        }
    }
}

fn generate(
    cmd: clap::Command,
    section: &str,
    completions: bool,
    dir: &Path,
) -> std::io::Result<()> {
    let man = dir.join("man");
    std::fs::create_dir_all(&man)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    pages(&cmd, section, &man)?;
    if completions {
        let comp = dir.join("completions");
        std::fs::create_dir_all(&comp)?;
        let name = cmd.get_name().to_string();
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            clap_complete::generate_to(shell, &mut cmd, name.clone(), &comp)?;
        }
    }
    Ok(())
}

fn pages(cmd: &clap::Command, section: &str, man: &Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages(sub, section, man)?;
    }
    clap_mangen::Man::new(cmd.clone())
        .section(section)
        .manual("meterd")
        .source(format!("meterd {}", env!("CARGO_PKG_VERSION")))
        .generate_to(man)?;
    Ok(())
}
