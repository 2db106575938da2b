//! Gathered rows times a batch of matrices, without keeping the gathered matrix for the backward
//! pass.
//!
//! The AU crop convolutions are `index_select_rows` of the padded map (the im2col matrix of all
//! 34 crops, 360 MB at resnet18's sizes, batch 8) and a batched product with the 34 kernels. As
//! two ops, the graph keeps the gathered matrix until the backward pass (the product's weight
//! gradient reads it), and the backward makes its gradient, as large, before adding it into the
//! map's. [`gather_batched_matmul`] keeps only the map and the kernels: each matrix of the batch
//! is gathered into a scratch buffer just before its product, forward and backward, and the
//! gathered rows' gradient is added into the map's one matrix at a time.
//!
//! Values and both gradients are those of the two ops bit for bit (the tests compare them): the
//! same gemm calls on the same gathered values, and the map's gradient summed per row in
//! `index_add`'s order (by position in `ids`, from zero: the matrices in order, each one's rows
//! in order).

use std::mem::MaybeUninit;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::cpu::{
    Real, SharedMut, View, by_dtype, gemm_view, par_zeroed, slice, slots, train_kernels_supported,
};
use crate::error::{KernelError, Result};

/// `index_select_rows(src, ids)` seen as `[g, p, t * c]` (each run of `t` gathered rows of `c`
/// is one row of the matrix), times `w`: matrix `i` of the result is the gathered matrix `i`
/// times `w[i]`. On CPU f32 / f64 tensors one op that does not keep the gathered matrix (see the
/// module doc); elsewhere those two ops.
///
/// # Shapes
/// `src: [r, c]`, `ids: [g * p * t]` (each below r), `w: [g, t * c, n]` -> `[g, p, n]`
pub fn gather_batched_matmul(src: &Tensor, ids: &[u32], w: &Tensor) -> Result<Tensor> {
    let (r, c) = src.dims2()?;
    let (g, k, _) = w.dims3()?;
    let invalid = |msg: String| KernelError::InvalidArgs {
        op: "gather_batched_matmul",
        msg,
        input: src.shape().clone(),
        weight: w.shape().clone(),
        params: format!("{} indices", ids.len()),
    };
    if c == 0 || !k.is_multiple_of(c) || g == 0 || !ids.len().is_multiple_of(g * (k / c).max(1)) {
        return Err(invalid("the indices do not make whole matrices of the weights' rows".into()));
    }
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= r) {
        return Err(invalid(format!("index {bad} is not a row of the source")));
    }
    let t = k / c;
    let p = ids.len() / (g * t.max(1));
    if !train_kernels_supported(src)
        || src.dtype() != w.dtype()
        || !src.device().same_device(w.device())
    {
        let cols = crate::index_select_rows(src, ids)?.reshape((g, p, k))?;
        return crate::batched_matmul(&cols, w);
    }
    let op = GatherMatMul { ids: Arc::new(ids.to_vec()), rows: r, g, p, t };
    Ok(src.contiguous()?.apply_op2(&w.contiguous()?, op)?)
}

#[derive(Debug, Clone)]
struct GatherMatMul {
    ids: Arc<Vec<u32>>,
    /// Rows of the source.
    rows: usize,
    /// Matrices, rows per matrix, gathered rows per matrix row.
    g: usize,
    p: usize,
    t: usize,
}

impl GatherMatMul {
    /// The gathered rows of matrix `i` of a `[_, c]` source into `out` (`p x t c`), every
    /// element of it written.
    fn gather_into<T: Copy>(&self, src: &[T], c: usize, i: usize, out: &mut [MaybeUninit<T>]) {
        let ids = &self.ids[i * self.p * self.t..(i + 1) * self.p * self.t];
        debug_assert_eq!(out.len(), ids.len() * c);
        for (o, &id) in out.chunks_exact_mut(c).zip(ids) {
            for (slot, &v) in o.iter_mut().zip(&src[id as usize * c..][..c]) {
                slot.write(v);
            }
        }
    }

    /// `f(i, scratch)` for every matrix `i`: in parallel over the matrices when there are at
    /// least as many as threads (each product then on one thread), else one after the other with
    /// gemm's threads (as `batched_matmul`), each with a scratch buffer of `len` elements that
    /// `f` writes before it reads them (not zero-filled: the gathered matrix is 10 MB a crop at
    /// resnet18's sizes, batch 8).
    fn each_matrix<T: Real>(
        &self,
        len: usize,
        f: impl Fn(usize, &mut [MaybeUninit<T>], Parallelism) + Sync,
    ) {
        let threads = rayon::current_num_threads();
        if threads > 1 && self.g >= threads {
            (0..self.g)
                .into_par_iter()
                .for_each_init(|| slots(len), |scratch, i| f(i, scratch, Parallelism::None));
        } else {
            let parallelism =
                if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
            let mut scratch = slots(len);
            for i in 0..self.g {
                f(i, &mut scratch, parallelism);
            }
        }
    }

