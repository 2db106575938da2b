//! What the CPU training kernels share: the float types they run on and the contiguous slice of a
//! CPU storage.

use std::mem::MaybeUninit;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Storage, Tensor, WithDType};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::skinny;

/// Elements per rayon task, at least (short runs are grouped).
pub(crate) const MIN_TASK: usize = 4096;

/// The float types the training kernels run on: f32 (training) and f64 (parity runs). The
/// operations are Candle's own CPU ones, so that results equal its ops bit for bit.
pub(crate) trait Real: WithDType {
    /// Padding that never wins a max.
    const NEG_INFINITY: Self;

    /// Candle's `relu` (`UnaryOp::Relu`): `max(x, 0)`.
    fn relu(self) -> Self;

    /// `max(self, other)` (`f32::max`: a NaN loses).
    fn maximum(self, other: Self) -> Self;

    /// `self^e` (the float type's `powf`, as Candle's `powf`).
    fn powf(self, e: Self) -> Self;

    /// Candle's ReLU gradient factor: 1 where `x >= 0` (0 included), else 0.
    #[inline]
    fn relu_mask(self) -> Self {
        if self >= Self::zero() { Self::one() } else { Self::zero() }
    }

    /// The gradient Candle's ReLU backward stores: `0 + g * mask(x)` (so a `-0` comes out `+0`).
    #[inline]
    fn relu_grad(self, g: Self) -> Self {
        Self::zero() + g * self.relu_mask()
    }
}

/// `Real` for a primitive float, whose inherent `max` is Candle's ReLU and max.
macro_rules! real_float {
    ($t:ident) => {
        impl Real for $t {
            const NEG_INFINITY: Self = $t::NEG_INFINITY;

            #[inline]
            fn relu(self) -> Self {
                self.max(0.0)
            }

            #[inline]
            fn maximum(self, other: Self) -> Self {
                $t::max(self, other)
            }

            #[inline]
            fn powf(self, e: Self) -> Self {
                $t::powf(self, e)
            }
        }
    };
}

real_float!(f32);
real_float!(f64);

/// `f(a[i], b[i])` for every `i`, in parallel.
pub(crate) fn par_zip<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    a.par_iter().zip(b).with_min_len(MIN_TASK).map(|(&a, &b)| f(a, b)).collect()
}

/// Whether the training kernels run on `x`: a CPU f32 or f64 tensor. (Other devices keep
/// Candle's ops, which run in parallel there.)
pub fn train_kernels_supported(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// The contiguous elements of a CPU tensor of element type `T` (an error names `op` and `what`
/// when its dtype or layout is another).
pub(crate) fn slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    let Ok(all) = s.as_slice::<T>() else {
        candle_core::bail!("{op}: the {what} is {:?}, not {:?}", s.dtype(), T::DTYPE)
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&all[a..b]),
        None => candle_core::bail!("{op}: the {what} is not contiguous"),
    }
}

/// `f` on the contiguous CPU elements of `N` tensors (each named for errors), e.g. a backward
/// pass's inputs and gradient.
pub(crate) fn with_cpu_slices<T: WithDType, R, const N: usize>(
    op: &str,
    ts: [(&Tensor, &str); N],
    f: impl FnOnce([&[T]; N]) -> R,
) -> candle_core::Result<R> {
    let guards = ts.map(|(t, what)| (t.storage_and_layout(), what));
    let mut slices = Vec::with_capacity(N);
    for ((storage, layout), what) in &guards {
        let Storage::Cpu(s) = &**storage else {
            candle_core::bail!("{op}: the {what} is not a CPU tensor")
        };
        slices.push(slice(s, layout, op, what)?);
    }
    match <[&[T]; N]>::try_from(slices) {
        Ok(all) => Ok(f(all)),
        Err(_) => candle_core::bail!("{op}: {N} tensors expected"),
    }
}

