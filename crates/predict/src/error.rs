//! The crate's error type: every message names the file it is about.

use std::path::PathBuf;

use aue_core::Context;

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
    #[error(transparent)]
    Model(#[from] Context<aue_model::ModelError>),

    /// The face detector or landmark net failed.
    #[error(transparent)]
    Landmarks(#[from] Context<aue_landmarks::LandmarkError>),

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] Context<candle_core::Error>),

    /// A file or folder could not be read or written.
    #[error(transparent)]
    Io(#[from] aue_core::FileError),

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

pub(crate) use aue_core::io_err;

pub(crate) fn candle_err(op: &str) -> impl FnOnce(candle_core::Error) -> PredictError + '_ {
    move |source| Context::new(op.to_string(), source).into()
}
