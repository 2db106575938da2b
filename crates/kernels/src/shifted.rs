//! Stride-1 convolutions on the CPU without a column matrix: every tap's product is one gemm on
//! a shifted view of the zero-padded input.
//!
//! Store an image's padded planes (`hp = h + 2p` rows of `wp = w + 2p`) row after row and number
//! the outputs `q = oy * wp + ox` over `oh x wp` positions instead of `oh x ow`: output `q` through
//! tap `(th, tw)` reads padded position `q + th*d*wp + tw*d`, so tap `t`'s column matrix is the
//! padded input itself seen from offset `off(t)`, a `[c_in, oh*wp]` view with row stride `plane`
//! (one padded plane) and column stride 1. With `W_t = w[:, :, th, tw]`:
//! - forward: `y_i = sum_t W_t [c_out, c_in] x X_{i,t} [c_in, oh*wp]`;
//! - input gradient: `gx_i(padded)[:, off(t) + q] += W_t^T x gy_i[:, q]`, `gy` spread over the
//!   `oh x wp` positions with zeros in the spare ones;
//! - weight gradient: `gw[:, :, th, tw] = sum_i gy_i [c_out, oh*wp] x X_{i,t}^T`.
//!
//! The columns `ox >= ow` of each output row are spare: computed and dropped (forward), or zero
//! (backward). They cost `(wp - ow) / wp` more multiply-adds (3.4% at 56 x 56 with a 3x3 kernel,
//! 22% at 7 x 7), so [`applies`] keeps the im2col path where they are many. In exchange nothing
//! is gathered: im2col writes and reads back a `[c_in*kh*kw, pixels]` matrix (9x the input for
//! 3x3), col2im scatters one back, and the weight gradient gathers it again. A 1x1 convolution
//! without padding has no spare columns and reads the input and gradients in place.
//!
//! Each image's products run whole on one thread, the images in parallel (gemm's own threads
//! when there are fewer images than threads); the weight gradient runs its taps (and blocks of
//! output channels) in parallel, each summing the images in order, so results do not depend on
//! the thread count.

use std::borrow::Cow;

use candle_core::Tensor;
use gemm::Parallelism;
use rayon::prelude::*;

use crate::cpu::{
    Real, SharedMut, View, by_dtype, gemm_view, par_chunks_zeroed, par_zeroed,
    train_kernels_supported, with_cpu_slices,
};
use crate::grad::Engine;
use crate::params::ConvParams;

/// `Engine::Auto` takes the shifted views for the forward pass and the input gradient when at
/// most a tenth of the padded width is spare columns: measured against im2col on one thread
/// (resnet18 at 224 px, batch 8, AMD EPYC), 3x3 at 56 x 56 (2 of 58 spare) 23.4 -> 20.2 ms
/// forward and 22.9 -> 20.4 input gradient, at 28 x 28 (2 of 30) 20.7 -> 19.9 and 21.2 -> 20.1,
/// but at 14 x 14 (2 of 16) 19.0 -> 21.8 and 21.1 -> 22.9; 1x1 at 56 x 56 (none spare) 14.4 ->
/// 9.9 and 14.2 -> 10.0.
const MAX_SPARE_TENTHS: usize = 1;

/// `WeightGradAlgo::Auto` takes them for 1x1 kernels with at least this many pixels per image.
/// Its per-tap products are small (`c_out x c_in`, summed image by image), so for 3x3 im2col's
/// one large product wins (56 x 56: 20.6 ms against 24.4), and with few pixels the per-image
/// sums re-read the result too often (1x1, 1024 -> 256 channels at 14 x 14: 8.7 against 10.7);
/// 1x1 at 56 x 56: 14.8 -> 11.0.
const MIN_WEIGHT_GRAD_PIXELS: usize = 1024;

/// Output channels per task of the weight gradient when a convolution has fewer than 8 taps
/// (1x1): the work is split by channels instead. Fixed, so that the sums do not depend on the
/// thread count.
const ROW_BLOCK: usize = 64;

/// Which pass of a convolution [`applies`] is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// The forward convolution or its input gradient.
    Data,
    /// The weight gradient, of a `kernel`-sized kernel.
    Weight { kernel: (usize, usize) },
}

