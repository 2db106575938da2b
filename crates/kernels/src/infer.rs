//! Inference-only kernels: no gradient is ever recorded, and on the CPU (f32, the dtype of every
//! checkpoint) each one is a single pass over memory split into parallel chunks (rayon, so
//! `RAYON_NUM_THREADS` sets their threads as it does the gemm's).
//!
//! Candle 0.11 runs its CPU element-wise, broadcast, pooling and reduction ops on one thread, and
//! an eval-mode layer written with them is several passes: conv, BatchNorm's scale and shift
//! (two broadcasts), ReLU, the residual add. Here:
//! - [`conv2d_bias_act`]: the convolution's gemm result (stored `[c_out, b, oh, ow]`, see
//!   `im2col.rs`) is copied into NCHW once, and that copy adds the bias (the folded BatchNorm's
//!   shift), the optional residual and applies the activation: one pass instead of four;
//! - [`bias_act`]: the same epilogue after any other producer (a transposed convolution, a
//!   matrix product);
//! - [`max_pool2d`], [`mean_planes`], [`softmax_last`] and [`lrn_prev_channel`]: each one
//!   pass, in parallel.
//!
//! Other devices and dtypes run the same maths with Candle ops (the `*_ops` functions, also what
//! the CPU kernels are tested against).

use candle_core::{CpuStorage, DType, Storage, Tensor};
use rayon::prelude::*;

use crate::cpu::par_zeroed;
use crate::error::{KernelError, Result};
use crate::grad::Engine;
use crate::im2col::{self, Window};
use crate::params::ConvParams;
use crate::pool::{Pool, PoolWindow};
use crate::shifted::{self, Pass};
use crate::winograd;

/// Elements per rayon task, at least (short planes are grouped).
const MIN_TASK: usize = 4096;

/// The activation an epilogue applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// None.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `tanh(x)`.
    Tanh,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
}

impl Act {
    #[inline]
    fn apply(self, v: f32) -> f32 {
        match self {
            Act::Identity => v,
            Act::Relu => v.max(0.0),
            Act::Tanh => v.tanh(),
            Act::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        }
    }

    /// The activation as Candle ops.
    pub fn apply_ops(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Act::Identity => Ok(x.clone()),
            Act::Relu => x.relu(),
            Act::Tanh => x.tanh(),
            Act::Sigmoid => (x.neg()?.exp()? + 1.0)?.recip(),
        }
    }
}

/// `f` on the elements of `t` when it is a contiguous f32 tensor on the CPU.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => {
            layout.contiguous_offsets().map(|(start, end)| f(&v[start..end]))
        }
        _ => None,
    }
}

/// Whether the CPU kernels take `t` (a CPU f32 tensor); [`lrn_prev_channel`] needs it, the
/// others fall back to Candle ops.
pub fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

fn invalid(op: &'static str, x: &Tensor, msg: String) -> KernelError {
    KernelError::InvalidArgs {
        op,
        msg,
        input: x.shape().clone(),
        weight: candle_core::Shape::from(()),
        params: String::new(),
    }
}

/// Rows of `inner` elements (one per (outer, channel) pair) handed to `f(plane, channel, row)`
/// in parallel, rows grouped so that each task has at least [`MIN_TASK`] elements.
fn par_planes(
    dst: &mut [f32],
    c: usize,
    inner: usize,
    f: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    if inner == 0 || dst.is_empty() {
        return;
    }
    let per_task = MIN_TASK.div_ceil(inner).max(1);
    dst.par_chunks_mut(per_task * inner).enumerate().for_each(|(task, chunk)| {
        for (j, row) in chunk.chunks_mut(inner).enumerate() {
            let plane = task * per_task + j;
            f(plane, plane % c, row);
        }
    });
}

/// The epilogue of one plane: `dst = act(src + bias + residual)`.
fn epilogue_row(dst: &mut [f32], src: &[f32], bias: f32, residual: Option<&[f32]>, act: Act) {
    match residual {
        Some(r) => {
            for ((o, &s), &r) in dst.iter_mut().zip(src).zip(r) {
                *o = act.apply(s + bias + r);
            }
        }
        None => {
            for (o, &s) in dst.iter_mut().zip(src) {
                *o = act.apply(s + bias);
            }
        }
    }
}

/// [`epilogue_row`] with the row as its own source (the same arithmetic).
fn epilogue_row_in_place(row: &mut [f32], bias: f32, residual: Option<&[f32]>, act: Act) {
    match residual {
        Some(r) => {
            for (o, &r) in row.iter_mut().zip(r) {
                *o = act.apply(*o + bias + r);
            }
        }
        None => {
            for o in row.iter_mut() {
                *o = act.apply(*o + bias);
            }
        }
    }
}

