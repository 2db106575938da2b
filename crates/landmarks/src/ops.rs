//! TensorFlow-style layers on Candle: "same" padding, depthwise separable convolutions, leaky ReLU.
//!
//! face-api was written for TensorFlow.js, whose "same" padding puts the odd pixel of padding at
//! the bottom/right (a stride-2 3x3 convolution of a 112-pixel input pads 0 above and 1 below),
//! unlike PyTorch's symmetric padding; every layer here pads explicitly so the outputs match.
//!
//! Candle's grouped convolution runs one convolution per group, which for a depthwise layer with
//! 256 channels means 256 tiny convolutions; [`depthwise_conv2d`] is a direct CPU kernel instead.
//!
//! The direct kernels are CPU-only custom ops. On any other device (CUDA) every function here
//! computes the same thing with Candle's generic operations instead (the `generic` module, tested
//! against the kernels on the CPU).

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, bail,
};
use rayon::prelude::*;

use crate::error::{CandleContext, Result};

/// TensorFlow's "same" padding along one axis: `(output size, padding before, padding after)`.
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(input);
    (out, total / 2, total - total / 2)
}

/// Pads spatial dims 2 and 3 of `x` with a constant.
///
/// # Shapes
/// `x`: [b, c, h, w] -> [b, c, h + top + bottom, w + left + right]
pub fn pad_hw(
    x: &Tensor,
    (top, bottom): (usize, usize),
    (left, right): (usize, usize),
    value: f32,
) -> Result<Tensor> {
    x.dims4().op("pad: input rank")?;
    pad_dim(&pad_dim(x, 2, (top, bottom), value)?, 3, (left, right), value)
}

/// Pads dimension `dim` of `x` with `before` and `after` slices of a constant.
fn pad_dim(x: &Tensor, dim: usize, (before, after): (usize, usize), value: f32) -> Result<Tensor> {
    if before + after == 0 {
        return Ok(x.clone());
    }
    let fill = |n: usize| {
        let mut dims = x.dims().to_vec();
        dims[dim] = n;
        Tensor::full(value, dims, x.device()).op("pad: fill")
    };
    let mut parts = Vec::with_capacity(3);
    if before > 0 {
        parts.push(fill(before)?);
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(fill(after)?);
    }
    Tensor::cat(&parts, dim).op("pad: cat")
}

/// A dense convolution with TensorFlow "same" padding (`same = true`) or none ("valid"), plus bias.
///
/// # Shapes
/// `x`: [b, c_in, h, w], `weight`: [c_out, c_in, k, k], `bias`: [c_out] -> [b, c_out, h', w']
pub fn conv2d_tf(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    same: bool,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4().op("conv2d: input rank")?;
    let (_, _, kh, kw) = weight.dims4().op("conv2d: weight rank")?;
    let x = if same {
        let (_, top, bottom) = same_padding(h, kh, stride);
        let (_, left, right) = same_padding(w, kw, stride);
        pad_hw(x, (top, bottom), (left, right), 0.0)?
    } else {
        x.clone()
    };
    if !x.device().is_cpu() {
        return generic::conv2d_bias(&x, weight, bias, stride);
    }
    let (x, weight, bias) = (contiguous(&x)?, contiguous(weight)?, contiguous(bias)?);
    x.apply_op3_no_bwd(&weight, &bias, &OnCpu("dense-conv2d", DenseConv { stride })).op("conv2d")
}

/// A dense convolution with TensorFlow "same" padding and no bias, by Candle's own convolution
/// (im2col + matrix product), which beats [`conv2d_tf`]'s direct kernel when many channels come in.
///
/// # Shapes
/// `x`: [b, c_in, h, w], `weight`: [c_out, c_in, k, k] -> [b, c_out, ceil(h / stride), ceil(w / stride)]
pub fn conv2d_same(x: &Tensor, weight: &Tensor, stride: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4().op("conv2d: input rank")?;
    let (_, _, kh, kw) = weight.dims4().op("conv2d: weight rank")?;
    let (_, top, bottom) = same_padding(h, kh, stride);
    let (_, left, right) = same_padding(w, kw, stride);
    let x = pad_hw(x, (top, bottom), (left, right), 0.0)?;
    x.conv2d(weight, 0, stride, 1, 1).op("conv2d")
}

