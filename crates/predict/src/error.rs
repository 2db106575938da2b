//! The crate's error type: every message names the file it is about.

use std::path::PathBuf;

/// Errors of `aue-predict`.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// The checkpoint is not one this tool can run (wrong kind, stage, preset or sizes).
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },

    /// The stage contract refused the checkpoint (its message names the file and key).
    #[error(transparent)]
    Contract(#[from] aue_contract::ContractError),

    /// aue-model refused the checkpoint or the forward pass (its message names the file/key).
    #[error("{op}")]
    Model {
        op: String,
        #[source]
        source: Box<aue_model::ModelError>,
    },

    /// The face detector or landmark net failed.
    #[error("{op}")]
    Landmarks {
        op: String,
        #[source]
        source: Box<aue_landmarks::LandmarkError>,
    },

    /// A tensor operation failed.
    #[error("{op}")]
    Candle {
        op: String,
        #[source]
        source: Box<candle_core::Error>,
    },

    /// A file or folder could not be read or written.
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A video could not be probed or decoded (the message says what ffmpeg / ffprobe said).
    #[error("video {}: {msg}", path.display())]
    Video { path: PathBuf, msg: String },

    /// A program aue-predict runs (ffmpeg, ffprobe) is not installed.
    #[error(
        "the `{program}` program was not found on PATH: aue-predict decodes video \
         with FFmpeg's command-line programs; install FFmpeg with the system package manager \
         (`apt-get install ffmpeg`, `dnf install ffmpeg`, `brew install ffmpeg`, \
         `winget install ffmpeg`)"
    )]
    MissingProgram {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// A plot could not be drawn.
    #[error("plot {}: {msg}", path.display())]
    Plot { path: PathBuf, msg: String },

    /// A setting is invalid.
    #[error("invalid setting: {0}")]
    Config(String),
}

/// The crate's result type.
pub type Result<T, E = PredictError> = std::result::Result<T, E>;

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> PredictError {
    let path = path.into();
    move |source| PredictError::Io { op, path, source }
}

pub(crate) fn candle_err(op: &str) -> impl FnOnce(candle_core::Error) -> PredictError + '_ {
    move |source| PredictError::Candle { op: op.to_string(), source: Box::new(source) }
}
