//! The error type of the training engine: every message names the file, flag or tensor at fault.

use std::path::PathBuf;

use aue_core::Context;

/// Everything that can go wrong while configuring or running a training stage.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value (flag, config file or the combination) is invalid.
    #[error("invalid setting `{key}`: {msg}")]
    Config { key: &'static str, msg: String },

    /// A config file could not be parsed.
    #[error("cannot parse config file {}: {msg}", path.display())]
    ConfigFile { path: PathBuf, msg: String },

    /// A file or folder could not be read or written.
    #[error(transparent)]
    Io(#[from] aue_core::FileError),

    /// A JSON file of the run folder (config, metrics) is malformed.
    #[error("malformed {what} in {}: {msg}", path.display())]
    Json { what: &'static str, path: PathBuf, msg: String },

    /// A checkpoint is the wrong one for this stage (stage, preset, dataset, metadata).
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },

    /// The run folder is in a state this command cannot continue from.
    #[error("run folder {}: {msg}", path.display())]
    RunFolder { path: PathBuf, msg: String },

    /// The loss became NaN or infinite; training stops and keeps the last good checkpoint.
    #[error(
        "the loss became {value} at epoch {epoch}, step {step} (lr {lr}); training stopped, the \
         last good checkpoint is kept ({last})"
    )]
    NonFiniteLoss { value: f64, epoch: usize, step: usize, lr: f64, last: String },

    /// The optimizer state does not fit the parameters it is loaded into.
    #[error("optimizer state: {0}")]
    OptimizerState(String),

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] Context<candle_core::Error>),

    /// The model crate reported an error (building, loading, saving, forward, loss).
    #[error(transparent)]
    Model(#[from] Context<aue_model::ModelError>),

    /// The stage contract reported an error (a checkpoint, the run folder, an evaluation).
    #[error(transparent)]
    Contract(#[from] aue_contract::ContractError),

    /// The device could not be opened.
    #[error("{0}")]
    Device(String),

    /// The data crate reported an error (opening a dataset, loading a batch).
    #[error(transparent)]
    Data(#[from] Context<aue_data::DataError>),
}

/// Result alias of the training engine.
pub type Result<T> = std::result::Result<T, TrainError>;

/// Attaches an operation name to a Candle error.
pub(crate) trait CandleContext<T> {
    fn op(self, op: &'static str) -> Result<T>;
}

impl<T> CandleContext<T> for candle_core::Result<T> {
    fn op(self, op: &'static str) -> Result<T> {
        Ok(self.map_err(Context::op(op))?)
    }
}

/// Wraps an aue-model error.
pub(crate) fn model_err(op: &'static str, source: aue_model::ModelError) -> TrainError {
    Context::new(op, source).into()
}

/// Wraps an aue-data error.
pub(crate) fn data_err(op: &'static str, source: aue_data::DataError) -> TrainError {
    Context::new(op, source).into()
}

pub(crate) use aue_core::io_err;