/// `f32()` or `f64()` as `dtype` says (the only float types the kernels take).
pub(crate) fn by_dtype<R>(
    dtype: DType,
    op: &str,
    f32: impl FnOnce() -> candle_core::Result<R>,
    f64: impl FnOnce() -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    match dtype {
        DType::F32 => f32(),
        DType::F64 => f64(),
        other => candle_core::bail!("{op}: {other:?} input (f32 or f64 only)"),
    }
}

/// A vector of `n` elements built in parallel: chunk `i` (`chunk` elements, the last one
/// shorter) is zeroed and handed to `f(i, chunk)`, rayon tasks of at least [`MIN_TASK`]
/// elements. Zeroing each chunk just before `f` writes it keeps it in the cache: one pass over
/// memory, where `vec![0; n]` (a serial `memset` of memory the allocator reuses) and then `f`
/// would be two, the first on one thread.
pub(crate) fn par_chunks_zeroed<T: WithDType>(
    n: usize,
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    if n == 0 {
        return v;
    }
    fill_chunks_zeroed(&mut v.spare_capacity_mut()[..n], chunk, f);
    // SAFETY: the chunks cover the first `n` elements (the capacity is `n`), all initialised
    // by `fill_chunks_zeroed`; a panic in `f` propagates before this line and drops `v` with
    // length 0.
    unsafe { v.set_len(n) };
    v
}

/// A vector of `n` elements built in parallel from values: chunk `i` (`chunk` elements, the
/// last one shorter) takes the values of `f(i)` in order, rayon tasks of at least [`MIN_TASK`]
/// elements. Unlike [`par_chunks_zeroed`] nothing is written twice: for element-wise results
/// (a normalisation, a copy) the zeros were a second store pass. Should `f(i)` end early, the
/// rest of its chunk is zero.
pub(crate) fn par_chunks_from<T: WithDType, I: Iterator<Item = T>>(
    n: usize,
    chunk: usize,
    f: impl Fn(usize) -> I + Sync,
) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    if n == 0 {
        return v;
    }
    let chunk = chunk.max(1);
    let per_task = MIN_TASK.div_ceil(chunk).max(1);
    v.spare_capacity_mut()[..n].par_chunks_mut(chunk).with_min_len(per_task).enumerate().for_each(
        |(i, part)| {
            let mut filled = 0;
            for (slot, value) in part.iter_mut().zip(f(i)) {
                slot.write(value);
                filled += 1;
            }
            for slot in &mut part[filled..] {
                slot.write(T::zero());
            }
        },
    );
    // SAFETY: the chunks cover the first `n` elements (the capacity is `n`), every one written
    // just above; a panic in `f` propagates before this line and drops `v` with length 0.
    unsafe { v.set_len(n) };
    v
}

/// [`par_chunks_zeroed`] on part of a vector's spare capacity: every element of `dst` is
/// initialised (zeroed, then handed to `f(i, chunk)`) when it returns.
pub(crate) fn fill_chunks_zeroed<T: WithDType>(
    dst: &mut [MaybeUninit<T>],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunk = chunk.max(1);
    let per_task = MIN_TASK.div_ceil(chunk).max(1);
    dst.par_chunks_mut(chunk).with_min_len(per_task).enumerate().for_each(|(i, part)| {
        for e in part.iter_mut() {
            e.write(T::zero());
        }
        // SAFETY: every element of `part` was initialised just above, and `MaybeUninit<T>` has
        // the layout of `T`.
        let part = unsafe { &mut *(part as *mut [MaybeUninit<T>] as *mut [T]) };
        f(i, part);
    });
}

/// A matrix view for [`gemm_view`]: its first element and its (row, column) strides.
#[derive(Clone, Copy)]
pub(crate) struct View<P> {
    pub ptr: P,
    pub rs: usize,
    pub cs: usize,
}