/// What an epilogue adds: a bias per channel and a residual shaped like the output.
#[derive(Debug, Clone, Copy)]
pub struct Epilogue<'a> {
    /// `[c]`, added along the channel dim; or `[g, c]` with `g` the output's first dim (a group
    /// of layers stacked on dim 0, each with its own bias) when the channel dim is not 0.
    pub bias: Option<&'a Tensor>,
    /// Shaped like the output, added after the bias.
    pub residual: Option<&'a Tensor>,
    /// Applied last.
    pub act: Act,
}

impl<'a> Epilogue<'a> {
    /// Only an activation.
    pub fn act(act: Act) -> Self {
        Epilogue { bias: None, residual: None, act }
    }

    /// A bias, then an activation.
    pub fn bias(bias: &'a Tensor, act: Act) -> Self {
        Epilogue { bias: Some(bias), residual: None, act }
    }

    /// The epilogue as Candle ops on `x` (channels on `channel_dim`).
    fn apply_ops(&self, x: &Tensor, channel_dim: usize) -> candle_core::Result<Tensor> {
        let mut y = x.clone();
        if let Some(b) = self.bias {
            let c = x.dim(channel_dim)?;
            let mut shape = vec![1; x.rank()];
            shape[0] = b.elem_count() / c;
            shape[channel_dim] = c;
            y = y.broadcast_add(&b.reshape(shape)?)?;
        }
        if let Some(r) = self.residual {
            y = (y + r)?;
        }
        self.act.apply_ops(&y)
    }

    /// Checks the bias and residual against an output of `dims` with channels on `channel_dim`.
    fn check(&self, op: &'static str, dims: &[usize], channel_dim: usize) -> Result<()> {
        let c = dims[channel_dim];
        if let Some(b) = self.bias
            && b.elem_count() != c
            && (channel_dim == 0 || b.elem_count() != dims[0] * c)
        {
            return Err(invalid(
                op,
                b,
                format!("bias must have {c} (or first dim x {c}) elements (output {dims:?})"),
            ));
        }
        if let Some(r) = self.residual
            && r.dims() != dims
        {
            return Err(invalid(op, r, format!("residual must have the output's shape {dims:?}")));
        }
        Ok(())
    }

    /// Whether the CPU kernel takes this epilogue's tensors.
    fn cpu_f32(&self) -> bool {
        self.bias.is_none_or(cpu_f32) && self.residual.is_none_or(cpu_f32)
    }

    /// Runs the CPU kernel on `dst` itself (channels on dim 1): no second buffer.
    fn run_in_place(&self, mut dst: Vec<f32>, dims: &[usize]) -> Result<Tensor> {
        let c = dims[1];
        let inner: usize = dims[2..].iter().product();
        let bias = match self.bias {
            Some(b) => b.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0.0; c],
        };
        // As in `run`: one bias of c elements, or one per image.
        let per_group = dims[0] / (bias.len() / c).max(1);
        let residual = self.residual.map(Tensor::contiguous).transpose()?;
        let mut run = |res: Option<&[f32]>| {
            par_planes(&mut dst, c, inner, |plane, ch, row| {
                let (o, r) = (plane / c, res.map(|r| &r[plane * inner..(plane + 1) * inner]));
                let b = bias[(o / per_group.max(1)) * c + ch];
                epilogue_row_in_place(row, b, r, self.act);
            });
        };
        match &residual {
            Some(r) => with_f32(r, |r| run(Some(r)))
                .ok_or_else(|| invalid("epilogue", r, "residual is not CPU f32".into()))?,
            None => run(None),
        }
        Ok(Tensor::from_vec(dst, dims, &candle_core::Device::Cpu)?)
    }

    /// Runs the CPU kernel: `src_plane(outer, channel)` is the source row of each output plane.
    fn run<'s>(
        &self,
        dims: &[usize],
        channel_dim: usize,
        src_plane: impl Fn(usize, usize) -> &'s [f32] + Sync,
    ) -> Result<Tensor> {
        let c = dims[channel_dim];
        let inner: usize = dims[channel_dim + 1..].iter().product();
        let outer: usize = dims[..channel_dim].iter().product();
        let mut dst = par_zeroed::<f32>(dims.iter().product());
        let bias = match self.bias {
            Some(b) => b.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0.0; c],
        };
        // Planes (outer index o) per bias group: all of them for one bias of c elements.
        let per_group = outer / (bias.len() / c).max(1);
        let residual = self.residual.map(Tensor::contiguous).transpose()?;
        let mut run = |res: Option<&[f32]>| {
            par_planes(&mut dst, c, inner, |plane, ch, row| {
                let (o, r) = (plane / c, res.map(|r| &r[plane * inner..(plane + 1) * inner]));
                let b = bias[(o / per_group.max(1)) * c + ch];
                epilogue_row(row, src_plane(o, ch), b, r, self.act);
            });
        };
        match &residual {
            Some(r) => with_f32(r, |r| run(Some(r)))
                .ok_or_else(|| invalid("epilogue", r, "residual is not CPU f32".into()))?,
            None => run(None),
        }
        Ok(Tensor::from_vec(dst, dims, &candle_core::Device::Cpu)?)
    }
}

