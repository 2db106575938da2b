//! Logging for the binaries: `tracing` events go to the terminal (without tearing the progress
//! bars; colours only when stderr is a terminal) and, once a run folder is known, to its log
//! file as well.
//!
//! Libraries only emit events; [`crate::main`] calls [`init`] once at start-up.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use indicatif::MultiProgress;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

static BARS: OnceLock<MultiProgress> = OnceLock::new();
static LOG_FILE: Mutex<Option<File>> = Mutex::new(None);

/// The progress-bar group every bar of the run joins (log lines are printed above it).
pub fn bars() -> &'static MultiProgress {
    BARS.get_or_init(MultiProgress::new)
}

/// Installs the global subscriber: terminal output at `default_level` (or `RUST_LOG`), plus the
/// run's log file once [`attach_file`] names it. Calling it twice is harmless.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let terminal = tracing_subscriber::fmt::layer()
        .with_writer(TerminalWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let file = tracing_subscriber::fmt::layer()
        .with_writer(FileWriter)
        .with_ansi(false)
        .with_target(false);
    let _ = tracing_subscriber::registry().with(filter).with(terminal).with(file).try_init();
}

/// Sends the log to `path` too (appending, so a resumed run keeps the killed run's log).
pub fn attach_file(path: &Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    if let Ok(mut slot) = LOG_FILE.lock() {
        *slot = Some(f);
    }
    Ok(())
}

/// Appends one line to the log file only (the terminal gets the same text from `main`).
pub fn write_file_only(line: &str) {
    if let Ok(mut slot) = LOG_FILE.lock()
        && let Some(f) = slot.as_mut()
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Stops writing to the log file (the run is over).
pub fn detach_file() {
    if let Ok(mut slot) = LOG_FILE.lock()
        && let Some(f) = slot.take()
    {
        let _ = f.sync_all();
    }
}

/// Writes each formatted event to stderr with the progress bars hidden meanwhile.
struct TerminalWriter;

impl Write for TerminalWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The fmt layer hands over one whole event per call.
        bars().suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for TerminalWriter {
    type Writer = TerminalWriter;
    fn make_writer(&'a self) -> Self::Writer {
        TerminalWriter
    }
}

/// Writes to the attached log file, or nowhere before one is attached.
struct FileWriter;

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut slot) = LOG_FILE.lock()
            && let Some(f) = slot.as_mut()
        {
            f.write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for FileWriter {
    type Writer = FileWriter;
    fn make_writer(&'a self) -> Self::Writer {
        FileWriter
    }
}

/// A progress bar of `len` steps in the shared group (hidden when stderr is not a terminal).
pub fn progress_bar(len: usize, prefix: String) -> indicatif::ProgressBar {
    let bar = bars().add(indicatif::ProgressBar::new(len as u64));
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {pos}/{len} {msg} (eta {eta})",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix);
    bar
}