/// `dst = lhs x rhs` (`m x k` times `k x n`), or `dst += lhs x rhs` when `accumulate`: gemm, or
/// for up to 16 columns with both factors contiguous along `k` (f32, AVX-512) `skinny.rs`'s
/// kernel, which sums in another order.
///
/// # Safety
/// Every element the three views reach (`m x n`, `m x k`, `k x n` with their strides) must lie
/// in live allocations, `dst`'s elements must be distinct, writable and not aliased by the
/// operands, and initialised when `accumulate`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_view<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: View<*mut T>,
    accumulate: bool,
    lhs: View<*const T>,
    rhs: View<*const T>,
    parallelism: Parallelism,
) {
    if dst.cs == 1 && takes_skinny::<T>(lhs.cs, rhs.rs, n) {
        let (a, b, y) = (lhs.ptr.cast::<f32>(), rhs.ptr.cast::<f32>(), dst.ptr.cast::<f32>());
        // SAFETY: T is f32 and `takes(n)` holds; the views are the caller's.
        unsafe {
            skinny::dot_rows_f32((m, n, k), (a, lhs.rs), (b, rhs.cs), (y, dst.rs), accumulate)
        };
        return;
    }
    // SAFETY: as the caller promises. gemm computes `alpha * dst + beta * lhs x rhs`, reading
    // dst only when `read_dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.cs as isize,
            dst.rs as isize,
            accumulate,
            lhs.ptr,
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.ptr,
            rhs.cs as isize,
            rhs.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Columns each part of [`gemm_view_cols`] gets at least: more than 64, so that every part
/// takes the path through gemm's cache-sized blocking, as the whole product does (gemm blocks
/// products of at most 64 x 64 along `k` differently, which would change the sums' order).
const MIN_PART_COLUMNS: usize = 128;

/// [`gemm_view`] on the pool's threads with the result's columns split between them, each part
/// a one-thread gemm over its own columns of `rhs`; gemm's own threading where the columns are
/// too few to split. For products whose right factor is the large one (an im2col matrix, a
/// gradient's pixels): gemm's own threading packs each block of the whole right factor in one
/// parallel pass and multiplies it in another, joining the threads twice per block of `k`, and
/// its panels span all the columns. On the AMD EPYC VM (2 vCPUs) the split made whole stage-1 and
/// stage-3 steps 1-4% faster at two threads (docs/PERFORMANCE.md). A column of the result is
/// summed in the same order however the columns are split (gemm's blocking of `k` depends on `k`
/// and the caches only, on this path), so the result has the same bits at any thread count.
///
/// # Safety
/// As [`gemm_view`].
pub(crate) unsafe fn gemm_view_cols<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: View<*mut T>,
    accumulate: bool,
    lhs: View<*const T>,
    rhs: View<*const T>,
) {
    let threads = rayon::current_num_threads();
    let parts = threads.min(n / MIN_PART_COLUMNS);
    if parts < 2 || m == 0 || k == 0 {
        let parallelism = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
        // SAFETY: as the caller promises.
        unsafe { gemm_view((m, n, k), dst, accumulate, lhs, rhs, parallelism) };
        return;
    }
    let (d, l, r) =
        (SharedMut(dst.ptr), SharedMut(lhs.ptr.cast_mut()), SharedMut(rhs.ptr.cast_mut()));
    (0..parts).into_par_iter().for_each(|p| {
        let (from, to) = (p * n / parts, (p + 1) * n / parts);
        let dst = View { ptr: d.get().wrapping_add(from * dst.cs), ..dst };
        let lhs = View { ptr: l.get().cast_const(), ..lhs };
        let rhs = View { ptr: r.get().cast_const().wrapping_add(from * rhs.cs), ..rhs };
        // SAFETY: columns `from..to` of the caller's product: inside its views, and no two
        // parts write the same element of `dst` (the caller's elements are distinct).
        unsafe { gemm_view((m, to - from, k), dst, accumulate, lhs, rhs, Parallelism::None) };
    });
}

/// Whether [`gemm_view`] runs a product with `n` columns, the left factor's column stride
/// `lhs_cs` and the right factor's row stride `rhs_rs` (the result's column stride 1) in
/// `skinny.rs`'s kernel, on the calling thread whatever the `Parallelism`. Each row of the
/// result is then summed on its own, in the same order whatever rows are computed with it, so a
/// caller may split the rows between threads.
pub(crate) fn takes_skinny<T: 'static>(lhs_cs: usize, rhs_rs: usize, n: usize) -> bool {
    lhs_cs == 1 && rhs_rs == 1 && is_f32::<T>() && skinny::takes(n)
}

