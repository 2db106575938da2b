//! Rows gathered by index, with Candle's gradient (`index_add` into zeros), in parallel.
//!
//! The AU crops' im2col is one `index_select` of rows of the channels-last map (about 360 MB of
//! gathered rows at resnet18's sizes, batch 8), and its backward an `index_add` of as many rows
//! into a zeroed map: both ran on one thread. [`index_select_rows`] copies the rows in parallel
//! chunks; its backward groups the gathered rows by the row they came from (a counting sort,
//! stable) and sums each source row's gradients in parallel, in the order `index_add` adds them
//! (by position in `ids`, from zero), so values and gradient are Candle's bit for bit.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::cpu::{MIN_TASK, Real, by_dtype, par_chunks_from, slice, train_kernels_supported};
use crate::error::{KernelError, Result};

/// `src.index_select(ids, 0)` for a 2-d `src`: row `j` of the result is row `ids[j]` of `src`.
/// One parallel pass each way on CPU f32 / f64 tensors, Candle's `index_select` elsewhere.
///
/// # Shapes
/// `src: [r, c]`, `ids: [n]` (each below r) -> `[n, c]`
pub fn index_select_rows(src: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let (r, _) = src.dims2()?;
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= r) {
        return Err(KernelError::InvalidArgs {
            op: "index_select_rows",
            msg: format!("index {bad} is not a row of the source"),
            input: src.shape().clone(),
            weight: Shape::from(ids.len()),
            params: String::new(),
        });
    }
    if !train_kernels_supported(src) {
        let ids = Tensor::from_slice(ids, ids.len(), src.device())?;
        return Ok(src.index_select(&ids, 0)?);
    }
    let op = IndexSelectRows { ids: Arc::new(ids.to_vec()), rows: r };
    Ok(src.contiguous()?.apply_op1(op)?)
}

/// Rows `ids` of the `[_, c]` matrix `src`, in parallel chunks of whole rows.
fn gather<T: WithDType>(src: &[T], ids: &[u32], c: usize) -> Vec<T> {
    par_chunks_from(ids.len() * c, c, |i| src[ids[i] as usize * c..][..c].iter().copied())
}

/// The gradient of [`gather`]: row `i` is the sum of the rows `j` of `grad` with `ids[j] == i`,
/// added from zero in increasing `j` (`index_add`'s order); rows no index names are zero.
fn scatter_add<T: Real>(grad: &[T], ids: &[u32], rows: usize, c: usize) -> Vec<T> {
    let mut out = crate::cpu::par_zeroed(rows * c);
    scatter_add_into(&mut out, grad, ids, c);
    out
}

/// Adds row `j` of `grad` (`[ids.len(), c]`) into row `ids[j]` of `dst` (`[_, c]`), each row of
/// `dst` taking its rows in increasing `j` (`index_add`'s order), rows in parallel.
pub(crate) fn scatter_add_into<T: Real>(dst: &mut [T], grad: &[T], ids: &[u32], c: usize) {
    let rows = dst.len() / c.max(1);
    // Counting sort of the positions by destination row: `order[start[i]..start[i + 1]]` are the
    // positions that add into row i, increasing.
    let mut start = vec![0usize; rows + 1];
    for &i in ids {
        start[i as usize + 1] += 1;
    }
    for i in 0..rows {
        start[i + 1] += start[i];
    }
    let mut next = start.clone();
    let mut order = vec![0u32; ids.len()];
    for (j, &i) in ids.iter().enumerate() {
        order[next[i as usize]] = j as u32;
        next[i as usize] += 1;
    }
    let per_task = MIN_TASK.div_ceil(c.max(1));
    dst.par_chunks_mut(per_task * c.max(1)).enumerate().for_each(|(t, out)| {
        for (k, o) in out.chunks_mut(c).enumerate() {
            let i = t * per_task + k;
            for &j in &order[start[i]..start[i + 1]] {
                for (o, &g) in o.iter_mut().zip(&grad[j as usize * c..][..c]) {
                    *o += g;
                }
            }
        }
    });
}

#[derive(Debug, Clone)]
struct IndexSelectRows {
    ids: Arc<Vec<u32>>,
    /// Rows of the source.
    rows: usize,
}

impl IndexSelectRows {
    fn fwd<T: Real>(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = slice::<T>(s, l, "index_select_rows", "source")?;
        let (_, c) = l.shape().dims2()?;
        let out = gather(src, &self.ids, c);
        Ok((T::to_cpu_storage_owned(out), Shape::from((self.ids.len(), c))))
    }

    fn bwd_as<T: Real>(&self, src: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
        let c = src.dim(1)?;
        let (s, l) = grad.storage_and_layout();
        let candle_core::Storage::Cpu(s) = &*s else {
            candle_core::bail!("index_select_rows: the gradient is not a CPU tensor")
        };
        let g = slice::<T>(s, l, "index_select_rows", "gradient")?;
        let out = scatter_add(g, &self.ids, self.rows, c);
        Tensor::from_vec(out, (self.rows, c), src.device())
    }
}

impl CustomOp1 for IndexSelectRows {
    fn name(&self) -> &'static str {
        "aue-index-select-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (f32, f64) = (|| self.fwd::<f32>(s, l), || self.fwd::<f64>(s, l));
        by_dtype(s.dtype(), "index_select_rows", f32, f64)
    }

    fn bwd(
        &self,
        src: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let (f32, f64) = (|| self.bwd_as::<f32>(src, &grad), || self.bwd_as::<f64>(src, &grad));
        Ok(Some(by_dtype(src.dtype(), "index_select_rows", f32, f64)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_same_values, candle_grads, randn_var};
    use candle_core::{DType, Device};

    /// Values and gradient equal Candle's `index_select` (and its `index_add` backward) bit for
    /// bit, in f32 and f64, with repeated indices (summed in order), rows never read (zero
    /// gradient) and chunks over several tasks.
    #[test]
    fn equals_candle_index_select_bit_for_bit() {
        for dtype in [DType::F32, DType::F64] {
            for (r, c, n) in [(50, 64, 3000), (7, 3, 40), (1, 1, 5), (9, 5, 0)] {
                let src = randn_var(&[r, c], dtype);
                // Repeats, every row but the last two, in a scrambled order.
                let ids: Vec<u32> =
                    (0..n).map(|j| ((j * 7919 + j / 3) % (r.max(3) - 2).max(1)) as u32).collect();
                let idt = Tensor::from_slice(&ids, n, &Device::Cpu).unwrap();
                let theirs = src.index_select(&idt, 0).unwrap();
                let mine = index_select_rows(&src, &ids).unwrap();
                let what = format!("{dtype:?} [{r}, {c}] x {n}");
                assert_same_values(&mine, &theirs, &what);
                if n > 0 {
                    let coef = randn_var(&[n, c], dtype);
                    let (g, gt) = candle_grads(&mine, &theirs, &coef, &[&src]);
                    assert_same_values(&g[0], &gt[0], &format!("{what}: gradient"));
                }
            }
        }
        let src = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        let err = index_select_rows(&src, &[0, 3]).unwrap_err().to_string();
        assert!(err.contains("index_select_rows") && err.contains("index 3"), "{err}");
    }
}
