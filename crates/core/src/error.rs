//! The error pieces that every aue crate's error type holds the same way: a failed file operation
//! and another crate's error with what was being done. One definition each, so that the
//! messages read alike whichever crate reports them.

use std::borrow::Cow;
use std::path::PathBuf;

/// Reading or writing a file or folder failed: says what was being done and names the path.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}", path.display())]
pub struct FileError {
    /// What was being done (`cannot read`, `cannot rename into place`, ...).
    pub op: &'static str,
    /// The file or folder.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
}

/// A `map_err` adapter: the I/O error of operation `op` on `path` as a [`FileError`], which
/// every crate's error type converts from (`?` does the rest).
pub fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> FileError {
    let path = path.into();
    move |source| FileError { op, path, source }
}

/// Another crate's error, with what was being done when it happened. Boxed: the errors wrapped
/// this way (Candle's, the model's, the data crate's) are large and rare, and a small `Result`
/// keeps the hot paths cheap.
#[derive(Debug, thiserror::Error)]
#[error("{op}")]
pub struct Context<E: std::error::Error + 'static> {
    /// What was being done.
    pub op: Cow<'static, str>,
    /// The error.
    #[source]
    pub source: Box<E>,
}

impl<E: std::error::Error + 'static> Context<E> {
    /// `source`, while doing `op`.
    pub fn new(op: impl Into<Cow<'static, str>>, source: E) -> Self {
        Context { op: op.into(), source: Box::new(source) }
    }

    /// A `map_err` adapter wrapping an error with `op`.
    pub fn op(op: impl Into<Cow<'static, str>>) -> impl FnOnce(E) -> Self {
        let op = op.into();
        move |source| Context::new(op, source)
    }
}