/// A 1x1 convolution as one matrix product per image.
///
/// # Shapes
/// `x`: [b, c_in, h, w], `weight`: [c_out, c_in, 1, 1] -> [b, c_out, h, w]
pub fn pointwise_conv(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (b, c_in, h, w) = x.dims4().op("pointwise: input rank")?;
    let c_out = weight.dim(0).op("pointwise: weight rank")?;
    let wm = weight.reshape((c_out, c_in)).op("pointwise: weight")?; // [c_out, c_in]
    let xm = x.reshape((b, c_in, h * w)).op("pointwise: input")?; // [b, c_in, h*w]
    let y = wm.broadcast_matmul(&xm).op("pointwise: matmul")?; // [b, c_out, h*w]
    y.reshape((b, c_out, h, w)).op("pointwise: output")
}

/// TensorFlow's `separableConv2d(x, depthwise, pointwise, stride, padding) + bias`, then `act`.
///
/// `pads` = `((top, bottom), (left, right))` around the depthwise stage.
///
/// # Shapes
/// `x`: [b, c, h, w], `depthwise`: [c, 1, k, k], `pointwise`: [c_out, c, 1, 1], `bias`: [c_out]
/// -> [b, c_out, h', w']
pub fn separable_conv(
    x: &Tensor,
    depthwise: &Tensor,
    pointwise: &Tensor,
    bias: &Tensor,
    stride: usize,
    pads: ((usize, usize), (usize, usize)),
    act: Activation,
) -> Result<Tensor> {
    let d = depthwise_conv2d(x, depthwise, stride, pads)?; // [b, c, h', w']
    let p = pointwise_conv(&d, pointwise)?; // [b, c_out, h', w']
    bias_act(&p, bias, act)
}

/// `separable_conv` with TensorFlow "same" padding and no activation.
pub fn separable_conv_same(
    x: &Tensor,
    depthwise: &Tensor,
    pointwise: &Tensor,
    bias: &Tensor,
    stride: usize,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4().op("separable: input rank")?;
    let (_, _, kh, kw) = depthwise.dims4().op("separable: depthwise rank")?;
    let (_, top, bottom) = same_padding(h, kh, stride);
    let (_, left, right) = same_padding(w, kw, stride);
    let pads = ((top, bottom), (left, right));
    separable_conv(x, depthwise, pointwise, bias, stride, pads, Activation::None)
}

/// What follows a bias add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    None,
    /// face-api's leaky ReLU (see [`leaky`]).
    Leaky,
    /// `clip(x, 0, 6)` (MobileNet's ReLU6).
    Relu6,
    /// `max(x, 0)`.
    Relu,
}

/// `act(x + bias[c])` in one pass.
///
/// # Shapes
/// `x`: [b, c, h, w], `bias`: [c] -> [b, c, h, w]
pub fn bias_act(x: &Tensor, bias: &Tensor, act: Activation) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return generic::bias_act(x, bias, act);
    }
    let (x, bias) = (contiguous(x)?, contiguous(bias)?);
    x.apply_op2_no_bwd(&bias, &OnCpu("bias-activation", BiasAct { act })).op("bias + activation")
}

/// `prelu(x + bias[c])` in one pass, with one slope per channel: `v` where `v = x + bias[c]` is
/// at least 0, `slope[c] v` below (PyTorch's `PReLU` after a biased layer).
///
/// # Shapes
/// `x`: [b, c, h, w], `bias`: [c], `slope`: [c] -> [b, c, h, w]
pub fn bias_prelu(x: &Tensor, bias: &Tensor, slope: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return generic::bias_prelu(x, bias, slope);
    }
    let (x, bias, slope) = (contiguous(x)?, contiguous(bias)?, contiguous(slope)?);
    x.apply_op3_no_bwd(&bias, &slope, &OnCpu("bias-prelu", BiasPrelu)).op("bias + prelu")
}

