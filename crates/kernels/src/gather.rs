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

use crate::cpu::{
    MIN_TASK, Real, by_dtype, par_chunks_from, par_chunks_zeroed, slice, train_kernels_supported,
    with_cpu_slices,
};
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

/// Square windows of side `side` cut from the planes of `src`, zero where a window leaves its
/// map: output image `j` is source image `windows[j].0` from row `windows[j].1`, column
/// `windows[j].2` (either may be negative or run past the edge), every channel. One parallel
/// pass over the output planes on CPU f32 / f64 tensors; no gradient (an error elsewhere).
///
/// # Shapes
/// `src: [b, c, h, w]` -> `[windows.len(), c, side, side]`
pub fn crop_windows(
    src: &Tensor,
    windows: &[(usize, isize, isize)],
    side: usize,
) -> Result<Tensor> {
    let (b, c, h, w) = src.dims4()?;
    let fail = |msg: String| KernelError::InvalidArgs {
        op: "crop_windows",
        msg,
        input: src.shape().clone(),
        weight: Shape::from(windows.len()),
        params: format!("side {side}"),
    };
    if let Some(bad) = windows.iter().find(|win| win.0 >= b) {
        return Err(fail(format!("window {bad:?} names an image past the batch")));
    }
    if !train_kernels_supported(src) {
        return Err(fail("not a CPU f32 / f64 tensor".into()));
    }
    let src = src.contiguous()?;
    let (f32, f64) = (
        || cut_windows::<f32>(&src, windows, (c, h, w, side)),
        || cut_windows::<f64>(&src, windows, (c, h, w, side)),
    );
    Ok(by_dtype(src.dtype(), "crop_windows", f32, f64)?)
}

/// [`crop_windows`] of a contiguous CPU tensor of element type `T`.
fn cut_windows<T: Real>(
    src: &Tensor,
    windows: &[(usize, isize, isize)],
    (c, h, w, side): (usize, usize, usize, usize),
) -> candle_core::Result<Tensor> {
    let plane = side * side;
    let v = with_cpu_slices::<T, _, 1>("crop_windows", [(src, "source")], |[x]| {
        par_chunks_zeroed(windows.len() * c * plane, plane, |p, out| {
            cut_window(x, out, windows[p / c], p % c, (c, h, w, side))
        })
    })?;
    Tensor::from_vec(v, (windows.len(), c, side, side), src.device())
}

/// Channel `ch` of `window` (image, top row, left column) of `x` (`[_, c, h, w]`) into `out`
/// (`side x side`, zeroed; `side > 0`), for [`crop_windows`].
fn cut_window<T: Copy>(
    x: &[T],
    out: &mut [T],
    (n, top, left): (usize, isize, isize),
    ch: usize,
    (c, h, w, side): (usize, usize, usize, usize),
) {
    let map = &x[(n * c + ch) * h * w..][..h * w];
    // The columns of the window inside the map: [max(left, 0), min(left + side, w)).
    let (x0, x1) = (left.max(0), (left + side as isize).min(w as isize));
    for (py, row) in out.chunks_exact_mut(side).enumerate() {
        let y = top + py as isize;
        if y < 0 || y >= h as isize || x0 >= x1 {
            continue; // zeros
        }
        let src_row = &map[y as usize * w..][x0 as usize..x1 as usize];
        row[(x0 - left) as usize..(x1 - left) as usize].copy_from_slice(src_row);
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

    /// Every window, inside, across an edge, past a corner or wholly outside the map, equals its
    /// definition; an image past the batch is an error that names the op.
    #[test]
    fn crop_windows_cut_with_zeros_outside() {
        for dtype in [DType::F32, DType::F64] {
            let (b, c, h, w, side) = (2, 3, 5, 7, 4);
            let src = randn_var(&[b, c, h, w], dtype);
            let windows = [(0, 0, 0), (1, -2, 5), (0, 3, -3), (1, -4, 7), (0, 1, 2)];
            let got = crop_windows(&src, &windows, side).unwrap();
            assert_eq!(got.dims(), &[windows.len(), c, side, side]);
            let x =
                src.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let got =
                got.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for (j, &(n, top, left)) in windows.iter().enumerate() {
                for ch in 0..c {
                    for py in 0..side {
                        for px in 0..side {
                            let (y, xx) = (top + py as isize, left + px as isize);
                            let inside =
                                (0..h as isize).contains(&y) && (0..w as isize).contains(&xx);
                            let want = if inside {
                                x[((n * c + ch) * h + y as usize) * w + xx as usize]
                            } else {
                                0.0
                            };
                            assert_eq!(
                                got[((j * c + ch) * side + py) * side + px],
                                want,
                                "{dtype:?} window {j}"
                            );
                        }
                    }
                }
            }
        }
        let src = Tensor::zeros((2, 1, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let err = crop_windows(&src, &[(2, 0, 0)], 2).unwrap_err().to_string();
        assert!(err.contains("crop_windows"), "{err}");
    }
}