/// `act(x + bias + residual)`, the bias along `channel_dim`, as one parallel pass on the CPU.
///
/// # Shapes
/// `x: [.., c (channel_dim), ..]`, bias `[c]`, residual like `x` -> like `x`
pub fn bias_act(x: &Tensor, channel_dim: usize, ep: Epilogue<'_>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    if channel_dim >= dims.len() {
        return Err(invalid("bias_act", x, format!("no channel dim {channel_dim}")));
    }
    ep.check("bias_act", &dims, channel_dim)?;
    if !(cpu_f32(x) && ep.cpu_f32()) {
        return Ok(ep.apply_ops(x, channel_dim)?);
    }
    let x = x.contiguous()?;
    let inner: usize = dims[channel_dim + 1..].iter().product();
    let c = dims[channel_dim];
    let y = with_f32(&x, |src| {
        ep.run(&dims, channel_dim, |o, ch| &src[(o * c + ch) * inner..(o * c + ch + 1) * inner])
    });
    y.ok_or_else(|| invalid("bias_act", &x, "not CPU f32".into()))?
}

/// Inference convolution with its epilogue: `act(conv2d(x, w) + bias + residual)`, the bias per
/// output channel. On the CPU (f32) the gemm's result is written into NCHW by the epilogue itself
/// (see the module doc); elsewhere it is [`crate::conv2d`] and Candle ops. No gradient.
///
/// # Shapes
/// `x: [b, c_in, h, w]`, `w: [c_out, c_in, kh, kw]`, bias `[c_out]`, residual `[b, c_out, oh, ow]`
/// -> `[b, c_out, oh, ow]`
pub fn conv2d_bias_act(
    x: &Tensor,
    w: &Tensor,
    params: ConvParams,
    ep: Epilogue<'_>,
) -> Result<Tensor> {
    let (x, w) = (x.detach(), w.detach());
    if !(cpu_f32(&x) && cpu_f32(&w) && ep.cpu_f32()) {
        let y = crate::conv2d(&x, &w, params)?;
        ep.check("conv2d_bias_act", y.dims(), 1)?;
        return Ok(ep.apply_ops(&y, 1)?);
    }
    let (_, _, (oh, ow)) = crate::op::check_conv("conv2d_bias_act", &x, &w, params, 1)?;
    let (b, c_out) = (x.dim(0)?, w.dim(0)?);
    let dims = [b, c_out, oh, ow];
    ep.check("conv2d_bias_act", &dims, 1)?;
    let origin = -(params.padding as isize);
    let win = Window {
        stride: params.stride,
        dilation: params.dilation,
        origin: (origin, origin),
        out: (oh, ow),
    };
    let plane = oh * ow;
    let input = (x.dim(2)?, x.dim(3)?);
    let winograd = winograd::enabled()
        && winograd::supports(&x, (w.dim(2)?, w.dim(3)?), params)
        && winograd::forward_pays((oh, ow));
    if winograd || shifted::applies(&x, params, input, (oh, ow), Pass::Data, Engine::Auto) {
        let y = if winograd {
            winograd::conv_f32(&x, &w, params)?
        } else {
            shifted::conv_f32(&x, &w, params, (oh, ow))?
        }; // [b, c_out, oh, ow]
        return ep.run_in_place(y, &dims);
    }
    let cm = im2col::conv_channel_major(&x, &w, win, im2col::COLUMN_BUDGET)?; // [c_out, b, oh, ow]
    let y = with_f32(&cm, |src| {
        ep.run(&dims, 1, |n, co| &src[(co * b + n) * plane..(co * b + n + 1) * plane])
    });
    y.ok_or_else(|| invalid("conv2d_bias_act", &cm, "gemm result is not CPU f32".into()))?
}