/// face-api's leaky ReLU, written as it is (`relu(x - 0.1 x) + 0.1 x`) so the rounding matches.
pub fn leaky(x: &Tensor) -> Result<Tensor> {
    let zeros = Tensor::zeros(x.dim(1).op("leaky: input rank")?, DType::F32, x.device())
        .op("leaky: zeros")?;
    bias_act(x, &zeros, Activation::Leaky)
}

/// `v = act(v + bias)` over one plane.
fn apply_bias_act(o: &mut [f32], bias: f32, act: Activation) {
    match act {
        Activation::None => o.iter_mut().for_each(|v| *v += bias),
        Activation::Leaky => o.iter_mut().for_each(|v| *v = leaky_value(*v + bias)),
        Activation::Relu6 => o.iter_mut().for_each(|v| *v = (*v + bias).clamp(0.0, 6.0)),
        Activation::Relu => o.iter_mut().for_each(|v| *v = (*v + bias).max(0.0)),
    }
}

fn leaky_value(v: f32) -> f32 {
    let min = v * 0.1f32;
    (v - min).max(0.0) + min
}

/// A 2x2 max pool with TensorFlow "same" padding (padded cells never win).
///
/// # Shapes
/// `x`: [b, c, h, w] -> [b, c, ceil(h / stride), ceil(w / stride)]
pub fn max_pool_same(x: &Tensor, stride: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4().op("maxpool: input rank")?;
    let (_, top, bottom) = same_padding(h, 2, stride);
    let (_, left, right) = same_padding(w, 2, stride);
    let x = pad_hw(x, (top, bottom), (left, right), f32::NEG_INFINITY)?;
    if !x.device().is_cpu() {
        return x.max_pool2d_with_stride((2, 2), (stride, stride)).op("maxpool");
    }
    contiguous(&x)?.apply_op1_no_bwd(&OnCpu("maxpool2x2", MaxPool2 { stride })).op("maxpool")
}

/// Depthwise 2-D convolution (one k x k filter per channel, no bias) with explicit zero padding.
///
/// # Shapes
/// `x`: [b, c, h, w], `kernel`: [c, 1, kh, kw] -> [b, c, h', w'] with
/// h' = (h + top + bottom - kh) / stride + 1 (likewise w').
pub fn depthwise_conv2d(
    x: &Tensor,
    kernel: &Tensor,
    stride: usize,
    ((top, bottom), (left, right)): ((usize, usize), (usize, usize)),
) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return generic::depthwise(x, kernel, stride, ((top, bottom), (left, right)));
    }
    let (x, kernel) = (contiguous(x)?, contiguous(kernel)?);
    let op = DepthwiseConv { stride, top, bottom, left, right, epilogue: None };
    x.apply_op2_no_bwd(&kernel, &OnCpu("depthwise-conv2d", op)).op("depthwise conv")
}

/// [`depthwise_conv2d`] followed by `act(y + bias[c])`, in one pass over the output on the CPU.
///
/// # Shapes
/// `x`: [b, c, h, w], `kernel`: [c, 1, kh, kw], `bias`: [c] -> [b, c, h', w']
pub fn depthwise_conv2d_bias_act(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    stride: usize,
    ((top, bottom), (left, right)): ((usize, usize), (usize, usize)),
    act: Activation,
) -> Result<Tensor> {
    if !x.device().is_cpu() {
        let y = generic::depthwise(x, kernel, stride, ((top, bottom), (left, right)))?;
        return generic::bias_act(&y, bias, act);
    }
    let (x, kernel) = (contiguous(x)?, contiguous(kernel)?);
    let bias = bias.to_vec1::<f32>().op("depthwise conv: bias")?;
    let op = DepthwiseConv { stride, top, bottom, left, right, epilogue: Some((bias, act)) };
    x.apply_op2_no_bwd(&kernel, &OnCpu("depthwise-conv2d", op)).op("depthwise conv")
}

