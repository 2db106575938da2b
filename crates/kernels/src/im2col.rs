//! im2col and its adjoint col2im on the CPU, as Candle custom ops, and the three products of a
//! convolution built on them (forward, input gradient, weight gradient), each one large gemm.
//!
//! Candle's CPU `conv2d` spends most of its time in an element-by-element im2col loop inside
//! each 512-pixel tile (measured: about 2/3 of a ResNet 3x3 layer), not in its gemm. Here the
//! columns are gathered row by row (a `memcpy` per output row at stride 1) into one
//! `[c_in*kh*kw, b*oh*ow]` matrix (per chunk of images, see [`COLUMN_BUDGET`]) and each product
//! is one gemm:
//! - forward: `y = W [c_out, K] x cols(x) [K, b*oh*ow]`, written by gemm straight into NCHW on
//!   large planes (one product per image) or into `[c_out, b*oh*ow]` (see [`conv`]);
//! - input gradient: `gx = col2im(W^T [K, c_out] x gy [c_out, b*oh*ow])` (PyTorch's CPU method:
//!   one gemm and a scatter-add, for every stride, with no zero products);
//! - weight gradient: `gw = gy [c_out, b*oh*ow] x cols(x)^T [b*oh*ow, K]`.
//!
//! The window is general (any stride, dilation and a signed origin per axis with zeros outside
//! the input).

use std::borrow::Cow;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, WithDType};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::cpu::{
    Real, View, by_dtype, fill_chunks_zeroed, gemm_view, gemm_view_cols, par_chunks_from,
    par_chunks_zeroed, sum_in_order, train_kernels_supported, transpose, with_cpu_slices,
};
use crate::params::ConvParams;

/// Which input position each output reads: output `(oy, ox)` through tap `(th, tw)` reads input
/// `(origin.0 + oy*stride + th*dilation, origin.1 + ox*stride + tw*dilation)`, zero outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub stride: usize,
    pub dilation: usize,
    /// Input position of output 0, tap 0, per axis; negative inside the leading zero padding.
    pub origin: (isize, isize),
    /// Output size.
    pub out: (usize, usize),
}

impl Window {
    /// The window of a convolution with `p` (zero padding `p.padding` on every side) and output
    /// size `out`.
    pub(crate) fn of_conv(p: ConvParams, out: (usize, usize)) -> Window {
        let origin = -(p.padding as isize);
        Window { stride: p.stride, dilation: p.dilation, origin: (origin, origin), out }
    }
}

/// The custom op: `[b, c, h, w]` (any strides) -> `[c*kh*kw, b*oh*ow]` (contiguous).
struct Im2Col {
    kernel: (usize, usize),
    win: Window,
}

/// How a batch's column matrices are split into chunks of images, one gemm per chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// Upper bound on the elements of one column matrix (but at least one image, and see
    /// `min_columns`).
    pub(crate) elements: usize,
    /// Columns (output pixels) each gemm gets at least, when the batch has them: each chunk
    /// packs the weight again, so a chunk of few columns spends its time on that.
    pub(crate) min_columns: usize,
}

/// The chunking every convolution uses. 2M elements (8 MiB of f32) keeps a buffer of large planes
/// below glibc's largest mmap threshold (32 MiB), so it is reused from the heap instead of
/// arriving as fresh zero pages each call (page-fault handling showed up at 5-10% of profiles with
/// whole-batch buffers), and closer to the caches. Small planes take whole images up to 768
/// columns even past it: the AU decoder's first transposed convolution (2048 -> 1024 channels
/// from 7 x 7, its columns 16384 x 49 per image) took 240 ms for a batch of 4 in chunks of two
/// images and 151 ms in one chunk, the second (14 x 14) 136 -> 99 ms in one chunk of four (one
/// thread, Intel Xeon; docs/PERFORMANCE.md).
pub(crate) const COLUMN_BUDGET: Budget = Budget { elements: 1 << 21, min_columns: 768 };

impl Budget {
    /// Images per chunk for column matrices of `rows` x `plane` elements per image.
    fn chunk(self, b: usize, rows: usize, plane: usize) -> usize {
        let by_size = self.elements / (rows * plane).max(1);
        let for_columns = self.min_columns.div_ceil(plane.max(1));
        by_size.max(for_columns).clamp(1, b.max(1))
    }
}

/// The columns of `x` for the kernel size `kernel` and window `win`.
///
/// # Shapes
/// `x: [b, c, h, w]` -> `[c*kh*kw, b*oh*ow]`, rows ordered (c, th, tw), columns (b, oy, ox).
pub(crate) fn im2col(
    x: &Tensor,
    kernel: (usize, usize),
    win: Window,
) -> candle_core::Result<Tensor> {
    x.apply_op1_no_bwd(&Im2Col { kernel, win })
}

