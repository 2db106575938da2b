//! The error type of aue-data.
//!
//! Every variant that is about a file names it, and a text-parse error also names the 1-based
//! line, so that a user with 15,000 annotation files can go straight to the bad one.

use std::path::{Path, PathBuf};

/// Result alias of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Everything that can go wrong while opening a dataset or loading a batch.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder could not be read.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done ("read", "list folder").
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// One line of a text file does not parse (a bad number, a wrong column count, a label out
    /// of range, a non-finite value).
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        /// The text file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
    /// One row of a table file (parquet) is malformed.
    #[error("{}: row {row}: {message}", path.display())]
    Row {
        /// The table file.
        path: PathBuf,
        /// 1-based row number.
        row: usize,
        /// What is wrong with the row.
        message: String,
    },
    /// A file parses but is not valid as a whole (wrong number of landmark rows, a face box
    /// outside its image, an empty crop).
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file the problem is about.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An image file could not be decoded (unknown format, corrupt or truncated data).
    #[error("{}: cannot decode image: {message}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// A file the layout requires is missing.
    #[error("{}: missing {what}", path.display())]
    Missing {
        /// Where the file was expected.
        path: PathBuf,
        /// What the file is ("face box file for train_00001.jpg").
        what: String,
    },
    /// The dataset as a whole cannot be used (for example, no sample in the split).
    #[error("dataset {}: {message}", root.display())]
    Dataset {
        /// The dataset root folder, or the list file or folder at fault.
        root: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An option value is out of range.
    #[error("invalid option: {0}")]
    Options(String),
    /// Building a batch tensor failed.
    #[error("building batch tensors: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The loader's worker stopped before the end of the epoch (it panicked).
    #[error("loader worker for epoch {epoch} stopped early: {message}")]
    Worker {
        /// The epoch being loaded.
        epoch: usize,
        /// The panic message, when there is one.
        message: String,
    },
}

impl DataError {
    pub(crate) fn parse(path: &Path, line: usize, message: impl Into<String>) -> Self {
        DataError::Parse { path: path.to_path_buf(), line, message: message.into() }
    }

    pub(crate) fn invalid(path: &Path, message: impl Into<String>) -> Self {
        DataError::Invalid { path: path.to_path_buf(), message: message.into() }
    }

    pub(crate) fn io(path: &Path, op: &'static str, source: std::io::Error) -> Self {
        DataError::Io { path: path.to_path_buf(), op, source }
    }

    pub(crate) fn missing(path: &Path, what: impl Into<String>) -> Self {
        DataError::Missing { path: path.to_path_buf(), what: what.into() }
    }

    pub(crate) fn image(path: &Path, message: impl std::fmt::Display) -> Self {
        DataError::Image { path: path.to_path_buf(), message: message.to_string() }
    }

    /// The file this error is about, when it is about one file.
    pub fn path(&self) -> Option<&Path> {
        match self {
            DataError::Io { path, .. }
            | DataError::Parse { path, .. }
            | DataError::Row { path, .. }
            | DataError::Invalid { path, .. }
            | DataError::Image { path, .. }
            | DataError::Missing { path, .. } => Some(path),
            DataError::Dataset { root, .. } => Some(root),
            DataError::Options(_) | DataError::Tensor(_) | DataError::Worker { .. } => None,
        }
    }

    /// The 1-based line of a text-parse error.
    pub fn line(&self) -> Option<usize> {
        match self {
            DataError::Parse { line, .. } => Some(*line),
            _ => None,
        }
    }
}
