//! Convolutions for Candle whose backward passes cost about twice their forward pass, a
//! one-op train-mode batch norm for the CPU (`batch_norm.rs`), ReLU, residual add + ReLU and max
//! pooling as parallel one-pass ops with gradients for training (`relu.rs`, `pool.rs`), and
//! inference kernels that fuse a
//! convolution with its bias, residual and activation and run element-wise work in parallel
//! ([`infer`]).
//!
//! Candle 0.11 differentiates `conv2d` with `conv_transpose2d`, which on CPU is a naive loop (and
//! is not routed to cuDNN on CUDA); it also runs the forward `conv_transpose2d` with that loop.
//! [`conv2d`], [`conv2d_grouped`] and [`conv_transpose2d`] here give the same results (up to
//! rounding), but compute the products of the forward and backward passes as gemms on the CPU
//! (this crate's im2col / col2im, `im2col.rs`; for stride 1 Winograd's F(2x2, 3x3) and
//! F(4x4, 3x3), `winograd.rs`, or shifted views of the padded input without a column matrix, `shifted.rs`)
//! and as Candle's forward `conv2d` (cuDNN) or a matrix product on other devices. See the README
//! for the design and measured speed-ups, and `grad.rs` for the maths.
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

mod batch_norm;
mod cpu;
mod error;
mod gather;
mod gather_matmul;
pub mod grad;
mod im2col;
pub mod infer;
mod lrn;
mod matmul;
mod op;
mod params;
mod pool;
mod relu;
mod shifted;
mod skinny;
#[cfg(test)]
mod testing;
mod transpose;
mod winograd;

pub use batch_norm::{
    batch_norm_supported, batch_norm_train, batch_norm_train_add_relu, batch_norm_train_relu,
    channel_affine,
};
pub use cpu::train_kernels_supported;
pub use error::{KernelError, Result};
pub use gather::{crop_windows, index_select_rows};
pub use gather_matmul::gather_batched_matmul;
pub use grad::{Engine, WeightGradAlgo};
pub use lrn::{LrnParams, lrn_prev_channel_train};
pub use matmul::{batched_matmul, batched_matmul_nt};
pub use op::{conv_transpose2d, conv2d, conv2d_grouped};
pub use params::{ConvParams, ConvTransposeParams};
pub use pool::{PoolWindow, max_pool2d_train, max_pool2d_train_ops};
pub use relu::{add_relu, bias_relu, relu};
pub use transpose::transpose_copy;
pub use winograd::set_winograd;