/// Convolution of `x` with `w` over the window `win`, as im2col + gemm per chunk of images,
/// contiguous NCHW (on CPU f32 / f64; other tensors get [`conv_channel_major`]'s transposed
/// copy). Planes of at least [`NCHW_MIN_PLANE`] outputs take one product per image, written
/// straight into its place in the result; smaller ones one product per chunk and a parallel
/// copy from `[c_out, b, ...]` (Candle's `transpose` + `contiguous` of a 25 MB stem output was a
/// one-thread strided copy, after a `cat` of the chunks).
///
/// # Shapes
/// `x: [b, c_in, h, w]`, `w: [c_out, c_in, kh, kw]` -> `[b, c_out, oh, ow]`.
pub(crate) fn conv(
    x: &Tensor,
    w: &Tensor,
    win: Window,
    budget: Budget,
) -> candle_core::Result<Tensor> {
    if !(train_kernels_supported(x) && train_kernels_supported(w)) {
        return conv_channel_major(x, w, win, budget)?.transpose(0, 1)?.contiguous();
    }
    let (b, c_out, (oh, ow)) = (x.dim(0)?, w.dim(0)?, win.out);
    let plane = oh * ow;
    let y = if plane >= NCHW_MIN_PLANE {
        products_tensor(x, w, win, budget, true)?
    } else {
        let cm = conv_channel_major(x, w, win, budget)?; // [c_out, b, oh, ow]
        fn swap<T: Real>(cm: &Tensor, dims: (usize, usize, usize)) -> candle_core::Result<Vec<T>> {
            with_cpu_slices::<T, _, 1>("conv2d", [(cm, "product")], |[src]| swap_outer(src, dims))
        }
        let dims = (c_out, b, plane);
        by_dtype(
            x.dtype(),
            "conv2d",
            || Tensor::from_vec(swap::<f32>(&cm, dims)?, (b, c_out, oh, ow), x.device()),
            || Tensor::from_vec(swap::<f64>(&cm, dims)?, (b, c_out, oh, ow), x.device()),
        )?
    };
    Ok(y)
}

/// `[d0, d1, plane]` -> `[d1, d0, plane]`, one parallel copy of whole planes.
fn swap_outer<T: Real>(src: &[T], (d0, d1, plane): (usize, usize, usize)) -> Vec<T> {
    par_chunks_from(d0 * d1 * plane, plane, |idx| {
        let (j, i) = (idx / d0, idx % d0);
        src[(i * d1 + j) * plane..][..plane].iter().copied()
    })
}

/// Images `start..start + n` of the contiguous NCHW gradient `gy` (`c` channels of `plane`
/// values) with one row per channel, `[c, n * plane]`: `gy` itself for one image, else a
/// parallel copy.
fn gradient_rows<T: Real>(
    gy: &[T],
    start: usize,
    n: usize,
    c: usize,
    plane: usize,
) -> Cow<'_, [T]> {
    let images = &gy[start * c * plane..(start + n) * c * plane];
    if n == 1 { Cow::Borrowed(images) } else { Cow::Owned(swap_outer(images, (n, c, plane))) }
}

/// Output planes from this size on are computed image by image into NCHW by [`conv`]: each
/// product still has enough columns for gemm, and the weights it packs again per image are at
/// most `1 / NCHW_MIN_PLANE` of its work.
const NCHW_MIN_PLANE: usize = 256;

/// [`products`] as a tensor: `[b, c_out, oh, ow]` when `nchw`, else `[c_out, b, oh, ow]`.
fn products_tensor(
    x: &Tensor,
    w: &Tensor,
    win: Window,
    budget: Budget,
    nchw: bool,
) -> candle_core::Result<Tensor> {
    let (b, c_out, (oh, ow)) = (x.dim(0)?, w.dim(0)?, win.out);
    let shape = if nchw { (b, c_out, oh, ow) } else { (c_out, b, oh, ow) };
    by_dtype(
        x.dtype(),
        "conv2d",
        || Tensor::from_vec(products::<f32>(x, w, win, budget, nchw)?, shape, x.device()),
        || Tensor::from_vec(products::<f64>(x, w, win, budget, nchw)?, shape, x.device()),
    )
}

/// The products of [`conv`] / [`conv_channel_major`] on CPU f32 / f64 tensors (see
/// [`products_on`]).
fn products<T: Real>(
    x: &Tensor,
    w: &Tensor,
    win: Window,
    budget: Budget,
    nchw: bool,
) -> candle_core::Result<Vec<T>> {
    let w = w.contiguous()?;
    let w_dims = w.dims4()?;
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*storage else {
        candle_core::bail!("conv2d: the input is not a CPU tensor")
    };
    let Ok(x) = storage.as_slice::<T>() else {
        candle_core::bail!("conv2d: the input is {:?}, not {:?}", storage.dtype(), T::DTYPE)
    };
    with_cpu_slices::<T, _, 1>("conv2d", [(&w, "weight")], |[w]| {
        products_on(x, layout, w, w_dims, win, budget, nchw)
    })?
}