/// Max pooling with a square window, `-inf` padding (the padding never wins, as in PyTorch).
///
/// # Shapes
/// `x: [b, c, h, w]` -> `[b, c, (h + 2p - k) / s + 1, (w + 2p - k) / s + 1]`
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let pool = Pool::new("max_pool2d", x, PoolWindow { kernel, stride, padding })?;
    if !cpu_f32(x) {
        return Ok(max_pool2d_ops(x, kernel, stride, padding)?);
    }
    let x = x.contiguous()?;
    let mut dst = par_zeroed::<f32>(b * c * pool.oh * pool.ow);
    let done = with_f32(&x, |src| {
        par_planes(&mut dst, c, pool.oh * pool.ow, |plane, _, out| {
            pool.forward_plane(&src[plane * h * w..(plane + 1) * h * w], out)
        })
    });
    done.ok_or_else(|| invalid("max_pool2d", &x, "not CPU f32".into()))?;
    Ok(Tensor::from_vec(dst, (b, c, pool.oh, pool.ow), x.device())?)
}

/// [`max_pool2d`] as Candle ops.
pub fn max_pool2d_ops(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    if padding == 0 {
        return x.max_pool2d_with_stride(kernel, stride);
    }
    let (b, c, _, w) = x.dims4()?;
    let rows =
        Tensor::full(f32::NEG_INFINITY, (b, c, padding, w), x.device())?.to_dtype(x.dtype())?;
    let x = Tensor::cat(&[&rows, x, &rows], 2)?;
    let hp = x.dim(2)?;
    let cols =
        Tensor::full(f32::NEG_INFINITY, (b, c, hp, padding), x.device())?.to_dtype(x.dtype())?;
    Tensor::cat(&[&cols, &x, &cols], 3)?.max_pool2d_with_stride(kernel, stride)
}

/// The mean of each plane (global average pooling).
///
/// # Shapes
/// `x: [b, c, h, w]` -> `[b, c]`
pub fn mean_planes(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if !cpu_f32(x) || h * w == 0 {
        return Ok(x.mean((2, 3))?);
    }
    let x = x.contiguous()?;
    let plane = h * w;
    let means = with_f32(&x, |src| {
        src.par_chunks(plane)
            .with_min_len(MIN_TASK.div_ceil(plane))
            .map(|p| (p.iter().map(|&v| f64::from(v)).sum::<f64>() / plane as f64) as f32)
            .collect::<Vec<f32>>()
    });
    let means = means.ok_or_else(|| invalid("mean_planes", &x, "not CPU f32".into()))?;
    Ok(Tensor::from_vec(means, (b, c), x.device())?)
}

/// Softmax over the last dim, each row in f32 after subtracting its maximum.
///
/// # Shapes
/// `x: [.., n]` -> like `x`
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let n = x.dims().last().copied().unwrap_or(0);
    if !cpu_f32(x) || n == 0 {
        let m = x.max_keepdim(candle_core::D::Minus1)?;
        let e = x.broadcast_sub(&m)?.exp()?;
        return Ok(e.broadcast_div(&e.sum_keepdim(candle_core::D::Minus1)?)?);
    }
    let x = x.contiguous()?;
    let mut dst = par_zeroed::<f32>(x.elem_count());
    let done = with_f32(&x, |src| {
        dst.par_chunks_mut(n).zip(src.par_chunks(n)).with_min_len(MIN_TASK.div_ceil(n)).for_each(
            |(out, row)| {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut z = 0f32;
                for (o, &v) in out.iter_mut().zip(row) {
                    *o = (v - m).exp();
                    z += *o;
                }
                out.iter_mut().for_each(|o| *o /= z);
            },
        )
    });
    done.ok_or_else(|| invalid("softmax_last", &x, "not CPU f32".into()))?;
    Ok(Tensor::from_vec(dst, x.shape(), x.device())?)
}

