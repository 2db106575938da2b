//! `aue-stage3`: a thin shell over the stage's library; see `--help`.

aue_train::cli::global_allocator!();

fn main() -> std::process::ExitCode {
    // The binary's name and `--help` text are those of its package (Cargo.toml).
    let (name, about) = (env!("CARGO_BIN_NAME"), env!("CARGO_PKG_DESCRIPTION"));
    aue_train::cli::main(&aue_stage3::Fuse, name, about)
}