/// The products of a convolution of `x` (elements of a CPU storage, laid out as `x_layout`
/// says) with the contiguous weights `w` (`w_dims`): into NCHW (one gemm per image) when
/// `nchw`, else `[c_out, b * oh * ow]` (one gemm per chunk of images, written at its columns: no
/// concatenation). Each element is written once, by gemm.
fn products_on<T: Real>(
    x: &[T],
    x_layout: &Layout,
    w: &[T],
    (c_out, _, kh, kw): (usize, usize, usize, usize),
    win: Window,
    budget: Budget,
    nchw: bool,
) -> candle_core::Result<Vec<T>> {
    let (b, c_in, _, _) = x_layout.shape().dims4()?;
    let plane = win.out.0 * win.out.1;
    let k = c_in * kh * kw;
    let len = c_out * b * plane;
    let mut out: Vec<T> = Vec::with_capacity(len);
    if k == 0 {
        // An empty sum: gemm would write nothing.
        out.resize(len, T::zero());
        return Ok(out);
    }
    if w.len() != c_out * k {
        candle_core::bail!("conv2d: {} weights for [{c_out}, {c_in}, {kh}, {kw}]", w.len())
    }
    let dst = out.spare_capacity_mut()[..len].as_mut_ptr().cast::<T>();
    let chunk = budget.chunk(b, k, plane);
    let lhs = View { ptr: w.as_ptr(), rs: k, cs: 1 };
    for start in (0..b).step_by(chunk) {
        let n = chunk.min(b - start);
        let images = x_layout.narrow(0, start, n)?;
        let cols = Im2Col { kernel: (kh, kw), win }.run(x, &images)?; // [k, n * plane]
        // SAFETY (both branches): `dst` has `len` elements of capacity and each product writes
        // (without reading) its own `c_out x columns` block of them: image `start + i`'s
        // `[c_out, plane]` in NCHW, or columns `start * plane..` of every row of `[c_out, b *
        // plane]`; the factors lie inside `w` ([c_out, k], checked above) and `cols` ([k, n *
        // plane]).
        if nchw {
            for i in 0..n {
                let y =
                    View { ptr: unsafe { dst.add((start + i) * c_out * plane) }, rs: plane, cs: 1 };
                let rhs =
                    View { ptr: unsafe { cols.as_ptr().add(i * plane) }, rs: n * plane, cs: 1 };
                unsafe { gemm_view_cols((c_out, plane, k), y, false, lhs, rhs) };
            }
        } else {
            let y = View { ptr: unsafe { dst.add(start * plane) }, rs: b * plane, cs: 1 };
            let rhs = View { ptr: cols.as_ptr(), rs: n * plane, cs: 1 };
            unsafe { gemm_view_cols((c_out, n * plane, k), y, false, lhs, rhs) };
        }
    }
    // SAFETY: the chunks' products above wrote all `len` elements.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// [`conv`] with [`COLUMN_BUDGET`] as a plan run on the operands' slices (see
/// `grad::SlicePlan`): the convolution op computes it inside its forward, into the storage it
/// returns, instead of copying a result computed beforehand (a one-thread copy of 25 MB for
/// ResNet's stem at batch 8).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    x: [usize; 4],
    w: [usize; 4],
    win: Window,
}

impl Plan {
    /// The plan of `conv(x, w, win, COLUMN_BUDGET)`.
    pub(crate) fn new(x: &Tensor, w: &Tensor, win: Window) -> candle_core::Result<Self> {
        let (b, c, h, wd) = x.dims4()?;
        let (c_out, c_in, kh, kw) = w.dims4()?;
        Ok(Self { x: [b, c, h, wd], w: [c_out, c_in, kh, kw], win })
    }

    /// The output's, the input's and the weight's dimensions.
    pub(crate) fn dims(&self) -> [[usize; 4]; 3] {
        let (oh, ow) = self.win.out;
        [[self.x[0], self.w[0], oh, ow], self.x, self.w]
    }

    /// The convolution of contiguous `x` and `w` as the plan's shapes say: `[b, c_out, oh, ow]`.
    pub(crate) fn run<T: Real>(&self, x: &[T], w: &[T]) -> candle_core::Result<Vec<T>> {
        let [b, c, h, wd] = self.x;
        let [c_out, c_in, kh, kw] = self.w;
        let layout = Layout::contiguous((b, c, h, wd));
        if x.len() != layout.shape().elem_count() {
            candle_core::bail!("conv2d: {} inputs for [{b}, {c}, {h}, {wd}]", x.len())
        }
        let plane = self.win.out.0 * self.win.out.1;
        let nchw = plane >= NCHW_MIN_PLANE;
        let y = products_on(x, &layout, w, (c_out, c_in, kh, kw), self.win, COLUMN_BUDGET, nchw)?;
        Ok(if nchw { y } else { swap_outer(&y, (c_out, b, plane)) })
    }
}

/// [`conv`]'s gemm result as it is stored: contiguous, channel-major.
///
/// # Shapes
/// `x: [b, c_in, h, w]`, `w: [c_out, c_in, kh, kw]` -> `[c_out, b, oh, ow]`.
pub(crate) fn conv_channel_major(
    x: &Tensor,
    w: &Tensor,
    win: Window,
    budget: Budget,
) -> candle_core::Result<Tensor> {
    let (b, c_in, _, _) = x.dims4()?;
    let (c_out, _, kh, kw) = w.dims4()?;
    let (oh, ow) = win.out;
    if train_kernels_supported(x) && train_kernels_supported(w) {
        return products_tensor(x, w, win, budget, false);
    }
    let k = c_in * kh * kw;
    let w2 = w.reshape((c_out, k))?; // [c_out, c_in*kh*kw]
    let chunk = budget.chunk(b, k, oh * ow);
    let mut parts = Vec::with_capacity(b.div_ceil(chunk));
    for start in (0..b).step_by(chunk) {
        let n = chunk.min(b - start);
        let cols = im2col(&x.narrow(0, start, n)?, (kh, kw), win)?; // [k, n*oh*ow]
        parts.push(w2.matmul(&cols)?); // [c_out, n*oh*ow]
    }
    let y = if parts.len() == 1 { parts.swap_remove(0) } else { Tensor::cat(&parts, 1)? };
    y.reshape((c_out, b, oh, ow))
}

