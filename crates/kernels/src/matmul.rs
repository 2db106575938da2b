//! Batched matrix products whose batch is split across threads, with Candle's gradient, on the CPU.
//!
//! Candle's CPU `matmul` runs the products of a batch one after the other, each spread over the
//! threads inside gemm. For the AU crop nets' products (34 of them: `[256, 36864] x [36864, 8]`
//! forward, and the backward's), gemm first packs the large operand on the calling thread, so a
//! stage-2 or stage-3 step read Crop_Net_2's 1.3 GB of weights on one thread while the others
//! waited; Candle also fills each result with zeros on that thread before gemm overwrites it.
//! [`batched_matmul`] runs each product of the batch whole on one thread (gemm without threads of
//! its own) and the products in parallel, each writing its own block of the result.
//!
//! Each product is the gemm call Candle makes (same sizes and strides, so the same blocking of
//! the sums), so values and gradients are Candle's bit for bit at any thread count. (Two
//! exceptions: Candle folds a batch whose right factor has batch stride 0 into one product,
//! whose blocking may differ, which no caller here meets; and f32 products of up to 16 columns
//! with both factors contiguous along the summed axis, `Crop_Net_2`'s forward among them, run on
//! AVX-512 CPUs in `skinny.rs`'s kernel, which sums in another order.) The backward is Candle's:
//! `grad x rhs^T` and `lhs^T x grad`, through the same kernel.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::cpu::{Real, View, by_dtype, gemm_view, takes_skinny, train_kernels_supported};
use crate::error::{KernelError, Result};

/// `lhs x rhs` for each of the batch's matrices, the batch split across threads on CPU f32 / f64
/// tensors (any strides, transposed views included); Candle's `matmul` elsewhere.
///
/// # Shapes
/// `lhs: [g, m, k]`, `rhs: [g, k, n]` -> `[g, m, n]`
pub fn batched_matmul(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    check("batched_matmul", lhs, rhs, false)?;
    if !train_kernels_supported(lhs) || !lhs.device().same_device(rhs.device()) {
        return Ok(lhs.matmul(rhs)?);
    }
    Ok(lhs.apply_op2(rhs, BatchedMatMul { rhs_t: false })?)
}

/// `lhs x rhs^T` for each of the batch's matrices, with `rhs` held as `[g, n, k]`: as
/// [`batched_matmul`] of `rhs`'s transposed view, but its gradient comes out in `rhs`'s own
/// layout, as the product `grad^T x lhs`, where Candle's transposed view would give
/// `lhs^T x grad` (`[g, k, n]`) and then a strided copy of it on one thread. For the crop nets'
/// `Crop_Net_2` (`lhs` the 34 weights `[256, 36864]`, `rhs` the crops' features `[8, 36864]`)
/// that product is also the faster one (gemm packs the weights in slices, in parallel, instead
/// of a column-major view of them). The input gradient's sums run in another blocking than
/// Candle's, so they may round differently (see the tests).
///
/// # Shapes
/// `lhs: [g, m, k]`, `rhs: [g, n, k]` -> `[g, m, n]`
pub fn batched_matmul_nt(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    check("batched_matmul_nt", lhs, rhs, true)?;
    if !train_kernels_supported(lhs) || !lhs.device().same_device(rhs.device()) {
        return Ok(lhs.matmul(&rhs.transpose(1, 2)?)?);
    }
    Ok(lhs.apply_op2(rhs, BatchedMatMul { rhs_t: true })?)
}

/// Checks that `lhs` and `rhs` (transposed when `rhs_t`) can be multiplied.
fn check(op: &'static str, lhs: &Tensor, rhs: &Tensor, rhs_t: bool) -> Result<()> {
    let (g, _, k) = lhs.dims3()?;
    let (g2, a, b) = rhs.dims3()?;
    let k2 = if rhs_t { b } else { a };
    if g != g2 || k != k2 || lhs.dtype() != rhs.dtype() {
        return Err(KernelError::InvalidArgs {
            op,
            msg: format!("the factors do not fit ({:?} and {:?})", lhs.dtype(), rhs.dtype()),
            input: lhs.shape().clone(),
            weight: rhs.shape().clone(),
            params: String::new(),
        });
    }
    Ok(())
}

/// One operand of a product: the storage's elements and the view's layout `[g, rows, cols]`.
#[derive(Clone, Copy)]
struct Operand<'a, T> {
    data: &'a [T],
    start: usize,
    /// Strides of the batch, row and column dimensions.
    strides: [usize; 3],
}