/// `relu(a + b)` (or `a + b`) elementwise, in one pass.
///
/// # Shapes
/// `a`, `b`: the same shape -> that shape
pub fn add(a: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
    if !a.device().is_cpu() {
        return generic::add(a, b, relu);
    }
    let (a, b) = (contiguous(a)?, contiguous(b)?);
    a.apply_op2_no_bwd(&b, &OnCpu("add", Add { relu })).op("add")
}

/// The same layers with Candle's generic operations, for devices without this file's kernels.
mod generic {
    use candle_core::Tensor;

    use super::{Activation, pad_hw};
    use crate::error::{CandleContext, Result};

    fn per_channel(bias: &Tensor) -> Result<Tensor> {
        bias.reshape((1, (), 1, 1)).op("bias: reshape") // [1, c, 1, 1]
    }

    /// 'valid' dense convolution plus bias.
    pub fn conv2d_bias(x: &Tensor, w: &Tensor, bias: &Tensor, stride: usize) -> Result<Tensor> {
        let y = x.conv2d(w, 0, stride, 1, 1).op("conv2d")?;
        y.broadcast_add(&per_channel(bias)?).op("conv2d: bias")
    }

    /// Depthwise convolution with explicit zero padding (a grouped convolution, one group per
    /// channel).
    pub fn depthwise(
        x: &Tensor,
        kernel: &Tensor,
        stride: usize,
        (rows, cols): ((usize, usize), (usize, usize)),
    ) -> Result<Tensor> {
        let c = x.dim(1).op("depthwise conv: input rank")?;
        let x = pad_hw(x, rows, cols, 0.0)?;
        x.conv2d(kernel, 0, stride, 1, c).op("depthwise conv")
    }

    pub fn bias_prelu(x: &Tensor, bias: &Tensor, slope: &Tensor) -> Result<Tensor> {
        let v = x.broadcast_add(&per_channel(bias)?).op("bias")?;
        let slope = per_channel(slope)?;
        let negative = v.minimum(0f32).and_then(|n| n.broadcast_mul(&slope)).op("prelu")?;
        v.relu().and_then(|p| p + negative).op("prelu")
    }

    pub fn bias_act(x: &Tensor, bias: &Tensor, act: Activation) -> Result<Tensor> {
        let v = x.broadcast_add(&per_channel(bias)?).op("bias")?;
        match act {
            Activation::None => Ok(v),
            // face-api's relu(x - 0.1 x) + 0.1 x, in the same order.
            Activation::Leaky => {
                let min = v.affine(0.1, 0.0).op("leaky")?;
                (&v - &min).and_then(|d| d.relu()).and_then(|r| r + &min).op("leaky")
            }
            Activation::Relu6 => v.clamp(0f32, 6f32).op("relu6"),
            Activation::Relu => v.relu().op("relu"),
        }
    }

    pub fn add(a: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
        let s = (a + b).op("add")?;
        if relu { s.relu().op("add: relu") } else { Ok(s) }
    }
}

fn contiguous(x: &Tensor) -> Result<Tensor> {
    x.contiguous().op("contiguous")
}

/// The f32 data of a contiguous CPU storage.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("{what}: input must be contiguous");
    };
    match s {
        CpuStorage::F32(v) => Ok(&v[a..b]),
        _ => bail!("{what}: only f32 is implemented"),
    }
}

/// Output side of a 'valid' window.
fn valid_out(input: usize, kernel: usize, stride: usize, what: &str) -> candle_core::Result<usize> {
    if input < kernel || stride == 0 {
        bail!("{what}: input side {input} too small for window {kernel} (stride {stride})");
    }
    Ok((input - kernel) / stride + 1)
}