/// Whether `T` is f32.
fn is_f32<T: 'static>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
}

/// A raw pointer shared by parallel tasks that write disjoint elements through it (the
/// shifted-view weight gradient's taps, the Winograd transforms' runs).
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(pub *mut T);
// SAFETY: every user writes disjoint elements from its tasks and reads nothing through the
// pointer until all tasks are done.
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so that closures capture the wrapper, not its field).
    pub(crate) fn get(&self) -> *mut T {
        self.0
    }

    /// `len` elements from `at` on.
    ///
    /// # Safety
    /// They must lie in the allocation, and no other live reference may touch them.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn run(&self, at: usize, len: usize) -> &mut [T] {
        // SAFETY: as the caller promises.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}

/// The element-wise sum of equally long `parts`, added in their order (`((p0 + p1) + p2) + ...`
/// for every element, so the same values at any thread count), in parallel chunks; empty for
/// no parts. For partial results computed in parallel (the weight gradients' per-chunk sums).
pub(crate) fn sum_in_order<T: Real>(parts: Vec<Vec<T>>) -> Vec<T> {
    let mut parts = parts.into_iter();
    let mut sum = parts.next().unwrap_or_default();
    for part in parts {
        debug_assert_eq!(part.len(), sum.len());
        sum.par_chunks_mut(1 << 14).zip(part.par_chunks(1 << 14)).for_each(|(s, p)| {
            s.iter_mut().zip(p).for_each(|(s, &p)| *s += p);
        });
    }
    sum
}

/// `n` slots to be written before they are read: a buffer that every reader finds written
/// (Winograd's transformed tiles and products, gathered crop columns), so that zero-filling it
/// first would be wasted (a `memset` of megabytes per convolution). Debug builds fill them with
/// NaN, so that a slot read before it is written shows in a result.
pub(crate) fn slots<T: Real>(n: usize) -> Vec<MaybeUninit<T>> {
    if cfg!(debug_assertions) {
        return vec![MaybeUninit::new(T::from_f64(f64::NAN)); n];
    }
    let mut v = Vec::with_capacity(n);
    // SAFETY: `MaybeUninit<T>` needs no initialisation; the capacity is `n`.
    unsafe { v.set_len(n) };
    v
}

/// `n` zeros written in parallel chunks: a `vec![0; n]` of a large buffer is one `memset` on the
/// calling thread, which at two threads was the largest serial item of an inference pass.
pub(crate) fn par_zeroed<T: WithDType>(n: usize) -> Vec<T> {
    par_chunks_zeroed(n, 1 << 16, |_, _| {})
}

/// Source columns per task of [`transpose`]: 32 output rows written side by side, the source
/// read in runs of 32.
const TILE: usize = 32;