/// Weight gradient `sum over (b, o) of grad[b, co, o] * x[b, ci, window(o, t)]` as one gemm per
/// chunk of images: `[c_out, b*oh*ow] x [b*oh*ow, c_in*kh*kw]`.
///
/// # Shapes
/// `x: [b, c_in, h, w]`, `grad: [b, c_out, oh, ow]` -> `[c_out, c_in, kh, kw]`.
pub(crate) fn weight_grad(
    x: &Tensor,
    grad: &Tensor,
    kernel: (usize, usize),
    win: Window,
    budget: Budget,
) -> candle_core::Result<Tensor> {
    let (b, c_in, _, _) = x.dims4()?;
    let (_, c_out, oh, ow) = grad.dims4()?;
    let (kh, kw) = kernel;
    let k = c_in * kh * kw;
    let chunk = budget.chunk(b, k, oh * ow);
    let transposed = weight_grad_transposed(c_out, k, chunk * oh * ow);
    if b == 0 || oh * ow == 0 {
        return Tensor::zeros((c_out, c_in, kh, kw), x.dtype(), x.device());
    }
    if train_kernels_supported(x) && train_kernels_supported(grad) {
        let grad = grad.contiguous()?;
        let gw = by_dtype(
            x.dtype(),
            "conv2d weight gradient",
            || {
                let v = weight_grad_products::<f32>(x, &grad, kernel, win, chunk, transposed)?;
                Tensor::from_vec(v, if transposed { (k, c_out) } else { (c_out, k) }, x.device())
            },
            || {
                let v = weight_grad_products::<f64>(x, &grad, kernel, win, chunk, transposed)?;
                Tensor::from_vec(v, if transposed { (k, c_out) } else { (c_out, k) }, x.device())
            },
        )?;
        let gw = if transposed { transpose(&gw)? } else { gw };
        return gw.reshape((c_out, c_in, kh, kw));
    }
    let mut acc: Option<Tensor> = None;
    for start in (0..b).step_by(chunk) {
        let n = chunk.min(b - start);
        let cols = im2col(&x.narrow(0, start, n)?, kernel, win)?; // [k, n*oh*ow]
        let rows = channel_rows(grad, start, n)?; // [c_out, n*oh*ow]
        let part = if transposed {
            cols.matmul(&rows.t()?)? // [k, c_out]
        } else {
            rows.matmul(&cols.t()?)? // [c_out, k]
        };
        acc = Some(match acc {
            Some(a) => (a + part)?,
            None => part,
        });
    }
    match acc {
        Some(gw) if transposed => transpose(&gw)?.reshape((c_out, c_in, kh, kw)),
        Some(gw) => gw.reshape((c_out, c_in, kh, kw)),
        None => Tensor::zeros((c_out, c_in, kh, kw), x.dtype(), x.device()),
    }
}

/// [`weight_grad`]'s products on CPU f32 / f64 tensors (`grad` contiguous, `b >= 1`): `[k,
/// c_out]` when `transposed`, else `[c_out, k]`. In general each chunk's product is added by gemm
/// into the one result (no per-chunk result, zero fill or separate sum), gemm splitting the
/// result between the threads. Where the result is small ([`PARTIAL_MAX`]) and there are several
/// chunks, the chunks' products are computed in parallel instead, each on one thread into a
/// result of its own, and then summed in chunk order (the same values at any thread count).
fn weight_grad_products<T: Real>(
    x: &Tensor,
    grad: &Tensor,
    kernel: (usize, usize),
    win: Window,
    chunk: usize,
    transposed: bool,
) -> candle_core::Result<Vec<T>> {
    let (b, c_in, _, _) = x.dims4()?;
    let (_, c_out, oh, ow) = grad.dims4()?;
    let k = c_in * kernel.0 * kernel.1;
    let plane = oh * ow;
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    with_cpu_slices::<T, _, 1>("conv2d weight gradient", [(grad, "gradient")], |[gy]| {
        // The product of chunk `start` into `dst` (`c_out * k` elements), added to it when
        // `accumulate`, else written.
        let product = |start: usize, dst: *mut T, accumulate: bool, parallelism: Parallelism| {
            let n = chunk.min(b - start);
            let pixels = n * plane;
            let cols = im2col(&x.narrow(0, start, n)?, kernel, win)?; // [k, n * plane]
            let rows = gradient_rows(gy, start, n, c_out, plane); // [c_out, n * plane]
            with_cpu_slices::<T, _, 1>("conv2d weight gradient", [(&cols, "columns")], |[cols]| {
                // The transposed factor of each order reads its matrix with swapped strides.
                let (shape, lhs, rhs, y) = if transposed {
                    let lhs = View { ptr: cols.as_ptr(), rs: pixels, cs: 1 };
                    let rhs = View { ptr: rows.as_ptr(), rs: 1, cs: pixels };
                    ((k, c_out, pixels), lhs, rhs, View { ptr: dst, rs: c_out, cs: 1 })
                } else {
                    let lhs = View { ptr: rows.as_ptr(), rs: pixels, cs: 1 };
                    let rhs = View { ptr: cols.as_ptr(), rs: 1, cs: pixels };
                    ((c_out, k, pixels), lhs, rhs, View { ptr: dst, rs: k, cs: 1 })
                };
                // SAFETY: `dst` has `c_out * k` elements, written (accumulate false) before any
                // is read; the factors' views lie inside `cols` ([k, pixels]) and `rows`
                // ([c_out, pixels]).
                unsafe { gemm_view(shape, y, accumulate, lhs, rhs, parallelism) };
            })
        };
        let starts: Vec<usize> = (0..b).step_by(chunk).collect();
        if starts.len() > 1 && c_out * k <= PARTIAL_MAX {
            let partials = starts
                .par_iter()
                .map(|&start| {
                    let mut part: Vec<T> = Vec::with_capacity(c_out * k);
                    product(start, part.as_mut_ptr(), false, Parallelism::None)?;
                    // SAFETY: the product wrote all `c_out * k` elements.
                    unsafe { part.set_len(c_out * k) };
                    Ok(part)
                })
                .collect::<candle_core::Result<Vec<Vec<T>>>>()?;
            return Ok(sum_in_order(partials));
        }
        let mut gw: Vec<T> = Vec::with_capacity(c_out * k);
        for &start in &starts {
            product(start, gw.as_mut_ptr(), start > 0, parallelism)?;
        }
        // SAFETY: the first chunk's product wrote all `c_out * k` elements (b >= 1).
        unsafe { gw.set_len(c_out * k) };
        Ok(gw)
    })?
}

