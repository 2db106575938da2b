//! The error type of aue-model: every message names the op, tensor key, input or file involved.

use std::path::PathBuf;

/// Errors of model construction, forward passes and losses.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A Candle op failed (shape mismatch, device error, ...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A tensor of the model's state has the wrong shape or dtype.
    #[error(transparent)]
    Mismatch(#[from] TensorMismatch),

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

/// A tensor whose shape or dtype is not the one expected: one type for the model's own state
/// and for checkpoints read into it (aue-contract), so both say it the same way.
#[derive(Debug, thiserror::Error)]
#[error("{}: tensor `{key}` has {what} {found}, expected {expected}", path.display())]
pub struct TensorMismatch {
    /// The file (or input) the tensor came from.
    pub path: PathBuf,
    /// The tensor's key.
    pub key: String,
    /// `"shape"` or `"dtype"`.
    pub what: &'static str,
    /// What the tensor has (`[3, 64, 7, 7]`, `F32`).
    pub found: String,
    /// What the model needs.
    pub expected: String,
}

impl TensorMismatch {
    /// Check a tensor's shape, then its dtype, against what the model needs.
    pub fn check(
        path: &std::path::Path,
        key: &str,
        found: (&[usize], candle_core::DType),
        expected: (&[usize], candle_core::DType),
    ) -> std::result::Result<(), Self> {
        let mismatch = |what, found: String, expected: String| Self {
            path: path.to_path_buf(),
            key: key.to_string(),
            what,
            found,
            expected,
        };
        if found.0 != expected.0 {
            return Err(mismatch("shape", format!("{:?}", found.0), format!("{:?}", expected.0)));
        }
        if found.1 != expected.1 {
            return Err(mismatch("dtype", format!("{:?}", found.1), format!("{:?}", expected.1)));
        }
        Ok(())
    }
}
