//! The error type of aue-model: every message names the op, tensor key, input or file involved.

use std::path::PathBuf;

/// Errors of model construction, forward passes and losses.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A Candle op failed (shape mismatch, device error, ...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

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

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn input(name: &'static str, reason: impl Into<String>) -> Self {
        ModelError::Input { name, reason: reason.into() }
    }
}
