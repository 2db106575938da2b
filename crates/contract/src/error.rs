//! The error type of the stage contract: every message names the file, and where it applies the
//! tensor key, metadata key or line at fault.

use std::path::PathBuf;

use aue_core::Context;

/// Errors of reading, checking and writing run folders and checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// Reading or writing a file failed.
    #[error(transparent)]
    Io(#[from] aue_core::FileError),

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

    /// A tensor has the wrong shape or dtype.
    #[error(transparent)]
    Mismatch(#[from] aue_model::TensorMismatch),

    /// A floating tensor holds NaN or an infinity.
    #[error(
        "{}: tensor `{key}` holds {count} non-finite value(s) (first: {first}); a checkpoint of a \
         run whose weights diverged is refused",
        path.display()
    )]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// How many values are NaN or infinite.
        count: usize,
        /// The first of them.
        first: f64,
    },

    /// A checkpoint is not the one this use needs (stage, preset, classes, metadata).
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },

    /// A JSON file of the run folder (config, metrics, manifest) is malformed.
    #[error("malformed {what} in {}: {msg}", path.display())]
    Json {
        /// What the file holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The parser's message (with the line where it has one).
        msg: String,
    },

    /// The run folder is in a state this command cannot continue from.
    #[error("run folder {}: {msg}", path.display())]
    RunFolder {
        /// The folder.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] Context<candle_core::Error>),

    /// The data crate reported an error (loading a batch).
    #[error(transparent)]
    Data(#[from] Context<aue_data::DataError>),

    /// The model crate reported an error (building a model to load into).
    #[error(transparent)]
    Model(#[from] Context<aue_model::ModelError>),
}

fn and_more(more: usize) -> String {
    if more == 0 { String::new() } else { format!(" (and {more} more)") }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ContractError>;

impl ContractError {
    /// A [`ContractError::BadFile`].
    pub fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ContractError::BadFile { path: path.into(), reason: reason.into() }
    }

    /// A [`ContractError::Checkpoint`].
    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        ContractError::Checkpoint { path: path.into(), msg: msg.into() }
    }
}

pub use aue_core::io_err;

/// Attaches an operation name to a Candle error.
pub trait CandleContext<T> {
    /// Wraps the error as [`ContractError::Candle`] with `op`.
    fn op(self, op: &'static str) -> Result<T>;
}

impl<T> CandleContext<T> for candle_core::Result<T> {
    fn op(self, op: &'static str) -> Result<T> {
        Ok(self.map_err(Context::op(op))?)
    }
}

/// Wraps an aue-model error.
pub fn model_err(op: &'static str) -> impl FnOnce(aue_model::ModelError) -> ContractError {
    move |source| Context::new(op, source).into()
}

/// The error and its sources, joined by ": " (as `anyhow`'s `{:#}` prints them).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