    fn fwd<T: Real>(
        &self,
        (ss, sl): (&CpuStorage, &Layout),
        (ws, wl): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = slice::<T>(ss, sl, "gather_batched_matmul", "source")?;
        let w = slice::<T>(ws, wl, "gather_batched_matmul", "weights")?;
        let (_, c) = sl.shape().dims2()?;
        let (g, k, n) = wl.shape().dims3()?;
        let p = self.p;
        if k == 0 {
            return Ok((
                T::to_cpu_storage_owned(vec![T::zero(); g * p * n]),
                Shape::from((g, p, n)),
            ));
        }
        // Written only by gemm (accumulate false), so not zeroed first.
        let mut out: Vec<T> = Vec::with_capacity(g * p * n);
        let dst = SharedMut(out.spare_capacity_mut().as_mut_ptr().cast::<T>());
        self.each_matrix::<T>(p * k, |i, cols, parallelism| {
            self.gather_into(src, c, i, cols);
            // SAFETY: matrix i of `out` (p x n, inside the capacity) is written by this call
            // alone, without being read; `cols` (p x k, just written whole) and `w[i]` (k x n)
            // lie in their slices.
            unsafe {
                gemm_view(
                    (p, n, k),
                    View { ptr: dst.get().add(i * p * n), rs: n, cs: 1 },
                    false,
                    View { ptr: cols.as_ptr().cast::<T>(), rs: k, cs: 1 },
                    View { ptr: w[i * k * n..].as_ptr(), rs: n, cs: 1 },
                    parallelism,
                )
            }
        });
        // SAFETY: the g products wrote every one of the g * p * n elements.
        unsafe { out.set_len(g * p * n) };
        Ok((T::to_cpu_storage_owned(out), Shape::from((g, p, n))))
    }

    /// The gradients of the source (`[r, c]`, when `want_src`) and of the weights (`[g, k, n]`,
    /// when `want_w`) for the output gradient `grad` (`[g, p, n]`).
    fn bwd_as<T: Real>(
        &self,
        src: &Tensor,
        w: &Tensor,
        grad: &Tensor,
        (want_src, want_w): (bool, bool),
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, c) = src.dims2()?;
        let (g, k, n) = w.dims3()?;
        let p = self.p;
        let (src, w, grad) = (src.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let (s_st, s_l) = src.storage_and_layout();
        let (w_st, w_l) = w.storage_and_layout();
        let (g_st, g_l) = grad.storage_and_layout();
        let (Storage::Cpu(s_st), Storage::Cpu(w_st), Storage::Cpu(g_st)) = (&*s_st, &*w_st, &*g_st)
        else {
            candle_core::bail!("gather_batched_matmul: the backward's tensors are not on the CPU")
        };
        let sv = slice::<T>(s_st, s_l, "gather_batched_matmul", "source")?;
        let wv = slice::<T>(w_st, w_l, "gather_batched_matmul", "weights")?;
        let gv = slice::<T>(g_st, g_l, "gather_batched_matmul", "gradient")?;
        let grad_w = if want_w && p == 0 {
            // An empty sum: gemm would write nothing.
            Some(Tensor::zeros((g, k, n), w.dtype(), w.device())?)
        } else if want_w {
            // d w[i] = cols_i^T x grad_i, cols_i regathered. Written only by gemm (accumulate
            // false), so not zero-filled first (1.3 GB for Crop_Net_2 at resnet18's sizes).
            let mut gw: Vec<T> = Vec::with_capacity(g * k * n);
            let dst = SharedMut(gw.spare_capacity_mut().as_mut_ptr().cast::<T>());
            self.each_matrix::<T>(p * k, |i, cols, parallelism| {
                self.gather_into(sv, c, i, cols);
                // SAFETY: matrix i of `gw` (k x n, inside the capacity) is written by this call
                // alone, without being read; the operands lie in their buffers (`cols`, just
                // written whole, read transposed: k x p with strides 1, k).
                unsafe {
                    gemm_view(
                        (k, n, p),
                        View { ptr: dst.get().add(i * k * n), rs: n, cs: 1 },
                        false,
                        View { ptr: cols.as_ptr().cast::<T>(), rs: 1, cs: k },
                        View { ptr: gv[i * p * n..].as_ptr(), rs: n, cs: 1 },
                        parallelism,
                    )
                }
            });
            // SAFETY: the g products wrote every one of the g * k * n elements (a sum over
            // p >= 1 rows); a panic propagates before this line and drops `gw` with length 0.
            unsafe { gw.set_len(g * k * n) };
            Some(Tensor::from_vec(gw, (g, k, n), w.device())?)
        } else {
            None
        };
        let grad_src = if want_src {
            // The gathered rows' gradient, grad_i x w[i]^T, one matrix at a time (in order, so
            // that each source row sums its rows' gradients in index_add's order), added into
            // the source's.
            let mut gs = par_zeroed::<T>(self.rows * c);
            let threads = rayon::current_num_threads();
            let parallelism =
                if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
            let mut cols = vec![T::zero(); p * k];
            for i in 0..g {
                // SAFETY: `cols` (p x k) is written by this call alone; `grad_i` (p x n) and
                // `w[i]` read transposed (n x k with strides 1, n) lie in their buffers.
                unsafe {
                    gemm_view(
                        (p, k, n),
                        View { ptr: cols.as_mut_ptr(), rs: k, cs: 1 },
                        false,
                        View { ptr: gv[i * p * n..].as_ptr(), rs: n, cs: 1 },
                        View { ptr: wv[i * k * n..].as_ptr(), rs: 1, cs: n },
                        parallelism,
                    )
                }
                let ids = &self.ids[i * p * self.t..(i + 1) * p * self.t];
                crate::gather::scatter_add_into(&mut gs, &cols, ids, c);
            }
            Some(Tensor::from_vec(gs, (self.rows, c), src.device())?)
        } else {
            None
        };
        Ok((grad_src, grad_w))
    }
}

