//! A batch of matrices transposed into a contiguous copy, with its gradient, in parallel.
//!
//! Candle makes a transposed view contiguous with a strided copy that walks it element by
//! element on one thread, forward and (for the view's gradient) backward. The crop nets
//! flatten each crop channel-major, as PyTorch's flatten of `[c, l, l]`: their `[l * l, c]`
//! rows per crop and sample (272 matrices, 10 M elements at resnet18's sizes) become
//! `[c, l * l]`. [`transpose_copy`] is that copy, tile by tile in parallel, and its backward
//! the same copy of the gradient; a copy, so the same values as Candle's.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, WithDType};

use crate::cpu::{Real, by_dtype, par_chunks_zeroed, slice, train_kernels_supported};
use crate::error::Result;

/// Source columns per tile: 32 output rows written side by side, the source read in runs of 32.
const TILE: usize = 32;

/// `x` with its last two dimensions swapped, as a contiguous tensor: one parallel copy each way
/// on CPU f32 / f64 tensors, Candle's `transpose` + `contiguous` elsewhere.
///
/// # Shapes
/// `x: [..., r, c]` -> `[..., c, r]`
pub fn transpose_copy(x: &Tensor) -> Result<Tensor> {
    let rank = x.rank();
    if rank < 2 {
        return Ok(x.contiguous()?);
    }
    if !train_kernels_supported(x) {
        return Ok(x.transpose(rank - 2, rank - 1)?.contiguous()?);
    }
    Ok(x.contiguous()?.apply_op1(TransposeCopy)?)
}

/// The matrices `[g, r, c]` of `src` transposed into `[g, c, r]`; parallel over matrices and
/// over tiles of `TILE` output rows.
fn transpose_batch<T: WithDType>(src: &[T], g: usize, r: usize, c: usize) -> Vec<T> {
    if c.is_multiple_of(TILE) || g == 0 {
        // Tiles of whole `TILE`-row blocks never straddle two matrices.
        let tiles = c / TILE;
        return par_chunks_zeroed(g * r * c, TILE * r, |t, out: &mut [T]| {
            let (m, j0) = (t / tiles.max(1), (t % tiles.max(1)) * TILE);
            tile(&src[m * r * c..][..r * c], r, c, j0, out);
        });
    }
    // Otherwise one matrix per chunk, its tiles in turn.
    par_chunks_zeroed(g * r * c, r * c, |m, out: &mut [T]| {
        for (block, out) in out.chunks_mut(TILE * r).enumerate() {
            tile(&src[m * r * c..][..r * c], r, c, block * TILE, out);
        }
    })
}

/// Output rows `j0..j0 + out.len() / r` of the transpose of the `[r, c]` matrix `src`, filled
/// `TILE x TILE` tile by tile: the tile's source rows stay in the L1 cache while each output row
/// gets a contiguous run.
fn tile<T: WithDType>(src: &[T], r: usize, c: usize, j0: usize, out: &mut [T]) {
    for i0 in (0..r).step_by(TILE) {
        let i1 = (i0 + TILE).min(r);
        for (dj, row) in out.chunks_exact_mut(r).enumerate() {
            for (o, i) in row[i0..i1].iter_mut().zip(i0..i1) {
                *o = src[i * c + j0 + dj];
            }
        }
    }
}

/// `(g, r, c)` of a shape `[..., r, c]`.
fn dims(shape: &Shape) -> (usize, usize, usize) {
    let d = shape.dims();
    let (r, c) = (d[d.len() - 2], d[d.len() - 1]);
    (d[..d.len() - 2].iter().product(), r, c)
}

/// `shape` with its last two dimensions swapped.
fn swapped(shape: &Shape) -> Shape {
    let mut d = shape.dims().to_vec();
    let n = d.len();
    d.swap(n - 2, n - 1);
    Shape::from(d)
}

#[derive(Debug, Clone, Copy)]
struct TransposeCopy;

impl TransposeCopy {
    fn fwd<T: Real>(s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice::<T>(s, l, "transpose_copy", "input")?;
        let (g, r, c) = dims(l.shape());
        Ok((T::to_cpu_storage_owned(transpose_batch(x, g, r, c)), swapped(l.shape())))
    }
}

impl CustomOp1 for TransposeCopy {
    fn name(&self) -> &'static str {
        "aue-transpose-copy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        by_dtype(s.dtype(), "transpose_copy", || Self::fwd::<f32>(s, l), || Self::fwd::<f64>(s, l))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // The gradient of a transposed copy is the transposed copy of the gradient.
        Ok(Some(transpose_copy(grad).map_err(candle_core::Error::from)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_same_values, candle_grads, randn_var};
    use candle_core::DType;

    /// Values and gradient equal Candle's `transpose` + `contiguous`, in f32 and f64, for sides
    /// below, at and above the tile, and batches of several dimensions.
    #[test]
    fn equals_candle_transposed_copy() {
        for dtype in [DType::F32, DType::F64] {
            for dims in [&[3, 70][..], &[2, 64, 33], &[4, 5, 100, 7], &[3, 2, 64], &[1, 1]] {
                let x = randn_var(dims, dtype);
                let n = dims.len();
                let theirs = x.transpose(n - 2, n - 1).unwrap().contiguous().unwrap();
                let mine = transpose_copy(&x).unwrap();
                let what = format!("{dtype:?} {dims:?}");
                assert_same_values(&mine, &theirs, &what);
                let coef = randn_var(theirs.dims(), dtype);
                let (g, gt) = candle_grads(&mine, &theirs, &coef, &[&x]);
                assert_same_values(&g[0], &gt[0], &format!("{what}: gradient"));
            }
        }
    }
}