/// Largest weight gradient (elements) whose chunks [`weight_grad_products`] multiplies in
/// parallel, each into a result of its own: gemm splits a result this small between threads
/// poorly (resnet18's first convolution, `[64, 147]` over 8 chunks of one image at batch 8:
/// 24 ms at one thread, 28 at two, Intel Xeon), and the per-chunk results stay small.
const PARTIAL_MAX: usize = 1 << 16;

/// Whether [`weight_grad`] computes `cols x gy^T` (then transposes the `[k, c_out]` result)
/// rather than `gy x cols^T`, for `pixels` columns per chunk. gemm packs its operands into
/// panels, a strided gather when the operand's rows are contiguous: in `gy x cols^T` that is the
/// whole column matrix (`k x pixels` values), in `cols x gy^T` only `gy` (`c_out x pixels`), plus
/// the copy back (`c_out x k`, read and written). The cheaper order by that count: the early
/// layers, with many pixels per weight, go transposed (resnet18 at 224 px, batch 8: the gathers
/// took 64 of a step's 1460 ms at one thread, on one thread at any count; 17 ms after).
fn weight_grad_transposed(c_out: usize, k: usize, pixels: usize) -> bool {
    c_out * pixels + 2 * c_out * k < k * pixels
}

/// Images `start..start + n` of `grad` with one row per channel.
///
/// # Shapes
/// `grad: [b, c, oh, ow]` -> `[c, n*oh*ow]` (contiguous).
fn channel_rows(grad: &Tensor, start: usize, n: usize) -> candle_core::Result<Tensor> {
    let (_, c, oh, ow) = grad.dims4()?;
    grad.narrow(0, start, n)?.transpose(0, 1)?.contiguous()?.reshape((c, n * oh * ow))
}

/// Input gradient as `col2im(W^T x gy)`, one gemm per chunk of images.
///
/// # Shapes
/// `grad: [b, c_out, oh, ow]`, `w: [c_out, c_in, kh, kw]` -> `[b, c_in, h, w]` with
/// `(h, w) = input_hw` (`win.out` must be `(oh, ow)`).
pub(crate) fn input_grad(
    grad: &Tensor,
    w: &Tensor,
    win: Window,
    input_hw: (usize, usize),
    budget: Budget,
) -> candle_core::Result<Tensor> {
    let (b, c_out, oh, ow) = grad.dims4()?;
    let (_, c_in, kh, kw) = w.dims4()?;
    let k = c_in * kh * kw;
    let chunk = budget.chunk(b, k, oh * ow);
    if train_kernels_supported(grad) && train_kernels_supported(w) {
        let (grad, w) = (grad.contiguous()?, w.contiguous()?);
        let shape = (b, c_in, input_hw.0, input_hw.1);
        return by_dtype(
            grad.dtype(),
            "conv2d input gradient",
            || {
                let v = input_grad_products::<f32>(&grad, &w, win, shape, chunk)?;
                Tensor::from_vec(v, shape, grad.device())
            },
            || {
                let v = input_grad_products::<f64>(&grad, &w, win, shape, chunk)?;
                Tensor::from_vec(v, shape, grad.device())
            },
        );
    }
    let wt = w.reshape((c_out, k))?.t()?; // [k, c_out]
    let mut parts = Vec::with_capacity(b.div_ceil(chunk));
    for start in (0..b).step_by(chunk) {
        let n = chunk.min(b - start);
        let cols = wt.matmul(&channel_rows(grad, start, n)?)?; // [k, n*oh*ow]
        let op = Col2Im { kernel: (kh, kw), win, image: (n, c_in, input_hw.0, input_hw.1) };
        parts.push(cols.apply_op1_no_bwd(&op)?); // [n, c_in, h, w]
    }
    if parts.len() == 1 { Ok(parts.swap_remove(0)) } else { Tensor::cat(&parts, 0) }
}

