//! The two gradients of a 2D convolution, each computed with fast forward operations.
//!
//! Candle's own backward pass computes the input gradient with `conv_transpose2d`, a naive loop on
//! CPU (and not cuDNN on CUDA). Here both gradients are forward convolutions and matrix
//! products, so they run as fast as a forward pass.
//!
//! Notation for one spatial axis: input size `n`, kernel `k`, stride `s`, padding `p`, dilation
//! `d`, output size `m = floor((n + 2p - d(k-1) - 1) / s) + 1`. The forward convolution reads
//! `y[o] = sum_t x[o*s + t*d - p] * w[t]`.
//!
//! **Input gradient.** `gx[i] = sum over (o, t) with o*s + t*d - p = i of gy[o] * w[t]`. On the
//! CPU it is `col2im(W^T gy)` (`im2col.rs`). With Candle's convolution (CUDA), split the
//! input positions by phase `r = i mod s`: only the taps `t` with `(r + p - t*d) mod s == 0` reach
//! phase `r`, and for them `o = a + (r + p - t*d)/s` where `i = a*s + r`. Those taps form an
//! arithmetic progression (step `s/g`, `g = gcd(s, d)`) whose gradient offsets step by
//! `e = d/g`, so each phase is an ordinary stride-1 convolution of (a window of) `gy` with the
//! flipped sub-kernel, dilation `e`, and the `s*s` phase results are interleaved. This is the
//! zero-dilated "full" convolution of the textbook, without multiplying the inserted zeros
//! (4x fewer products for stride 2), and the rows/cols lost to the floor in `m` are handled by
//! the phase lengths (`ceil((n - r)/s)`) rather than by `output_padding`.
//!
//! **Weight gradient.** `gw[co, ci, t] = sum over (b, o) of gy[b, co, o] * x[b, ci, o*s + t*d - p]`:
//! an im2col of `x` times `gy` as one matrix product (`WeightGradAlgo::Im2col` / `Unfold`), or,
//! as Candle itself does it, a forward convolution of the batch/channel-swapped `x` with the
//! batch/channel-swapped `gy` as kernel (`WeightGradAlgo::Conv`).
//!
//! **Which convolution** ([`Engine`]). On the CPU (f32, f64, f16) every product here, the
//! forward one included, is this crate's im2col / col2im + one gemm (`im2col.rs`), about twice as
//! fast as Candle's tiled CPU `conv2d`; on other devices (and for bf16) it is Candle's `conv2d`
//! (cuDNN when candle-core is built with `cudnn`), with tensor-level operations only around it.

use candle_core::{DType, Tensor};

use crate::cpu::{Real, train_kernels_supported};
use crate::im2col::{self, Window};
use crate::params::ConvParams;
use crate::shifted::{self, Pass};
use crate::winograd;

/// Which forward convolution the functions of this module are built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// On the CPU `Shifted` for stride-1 convolutions with few spare output columns (f32, f64;
    /// `shifted.rs` says which), else `Im2col` (f32, f64, f16); `Candle` elsewhere.
    #[default]
    Auto,
    /// This crate's im2col / col2im + one gemm per chunk of images (CPU only).
    Im2col,
    /// Stride 1 on CPU f32 / f64: one gemm per tap on a shifted view of the zero-padded input,
    /// no column matrix (`shifted.rs`); other convolutions as `Im2col`.
    Shifted,
    /// 3x3 stride-1 convolutions (padding <= 2, dilation 1) on CPU f32 / f64 by Winograd's
    /// algorithm (`winograd.rs`: F(4x4, 3x3) on maps of 28 x 28 and more, else F(2x2, 3x3)),
    /// forward and input gradient; other convolutions as `Auto`.
    Winograd,
    /// Candle's `conv2d` with tensor-level windowing around it (every device).
    Candle,
}

impl Engine {
    /// Whether Winograd's algorithm is asked for: explicitly, or by `Auto` unless it is switched
    /// off (`winograd::set_winograd`). It runs where `winograd::supports` says.
    fn takes_winograd(self) -> bool {
        self == Engine::Winograd || (self == Engine::Auto && winograd::enabled())
    }

    /// The engine for a convolution Winograd's algorithm does not take: `Winograd` becomes
    /// `Auto`.
    fn direct(self) -> Engine {
        if self == Engine::Winograd { Engine::Auto } else { self }
    }