/// `out[ox] += k * row[ox * stride]` for all ox: the inner loop of every convolution here
/// (contiguous, so it vectorises, for stride 1).
#[inline]
fn axpy_strided(out: &mut [f32], row: &[f32], k: f32, stride: usize) {
    if stride == 1 {
        for (o, &v) in out.iter_mut().zip(row) {
            *o += k * v;
        }
    } else {
        for (o, &v) in out.iter_mut().zip(row.iter().step_by(stride)) {
            *o += k * v;
        }
    }
}

/// One input of a [`Kernel`]: the contiguous f32 data and its layout.
type Input<'a> = (&'a [f32], &'a Layout);
/// A [`Kernel`]'s output data and shape.
type KernelOut = candle_core::Result<(Vec<f32>, Shape)>;

/// A CPU kernel over f32 inputs; [`OnCpu`] makes it a Candle custom op of its arity.
trait Kernel: Send + Sync {
    fn run(&self, inputs: &[Input<'_>]) -> KernelOut;
}

/// A [`Kernel`] with its op name, as a Candle custom op.
struct OnCpu<K>(&'static str, K);

/// Implements Candle's custom-op trait of one arity for [`OnCpu`]: the storages become f32
/// slices (contiguous, checked by [`f32_slice`]), the kernel's vector the output storage.
macro_rules! on_cpu_op {
    ($op:ident: $($s:ident $l:ident),+) => {
        impl<K: Kernel> $op for OnCpu<K> {
            fn name(&self) -> &'static str {
                self.0
            }

            fn cpu_fwd(
                &self,
                $($s: &CpuStorage, $l: &Layout),+
            ) -> candle_core::Result<(CpuStorage, Shape)> {
                let inputs = [$((f32_slice($s, $l, self.0)?, $l)),+];
                let (out, shape) = self.1.run(&inputs)?;
                Ok((CpuStorage::F32(out), shape))
            }
        }
    };
}
on_cpu_op!(CustomOp1: s1 l1);
on_cpu_op!(CustomOp2: s1 l1, s2 l2);
on_cpu_op!(CustomOp3: s1 l1, s2 l2, s3 l3);

/// Dense 'valid' convolution plus bias, for the few layers that read RGB (3 input channels):
/// one output plane per task, accumulating whole rows.
struct DenseConv {
    stride: usize,
}

impl Kernel for DenseConv {
    fn run(&self, inputs: &[Input<'_>]) -> KernelOut {
        let [(xs, l1), (ws, l2), (bs, l3)] = *inputs else { bail!("conv2d: three inputs") };
        let (b, c_in, h, w) = l1.shape().dims4()?;
        let (c_out, kc, kh, kw) = l2.shape().dims4()?;
        if kc != c_in || l3.shape().dims1()? != c_out {
            bail!(
                "conv2d: weight {:?} / bias {:?} do not fit input {:?}",
                l2.shape(),
                l3.shape(),
                l1.shape()
            );
        }
        let s = self.stride;
        let (oh, ow) = (valid_out(h, kh, s, "conv2d")?, valid_out(w, kw, s, "conv2d")?);
        let mut out = vec![0f32; b * c_out * oh * ow];
        out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, o)| {
            let (n, co) = (plane / c_out, plane % c_out);
            for ci in 0..c_in {
                let xp = &xs[(n * c_in + ci) * h * w..(n * c_in + ci + 1) * h * w];
                for oy in 0..oh {
                    let orow = &mut o[oy * ow..(oy + 1) * ow];
                    for ky in 0..kh {
                        let row = &xp[(oy * s + ky) * w..(oy * s + ky + 1) * w];
                        for kx in 0..kw {
                            let k = ws[((co * c_in + ci) * kh + ky) * kw + kx];
                            axpy_strided(orow, &row[kx..], k, s);
                        }
                    }
                }
            }
            let bias = bs[co];
            o.iter_mut().for_each(|v| *v += bias);
        });
        Ok((out, Shape::from((b, c_out, oh, ow))))
    }
}

/// Depthwise convolution with zero padding: one output plane per task, padded into a local
/// buffer, then accumulated a whole row at a time.
struct DepthwiseConv {
    stride: usize,
    top: usize,
    bottom: usize,
    left: usize,
    right: usize,
    /// Per-channel bias and activation applied to each finished plane.
    epilogue: Option<(Vec<f32>, Activation)>,
}

impl Kernel for DepthwiseConv {
    fn run(&self, inputs: &[Input<'_>]) -> KernelOut {
        let [(xs, l1), (ks, l2)] = *inputs else { bail!("depthwise conv: two inputs") };
        let (b, c, h, w) = l1.shape().dims4()?;
        let (kc, one, kh, kw) = l2.shape().dims4()?;
        if kc != c || one != 1 {
            bail!("depthwise conv: kernel {:?} does not fit input {:?}", l2.shape(), l1.shape());
        }
        let s = self.stride;
        let (hp, wp) = (h + self.top + self.bottom, w + self.left + self.right);
        let (oh, ow) =
            (valid_out(hp, kh, s, "depthwise conv")?, valid_out(wp, kw, s, "depthwise conv")?);
        let mut out = vec![0f32; b * c * oh * ow];
        let (top, left) = (self.top, self.left);
        if let Some((bias, _)) = &self.epilogue
            && bias.len() != c
        {
            bail!("depthwise conv: {} biases for {c} channels", bias.len());
        }
        out.par_chunks_mut(oh * ow).enumerate().for_each_init(
            || vec![0f32; hp * wp],
            |padded, (plane, o)| {
                let xp = &xs[plane * h * w..(plane + 1) * h * w];
                for (y, row) in xp.chunks_exact(w).enumerate() {
                    padded[(y + top) * wp + left..(y + top) * wp + left + w].copy_from_slice(row);
                }
                let kp = &ks[(plane % c) * kh * kw..(plane % c + 1) * kh * kw];
                for oy in 0..oh {
                    let orow = &mut o[oy * ow..(oy + 1) * ow];
                    for ky in 0..kh {
                        let row = &padded[(oy * s + ky) * wp..(oy * s + ky + 1) * wp];
                        for kx in 0..kw {
                            axpy_strided(orow, &row[kx..], kp[ky * kw + kx], s);
                        }
                    }
                }
                if let Some((bias, act)) = &self.epilogue {
                    apply_bias_act(o, bias[plane % c], *act);
                }
            },
        );
        Ok((out, Shape::from((b, c, oh, ow))))
    }
}

/// Elementwise `a + b`, optionally followed by ReLU.
struct Add {
    relu: bool,
}

impl Kernel for Add {
    fn run(&self, inputs: &[Input<'_>]) -> KernelOut {
        let [(a, l1), (b, l2)] = *inputs else { bail!("add: two inputs") };
        if l1.shape() != l2.shape() {
            bail!("add: shapes {:?} and {:?} differ", l1.shape(), l2.shape());
        }
        let mut out = a.to_vec();
        let relu = self.relu;
        out.par_chunks_mut(4096).zip(b.par_chunks(4096)).for_each(|(o, b)| {
            for (o, &b) in o.iter_mut().zip(b) {
                let v = *o + b;
                *o = if relu { v.max(0.0) } else { v };
            }
        });
        Ok((out, l1.shape().clone()))
    }
}

/// `act(x + bias[c])` elementwise.
struct BiasAct {
    act: Activation,
}

impl Kernel for BiasAct {
    fn run(&self, inputs: &[Input<'_>]) -> KernelOut {
        let [(xs, l1), (bs, l2)] = *inputs else { bail!("bias: two inputs") };
        let (b, c, h, w) = l1.shape().dims4()?;
        if l2.shape().dims1()? != c {
            bail!("bias {:?} does not fit input {:?}", l2.shape(), l1.shape());
        }
        let mut out = xs.to_vec();
        let act = self.act;
        out.par_chunks_mut(h * w).enumerate().for_each(|(plane, o)| {
            apply_bias_act(o, bs[plane % c], act);
        });
        Ok((out, Shape::from((b, c, h, w))))
    }
}

/// [`bias_prelu`]'s kernel: one plane per task.
struct BiasPrelu;

impl Kernel for BiasPrelu {
    fn run(&self, inputs: &[Input<'_>]) -> KernelOut {
        let [(xs, l1), (bs, l2), (ss, l3)] = *inputs else { bail!("prelu: three inputs") };
        let (b, c, h, w) = l1.shape().dims4()?;
        if l2.shape().dims1()? != c || l3.shape().dims1()? != c {
            bail!(
                "bias {:?} / slope {:?} do not fit input {:?}",
                l2.shape(),
                l3.shape(),
                l1.shape()
            );
        }
        let mut out = xs.to_vec();
        out.par_chunks_mut(h * w).enumerate().for_each(|(plane, o)| {
            let (bias, slope) = (bs[plane % c], ss[plane % c]);
            for v in o {
                let y = *v + bias;
                *v = if y >= 0.0 { y } else { slope * y };
            }
        });
        Ok((out, Shape::from((b, c, h, w))))
    }
}

/// 2x2 'valid' max pool with a stride.
struct MaxPool2 {
    stride: usize,
}

impl Kernel for MaxPool2 {
    fn run(&self, inputs: &[Input<'_>]) -> KernelOut {
        let [(xs, l1)] = *inputs else { bail!("maxpool: one input") };
        let (b, c, h, w) = l1.shape().dims4()?;
        let s = self.stride;
        let (oh, ow) = (valid_out(h, 2, s, "maxpool")?, valid_out(w, 2, s, "maxpool")?);
        let mut out = vec![0f32; b * c * oh * ow];
        out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, o)| {
            let xp = &xs[plane * h * w..(plane + 1) * h * w];
            for oy in 0..oh {
                let (r0, r1) =
                    (&xp[oy * s * w..(oy * s + 1) * w], &xp[(oy * s + 1) * w..(oy * s + 2) * w]);
                for (ox, v) in o[oy * ow..(oy + 1) * ow].iter_mut().enumerate() {
                    let x = ox * s;
                    *v = r0[x].max(r0[x + 1]).max(r1[x]).max(r1[x + 1]);
                }
            }
        });
        Ok((out, Shape::from((b, c, oh, ow))))
    }
}

/// Checks a tensor is f32 (the nets compute in f32 only).
pub fn ensure_f32(x: &Tensor, what: &'static str) -> Result<()> {
    if x.dtype() != DType::F32 {
        return Err(crate::LandmarkError::Invalid(format!(
            "{what}: expected f32, got {:?}",
            x.dtype()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn same_padding_puts_the_odd_pixel_last() {
        assert_eq!(same_padding(112, 3, 2), (56, 0, 1));
        assert_eq!(same_padding(56, 3, 1), (56, 1, 1));
        assert_eq!(same_padding(207, 2, 2), (104, 0, 1));
        assert_eq!(same_padding(13, 2, 1), (13, 0, 1));
        assert_eq!(same_padding(414, 2, 2), (207, 0, 0));
    }

    #[test]
    fn depthwise_matches_grouped_conv() {
        // Candle's own grouped convolution (one conv per channel) is the slow reference.
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 9, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (5, 1, 3, 3), &dev).unwrap();
        for stride in [1, 2] {
            let got = depthwise_conv2d(&x, &k, stride, ((1, 1), (1, 1))).unwrap();
            let want = x.conv2d(&k, 1, stride, 1, 5).unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        }
        // Asymmetric padding: pad explicitly, then a valid grouped conv.
        let got = depthwise_conv2d(&x, &k, 2, ((0, 1), (0, 1))).unwrap();
        let xp = pad_hw(&x, (0, 1), (0, 1), 0.0).unwrap();
        let want = xp.conv2d(&k, 0, 2, 1, 5).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn dense_conv_matches_candle_conv() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 11, 10), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 4, &dev).unwrap();
        for stride in [1, 2] {
            let got = conv2d_tf(&x, &k, &b, stride, false).unwrap();
            let want = x
                .conv2d(&k, 0, stride, 1, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
                .unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        }
        // 'same' with stride 2 on an even side pads only after: output 6 x 5 here.
        assert_eq!(conv2d_tf(&x, &k, &b, 2, true).unwrap().dims(), &[2, 4, 6, 5]);
    }

    #[test]
    fn max_pool_matches_candle() {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 8, 6), &Device::Cpu).unwrap();
        let got = max_pool_same(&x, 2).unwrap();
        let want = x.max_pool2d_with_stride((2, 2), (2, 2)).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn max_pool_same_ignores_padding() {
        let x = Tensor::full(-5f32, (1, 1, 3, 3), &Device::Cpu).unwrap();
        let y = max_pool_same(&x, 2).unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 2]);
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![-5.0; 4]);
    }

