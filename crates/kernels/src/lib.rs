//! Convolutions for Candle whose backward passes are forward convolutions.
//!
//! Candle 0.11 differentiates `conv2d` with `conv_transpose2d`, which on CPU is a naive loop (and
//! is not routed to cuDNN on CUDA); it also runs the forward `conv_transpose2d` with that loop.
//! [`conv2d`] and [`conv_transpose2d`] here give the same forward results, but compute every
//! heavy part of the forward and backward passes with Candle's fast forward convolution (im2col +
//! gemm on CPU, cuDNN or im2col + cuBLAS on CUDA) or a single matrix product. See the README for
//! the design and measured speed-ups, and `grad.rs` for the maths.
//!
//! ```
//! use aue_kernels::{ConvParams, conv2d};
//! use candle_core::{Device, Tensor, Var};
//!
//! let dev = Device::Cpu;
//! let x = Tensor::randn(0f32, 1., (2, 3, 9, 9), &dev)?; // [b, c_in, h, w]
//! let w = Var::randn(0f32, 0.1, (4, 3, 3, 3), &dev)?; // [c_out, c_in, kh, kw]
//! let p = ConvParams { stride: 2, padding: 1, dilation: 1 };
//! let y = conv2d(&x, &w, p)?; // [2, 4, 5, 5]
//! let grads = y.sqr()?.sum_all()?.backward()?;
//! assert_eq!(grads.get(&w).map(|g| g.dims().to_vec()), Some(vec![4, 3, 3, 3]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
pub mod grad;
mod im2col;
mod op;
mod params;

pub use error::{KernelError, Result};
pub use grad::{Engine, WeightGradAlgo};
pub use op::{conv_transpose2d, conv2d};
pub use params::{ConvParams, ConvTransposeParams};