/// Whether the shifted-view path runs `pass` of a convolution with parameters `p` from input
/// size `input` to output size `out`, for tensors like `t`, under `engine`: always for
/// `Engine::Shifted` when the convolution has stride 1 on CPU f32 / f64; for `Engine::Auto`
/// only where it measured faster (see [`MAX_SPARE_TENTHS`], [`MIN_WEIGHT_GRAD_PIXELS`]);
/// never for `Engine::Im2col` or `Engine::Candle`.
pub(crate) fn applies(
    t: &Tensor,
    p: ConvParams,
    input: (usize, usize),
    out: (usize, usize),
    pass: Pass,
    engine: Engine,
) -> bool {
    let wp = input.1 + 2 * p.padding;
    let possible = p.stride == 1 && train_kernels_supported(t) && wp >= out.1;
    let faster = || match pass {
        Pass::Data => (wp - out.1) * 10 <= wp * MAX_SPARE_TENTHS,
        Pass::Weight { kernel } => kernel == (1, 1) && out.0 * wp >= MIN_WEIGHT_GRAD_PIXELS,
    };
    match engine {
        Engine::Shifted => possible,
        Engine::Auto => possible && faster(),
        Engine::Im2col | Engine::Candle | Engine::Winograd => false,
    }
}

/// One stride-1 convolution in padded coordinates (see the module doc).
#[derive(Debug, Clone, Copy)]
struct Geometry {
    b: usize,
    c_in: usize,
    c_out: usize,
    /// Input size.
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    pad: usize,
    dil: usize,
    /// Output size (at most the full one).
    oh: usize,
    ow: usize,
}

impl Geometry {
    fn new(
        (b, c_in, h, w): (usize, usize, usize, usize),
        (c_out, kh, kw): (usize, usize, usize),
        p: ConvParams,
        (oh, ow): (usize, usize),
    ) -> Self {
        Self { b, c_in, c_out, h, w, kh, kw, pad: p.padding, dil: p.dilation, oh, ow }
    }

    /// Padded row length.
    fn wp(&self) -> usize {
        self.w + 2 * self.pad
    }

    /// Elements per padded input plane: `hp x wp` and the `(kw-1)*d` that the last row's
    /// spare columns read past it.
    fn plane(&self) -> usize {
        (self.h + 2 * self.pad) * self.wp() + (self.kw - 1) * self.dil
    }

    /// Output positions per image, spare columns included.
    fn n(&self) -> usize {
        self.oh * self.wp()
    }

    fn taps(&self) -> usize {
        self.kh * self.kw
    }

    /// Where tap `t` reads output 0 in a padded plane.
    fn offset(&self, t: usize) -> usize {
        (t / self.kw) * self.dil * self.wp() + (t % self.kw) * self.dil
    }

    /// Whether the input planes serve as padded planes as they are (no padding, 1 column wide
    /// kernel: then `plane == h*w`).
    fn input_as_is(&self) -> bool {
        self.pad == 0 && self.kw == 1
    }

    /// Whether the output rows have spare columns.
    fn spare(&self) -> bool {
        self.wp() != self.ow
    }

    /// Image `i`'s input planes, padded.
    fn pad_input<T: Real>(&self, x: &[T], out: &mut [T]) {
        embed(x, (self.h, self.w), out, self.plane(), self.wp(), (self.pad, self.pad));
    }

    /// Image `i`'s output gradient spread over the `oh x wp` positions (zero in spare ones).
    fn spread_output<T: Real>(&self, gy: &[T], out: &mut [T]) {
        embed(gy, (self.oh, self.ow), out, self.n(), self.wp(), (0, 0));
    }
}

/// Copies the planes of `src` (`rows x cols` each, contiguous) into the planes of `dst`
/// (`plane` elements each), row `r` at `(r + top) * stride + left`; every other element of `dst`
/// is set to zero.
fn embed<T: Real>(
    src: &[T],
    (rows, cols): (usize, usize),
    dst: &mut [T],
    plane: usize,
    stride: usize,
    (top, left): (usize, usize),
) {
    for (s, d) in src.chunks_exact(rows * cols).zip(dst.chunks_exact_mut(plane)) {
        d.fill(T::zero());
        for (r, row) in s.chunks_exact(cols).enumerate() {
            let at = (r + top) * stride + left;
            d[at..at + cols].copy_from_slice(row);
        }
    }
}

