//! The error type of `aue-kernels`.
//!
//! Every message names the operation and the shapes involved, so that a bad layer definition in a
//! model can be found from the error alone.

use candle_core::Shape;

/// Errors from the convolutions of this crate.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The arguments of a convolution do not fit together (rank, channels, sizes, parameters).
    #[error("{op}: {msg} (input {input:?}, weight {weight:?}, {params})")]
    InvalidArgs {
        /// The public operation that was called, e.g. `conv2d`.
        op: &'static str,
        /// What is wrong.
        msg: String,
        /// Shape of the input tensor.
        input: Shape,
        /// Shape of the weight tensor.
        weight: Shape,
        /// The convolution parameters, as `Debug` text.
        params: String,
    },
    /// An error raised by Candle while computing the convolution.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// So that model code whose functions return `candle_core::Result` can use `?` on our results.
impl From<KernelError> for candle_core::Error {
    fn from(e: KernelError) -> Self {
        match e {
            KernelError::Candle(e) => e,
            other => candle_core::Error::wrap(other),
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, KernelError>;