impl<'a, T: Real> Operand<'a, T> {
    /// The view `layout` of `data`; with `transposed`, its transpose (rows and columns swapped).
    fn new(
        data: &'a [T],
        layout: &Layout,
        what: &str,
        transposed: bool,
    ) -> candle_core::Result<Self> {
        let dims = layout.dims();
        let &[sg, sr, sc] = layout.stride() else {
            candle_core::bail!("batched_matmul: the {what} is not 3-d")
        };
        // The last element the view reaches must lie in the storage (Candle's layouts do).
        if !dims.contains(&0) {
            let reach: usize = dims.iter().zip([sg, sr, sc]).map(|(&d, s)| (d - 1) * s).sum();
            if layout.start_offset() + reach >= data.len() {
                candle_core::bail!("batched_matmul: the {what}'s view leaves its storage")
            }
        }
        let strides = if transposed { [sg, sc, sr] } else { [sg, sr, sc] };
        Ok(Operand { data, start: layout.start_offset(), strides })
    }

    /// Pointer to matrix `i`'s first element.
    fn matrix(&self, i: usize) -> *const T {
        self.data[self.start + i * self.strides[0]..].as_ptr()
    }
}

/// The products `lhs[i] x rhs[i]`, `[g, m, n]` row-major: in parallel over the batch when it has
/// at least as many matrices as there are threads, else one after the other with gemm's threads.
/// Products that `skinny.rs`'s kernel takes, which ignores gemm's threads, are split into blocks
/// of [`SKINNY_ROWS`] rows, all in parallel. Whole matrices left threads idle whenever the batch
/// was not a multiple of the thread count (the crop nets' 34 products on 16 threads: three
/// rounds, the last with 2 of 16 threads busy) and ran on one thread when it was smaller than
/// the thread count (eval's last chunk of crops). `examples/crop_products.rs`, two threads, the
/// 34 products of `Crop_Net_2` at batch 8 in calls of 34 / 3 / 1 products (Intel Xeon, Sapphire
/// Rapids): 62 / 84 / 122 ms before, 62 / 64 / 64 ms in row blocks. Each row is summed the same
/// way in any block, so the values do not depend on the threads.
fn product<T: Real>(
    lhs: Operand<'_, T>,
    rhs: Operand<'_, T>,
    (g, m, k, n): (usize, usize, usize, usize),
) -> Vec<T> {
    let len = g * m * n;
    if k == 0 || len == 0 {
        // An empty sum: gemm would write nothing.
        return vec![T::zero(); len];
    }
    let mut out: Vec<T> = Vec::with_capacity(len);
    let (l, r) = (lhs.strides, rhs.strides);
    // Rows `r0..r0 + rows` of product `i` into `dst`.
    let run = |i: usize, r0: usize, rows: usize, dst: *mut T, parallelism: Parallelism| {
        let dst = View { ptr: dst, rs: n, cs: 1 };
        // SAFETY: `r0 < m`, so the offset stays inside matrix `i`'s view.
        let lhs = View { ptr: unsafe { lhs.matrix(i).add(r0 * l[1]) }, rs: l[1], cs: l[2] };
        let rhs = View { ptr: rhs.matrix(i), rs: r[1], cs: r[2] };
        // SAFETY: `dst` points to `rows * n` writable elements (rows of matrix `i` of `out`'s
        // capacity), written without being read (the uninitialised capacity is never read);
        // `Operand::new` checked that every element the views reach lies in their storage.
        unsafe { gemm_view((rows, n, k), dst, false, lhs, rhs, parallelism) }
    };
    let threads = rayon::current_num_threads();
    let spare = &mut out.spare_capacity_mut()[..len];
    if threads > 1 && takes_skinny::<T>(l[2], r[1], n) {
        spare.par_chunks_mut(m * n).enumerate().for_each(|(i, dst)| {
            dst.par_chunks_mut(SKINNY_ROWS * n).enumerate().for_each(|(j, dst)| {
                let ptr = dst.as_mut_ptr().cast::<T>();
                run(i, j * SKINNY_ROWS, dst.len() / n, ptr, Parallelism::None);
            });
        });
    } else if threads > 1 && g >= threads {
        spare.par_chunks_mut(m * n).enumerate().for_each(|(i, dst)| {
            run(i, 0, m, dst.as_mut_ptr().cast::<T>(), Parallelism::None);
        });
    } else {
        let parallelism = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
        for (i, dst) in spare.chunks_mut(m * n).enumerate() {
            run(i, 0, m, dst.as_mut_ptr().cast::<T>(), parallelism);
        }
    }
    // SAFETY: the products above wrote all `len` elements.
    unsafe { out.set_len(len) };
    out
}

/// Rows per parallel task of a product that `skinny.rs`'s kernel runs ([`product`]): 32 rows of
/// `Crop_Net_2`'s weights are a 4.7 MB stream, and its 256 rows make 8 tasks per crop net.
const SKINNY_ROWS: usize = 32;