/// The inverse of [`embed`]: the `rows x cols` block at `(top, left)` (row stride `stride`) of
/// each `plane`-element plane of `src`, into the contiguous planes of `dst`.
fn extract<T: Real>(
    src: &[T],
    plane: usize,
    stride: usize,
    (top, left): (usize, usize),
    dst: &mut [T],
    (rows, cols): (usize, usize),
) {
    for (s, d) in src.chunks(plane).zip(dst.chunks_exact_mut(rows * cols)) {
        for (r, row) in d.chunks_exact_mut(cols).enumerate() {
            let at = (r + top) * stride + left;
            row.copy_from_slice(&s[at..at + cols]);
        }
    }
}

/// `f(i, out_i, parallelism)` for each image `i` of a `b`-image result with `len` elements per
/// image (zeroed before `f`): images in parallel, each whole on one thread, when there are at
/// least as many as threads; else one after the other with gemm's threads.
fn per_image<T: Real>(
    b: usize,
    len: usize,
    f: impl Fn(usize, &mut [T], Parallelism) + Sync,
) -> Vec<T> {
    let threads = rayon::current_num_threads();
    if threads > 1 && b >= threads {
        return par_chunks_zeroed(b * len, len, |i, out| f(i, out, Parallelism::None));
    }
    let parallelism = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    let mut v = par_zeroed(b * len);
    for (i, out) in v.chunks_mut(len.max(1)).enumerate() {
        f(i, out, parallelism);
    }
    v
}

/// [`per_image`] for results that `f` writes whole through gemm (accumulate false, nothing
/// read): not zeroed first. `f(i, out_i, parallelism)` gets image `i`'s `len` elements as a
/// raw pointer.
///
/// # Safety
/// `f` must write every one of the `len` elements at its pointer (and nothing else).
unsafe fn per_image_written<T: Real>(
    b: usize,
    len: usize,
    f: impl Fn(usize, *mut T, Parallelism) + Sync,
) -> Vec<T> {
    let threads = rayon::current_num_threads();
    let mut v: Vec<T> = Vec::with_capacity(b * len);
    let dst = SharedMut(v.spare_capacity_mut().as_mut_ptr().cast::<T>());
    if threads > 1 && b >= threads {
        (0..b)
            .into_par_iter()
            .for_each(|i| f(i, dst.get().wrapping_add(i * len), Parallelism::None));
    } else {
        let parallelism = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
        for i in 0..b {
            f(i, dst.get().wrapping_add(i * len), parallelism);
        }
    }
    // SAFETY: the images cover the `b * len` elements of capacity, each written by `f` as the
    // caller promises; a panic in `f` propagates before this line and drops `v` with length 0.
    unsafe { v.set_len(b * len) };
    v
}

/// Whether one gemm writes each image's result whole, in both directions: a 1x1 kernel without
/// padding (the input planes as they are, no spare output columns: `plane = n = h * w`).
fn single_product(g: &Geometry) -> bool {
    g.taps() == 1 && g.input_as_is() && !g.spare()
}