/// `x^T` as a contiguous tensor, for a contiguous 2-d CPU f32 / f64 tensor `x`, in parallel
/// (Candle's strided copy of a transposed view walks it element by element on one thread).
/// Other tensors go through Candle's `t().contiguous()`.
///
/// # Shapes
/// `x: [r, c]` -> `[c, r]`
pub(crate) fn transpose(x: &Tensor) -> candle_core::Result<Tensor> {
    let (r, c) = x.dims2()?;
    if !train_kernels_supported(x) || !x.is_contiguous() {
        return x.t()?.contiguous();
    }
    fn go<T: WithDType>(x: &Tensor, r: usize, c: usize) -> candle_core::Result<Tensor> {
        let out = with_cpu_slices::<T, _, 1>("transpose", [(x, "input")], |[src]| {
            // Output rows j0..j0 + TILE (source columns) per chunk, filled TILE x TILE tile by
            // tile: the tile's source rows stay in the L1 cache while each output row gets a
            // contiguous run.
            par_chunks_zeroed(r * c, TILE * r, |block, out: &mut [T]| {
                let j0 = block * TILE;
                for i0 in (0..r).step_by(TILE) {
                    let i1 = (i0 + TILE).min(r);
                    for (dj, row) in out.chunks_exact_mut(r).enumerate() {
                        for (o, i) in row[i0..i1].iter_mut().zip(i0..i1) {
                            *o = src[i * c + j0 + dj];
                        }
                    }
                }
            })
        })?;
        Tensor::from_vec(out, (c, r), x.device())
    }
    by_dtype(x.dtype(), "transpose", || go::<f32>(x, r, c), || go::<f64>(x, r, c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_same_values, randn_var};

    /// Equals Candle's transposed copy, in f32 and f64, for sides below, at and above the tile.
    #[test]
    fn transpose_equals_candle() {
        for dtype in [DType::F32, DType::F64] {
            for (r, c) in [(1, 1), (3, 70), (64, 33), (100, 7)] {
                let x = randn_var(&[r, c], dtype);
                let want = x.t().unwrap().contiguous().unwrap();
                assert_same_values(&transpose(&x).unwrap(), &want, &format!("{r}x{c}"));
            }
        }
    }

    /// Column parts on 3 threads give the one-thread product's bits, written or added, with
    /// strided views; and parts of at most 64 columns would not (the reason for
    /// `MIN_PART_COLUMNS`): gemm blocks k = 700 as 512 + 188 there, by its cache sizes on larger
    /// products.
    #[test]
    fn column_parts_give_the_one_thread_bits() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let vals = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed) as f32 / 4e9 - 0.5)
                .collect()
        };
        for (m, n, k, accumulate) in
            [(20, 700, 700, false), (64, 391, 147, true), (5, 100, 9, false)]
        {
            // lhs [m, k] row-major; rhs [k, n] stored transposed ([n, k]): both factors strided
            // as the weight gradient and the convolutions read them.
            let (a, b, y0) = (vals(m * k, 1), vals(n * k, 2), vals(m * n, 3));
            let product = |y: &mut [f32], parts: bool| {
                let lhs = View { ptr: a.as_ptr(), rs: k, cs: 1 };
                let rhs = View { ptr: b.as_ptr(), rs: 1, cs: k };
                let dst = View { ptr: y.as_mut_ptr(), rs: n, cs: 1 };
                // SAFETY: the views cover the three vectors exactly.
                unsafe {
                    if parts {
                        gemm_view_cols((m, n, k), dst, accumulate, lhs, rhs);
                    } else {
                        gemm_view((m, n, k), dst, accumulate, lhs, rhs, Parallelism::None);
                    }
                }
            };
            let run = |parts: bool| {
                let mut y = y0.clone();
                pool.install(|| product(&mut y, parts));
                y
            };
            assert_eq!(run(true), run(false), "{m}x{n}x{k}");
        }
        // The small-product blocking: a 20 x 64 part of the first product sums in another order.
        let (m, n, k) = (20, 64, 700);
        let (a, b) = (vals(m * k, 1), vals(700 * k, 2));
        let mut part = vec![0f32; m * n];
        let mut whole = vec![0f32; m * 700];
        // SAFETY: as above; the part reads the first 64 columns of the same factors.
        unsafe {
            let lhs = View { ptr: a.as_ptr(), rs: k, cs: 1 };
            let rhs = View { ptr: b.as_ptr(), rs: 1, cs: k };
            let p = View { ptr: part.as_mut_ptr(), rs: n, cs: 1 };
            gemm_view((m, n, k), p, false, lhs, rhs, Parallelism::None);
            let w = View { ptr: whole.as_mut_ptr(), rs: 700, cs: 1 };
            gemm_view((m, 700, k), w, false, lhs, rhs, Parallelism::None);
        }
        let differ = (0..m)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .filter(|&(i, j)| part[i * n + j] != whole[i * 700 + j]);
        assert!(differ.count() > 0, "a 64-column part summed as the whole product");
    }
}