/// [`input_grad`] on contiguous CPU f32 / f64 tensors: per chunk, `W^T x gy` by gemm into one
/// column buffer (reused, never zero-filled) and col2im straight into the chunk's images of the
/// result. `[b, c_in, h, w]` with `(b, c_in, h, w) = image`.
fn input_grad_products<T: Real>(
    grad: &Tensor,
    w: &Tensor,
    win: Window,
    image: (usize, usize, usize, usize),
    chunk: usize,
) -> candle_core::Result<Vec<T>> {
    let (b, c_in, h, wd) = image;
    let (_, c_out, oh, ow) = grad.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    let (k, plane, img) = (c_in * kh * kw, oh * ow, c_in * h * wd);
    if c_out == 0 {
        // An empty sum: gemm would write nothing.
        return Ok(vec![T::zero(); b * img]);
    }
    let mut out: Vec<T> = Vec::with_capacity(b * img);
    let mut cols: Vec<T> = Vec::with_capacity(k * chunk.min(b) * plane);
    with_cpu_slices::<T, _, 2>(
        "conv2d input gradient",
        [(grad, "gradient"), (w, "weight")],
        |[gy, w]| {
            for start in (0..b).step_by(chunk) {
                let n = chunk.min(b - start);
                let pixels = n * plane;
                let rows = gradient_rows(gy, start, n, c_out, plane); // [c_out, n * plane]
                // W^T: element (t, co) of [k, c_out] is w[co, t].
                let lhs = View { ptr: w.as_ptr(), rs: 1, cs: k };
                let rhs = View { ptr: rows.as_ptr(), rs: pixels, cs: 1 };
                let dst = View {
                    ptr: cols.spare_capacity_mut().as_mut_ptr().cast::<T>(),
                    rs: pixels,
                    cs: 1,
                };
                // SAFETY: `cols` has capacity for `k x pixels` elements, all written (not read) by
                // the product; `w` is [c_out, k] and `rows` [c_out, pixels].
                unsafe { gemm_view_cols((k, pixels, c_out), dst, false, lhs, rhs) };
                // SAFETY: the product above wrote the first `k * pixels` elements.
                unsafe { cols.set_len(k * pixels) };
                let op = Col2Im { kernel: (kh, kw), win, image: (n, c_in, h, wd) };
                let part = &mut out.spare_capacity_mut()[..(start + n) * img][start * img..];
                fill_chunks_zeroed(part, h * wd, |idx, img: &mut [T]| op.plane(&cols, idx, img));
                cols.clear();
            }
        },
    )?;
    // SAFETY: the chunks' col2im above initialised all `b * img` elements.
    unsafe { out.set_len(b * img) };
    Ok(out)
}

/// The adjoint of [`Im2Col`]: `[c*kh*kw, b*oh*ow]` -> `[b, c, h, w]`, adding up every column
/// entry into the input position it was read from.
struct Col2Im {
    kernel: (usize, usize),
    win: Window,
    /// `(b, c, h, w)` of the result.
    image: (usize, usize, usize, usize),
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "aue-col2im"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = self.image;
        let (kh, kw) = self.kernel;
        let (oh, ow) = self.win.out;
        let expect = [c * kh * kw, b * oh * ow];
        if layout.dims() != expect {
            candle_core::bail!("aue-col2im: columns {:?}, expected {expect:?}", layout.shape())
        }
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("aue-col2im: columns must be contiguous")
        };
        let image = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(self.run(&v[start..end])),
            CpuStorage::F64(v) => CpuStorage::F64(self.run(&v[start..end])),
            CpuStorage::F16(v) => CpuStorage::F16(self.run(&v[start..end])),
            CpuStorage::BF16(v) => CpuStorage::BF16(self.run(&v[start..end])),
            other => candle_core::bail!("aue-col2im: unsupported dtype {:?}", other.dtype()),
        };
        Ok((image, Shape::from((b, c, h, w))))
    }
}

impl Col2Im {
    fn run<T: WithDType>(&self, cols: &[T]) -> Vec<T> {
        let (b, c, h, w) = self.image;
        // One input plane per (image, channel): its writers are the rows (channel, th, tw) of
        // the columns of that image, so the planes are independent.
        par_chunks_zeroed(b * c * h * w, h * w, |idx, img: &mut [T]| self.plane(cols, idx, img))
    }