/// The forward convolution, `[b, c_out, oh, ow]`.
fn forward<T: Real>(x: &[T], w: &[T], g: &Geometry) -> Vec<T> {
    let (image_in, taps, n) = (g.c_in * g.h * g.w, g.taps(), g.n());
    if single_product(g) {
        debug_assert_eq!(g.plane(), n);
        let image_out = g.c_out * n;
        // SAFETY: the one product writes the image's `[c_out, n]` result whole (n = oh * ow);
        // `w` is `[c_out, c_in]`, the rhs is image i of `x` (`[c_in, n]`).
        return unsafe {
            per_image_written(g.b, image_out, |i, y, parallelism| {
                let lhs = View { ptr: w.as_ptr(), rs: g.c_in, cs: 1 };
                let rhs = View { ptr: x[i * image_in..].as_ptr(), rs: g.plane(), cs: 1 };
                let out = View { ptr: y, rs: n, cs: 1 };
                gemm_view((g.c_out, n, g.c_in), out, false, lhs, rhs, parallelism)
            })
        };
    }
    per_image(g.b, g.c_out * g.oh * g.ow, |i, y, parallelism| {
        let xi = &x[i * image_in..(i + 1) * image_in];
        let mut padded = Vec::new();
        let src: &[T] = if g.input_as_is() {
            xi
        } else {
            padded.resize(g.c_in * g.plane(), T::zero());
            g.pad_input(xi, &mut padded);
            &padded
        };
        let mut spread = Vec::new();
        let dst: &mut [T] = if g.spare() {
            spread.resize(g.c_out * n, T::zero());
            &mut spread
        } else {
            y
        };
        for t in 0..taps {
            let lhs = View { ptr: w[t..].as_ptr(), rs: g.c_in * taps, cs: taps };
            let rhs = View { ptr: src[g.offset(t)..].as_ptr(), rs: g.plane(), cs: 1 };
            let out = View { ptr: dst.as_mut_ptr(), rs: n, cs: 1 };
            // SAFETY: `w` is `[c_out, c_in, taps]`; the rhs reaches `(c_in - 1) * plane +
            // offset(t) + n - 1 < c_in * plane` (see `Geometry::plane`) of `src`; `dst` is
            // `[c_out, n]`, written by tap 0 before the others add to it.
            unsafe { gemm_view((g.c_out, n, g.c_in), out, t > 0, lhs, rhs, parallelism) };
        }
        if g.spare() {
            extract(&spread, n, g.wp(), (0, 0), y, (g.oh, g.ow));
        }
    })
}

/// The input gradient, `[b, c_in, h, w]`.
fn input_grad<T: Real>(gy: &[T], w: &[T], g: &Geometry) -> Vec<T> {
    let (image_out, taps, n, plane) = (g.c_out * g.oh * g.ow, g.taps(), g.n(), g.plane());
    if single_product(g) {
        debug_assert_eq!(plane, n);
        let image_in = g.c_in * g.h * g.w;
        // SAFETY: W^T (`[c_in, c_out]`, read with swapped strides) times image i's gradient
        // (`[c_out, n]`, n = oh * ow = h * w) writes the image's `[c_in, h * w]` input gradient
        // whole.
        return unsafe {
            per_image_written(g.b, image_in, |i, gx, parallelism| {
                let lhs = View { ptr: w.as_ptr(), rs: 1, cs: g.c_in };
                let rhs = View { ptr: gy[i * image_out..].as_ptr(), rs: n, cs: 1 };
                let out = View { ptr: gx, rs: plane, cs: 1 };
                gemm_view((g.c_in, n, g.c_out), out, false, lhs, rhs, parallelism)
            })
        };
    }
    per_image(g.b, g.c_in * g.h * g.w, |i, gx, parallelism| {
        let gyi = &gy[i * image_out..(i + 1) * image_out];
        let mut spread = Vec::new();
        let src: &[T] = if g.spare() {
            spread.resize(g.c_out * n, T::zero());
            g.spread_output(gyi, &mut spread);
            &spread
        } else {
            gyi
        };
        let mut padded = Vec::new();
        let dst: &mut [T] = if g.input_as_is() {
            gx
        } else {
            padded.resize(g.c_in * plane, T::zero());
            &mut padded
        };
        for t in 0..taps {
            // W_t^T: element (ci, co) is w[co, ci, t].
            let lhs = View { ptr: w[t..].as_ptr(), rs: taps, cs: g.c_in * taps };
            let rhs = View { ptr: src.as_ptr(), rs: n, cs: 1 };
            let out = View { ptr: dst[g.offset(t)..].as_mut_ptr(), rs: plane, cs: 1 };
            // SAFETY: as in `forward`, with the roles of the padded planes and the outputs
            // exchanged; rows of `out` are `plane >= offset(t) + n` apart, so distinct. `dst`
            // is zeroed (by `per_image` or above), so tap 0 may overwrite.
            unsafe { gemm_view((g.c_in, n, g.c_out), out, t > 0, lhs, rhs, parallelism) };
        }
        if !g.input_as_is() {
            extract(&padded, plane, g.wp(), (g.pad, g.pad), gx, (g.h, g.w));
        }
    })
}

