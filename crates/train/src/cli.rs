//! The command line of a stage binary: the flags of [`StageArgs`] under the stage's own name
//! and description, and [`main`], all a stage binary's `main` calls.

use std::process::ExitCode;

use clap::{Args, Command, FromArgMatches};

use crate::config::{StageArgs, StageConfig};
use crate::stage::StageDef;

/// The stage binaries' global allocator declaration (`aue_cli::global_allocator!`: huge pages
/// for large blocks), for their main files.
pub use aue_cli::global_allocator;

/// The command of a stage binary named `name`, with `about` for `--help`.
pub fn command(def: &dyn StageDef, name: &'static str, about: &'static str) -> Command {
    // The about text is set after the flags: `augment_args` would replace it with the doc
    // comment of `StageArgs`.
    let cmd = StageArgs::augment_args(Command::new(name))
        .about(about)
        .long_about(None)
        .version(env!("CARGO_PKG_VERSION"));
    // Each stage shows only the starting-point flag it accepts.
    match def.parent() {
        None => cmd.mut_arg("resume_model", |a| a.hide(true)),
        Some(_) => cmd.mut_arg("pretrained", |a| a.hide(true)),
    }
}

/// Parses the process arguments (exits with clap's message on bad flags or `--help`).
pub fn parse(def: &dyn StageDef, name: &'static str, about: &'static str) -> StageArgs {
    let matches = command(def, name, about).get_matches();
    StageArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The whole `main` of a stage binary: flags -> checked config -> [`crate::run`], through the
/// shared binary prologue. The binary passes its own name and its package's description
/// (`env!("CARGO_BIN_NAME")`, `env!("CARGO_PKG_DESCRIPTION")`), so both are written once, in
/// its Cargo.toml.
pub fn main(def: &dyn StageDef, name: &'static str, about: &'static str) -> ExitCode {
    aue_cli::main("info", || {
        let args = parse(def, name, about);
        let cfg = StageConfig::resolve(def, args)?;
        crate::run(def, &cfg)?;
        Ok(())
    })
}