    /// The engine used for `t` (after [`Engine::direct`]).
    fn resolve(self, t: &Tensor) -> Engine {
        match self {
            Engine::Auto if im2col_supports(t) => Engine::Im2col,
            Engine::Shifted if !im2col_supports(t) => Engine::Candle,
            Engine::Auto => Engine::Candle,
            other => other,
        }
    }
}

/// Whether this crate's CPU im2col convolution applies (Candle's CPU matmul has no bf16).
fn im2col_supports(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64 | DType::F16)
}

/// How [`conv2d_weight_grad`] computes the weight gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightGradAlgo {
    /// On the CPU `Im2col` (f32, f64, f16) or `Conv` (bf16); elsewhere `Unfold` when the
    /// dilation is 1, else `Conv`.
    #[default]
    Auto,
    /// This crate's CPU im2col into a `[c_in*kh*kw, b*oh*ow]` matrix, then one
    /// `[c_out, b*oh*ow] x [b*oh*ow, c_in*kh*kw]` gemm. CPU only.
    Im2col,
    /// Stride 1 on CPU f32 / f64: per tap, one gemm of the output gradient with a shifted view
    /// of the zero-padded input (`shifted.rs`), no column matrix; `Auto` otherwise. `Auto` takes
    /// it on the CPU for 1x1 kernels over at least 1024 pixels per image.
    Shifted,
    /// 3x3 stride-1 kernels (padding <= 2, dilation 1) on CPU f32 / f64 by the adjoint of
    /// Winograd's algorithm (`winograd.rs`); `Auto` otherwise. `Auto` takes it where
    /// `Engine::Auto` takes Winograd's algorithm and it measured faster than im2col (F(4x4, 3x3)
    /// on maps of 28 x 28 and more, F(2x2, 3x3) on 14 x 14).
    Winograd,
    /// The same product with the im2col done by tensor operations (a strided `unfold` view of
    /// the padded input, copied once): works on every device. Dilation 1 only (else `Conv`).
    Unfold,
    /// A forward convolution of `x^T: [c_in, b, h, w]` with `gy^T: [c_out, b, oh, ow]` as kernel,
    /// stride and dilation swapped (Candle's own weight gradient).
    Conv,
}

/// The convolution itself, as a contiguous tensor. With `Engine::Im2col` it equals Candle's CPU
/// `conv2d` up to rounding (another summation order).
///
/// # Shapes
/// `x: [b, c_in, h, w]`, `w: [c_out, c_in, kh, kw]` -> `[b, c_out, oh, ow]`.
pub fn conv2d_forward(
    x: &Tensor,
    w: &Tensor,
    p: ConvParams,
    engine: Engine,
) -> candle_core::Result<Tensor> {
    forward_view(x, w, p, None, engine)?.contiguous()
}

/// [`conv2d_forward`] without the final copy (the result may be a strided view), keeping only
/// the first `out` rows/cols when given (at most the full output size).
pub(crate) fn forward_view(
    x: &Tensor,
    w: &Tensor,
    p: ConvParams,
    out: Option<(usize, usize)>,
    engine: Engine,
) -> candle_core::Result<Tensor> {
    let (_, _, h, wd) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    let size = |n: usize, k: usize| {
        p.output_size(n, k).ok_or_else(|| {
            candle_core::Error::Msg(format!("conv2d: kernel {k} does not fit input {n} with {p:?}"))
        })
    };
    let full = (size(h, kh)?, size(wd, kw)?);
    let out = out.unwrap_or(full);
    if engine.takes_winograd()
        && out == full
        && winograd::supports(x, (kh, kw), p)
        && (engine == Engine::Winograd || winograd::forward_pays(full))
    {
        return winograd::conv(x, w, p);
    }
    let engine = engine.direct();
    match engine.resolve(x) {
        Engine::Im2col | Engine::Shifted
            if shifted::applies(x, p, (h, wd), out, Pass::Data, engine) =>
        {
            shifted::conv(x, w, p, out)
        }
        Engine::Im2col | Engine::Shifted => {
            im2col::conv(x, w, Window::of_conv(p, out), im2col::COLUMN_BUDGET)
        }
        _ => {
            let y = x.conv2d(w, p.padding, p.stride, p.dilation, 1)?;
            if out == full { Ok(y) } else { y.narrow(2, 0, out.0)?.narrow(3, 0, out.1) }
        }
    }
}