/// The weight gradient, `[c_out, c_in, kh, kw]`.
fn weight_grad<T: Real>(x: &[T], gy: &[T], g: &Geometry) -> Vec<T> {
    let (image_in, image_out) = (g.c_in * g.h * g.w, g.c_out * g.oh * g.ow);
    let (taps, n, plane) = (g.taps(), g.n(), g.plane());
    let xs: Cow<'_, [T]> = if g.input_as_is() {
        Cow::Borrowed(x)
    } else {
        Cow::Owned(par_chunks_zeroed(g.b * g.c_in * plane, g.c_in * plane, |i, out| {
            g.pad_input(&x[i * image_in..(i + 1) * image_in], out)
        }))
    };
    let gs: Cow<'_, [T]> = if g.spare() {
        Cow::Owned(par_chunks_zeroed(g.b * g.c_out * n, g.c_out * n, |i, out| {
            g.spread_output(&gy[i * image_out..(i + 1) * image_out], out)
        }))
    } else {
        Cow::Borrowed(gy)
    };
    let row = g.c_in * taps;
    let mut gw = vec![T::zero(); g.c_out * row];
    let rows = if taps >= 8 { g.c_out } else { ROW_BLOCK.min(g.c_out) }.max(1);
    let tasks: Vec<(usize, usize)> =
        (0..taps).flat_map(|t| (0..g.c_out).step_by(rows).map(move |r| (t, r))).collect();
    let dst = SharedMut(gw.as_mut_ptr());
    let task = |&(t, r0): &(usize, usize)| {
        let m = rows.min(g.c_out - r0);
        for i in 0..g.b {
            let lhs = View { ptr: gs[i * g.c_out * n + r0 * n..].as_ptr(), rs: n, cs: 1 };
            // X_{i,t}^T: element (q, ci) is the padded input at ci * plane + offset(t) + q.
            let rhs =
                View { ptr: xs[i * g.c_in * plane + g.offset(t)..].as_ptr(), rs: 1, cs: plane };
            // SAFETY: rows r0..r0+m of tap t (elements (co, ci, t)) belong to this task alone;
            // `gw` outlives the tasks; the operands stay inside `gs` and `xs` as in `forward`.
            let out = View { ptr: unsafe { dst.get().add(r0 * row + t) }, rs: row, cs: taps };
            unsafe { gemm_view((m, g.c_in, n), out, i > 0, lhs, rhs, Parallelism::None) };
        }
    };
    if rayon::current_num_threads() > 1 {
        tasks.par_iter().for_each(task);
    } else {
        tasks.iter().for_each(task);
    }
    gw
}

/// Runs `f::<f32>` or `f::<f64>` on the contiguous elements of `a` and `b`.
fn on_slices(
    op: &'static str,
    (a, a_name): (&Tensor, &str),
    (b, b_name): (&Tensor, &str),
    g: &Geometry,
    shape: (usize, usize, usize, usize),
    f32: fn(&[f32], &[f32], &Geometry) -> Vec<f32>,
    f64: fn(&[f64], &[f64], &Geometry) -> Vec<f64>,
) -> candle_core::Result<Tensor> {
    let (a, b) = (a.contiguous()?, b.contiguous()?);
    if a.dtype() != b.dtype() {
        candle_core::bail!("{op}: {a_name} is {:?}, {b_name} {:?}", a.dtype(), b.dtype())
    }
    let dev = a.device().clone();
    let ts = [(&a, a_name), (&b, b_name)];
    by_dtype(
        a.dtype(),
        op,
        || {
            let v = with_cpu_slices::<f32, _, 2>(op, ts, |[a, b]| f32(a, b, g))?;
            Tensor::from_vec(v, shape, &dev)
        },
        || {
            let v = with_cpu_slices::<f64, _, 2>(op, ts, |[a, b]| f64(a, b, g))?;
            Tensor::from_vec(v, shape, &dev)
        },
    )
}

