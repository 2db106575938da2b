//! The error type of aue-export's library.

use std::path::PathBuf;

/// What can go wrong while exporting or checking a model.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The model or its state is not what the export expects.
    #[error("model: {0}")]
    Model(#[from] aue_model::ModelError),
    /// A Candle op failed while preparing a weight.
    #[error("tensor op: {0}")]
    Candle(#[from] candle_core::Error),
    /// The checkpoint could not be resolved or loaded.
    #[error(transparent)]
    Checkpoint(#[from] aue_contract::ContractError),
    /// A state key the graph needs is absent (or has another dtype or shape).
    #[error("model state: `{key}`: {msg}")]
    State {
        /// The reference state-dict key (or group key).
        key: String,
        /// What is wrong with it.
        msg: String,
    },
    /// The serialised graph would exceed protobuf's 2 GiB message limit.
    #[error("the ONNX file would be {bytes} bytes, over protobuf's 2 GiB limit on one message")]
    TooLarge {
        /// Encoded size.
        bytes: u64,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The ONNX runtime (tract) rejected or failed to run the graph.
    #[error("running the ONNX graph in tract: {0}")]
    Runtime(String),
    /// The exported graph does not reproduce aue's outputs.
    #[error("{0}")]
    Mismatch(String),
    /// Bad arguments to a library function.
    #[error("{0}")]
    Invalid(String),
}

/// Result with [`ExportError`].
pub type Result<T, E = ExportError> = std::result::Result<T, E>;

impl ExportError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ExportError::Io { path: path.into(), source }
    }

    /// A problem with state key `key`.
    pub fn state(key: impl Into<String>, msg: impl Into<String>) -> Self {
        ExportError::State { key: key.into(), msg: msg.into() }
    }
}