/// How [`forward_view`] computes a full-size forward convolution, when it is one of this crate's
/// CPU kernels that work on slices: the convolution op then runs it on the storages Candle hands
/// its forward (no result computed beforehand and copied into them). `None` for the other paths.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SlicePlan {
    Winograd(winograd::Plan),
    Shifted(shifted::Plan),
    Im2col(im2col::Plan),
}

impl SlicePlan {
    /// The plan [`forward_view`] follows for `(x, w, p)` with `engine`, when it works on slices
    /// (contiguous CPU f32 / f64 operands).
    pub(crate) fn of(
        x: &Tensor,
        w: &Tensor,
        p: ConvParams,
        engine: Engine,
    ) -> candle_core::Result<Option<Self>> {
        if !(x.is_contiguous() && w.is_contiguous() && train_kernels_supported(w)) {
            return Ok(None);
        }
        let (_, _, h, wd) = x.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let (Some(oh), Some(ow)) = (p.output_size(h, kh), p.output_size(wd, kw)) else {
            return Ok(None);
        };
        // The same choices as `forward_view` with `out == full`.
        if engine.takes_winograd()
            && winograd::supports(x, (kh, kw), p)
            && (engine == Engine::Winograd || winograd::forward_pays((oh, ow)))
        {
            return Ok(Some(Self::Winograd(winograd::Plan::new(x, w, p)?)));
        }
        let engine = engine.direct();
        Ok(match engine.resolve(x) {
            Engine::Im2col | Engine::Shifted
                if shifted::applies(x, p, (h, wd), (oh, ow), Pass::Data, engine) =>
            {
                Some(Self::Shifted(shifted::Plan::new(x, w, p, (oh, ow))?))
            }
            Engine::Im2col | Engine::Shifted => {
                Some(Self::Im2col(im2col::Plan::new(x, w, Window::of_conv(p, (oh, ow)))?))
            }
            _ => None,
        })
    }

    /// The output's, the input's and the weight's dimensions.
    pub(crate) fn dims(&self) -> [[usize; 4]; 3] {
        match self {
            Self::Winograd(plan) => plan.dims(),
            Self::Shifted(plan) => plan.dims(),
            Self::Im2col(plan) => plan.dims(),
        }
    }

    /// The convolution of contiguous `x` and `w`: `[b, c_out, oh, ow]`, contiguous.
    pub(crate) fn run<T: Real>(&self, x: &[T], w: &[T]) -> candle_core::Result<Vec<T>> {
        match self {
            Self::Winograd(plan) => Ok(plan.run(x, w)),
            Self::Shifted(plan) => Ok(plan.run(x, w)),
            Self::Im2col(plan) => plan.run(x, w),
        }
    }
}

/// Candle's `conv2d` over an arbitrary window (see [`Window`]): the window is cut out of (or
/// zero-padded around) the input with tensor operations.
///
/// # Shapes
/// `x: [b, c_in, h, w]`, `w: [c_out, c_in, kh, kw]` -> `[b, c_out, win.out.0, win.out.1]`.
fn conv_window(x: &Tensor, w: &Tensor, win: Window) -> candle_core::Result<Tensor> {
    let (b, _, h, wd) = x.dims4()?;
    let (c_out, _, kh, kw) = w.dims4()?;
    let (oh, ow) = win.out;
    let reach = |out: usize, k: usize| (out - 1) * win.stride + (k - 1) * win.dilation + 1;
    let (Some((h0, hn, top, bottom)), Some((w0, wn, left, right))) =
        (clip_window(win.origin.0, reach(oh, kh), h), clip_window(win.origin.1, reach(ow, kw), wd))
    else {
        return Tensor::zeros((b, c_out, oh, ow), x.dtype(), x.device());
    };
    // The convolution pads all four sides by the same amount for free; the rest is explicit.
    let shared = top.min(bottom).min(left).min(right);
    let xs = x.narrow(2, h0, hn)?.narrow(3, w0, wn)?;
    let xs = pad2(&xs, (top - shared, bottom - shared), (left - shared, right - shared))?;
    // cuDNN falls back to a naive kernel for a non-contiguous weight.
    xs.conv2d(&w.contiguous()?, shared, win.stride, win.dilation, 1)
}