impl CustomOp2 for GatherMatMul {
    fn name(&self) -> &'static str {
        "aue-gather-batched-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (f32, f64) =
            (|| self.fwd::<f32>((s1, l1), (s2, l2)), || self.fwd::<f64>((s1, l1), (s2, l2)));
        by_dtype(s1.dtype(), "gather_batched_matmul", f32, f64)
    }

    fn bwd(
        &self,
        src: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let want = (src.track_op(), w.track_op());
        let (f32, f64) =
            (|| self.bwd_as::<f32>(src, w, grad, want), || self.bwd_as::<f64>(src, w, grad, want));
        by_dtype(src.dtype(), "gather_batched_matmul", f32, f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_same_values, candle_grads, randn_var};
    use candle_core::DType;

    /// Values and both gradients equal `index_select_rows` then `batched_matmul` bit for bit, in
    /// f32 and f64, on one thread and on more, with fewer and more matrices than threads,
    /// repeated indices (summed in order) and source rows no index names.
    #[test]
    fn equals_the_two_ops_bit_for_bit() {
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for dtype in [DType::F32, DType::F64] {
            for (r, c, g, p, t, n) in
                [(40, 6, 5, 7, 9, 4), (13, 3, 2, 30, 4, 5), (9, 2, 4, 1, 1, 3), (9, 2, 3, 0, 2, 3)]
            {
                let src = randn_var(&[r, c], dtype);
                let w = randn_var(&[g, t * c, n], dtype);
                let ids: Vec<u32> =
                    (0..g * p * t).map(|j| ((j * 7919 + j / 3) % (r - 2)) as u32).collect();
                let coef = randn_var(&[g, p, n], dtype);
                for pool in [&one, &three] {
                    let what = format!("{dtype:?} r {r} c {c} g {g} p {p} t {t} n {n}");
                    let mine = pool.install(|| gather_batched_matmul(&src, &ids, &w)).unwrap();
                    let theirs = pool.install(|| {
                        let cols = crate::index_select_rows(&src, &ids).unwrap();
                        crate::batched_matmul(&cols.reshape((g, p, t * c)).unwrap(), &w).unwrap()
                    });
                    assert_same_values(&mine, &theirs, &what);
                    let (a, b) = pool.install(|| candle_grads(&mine, &theirs, &coef, &[&src, &w]));
                    assert_same_values(&a[0], &b[0], &format!("{what}: source gradient"));
                    assert_same_values(&a[1], &b[1], &format!("{what}: weight gradient"));
                }
            }
        }
    }

    #[test]
    fn indices_that_do_not_fit_are_errors() {
        let src = Tensor::zeros((4, 2), DType::F32, &candle_core::Device::Cpu).unwrap();
        let w = Tensor::zeros((2, 4, 3), DType::F32, &candle_core::Device::Cpu).unwrap();
        let err = gather_batched_matmul(&src, &[0, 1, 2], &w).unwrap_err().to_string();
        assert!(err.contains("gather_batched_matmul") && err.contains("whole matrices"), "{err}");
        let err = gather_batched_matmul(&src, &[0, 1, 2, 9], &w).unwrap_err().to_string();
        assert!(err.contains("index 9"), "{err}");
    }
}