/// `lhs x rhs` of two CPU tensors, as a new tensor without a gradient graph.
fn product_tensor<T: Real>(lhs: &Tensor, rhs: &Tensor) -> candle_core::Result<Tensor> {
    let (g, m, k) = lhs.dims3()?;
    let n = rhs.dim(2)?;
    let (ls, ll) = lhs.storage_and_layout();
    let (rs, rl) = rhs.storage_and_layout();
    let (candle_core::Storage::Cpu(ls), candle_core::Storage::Cpu(rs)) = (&*ls, &*rs) else {
        candle_core::bail!("batched_matmul: the factors are not CPU tensors")
    };
    let lhs_op = Operand::new(ls.as_slice::<T>()?, ll, "left factor", false)?;
    let rhs_op = Operand::new(rs.as_slice::<T>()?, rl, "right factor", false)?;
    let out = product(lhs_op, rhs_op, (g, m, k, n));
    Tensor::from_vec(out, (g, m, n), lhs.device())
}

#[derive(Debug, Clone, Copy)]
struct BatchedMatMul {
    /// The right factor is held transposed (`[g, n, k]`).
    rhs_t: bool,
}

impl BatchedMatMul {
    fn fwd<T: Real>(
        self,
        (sa, la): (&CpuStorage, &Layout),
        (sb, lb): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, m, k) = la.shape().dims3()?;
        let n = lb.shape().dims()[if self.rhs_t { 1 } else { 2 }];
        let lhs = Operand::new(sa.as_slice::<T>()?, la, "left factor", false)?;
        let rhs = Operand::new(sb.as_slice::<T>()?, lb, "right factor", self.rhs_t)?;
        let out = product(lhs, rhs, (g, m, k, n));
        Ok((T::to_cpu_storage_owned(out), Shape::from((g, m, n))))
    }
}