/// `conv2d(x, w, p)` (stride 1), the first `out` rows and columns of it, contiguous.
///
/// # Shapes
/// `x: [b, c_in, h, w]`, `w: [c_out, c_in, kh, kw]` -> `[b, c_out, out.0, out.1]`.
pub(crate) fn conv(
    x: &Tensor,
    w: &Tensor,
    p: ConvParams,
    out: (usize, usize),
) -> candle_core::Result<Tensor> {
    let g = Plan::new(x, w, p, out)?.0;
    let shape = (g.b, g.c_out, out.0, out.1);
    on_slices("conv2d", (x, "input"), (w, "weight"), &g, shape, forward, forward)
}

/// [`conv`] prepared from the tensors' shapes and run later on their slices (see
/// `winograd::Plan`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan(Geometry);

impl Plan {
    /// The plan of `conv(x, w, p, out)` (shapes as [`conv`]).
    pub(crate) fn new(
        x: &Tensor,
        w: &Tensor,
        p: ConvParams,
        out: (usize, usize),
    ) -> candle_core::Result<Self> {
        let (c_out, _, kh, kw) = w.dims4()?;
        Ok(Self(Geometry::new(x.dims4()?, (c_out, kh, kw), p, out)))
    }

    /// The output's, the input's and the weight's dimensions.
    pub(crate) fn dims(&self) -> [[usize; 4]; 3] {
        let g = &self.0;
        [[g.b, g.c_out, g.oh, g.ow], [g.b, g.c_in, g.h, g.w], [g.c_out, g.c_in, g.kh, g.kw]]
    }

    /// `conv(x, w, p, out)` of contiguous `x` and `w` as the plan's shapes say.
    pub(crate) fn run<T: Real>(&self, x: &[T], w: &[T]) -> Vec<T> {
        forward(x, w, &self.0)
    }
}

/// [`conv`]'s values (f32) as they come out: for an epilogue applied in place.
pub(crate) fn conv_f32(
    x: &Tensor,
    w: &Tensor,
    p: ConvParams,
    out: (usize, usize),
) -> candle_core::Result<Vec<f32>> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let plan = Plan::new(&x, &w, p, out)?;
    with_cpu_slices::<f32, _, 2>("conv2d", [(&x, "input"), (&w, "weight")], |[x, w]| plan.run(x, w))
}

/// The input gradient of `conv2d(x, w, p)` (stride 1) for `x` of spatial size `input_hw`.
///
/// # Shapes
/// `grad: [b, c_out, oh, ow]`, `w: [c_out, c_in, kh, kw]` -> `[b, c_in, h, w]`.
pub(crate) fn conv_input_grad(
    grad: &Tensor,
    w: &Tensor,
    p: ConvParams,
    input_hw: (usize, usize),
) -> candle_core::Result<Tensor> {
    let (b, _, oh, ow) = grad.dims4()?;
    let (c_out, c_in, kh, kw) = w.dims4()?;
    let g = Geometry::new((b, c_in, input_hw.0, input_hw.1), (c_out, kh, kw), p, (oh, ow));
    let shape = (b, c_in, input_hw.0, input_hw.1);
    on_slices(
        "conv2d input gradient",
        (grad, "gradient"),
        (w, "weight"),
        &g,
        shape,
        input_grad,
        input_grad,
    )
}

/// The weight gradient of `conv2d(x, w, p)` (stride 1) for the output gradient `grad`.
///
/// # Shapes
/// `x: [b, c_in, h, w]`, `grad: [b, c_out, oh, ow]` -> `[c_out, c_in, kh, kw]`.
pub(crate) fn conv_weight_grad(
    x: &Tensor,
    grad: &Tensor,
    p: ConvParams,
    kernel_hw: (usize, usize),
) -> candle_core::Result<Tensor> {
    let (_, c_out, oh, ow) = grad.dims4()?;
    let (kh, kw) = kernel_hw;
    let g = Geometry::new(x.dims4()?, (c_out, kh, kw), p, (oh, ow));
    let shape = (c_out, g.c_in, kh, kw);
    on_slices(
        "conv2d weight gradient",
        (x, "input"),
        (grad, "gradient"),
        &g,
        shape,
        weight_grad,
        weight_grad,
    )
}