/// Local response norm over a channel and the one before it, the window summed:
/// `y_c = x_c / (k + alpha (x_{c-1}^2 + x_c^2))^beta` with `x_{-1} = 0`.
///
/// # Shapes
/// `x: [b, c, h, w]` -> like `x`
pub fn lrn_prev_channel(x: &Tensor, alpha: f32, beta: f32, k: f32) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    if !cpu_f32(x) {
        return Err(invalid("lrn_prev_channel", x, "needs a CPU f32 tensor".into()));
    }
    let x = x.contiguous()?;
    let plane = h * w;
    let mut dst = par_zeroed::<f32>(x.elem_count());
    let done = with_f32(&x, |src| {
        par_planes(&mut dst, c, plane, |p, ch, out| {
            let cur = &src[p * plane..(p + 1) * plane];
            let prev = (ch > 0).then(|| &src[(p - 1) * plane..p * plane]);
            for (i, (o, &v)) in out.iter_mut().zip(cur).enumerate() {
                let s = v * v + prev.map_or(0.0, |q| q[i] * q[i]);
                *o = v / (k + alpha * s).powf(beta);
            }
        })
    });
    done.ok_or_else(|| invalid("lrn_prev_channel", &x, "not CPU f32".into()))?;
    Ok(Tensor::from_vec(dst, x.shape(), x.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    fn randn(dims: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1., dims, &Device::Cpu).unwrap()
    }

    /// The fused convolution equals conv2d then the epilogue as Candle ops, for each activation,
    /// with and without residual, strided and padded.
    #[test]
    fn conv_epilogue_matches_ops() {
        let bias = randn(&[5]);
        // Strided (im2col), 3x3 stride 1 (Winograd, unless switched off), 1x1 stride 1 (shifted
        // views).
        for (x_dims, k, stride, padding) in
            [([3, 4, 9, 8], 3, 2, 1), ([3, 4, 6, 21], 3, 1, 1), ([2, 4, 5, 7], 1, 1, 0)]
        {
            let x = randn(&x_dims);
            let w = randn(&[5, 4, k, k]);
            let p = ConvParams { stride, padding, dilation: 1 };
            let plain = x.conv2d(&w, padding, stride, 1, 1).unwrap();
            let res = randn(plain.dims());
            for act in [Act::Identity, Act::Relu, Act::Tanh, Act::Sigmoid] {
                for residual in [None, Some(&res)] {
                    let ep = Epilogue { bias: Some(&bias), residual, act };
                    let got = conv2d_bias_act(&x, &w, p, ep).unwrap();
                    let expect = ep.apply_ops(&plain, 1).unwrap();
                    let what = format!("{x_dims:?} k {k} {act:?} residual {}", residual.is_some());
                    assert!(max_diff(&got, &expect) < 1e-5, "{what}");
                }
            }
        }
        // A linear layer's output [b, out] with the channel last.
        let y = randn(&[7, 5]);
        let got = bias_act(&y, 1, Epilogue::bias(&bias, Act::Relu)).unwrap();
        let expect = y.broadcast_add(&bias).unwrap().relu().unwrap();
        assert_eq!(max_diff(&got, &expect), 0.0);
        let err = bias_act(&y, 1, Epilogue::bias(&randn(&[4]), Act::Relu)).unwrap_err();
        assert!(err.to_string().contains("bias must have 5"), "{err}");
        // A group of 3 layers on dim 0, a bias each: [3, 4, 5] with channels on dim 1 or 2.
        let g = randn(&[3, 4, 5]);
        for (cd, c) in [(1, 4), (2, 5)] {
            let b = randn(&[3, c]);
            let got = bias_act(&g, cd, Epilogue::bias(&b, Act::Tanh)).unwrap();
            let shape = if cd == 1 { (3, 4, 1) } else { (3, 1, 5) };
            let expect = g.broadcast_add(&b.reshape(shape).unwrap()).unwrap().tanh().unwrap();
            assert!(max_diff(&got, &expect) < 1e-6, "channel dim {cd}");
        }
    }

    #[test]
    fn pooling_means_and_softmax_match_ops() {
        let x = randn(&[2, 3, 9, 7]);
        for (k, s, p) in [(3, 2, 1), (2, 2, 0), (4, 4, 0)] {
            let got = max_pool2d(&x, k, s, p).unwrap();
            assert_eq!(max_diff(&got, &max_pool2d_ops(&x, k, s, p).unwrap()), 0.0, "{k} {s} {p}");
        }
        assert!(max_diff(&mean_planes(&x).unwrap(), &x.mean((2, 3)).unwrap()) < 1e-6);
        let logits = randn(&[5, 17]);
        let expect = {
            let e = logits.exp().unwrap();
            e.broadcast_div(&e.sum_keepdim(1).unwrap()).unwrap()
        };
        assert!(max_diff(&softmax_last(&logits).unwrap(), &expect) < 1e-6);
    }

    #[test]
    fn lrn_matches_its_formula() {
        let x = (randn(&[2, 3, 2, 2]) * 30.).unwrap();
        let y = lrn_prev_channel(&x, 1e-4, 0.75, 1.0).unwrap();
        let (xs, ys) = (
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        for (i, (&v, &got)) in xs.iter().zip(&ys).enumerate() {
            let ch = (i / 4) % 3;
            let prev = if ch == 0 { 0.0 } else { xs[i - 4] * xs[i - 4] };
            let expect = v / (1.0 + 1e-4 * (prev + v * v)).powf(0.75);
            assert!((got - expect).abs() <= 1e-6 * expect.abs().max(1.0), "{i}: {got} {expect}");
        }
    }
}
