//! The error type of the report: every message names the file (and, for text, the line) or the
//! setting at fault.

use std::path::PathBuf;

use aue_contract::layout::METRICS_FILE;
use aue_core::Context;

/// Everything that can go wrong while reading run folders and writing the report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A folder given as a run holds neither a stage run nor stage folders.
    #[error(
        "{} is not a run folder: it holds no {METRICS_FILE} and no stage1/stage2/stage3 folders",
        path.display()
    )]
    NotARun { path: PathBuf },

    /// A stage folder without `metrics.jsonl` (the run never finished an epoch).
    #[error(
        "run folder {} has no {METRICS_FILE}: the stage has not finished an epoch (or this is not \
         a stage folder)",
        dir.display()
    )]
    NoMetrics { dir: PathBuf },

    /// `metrics.jsonl` exists but holds no record.
    #[error("{} is empty: the stage has not finished an epoch", path.display())]
    EmptyMetrics { path: PathBuf },

    /// A line of `metrics.jsonl` is not a record the trainer writes.
    #[error("{}, line {line}: {msg}", path.display())]
    MetricsLine { path: PathBuf, line: usize, msg: String },

    /// The run holds records, but no evaluation of the test split.
    #[error("{} holds no test-split record: no epoch was evaluated", path.display())]
    NoTestRecord { path: PathBuf },

    /// Two sources disagree about the class names.
    #[error("label sets differ: {left} has [{}], {right} has [{}]", left_labels.join(", "), right_labels.join(", "))]
    LabelMismatch {
        left: String,
        left_labels: Vec<String>,
        right: String,
        right_labels: Vec<String>,
    },

    /// A run folder whose files contradict each other (stage numbers, datasets).
    #[error("run folder {}: {msg}", dir.display())]
    Inconsistent { dir: PathBuf, msg: String },

    /// A checkpoint that cannot be used (no trainer metadata, missing or malformed tensor).
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },

    /// A JSON file (config.json) is malformed.
    #[error("malformed {what} in {}: {msg}", path.display())]
    Json { what: &'static str, path: PathBuf, msg: String },

    /// A file or folder could not be read or written.
    #[error(transparent)]
    Io(#[from] aue_core::FileError),

    /// The stage contract reported an error (checkpoints, atomic writes, evaluation).
    #[error(transparent)]
    Contract(#[from] aue_contract::ContractError),

    /// The device could not be opened.
    #[error("{0}")]
    Device(String),

    /// The model crate failed while building, loading or running a model (`--checkpoint`).
    #[error(transparent)]
    Model(#[from] Context<aue_model::ModelError>),

    /// The data crate failed while opening or loading the test split (`--checkpoint`).
    #[error(transparent)]
    Data(#[from] Context<aue_data::DataError>),

    /// A chart could not be drawn.
    #[error("cannot draw {what}: {msg}")]
    Plot { what: String, msg: String },

    /// An invalid option value.
    #[error("invalid setting `{key}`: {msg}")]
    Config { key: &'static str, msg: String },
}

/// Result alias of the report.
pub type Result<T> = std::result::Result<T, ReportError>;

pub(crate) use aue_core::io_err;