impl CustomOp2 for BatchedMatMul {
    fn name(&self) -> &'static str {
        "aue-batched-matmul"
    }

    fn cpu_fwd(
        &self,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let args = ((sa, la), (sb, lb));
        let (f32, f64) = (|| self.fwd::<f32>(args.0, args.1), || self.fwd::<f64>(args.0, args.1));
        by_dtype(sa.dtype(), "batched_matmul", f32, f64)
    }

    fn bwd(
        &self,
        lhs: &Tensor,
        rhs: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let prod = |a: &Tensor, b: &Tensor| {
            by_dtype(
                a.dtype(),
                "batched_matmul",
                || product_tensor::<f32>(a, b),
                || product_tensor::<f64>(a, b),
            )
        };
        let (grad_lhs, grad_rhs) = if self.rhs_t {
            // y = lhs x rhs^T: d lhs = grad x rhs, d rhs = grad^T x lhs (in rhs's layout).
            let gl = if lhs.track_op() { Some(prod(grad, rhs)?) } else { None };
            let gr = if rhs.track_op() { Some(prod(&grad.t()?, lhs)?) } else { None };
            (gl, gr)
        } else {
            // Candle's matmul backward, the same products through the same kernel.
            let gl = if lhs.track_op() { Some(prod(grad, &rhs.t()?)?) } else { None };
            let gr = if rhs.track_op() { Some(prod(&lhs.t()?, grad)?) } else { None };
            (gl, gr)
        };
        Ok((grad_lhs, grad_rhs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_same_values, candle_grads, randn_var};
    use candle_core::{DType, Device};

    /// `[g, r, c]` as a contiguous variable, or as the transposed view of a `[g, c, r]` one.
    fn factor(g: usize, r: usize, c: usize, transposed: bool, dtype: DType) -> candle_core::Var {
        if transposed {
            let v = randn_var(&[g, c, r], dtype);
            candle_core::Var::from_tensor(&v.as_tensor().transpose(1, 2).unwrap()).unwrap()
        } else {
            randn_var(&[g, r, c], dtype)
        }
    }

    /// Pools of 1 and 3 threads: batches below, at and above 3 threads, and skinny products of 70
    /// rows split into blocks of 32, 32 and 6 rows.
    fn pools() -> [rayon::ThreadPool; 2] {
        [1, 3].map(|t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap())
    }

    /// Values and both gradients equal Candle's `matmul` bit for bit, in f32 and f64, for
    /// contiguous and transposed factors, thin and square products, batches above and below the
    /// thread count, on 1 and 3 threads and the default pool.
    #[test]
    fn equals_candle_matmul_bit_for_bit() {
        let pools = pools();
        for dtype in [DType::F32, DType::F64] {
            for (g, m, k, n) in [(5, 40, 300, 3), (3, 7, 50, 33), (1, 20, 9, 20), (6, 1, 5, 1)] {
                for (tl, tr) in [(false, false), (true, false), (false, true), (true, true)] {
                    let what = format!("{dtype:?} [{g}, {m}, {k}] x [{g}, {k}, {n}] t {tl} {tr}");
                    let a = factor(g, m, k, tl, dtype);
                    let b = factor(g, k, n, tr, dtype);
                    let coef = randn_var(&[g, m, n], dtype);
                    let theirs = a.matmul(&b).unwrap();
                    let run = || {
                        let mine = batched_matmul(&a, &b).unwrap();
                        let (g1, g2) = candle_grads(&mine, &theirs, &coef, &[&a, &b]);
                        (mine, g1, g2)
                    };
                    for pool in [None, Some(&pools[0]), Some(&pools[1])] {
                        let (mine, g1, g2) = match pool {
                            Some(pool) => pool.install(run),
                            None => run(),
                        };
                        assert_same_values(&mine, &theirs, &what);
                        assert_same_values(&g1[0], &g2[0], &format!("{what}: left gradient"));
                        assert_same_values(&g1[1], &g2[1], &format!("{what}: right gradient"));
                    }
                }
            }
        }
    }

    /// Relative Frobenius distance of two tensors.
    fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
        let f = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let (a, b) = (f(a), f(b));
        let sq = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        (sq(&(&a - &b).unwrap()) / sq(&b)).sqrt()
    }

    /// `batched_matmul_nt` equals Candle's `lhs.matmul(rhs^T)` bit for bit (within rounding,
    /// relative error below 1e-6, where skinny.rs's kernel takes f32 products of up to 16
    /// columns), and so does the left factor's gradient (the same products); the right
    /// factor's gradient, computed as `grad^T x lhs` in another blocking, is within rounding of
    /// Candle's (relative error below 1e-6 in f32, 1e-14 in f64), also with the crop nets'
    /// sizes of `Crop_Net_2` (k = 2304). Values and gradients are the same bits on 1 and 3
    /// threads and the default pool (skinny products split into row blocks included).
    #[test]
    fn nt_equals_candle_matmul_of_the_transposed_view() {
        let pools = pools();
        for (dtype, tol) in [(DType::F32, 1e-6), (DType::F64, 1e-14)] {
            let shapes =
                [(5, 40, 300, 3), (3, 7, 50, 33), (1, 20, 9, 20), (4, 64, 2304, 2), (5, 70, 40, 8)];
            for (g, m, k, n) in shapes {
                let what = format!("{dtype:?} [{g}, {m}, {k}] x [{g}, {n}, {k}]^T");
                let a = randn_var(&[g, m, k], dtype);
                let b = randn_var(&[g, n, k], dtype);
                let coef = randn_var(&[g, m, n], dtype);
                let theirs = a.matmul(&b.transpose(1, 2).unwrap()).unwrap();
                let run = || {
                    let mine = batched_matmul_nt(&a, &b).unwrap();
                    let (g1, g2) = candle_grads(&mine, &theirs, &coef, &[&a, &b]);
                    (mine, g1, g2)
                };
                let mut first: Option<(Tensor, Vec<Tensor>)> = None;
                for pool in [Some(&pools[0]), Some(&pools[1]), None] {
                    let (mine, g1, g2) = match pool {
                        Some(pool) => pool.install(run),
                        None => run(),
                    };
                    if dtype == DType::F32 && crate::skinny::takes(n) {
                        // skinny.rs's kernel: another order of the same sums.
                        let e = rel_err(&mine, &theirs);
                        assert!(e <= tol, "{what}: values, relative error {e}");
                    } else {
                        assert_same_values(&mine, &theirs, &what);
                    }
                    assert_same_values(&g1[0], &g2[0], &format!("{what}: left gradient"));
                    assert_eq!(g1[1].dims(), g2[1].dims());
                    let e = rel_err(&g1[1], &g2[1]);
                    assert!(e <= tol, "{what}: right gradient, relative error {e}");
                    match &first {
                        None => first = Some((mine, g1)),
                        Some((y1, gs1)) => {
                            let at = format!("{what}: against one thread");
                            assert_same_values(&mine, y1, &at);
                            assert_same_values(&g1[0], &gs1[0], &at);
                            assert_same_values(&g1[1], &gs1[1], &at);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn empty_sums_are_zero_and_mismatches_are_errors() {
        let a = Tensor::zeros((2, 3, 0), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((2, 0, 4), DType::F32, &Device::Cpu).unwrap();
        let y = batched_matmul(&a, &b).unwrap();
        assert_eq!(y.dims(), [2, 3, 4]);
        assert_eq!(y.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let c = Tensor::zeros((2, 5, 4), DType::F32, &Device::Cpu).unwrap();
        let err = batched_matmul(&a, &c).unwrap_err().to_string();
        assert!(err.contains("batched_matmul") && err.contains("do not fit"), "{err}");
        let err = batched_matmul_nt(&c, &c.transpose(1, 2).unwrap()).unwrap_err().to_string();
        assert!(err.contains("batched_matmul_nt") && err.contains("do not fit"), "{err}");
    }
}
