//! The error type of the training engine: every message names the file, flag or tensor at fault.

use std::path::PathBuf;

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
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

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
    #[error("{op}")]
    Candle {
        op: &'static str,
        #[source]
        source: Box<candle_core::Error>,
    },

    /// The model crate reported an error (building, loading, saving, forward, loss).
    #[error("{op}")]
    Model {
        op: &'static str,
        #[source]
        source: Box<aue_model::ModelError>,
    },

    /// The stage contract reported an error (a checkpoint, the run folder, an evaluation).
    #[error(transparent)]
    Contract(#[from] aue_contract::ContractError),

    /// The device could not be opened.
    #[error("{0}")]
    Device(String),

    /// The data crate reported an error (opening a dataset, loading a batch).
    #[error("{op}")]
    Data {
        op: &'static str,
        #[source]
        source: Box<aue_data::DataError>,
    },
}

/// Result alias of the training engine.
pub type Result<T> = std::result::Result<T, TrainError>;

/// Attaches an operation name to a Candle error.
pub(crate) trait CandleContext<T> {
    fn op(self, op: &'static str) -> Result<T>;
}

impl<T> CandleContext<T> for candle_core::Result<T> {
    fn op(self, op: &'static str) -> Result<T> {
        self.map_err(|source| TrainError::Candle { op, source: Box::new(source) })
    }
}

/// Wraps an aue-model error.
pub(crate) fn model_err(op: &'static str, source: aue_model::ModelError) -> TrainError {
    TrainError::Model { op, source: Box::new(source) }
}

/// Wraps an aue-data error.
pub(crate) fn data_err(op: &'static str, source: aue_data::DataError) -> TrainError {
    TrainError::Data { op, source: Box::new(source) }
}

/// Builds a [`TrainError::Io`] for `path`.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { op, path, source }
}
