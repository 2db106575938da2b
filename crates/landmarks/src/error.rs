//! The crate's error type: every message names the file, tensor or operation it is about.

use std::path::PathBuf;

/// Errors of `aue-landmarks`.
#[derive(Debug, thiserror::Error)]
pub enum LandmarkError {
    /// An image file could not be opened or decoded.
    #[error("cannot read image {path}: {source}")]
    ImageRead {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },

    /// A text file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A text file holds something other than what its format says.
    #[error("{path}:{line}: {message}")]
    Parse { path: PathBuf, line: usize, message: String },

    /// A file or folder could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A weights file does not hold what the network needs.
    #[error("weights {file}: {message}")]
    Weights { file: String, message: String },

    /// A face box that leaves no pixels once clipped to the image.
    #[error(
        "face box ({x1:.1}, {y1:.1}, {x2:.1}, {y2:.1}) is empty inside a {width}x{height} image"
    )]
    EmptyBox { x1: f32, y1: f32, x2: f32, y2: f32, width: u32, height: u32 },

    /// Invalid arguments to a library function (sizes, options).
    #[error("{0}")]
    Invalid(String),

    /// A tensor operation failed.
    #[error("{op}: {source}")]
    Candle {
        op: &'static str,
        #[source]
        source: candle_core::Error,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, LandmarkError>;

/// Attaches the name of the operation to a Candle error.
pub(crate) trait CandleContext<T> {
    fn op(self, op: &'static str) -> Result<T>;
}

impl<T> CandleContext<T> for candle_core::Result<T> {
    fn op(self, op: &'static str) -> Result<T> {
        self.map_err(|source| LandmarkError::Candle { op, source })
    }
}
