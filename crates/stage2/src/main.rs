//! `aue-stage2`: a thin shell over the stage's library; see `--help`.

fn main() -> std::process::ExitCode {
    aue_train::cli::main(&aue_stage2::STAGE)
}
