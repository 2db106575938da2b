//! The one error type of `aue-synth`: every message names the operation and the file or value.

use std::io;
use std::path::PathBuf;

/// What can go wrong while generating a synthetic set.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// A configuration value is out of range (message says which and why).
    #[error("invalid synth config: {0}")]
    Config(String),
    /// A folder of the layout could not be created.
    #[error("cannot create folder {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    /// A file could not be written, synced or renamed into place.
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    /// A stale file could not be removed before regeneration.
    #[error("cannot remove stale {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    /// JPEG encoding failed (the image name says which sample).
    #[error("cannot encode JPEG {name}: {source}")]
    Encode { name: String, source: image::ImageError },
    /// The drawing surface could not be allocated for this image side.
    #[error("cannot allocate a {size}x{size} canvas")]
    Canvas { size: u32 },
    /// The worker pool could not be built.
    #[error("cannot build a pool of {threads} threads: {source}")]
    ThreadPool { threads: usize, source: rayon::ThreadPoolBuildError },
}

/// `Result` with [`SynthError`].
pub type Result<T> = std::result::Result<T, SynthError>;