    /// The generic path (what CUDA runs) against the CPU kernels, on the CPU.
    #[test]
    fn generic_path_matches_the_cpu_kernels() {
        let dev = Device::Cpu;
        let max_diff = |a: &Tensor, b: &Tensor| {
            assert_eq!(a.dims(), b.dims());
            (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
        };
        let x = Tensor::randn(0f32, 3.0, (2, 5, 9, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (5, 1, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 5, &dev).unwrap();
        for pads in [((1, 1), (1, 1)), ((0, 1), (0, 1))] {
            for stride in [1, 2] {
                let want = depthwise_conv2d(&x, &k, stride, pads).unwrap();
                let got = generic::depthwise(&x, &k, stride, pads).unwrap();
                assert!(max_diff(&got, &want) < 1e-5);
            }
        }
        for act in [Activation::None, Activation::Leaky, Activation::Relu6, Activation::Relu] {
            let pads = ((0, 1), (1, 1));
            let want = bias_act(&depthwise_conv2d(&x, &k, 2, pads).unwrap(), &bias, act).unwrap();
            let fused = depthwise_conv2d_bias_act(&x, &k, &bias, 2, pads, act).unwrap();
            assert_eq!(max_diff(&fused, &want), 0.0, "{act:?}");
            let want = bias_act(&x, &bias, act).unwrap();
            assert!(max_diff(&generic::bias_act(&x, &bias, act).unwrap(), &want) < 1e-6);
        }
        let w = Tensor::randn(0f32, 1.0, (4, 5, 3, 3), &dev).unwrap();
        let b4 = Tensor::randn(0f32, 1.0, 4, &dev).unwrap();
        let want = conv2d_tf(&x, &w, &b4, 2, false).unwrap();
        assert!(max_diff(&generic::conv2d_bias(&x, &w, &b4, 2).unwrap(), &want) < 1e-4);
        let y = Tensor::randn(0f32, 1.0, (2, 5, 9, 8), &dev).unwrap();
        for relu in [false, true] {
            let want = add(&x, &y, relu).unwrap();
            assert_eq!(max_diff(&generic::add(&x, &y, relu).unwrap(), &want), 0.0);
        }
    }

    #[test]
    fn leaky_is_identity_above_zero_and_tenth_below() {
        let x = Tensor::new(&[2f32, -3.0], &Device::Cpu).unwrap().reshape((1, 2, 1, 1)).unwrap();
        let y = leaky(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((y[0] - 2.0).abs() < 1e-6 && (y[1] + 0.3).abs() < 1e-6, "{y:?}");
    }
}
