//! `aue-stage2`: AUE-CRL training stage 2 (AU, REFERENCE.md section 4): the AU branch and the
//! prior table on the frozen backbone, starting from stage 1's checkpoint.
//! A thin shell: flags -> checked config -> `aue_train::run`; see `--help`.

use std::process::ExitCode;

use aue_train::{Stage, StageConfig};

fn main() -> ExitCode {
    // Reuse freed tensor buffers instead of faulting fresh pages in every step (see the docs).
    aue_train::alloc::keep_freed_memory();
    let args = aue_train::cli::parse(Stage::Au);
    aue_train::logging::init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: aue_train::StageArgs) -> anyhow::Result<()> {
    let cfg = StageConfig::resolve(Stage::Au, args)?;
    aue_train::run(&cfg)?;
    Ok(())
}
