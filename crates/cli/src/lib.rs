//! The prologue and epilogue every aue binary shares, so that each `main` is a few lines:
//! the allocator setting ([`alloc`]), logging to the terminal without tearing progress bars and
//! to a run's log file ([`logging`]), the `--device` setting ([`device`]), and [`main`]: run,
//! print the error chain, exit non-zero.

pub mod alloc;
pub mod device;
pub mod logging;

use std::process::ExitCode;

pub use device::DeviceSpec;

/// Runs a binary's `run`: keeps freed memory for reuse, installs logging at `default_level`
/// (`RUST_LOG` overrides it), and turns an error into `error: <chain>` on stderr and exit code 1.
pub fn main(default_level: &str, run: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    // Reuse freed tensor buffers instead of faulting fresh pages in on every pass.
    alloc::keep_freed_memory();
    logging::init(default_level);
    let result = run();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::write_file_only(&format!("error: {e:#}"));
            logging::detach_file();
            logging::bars().suspend(|| eprintln!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}
