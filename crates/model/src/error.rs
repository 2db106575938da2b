//! The error type of aue-model: every message names the op, tensor key, input or file involved.

use std::path::PathBuf;

/// Errors of model construction, forward passes, losses and checkpoint I/O.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A Candle op failed (shape mismatch, device error, ...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A file is not the format it should be (bad safetensors header, unreadable pickle, ...).
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A checkpoint lacks a tensor the model has.
    #[error("{}: missing tensor `{key}`{}", path.display(), and_more(*more))]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The first missing key (sorted order).
        key: String,
        /// How many more keys are missing.
        more: usize,
    },

    /// A checkpoint holds a tensor the model does not have.
    #[error("{}: unexpected tensor `{key}` (not in the model){}", path.display(), and_more(*more))]
    ExtraKey {
        /// The file.
        path: PathBuf,
        /// The first unexpected key (sorted order).
        key: String,
        /// How many more keys are unexpected.
        more: usize,
    },

    /// A tensor has the wrong shape.
    #[error("{}: tensor `{key}` has shape {found:?}, expected {expected:?}", path.display())]
    ShapeMismatch {
        /// The file (or input) the tensor came from.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// Its shape.
        found: Vec<usize>,
        /// The shape the model needs.
        expected: Vec<usize>,
    },

    /// A tensor has the wrong dtype.
    #[error("{}: tensor `{key}` has dtype {found}, expected {expected}", path.display())]
    DTypeMismatch {
        /// The file (or input) the tensor came from.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// Its dtype.
        found: String,
        /// The dtype the model needs.
        expected: String,
    },

    /// A model configuration is invalid (unknown preset, input side not a multiple of 32, ...).
    #[error("invalid model config: {0}")]
    Config(String),

    /// A forward or loss input is malformed.
    #[error("input `{name}`: {reason}")]
    Input {
        /// The input's name (`images`, `au_loc`, `labels`, ...).
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// An output was asked for that the forward options did not compute.
    #[error("output `{0}` was not computed (enable it in ForwardOptions::outputs)")]
    MissingOutput(&'static str),
}

fn and_more(more: usize) -> String {
    if more == 0 { String::new() } else { format!(" (and {more} more)") }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }

    pub(crate) fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ModelError::BadFile { path: path.into(), reason: reason.into() }
    }

    pub(crate) fn input(name: &'static str, reason: impl Into<String>) -> Self {
        ModelError::Input { name, reason: reason.into() }
    }
}