/// One phase `r` of the input positions along one axis (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
struct AxisPhase {
    /// Kernel taps in the order the phase's stride-1 convolution applies them (descending: the
    /// sub-kernel is flipped). Empty when no tap reaches this phase.
    taps: Vec<u32>,
    /// Number of input positions `i < n` with `i mod s == r`.
    len: usize,
    /// Gradient index read by the phase's first output and first (flipped) tap; may be negative
    /// (those reads are zeros).
    start: isize,
    /// Number of consecutive gradient positions (from `start`) that the phase convolution reads.
    window: usize,
}

/// The `s` phases of one axis and the dilation `e` of their convolutions.
fn axis_phases(n: usize, k: usize, p: ConvParams) -> (Vec<AxisPhase>, usize) {
    let (s, d, pad) = (p.stride, p.dilation, p.padding);
    let e = d / gcd(s, d);
    let phases = (0..s)
        .map(|r| {
            let len = if r < n { (n - r).div_ceil(s) } else { 0 };
            let offset = |t: usize| (r + pad) as isize - (t * d) as isize;
            let taps_up: Vec<usize> =
                (0..k).filter(|&t| offset(t).rem_euclid(s as isize) == 0).collect();
            match taps_up.first() {
                Some(&t0) if len > 0 => {
                    let j = taps_up.len();
                    // Gradient index of the first tap for output 0; the flipped order starts
                    // (j - 1) * e positions earlier.
                    let c0 = offset(t0) / s as isize;
                    AxisPhase {
                        taps: taps_up.iter().rev().map(|&t| t as u32).collect(),
                        len,
                        start: c0 - ((j - 1) * e) as isize,
                        window: len + (j - 1) * e,
                    }
                }
                _ => AxisPhase { taps: Vec::new(), len, start: 0, window: 0 },
            }
        })
        .collect();
    (phases, e)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The part of `[start, start + window)` inside `[0, m)` as (first, count, zeros before, zeros
/// after), or `None` when they do not overlap.
fn clip_window(start: isize, window: usize, m: usize) -> Option<(usize, usize, usize, usize)> {
    let lo = start.max(0);
    let hi = (start + window as isize).min(m as isize);
    (hi > lo).then(|| {
        let before = (lo - start) as usize;
        let after = (start + window as isize - hi) as usize;
        (lo as usize, (hi - lo) as usize, before, after)
    })
}

/// Input gradient of `conv2d(x, w, p)` for the output gradient `grad`: with `Engine::Im2col`
/// `col2im(W^T x grad)` (one gemm), with `Engine::Candle` the stride phases as forward
/// convolutions (see the module doc). Also the forward pass of the transposed convolution.
///
/// `input_hw` is the spatial size of `x` (several input sizes give the same output size).
///
/// # Shapes
/// `grad: [b, c_out, oh, ow]`, `w: [c_out, c_in, kh, kw]` -> `[b, c_in, h, w]`.
pub fn conv2d_input_grad(
    grad: &Tensor,
    w: &Tensor,
    p: ConvParams,
    input_hw: (usize, usize),
    engine: Engine,
) -> candle_core::Result<Tensor> {
    let (b, _, oh, ow) = grad.dims4()?;
    let (_, c_in, kh, kw) = w.dims4()?;
    let (h, wd) = input_hw;
    // (With stride 1 the input size is the output size plus 2 - 2p; checked all the same.)
    let fits = (h + 2 * p.padding, wd + 2 * p.padding) == (oh + 2, ow + 2);
    if engine.takes_winograd() && fits && winograd::supports(grad, (kh, kw), p) {
        return winograd::input_grad(grad, w, p);
    }
    let engine = engine.direct();
    let resolved = engine.resolve(grad);
    if matches!(resolved, Engine::Im2col | Engine::Shifted) {
        if shifted::applies(grad, p, input_hw, (oh, ow), Pass::Data, engine) {
            return shifted::conv_input_grad(grad, w, p, input_hw);
        }
        let win = Window::of_conv(p, (oh, ow));
        return im2col::input_grad(grad, w, win, input_hw, im2col::COLUMN_BUDGET);
    }
    let (phases_h, e) = axis_phases(h, kh, p);
    let (phases_w, _) = axis_phases(wd, kw, p);
    let s = p.stride;
    if s == 1 {
        return phase_conv(grad, w, (&phases_h[0], &phases_w[0]), e, (h, wd));
    }
    // Every phase is padded to the size of phase 0 so that they interleave with one reshape.
    let (hc, wc) = (h.div_ceil(s), wd.div_ceil(s));
    let rows = phases_h
        .iter()
        .map(|ph| {
            let cols = phases_w
                .iter()
                .map(|pw| phase_conv(grad, w, (ph, pw), e, (hc, wc)))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::stack(&cols, 4) // [b, c_in, hc, wc, s]
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::stack(&rows, 3)? // [b, c_in, hc, s, wc, s]
        .reshape((b, c_in, hc * s, wc * s))?
        .narrow(2, 0, h)?
        .narrow(3, 0, wd) // [b, c_in, h, w]
}

/// One phase of the input gradient, zero-padded at the bottom/right to `out_hw`.
///
/// # Shapes
/// `grad: [b, c_out, oh, ow]`, `w: [c_out, c_in, kh, kw]` -> `[b, c_in, out_h, out_w]`.
fn phase_conv(
    grad: &Tensor,
    w: &Tensor,
    (ph, pw): (&AxisPhase, &AxisPhase),
    e: usize,
    out_hw: (usize, usize),
) -> candle_core::Result<Tensor> {
    let (b, _, _, _) = grad.dims4()?;
    let (_, c_in, _, _) = w.dims4()?;
    if ph.taps.is_empty() || pw.taps.is_empty() {
        return Tensor::zeros((b, c_in, out_hw.0, out_hw.1), grad.dtype(), grad.device());
    }
    // [c_out, c_in, jh, jw] -> [c_in, c_out, jh, jw]: the phase's flipped, transposed sub-kernel.
    let dev = w.device();
    let taps_h = Tensor::new(ph.taps.as_slice(), dev)?;
    let taps_w = Tensor::new(pw.taps.as_slice(), dev)?;
    let w_sub =
        w.index_select(&taps_h, 2)?.index_select(&taps_w, 3)?.transpose(0, 1)?.contiguous()?;
    let win =
        Window { stride: 1, dilation: e, origin: (ph.start, pw.start), out: (ph.len, pw.len) };
    let y = conv_window(grad, &w_sub, win)?; // [b, c_in, ph.len, pw.len]
    pad2(&y, (0, out_hw.0 - ph.len), (0, out_hw.1 - pw.len))
}

/// Zero padding of the two spatial axes of an NCHW tensor; no copy when nothing is added.
fn pad2(t: &Tensor, h: (usize, usize), w: (usize, usize)) -> candle_core::Result<Tensor> {
    let t = if h != (0, 0) { t.pad_with_zeros(2, h.0, h.1)? } else { t.clone() };
    if w != (0, 0) { t.pad_with_zeros(3, w.0, w.1) } else { Ok(t) }
}

/// Weight gradient of `conv2d(x, w, p)` for the output gradient `grad`.
///
/// # Shapes
/// `x: [b, c_in, h, w]`, `grad: [b, c_out, oh, ow]` -> `[c_out, c_in, kh, kw]` with
/// `(kh, kw) = kernel_hw`.
pub fn conv2d_weight_grad(
    x: &Tensor,
    grad: &Tensor,
    p: ConvParams,
    kernel_hw: (usize, usize),
    algo: WeightGradAlgo,
) -> candle_core::Result<Tensor> {
    let (kh, kw) = kernel_hw;
    let (_, _, h, wd) = x.dims4()?;
    let (_, _, oh, ow) = grad.dims4()?;
    let applies = |engine| {
        let pass = Pass::Weight { kernel: kernel_hw };
        shifted::applies(x, p, (h, wd), (oh, ow), pass, engine)
    };
    let winograd = algo == WeightGradAlgo::Winograd
        || (algo == WeightGradAlgo::Auto
            && winograd::enabled()
            && winograd::weight_grad_pays((oh, ow)));
    // (With stride 1 the output size is the input size plus 2p - 2; checked all the same.)
    let fits = (h + 2 * p.padding, wd + 2 * p.padding) == (oh + 2, ow + 2);
    if winograd && fits && winograd::supports(x, kernel_hw, p) {
        return winograd::weight_grad(x, grad, p);
    }
    let algo = if algo == WeightGradAlgo::Winograd { WeightGradAlgo::Auto } else { algo };
    let algo = match algo {
        WeightGradAlgo::Auto if applies(Engine::Auto) => WeightGradAlgo::Shifted,
        WeightGradAlgo::Shifted if applies(Engine::Shifted) => WeightGradAlgo::Shifted,
        WeightGradAlgo::Auto | WeightGradAlgo::Shifted if im2col_supports(x) => {
            WeightGradAlgo::Im2col
        }
        // Candle's CPU matmul has no bf16, its CPU conv2d has.
        WeightGradAlgo::Auto | WeightGradAlgo::Shifted if x.device().is_cpu() => {
            WeightGradAlgo::Conv
        }
        WeightGradAlgo::Auto | WeightGradAlgo::Shifted | WeightGradAlgo::Unfold
            if p.dilation == 1 =>
        {
            WeightGradAlgo::Unfold
        }
        WeightGradAlgo::Auto | WeightGradAlgo::Shifted | WeightGradAlgo::Unfold => {
            WeightGradAlgo::Conv
        }
        other => other,
    };
    match algo {
        WeightGradAlgo::Shifted => shifted::conv_weight_grad(x, grad, p, kernel_hw),
        WeightGradAlgo::Im2col => {
            let win = Window::of_conv(p, (oh, ow));
            im2col::weight_grad(x, grad, kernel_hw, win, im2col::COLUMN_BUDGET)
        }
        WeightGradAlgo::Unfold => weight_grad_unfold(x, grad, p, kernel_hw),
        _ => {
            // [c_in, b, h, w] conv [c_out, b, oh, ow] -> [c_in, c_out, kh', kw'] with kh' >= kh
            // (the floor in oh can leave extra rows at the bottom, which are not taps).
            let gw = x.transpose(0, 1)?.conv2d(
                &grad.transpose(0, 1)?,
                p.padding,
                p.dilation,
                p.stride,
                1,
            )?;
            gw.narrow(2, 0, kh)?.narrow(3, 0, kw)?.transpose(0, 1) // [c_out, c_in, kh, kw]
        }
    }
}

/// `WeightGradAlgo::Unfold` (dilation 1).
fn weight_grad_unfold(
    x: &Tensor,
    grad: &Tensor,
    p: ConvParams,
    kernel_hw: (usize, usize),
) -> candle_core::Result<Tensor> {
    let (b, c_in, _, _) = x.dims4()?;
    let (_, c_out, oh, ow) = grad.dims4()?;
    let (kh, kw) = kernel_hw;
    let xp = pad2(x, (p.padding, p.padding), (p.padding, p.padding))?;
    // Windows of the padded input; the floor in oh can leave unused rows at the bottom.
    let windows = xp.unfold(2, kh, p.stride)?.unfold(3, kw, p.stride)?; // [b, c_in, oh', ow', kh, kw]
    let windows = windows.narrow(2, 0, oh)?.narrow(3, 0, ow)?;
    // im2col, transposed: [c_in, kh, kw, b, oh, ow] (innermost axis contiguous when stride is 1).
    let cols = windows
        .permute((1, 4, 5, 0, 2, 3))?
        .contiguous()?
        .reshape((c_in * kh * kw, b * oh * ow))?;
    let g = grad.transpose(0, 1)?.contiguous()?.reshape((c_out, b * oh * ow))?; // [c_out, b*oh*ow]
    let gw = g.matmul(&cols.t()?)?; // [c_out, c_in*kh*kw]
    gw.reshape((c_out, c_in, kh, kw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_of_stride_two_kernel_three_padding_one() {
        // i = 2a: only tap 1 (o = a); i = 2a + 1: taps 0 (o = a + 1) and 2 (o = a).
        let p = ConvParams { stride: 2, padding: 1, dilation: 1 };
        let (ph, e) = axis_phases(7, 3, p);
        assert_eq!(e, 1);
        assert_eq!(ph[0], AxisPhase { taps: vec![1], len: 4, start: 0, window: 4 });
        assert_eq!(ph[1], AxisPhase { taps: vec![2, 0], len: 3, start: 0, window: 4 });
    }

    #[test]
    fn phases_with_no_taps_are_empty() {
        // A 1x1 stride-2 convolution never reads odd input positions.
        let p = ConvParams { stride: 2, padding: 0, dilation: 1 };
        let (ph, _) = axis_phases(8, 1, p);
        assert_eq!(ph[0].taps, vec![0]);
        assert!(ph[1].taps.is_empty());
    }

    #[test]
    fn window_clipping() {
        assert_eq!(clip_window(-2, 5, 10), Some((0, 3, 2, 0)));
        assert_eq!(clip_window(8, 5, 10), Some((8, 2, 0, 3)));
        assert_eq!(clip_window(10, 5, 10), None);
        assert_eq!(clip_window(-5, 5, 10), None);
    }
}