    /// Input plane `idx` (image `idx / c`, channel `idx % c`) into `img` (zeros on entry).
    fn plane<T: WithDType>(&self, cols: &[T], idx: usize, img: &mut [T]) {
        let (b, c, h, w) = self.image;
        let (kh, kw) = self.kernel;
        let Window { stride: s, dilation: d, origin: (o_h, o_w), out: (oh, ow) } = self.win;
        let plane = oh * ow;
        {
            let (n, ch) = (idx / c, idx % c);
            for th in 0..kh {
                for tw in 0..kw {
                    let first_x = o_w + (tw * d) as isize;
                    let (x_lo, x_hi) = valid_range(first_x, s, w, ow);
                    if x_lo >= x_hi {
                        continue;
                    }
                    let ix0 = (first_x + (x_lo * s) as isize) as usize;
                    let row0 = ((ch * kh + th) * kw + tw) * b * plane + n * plane;
                    for oy in 0..oh {
                        let iy = o_h + (oy * s + th * d) as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let src = &cols[row0 + oy * ow + x_lo..row0 + oy * ow + x_hi];
                        let dst_row = &mut img[iy as usize * w + ix0..];
                        if s == 1 {
                            for (o, &v) in dst_row.iter_mut().zip(src) {
                                *o += v;
                            }
                        } else {
                            for (j, &v) in src.iter().enumerate() {
                                dst_row[j * s] += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "aue-im2col"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, _, _) = layout.shape().dims4()?;
        let (kh, kw) = self.kernel;
        let (oh, ow) = self.win.out;
        let shape = Shape::from((c * kh * kw, b * oh * ow));
        let cols = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(self.run(v, layout)?),
            CpuStorage::F64(v) => CpuStorage::F64(self.run(v, layout)?),
            CpuStorage::F16(v) => CpuStorage::F16(self.run(v, layout)?),
            CpuStorage::BF16(v) => CpuStorage::BF16(self.run(v, layout)?),
            other => candle_core::bail!("aue-im2col: unsupported dtype {:?}", other.dtype()),
        };
        Ok((cols, shape))
    }
}

impl Im2Col {
    fn run<T: WithDType>(&self, src: &[T], layout: &Layout) -> candle_core::Result<Vec<T>> {
        let (b, c, h, w) = layout.shape().dims4()?;
        let &[sb, sc, sh, sw] = layout.stride() else {
            candle_core::bail!("aue-im2col: rank-4 input expected, got {:?}", layout.shape())
        };
        let offset = layout.start_offset();
        let (kh, kw) = self.kernel;
        let Window { stride: s, dilation: d, origin: (o_h, o_w), out: (oh, ow) } = self.win;
        let plane = oh * ow;
        // One output plane (oh*ow values) per (channel, th, tw, image), in that order; what no
        // input position reaches (the padding) stays zero.
        let dst = par_chunks_zeroed(c * kh * kw * b * plane, plane, |idx, out: &mut [T]| {
            let n = idx % b;
            let tap = idx / b;
            let (ch, th, tw) = (tap / (kh * kw), (tap / kw) % kh, tap % kw);
            let base = offset + n * sb + ch * sc;
            // Output columns whose input column is inside [0, w).
            let first_x = o_w + (tw * d) as isize;
            let (x_lo, x_hi) = valid_range(first_x, s, w, ow);
            if x_lo >= x_hi {
                return;
            }
            let ix0 = (first_x + (x_lo * s) as isize) as usize;
            let step = s * sw;
            for oy in 0..oh {
                let iy = o_h + (oy * s + th * d) as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let row = base + iy as usize * sh + ix0 * sw;
                let out_row = &mut out[oy * ow + x_lo..oy * ow + x_hi];
                if step == 1 {
                    out_row.copy_from_slice(&src[row..row + out_row.len()]);
                } else if step == 2 {
                    // Pairs without bounds checks, so that the loop vectorises (stride-2 stems
                    // and downsampling convolutions).
                    let n = out_row.len();
                    let pairs = src[row..row + 2 * n - 1].chunks(2);
                    for (o, pair) in out_row.iter_mut().zip(pairs) {
                        *o = pair[0];
                    }
                } else {
                    for (o, &v) in out_row.iter_mut().zip(src[row..].iter().step_by(step)) {
                        *o = v;
                    }
                }
            }
        });
        Ok(dst)
    }
}

/// The outputs `o` in `[0, m)` with `first + o*s` inside `[0, n)`, as `[lo, hi)`.
fn valid_range(first: isize, s: usize, n: usize, m: usize) -> (usize, usize) {
    let s = s as isize;
    let lo = if first >= 0 { 0 } else { ((-first + s - 1) / s) as usize };
    let last = n as isize - 1 - first; // o*s <= last
    let hi = if last < 0 { 0 } else { (last / s + 1) as usize };
    (lo.min(m), hi.min(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn col2im_is_the_adjoint_of_im2col() -> candle_core::Result<()> {
        // <im2col(x), c> == <x, col2im(c)> for any x and c, strides 1 to 3, odd sizes.
        let dev = Device::Cpu;
        for (s, d, origin) in [(1, 1, (-1, -2)), (2, 1, (-3, 0)), (3, 2, (1, -1))] {
            let x = Tensor::randn(0f64, 1., (2, 3, 7, 9), &dev)?;
            let win = Window { stride: s, dilation: d, origin, out: (3, 4) };
            let cols = im2col(&x, (2, 3), win)?; // [18, 24]
            let c = Tensor::randn(0f64, 1., cols.shape(), &dev)?;
            let op = Col2Im { kernel: (2, 3), win, image: (2, 3, 7, 9) };
            let back = c.apply_op1_no_bwd(&op)?;
            let lhs = (cols * &c)?.sum_all()?.to_scalar::<f64>()?;
            let rhs = (x * back)?.sum_all()?.to_scalar::<f64>()?;
            assert!((lhs - rhs).abs() < 1e-9 * lhs.abs().max(1.0), "{s} {d}: {lhs} vs {rhs}");
        }
        Ok(())
    }

    /// Both orders of the weight-gradient product equal its definition `gy x cols^T`.
    #[test]
    fn weight_grad_in_either_order_equals_the_product() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        // Many pixels per weight (transposed order), then few (direct order).
        for (c_in, c_out, side) in [(2, 3, 12), (16, 4, 2)] {
            let x = Tensor::randn(0f64, 1., (2, c_in, side, side), &dev)?;
            let g = Tensor::randn(0f64, 1., (2, c_out, side, side), &dev)?;
            let win = Window { stride: 1, dilation: 1, origin: (-1, -1), out: (side, side) };
            let k = c_in * 9;
            let pixels = 2 * side * side;
            assert_eq!(weight_grad_transposed(c_out, k, pixels), side == 12);
            let want = channel_rows(&g, 0, 2)?.matmul(&im2col(&x, (3, 3), win)?.t()?)?;
            let got = weight_grad(&x, &g, (3, 3), win, COLUMN_BUDGET)?.reshape((c_out, k))?;
            let err = (got - want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
            assert!(err < 1e-12, "{c_in} -> {c_out}, side {side}: {err}");
        }
        Ok(())
    }

    #[test]
    fn chunks_have_enough_columns_within_the_budget() {
        let b = COLUMN_BUDGET;
        // ResNet-101's AU decoder at batch 4: 16384 x 49 and 8192 x 196 columns per image go in
        // one chunk (past the size bound), 4096 x 784 one image at a time (it has the columns).
        assert_eq!(b.chunk(4, 16384, 49), 4);
        assert_eq!(b.chunk(4, 8192, 196), 4);
        assert_eq!(b.chunk(4, 4096, 784), 1);
        // Enough columns, small matrices: as many images as the size bound allows.
        assert_eq!(b.chunk(64, 147, 784), 18);
        assert_eq!(b.chunk(8, 2304, 49), 8);
        // At least one image, at most the batch.
        assert_eq!(b.chunk(3, 1 << 22, 1 << 10), 1);
        assert_eq!(b.chunk(0, 9, 1), 1);
        assert_eq!(Budget { elements: 100, min_columns: 0 }.chunk(5, 10, 5), 2);
    }

    #[test]
    fn chunked_products_equal_whole_batch_ones() -> candle_core::Result<()> {
        // A budget of one image's columns (and no minimum) forces one chunk per image.
        let dev = Device::Cpu;
        let x = Tensor::randn(0f64, 1., (3, 4, 9, 7), &dev)?;
        let w = Tensor::randn(0f64, 1., (5, 4, 3, 3), &dev)?;
        let win = Window { stride: 2, dilation: 1, origin: (-1, -1), out: (5, 4) };
        let g = Tensor::randn(0f64, 1., (3, 5, 5, 4), &dev)?;
        let one_image = Budget { elements: 4 * 9 * 5 * 4, min_columns: 0 };
        let max_err = |a: &Tensor, b: &Tensor| -> candle_core::Result<f64> {
            (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
        };
        let pairs = [
            (conv(&x, &w, win, COLUMN_BUDGET)?, conv(&x, &w, win, one_image)?),
            (
                input_grad(&g, &w, win, (9, 7), COLUMN_BUDGET)?,
                input_grad(&g, &w, win, (9, 7), one_image)?,
            ),
            (
                weight_grad(&x, &g, (3, 3), win, COLUMN_BUDGET)?,
                weight_grad(&x, &g, (3, 3), win, one_image)?,
            ),
        ];
        for (whole, chunked) in pairs {
            assert_eq!(whole.dims(), chunked.dims());
            assert!(max_err(&whole, &chunked)? < 1e-12);
        }
        Ok(())
    }

    /// Chunked weight gradients, on both paths (chunks multiplied in parallel into results of
    /// their own for a small gradient, added into one result by gemm for a large one), are the
    /// same bits at 1 and 3 threads and equal the whole batch's to rounding.
    #[test]
    fn chunked_weight_grads_are_the_same_at_any_thread_count() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for (c_in, c_out) in [(4, 5), (128, 64)] {
            assert_eq!(c_out * c_in * 9 <= PARTIAL_MAX, c_in == 4);
            let x = Tensor::randn(0f64, 1., (3, c_in, 5, 4), &dev)?;
            let g = Tensor::randn(0f64, 1., (3, c_out, 5, 4), &dev)?;
            let win = Window { stride: 1, dilation: 1, origin: (-1, -1), out: (5, 4) };
            let one_image = Budget { elements: c_in * 9 * 5 * 4, min_columns: 0 };
            let on = |threads: usize| -> candle_core::Result<Vec<f64>> {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
                let pool = pool.map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                pool.install(|| weight_grad(&x, &g, (3, 3), win, one_image))?
                    .flatten_all()?
                    .to_vec1::<f64>()
            };
            let (one, three) = (on(1)?, on(3)?);
            let bits = |v: &[f64]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&one), bits(&three), "{c_in} -> {c_out}");
            let whole = weight_grad(&x, &g, (3, 3), win, COLUMN_BUDGET)?.flatten_all()?;
            let scale = whole.abs()?.max(0)?.to_scalar::<f64>()?;
            let err = (whole - Tensor::new(one.as_slice(), &dev)?)?.abs()?.max(0)?;
            assert!(err.to_scalar::<f64>()? < 1e-12 * scale, "{c_in} -> {c_out}");
        }
        Ok(())
    }

    #[test]
    fn valid_ranges() {
        // first = -3, stride 2, n = 7: o*2 - 3 in [0, 7) -> o in [2, 5).
        assert_eq!(valid_range(-3, 2, 7, 10), (2, 5));
        assert_eq!(valid_range(0, 1, 7, 5), (0, 5));
        assert_eq!(valid_range(9, 1, 7, 5), (0, 0));
        assert_eq!(valid_range(-20, 1, 7, 5), (5, 5));
    }

    #[test]
    fn columns_of_a_small_image() -> candle_core::Result<()> {
        // x = [[0, 1, 2], [3, 4, 5]] (1 image, 1 channel), 2x2 kernel, padding 1, stride 2:
        // output 2x2; tap (0, 0) reads (-1 + 2oy, -1 + 2ox).
        let x = Tensor::arange(0f32, 6., &Device::Cpu)?.reshape((1, 1, 2, 3))?;
        let win = Window { stride: 2, dilation: 1, origin: (-1, -1), out: (2, 2) };
        let cols = im2col(&x, (2, 2), win)?;
        let expect = [
            [0., 0., 0., 4.], // tap (0, 0): (-1,-1) (-1,1) (1,-1) (1,1)
            [0., 0., 3., 5.], // tap (0, 1): (-1,0) (-1,2) (1,0) (1,2)
            [0., 1., 0., 0.], // tap (1, 0): (0,-1) (0,1) (2,-1) (2,1)
            [0., 2., 0., 0.], // tap (1, 1): (0,0) (0,2) (2,0) (2,2)
        ];
        assert_eq!(cols.to_vec2::<f32>()?, expect.map(|r| r.to_vec()).to_vec());
        Ok(())
    }
}
