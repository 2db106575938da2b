//! Max pooling with `-inf` padding and a gradient, in parallel over planes on the CPU.
//!
//! The model's max pools (the ResNet stem's 3x3 / stride 2 / padding 1, the EM branch's
//! kernel = stride pools) were Candle ops on one thread: a padded copy (two concatenations), an
//! `index_select` of every window's taps and a `max`, and backward `taps == max` (a u8 mask), its
//! cast, a multiply and an `index_add` into zeros. [`max_pool2d_train`] is one pass each way with
//! the same values: the gradient of an output goes to every tap that equals the max (ties
//! included, as Candle's `max` backward does; PyTorch picks one), added into the input gradient
//! in the order of the outputs (row-major, then the window's taps row-major), the order of
//! `index_add`.

use std::ops::Range;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::cpu::{
    Real, by_dtype, par_chunks_zeroed, slice, train_kernels_supported, with_cpu_slices,
};
use crate::error::{KernelError, Result};
use crate::params::ConvParams;

/// A square max-pool window: side `kernel`, step `stride`, `padding` values of `-inf` on every
/// side (PyTorch's `MaxPool2d(kernel, stride, padding)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolWindow {
    /// Side of the window.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// `-inf` rows / columns added on every side (below `kernel`).
    pub padding: usize,
}

/// A square max-pool window over one `h` x `w` plane: `-inf` padding, output `oh` x `ow`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pool {
    kernel: usize,
    stride: usize,
    padding: usize,
    h: usize,
    w: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
}

impl Pool {
    /// The pool of `x: [b, c, h, w]`, or an error naming `op` when the window does not fit.
    pub(crate) fn new(op: &'static str, x: &Tensor, win: PoolWindow) -> Result<Pool> {
        let PoolWindow { kernel, stride, padding } = win;
        let (_, _, h, w) = x.dims4()?;
        let p = ConvParams { stride, padding, dilation: 1 };
        let invalid = |msg: String| KernelError::InvalidArgs {
            op,
            msg,
            input: x.shape().clone(),
            weight: Shape::from(()),
            params: format!("kernel {kernel}, stride {stride}, padding {padding}"),
        };
        let (Some(oh), Some(ow)) = (p.output_size(h, kernel), p.output_size(w, kernel)) else {
            return Err(invalid("the window does not fit".into()));
        };
        if padding >= kernel {
            // A window of padding only would have no input to take the max of.
            return Err(invalid("padding must be below the kernel size".into()));
        }
        Ok(Pool { kernel, stride, padding, h, w, oh, ow })
    }

    /// Rows and columns of the input under output `(oy, ox)`'s window (clipped to the plane).
    fn window(&self, oy: usize, ox: usize) -> (Range<usize>, Range<usize>) {
        let axis = |o: usize, n: usize| {
            let start = (o * self.stride) as isize - self.padding as isize;
            start.max(0) as usize..((start + self.kernel as isize) as usize).min(n)
        };
        (axis(oy, self.h), axis(ox, self.w))
    }

    /// `out[oy * ow + ox]` = the max of its window of `img` (`-inf` for padding).
    ///
    /// Row by row of the output: the element-wise max of the window's input rows first (a
    /// vectorised pass over whole rows), then each output the max of its columns of that row.
    /// The max of a set does not depend on the order it is taken in (NaN aside, which `max`
    /// skips either way).
    pub(crate) fn forward_plane<T: Real>(&self, img: &[T], out: &mut [T]) {
        let w = self.w;
        let mut rowmax = vec![T::NEG_INFINITY; w];
        for (oy, out_row) in out.chunks_exact_mut(self.ow).enumerate() {
            let (rows, _) = self.window(oy, 0);
            rowmax.copy_from_slice(&img[rows.start * w..][..w]);
            for r in rows.start + 1..rows.end {
                for (m, &v) in rowmax.iter_mut().zip(&img[r * w..][..w]) {
                    *m = m.maximum(v);
                }
            }
            if (self.kernel, self.stride, self.padding) == (3, 2, 1) && w >= 2 {
                // ResNet's stem pool: window j is columns 2j - 1..=2j + 1, clipped; the same
                // maxima in the same order, without the window's bounds per output.
                let m = |a: T, b: T| a.maximum(b);
                let ow = out_row.len();
                out_row[0] = m(m(T::NEG_INFINITY, rowmax[0]), rowmax[1]);
                let inner = ow.min(w / 2);
                for j in 1..inner {
                    out_row[j] = m(
                        m(m(T::NEG_INFINITY, rowmax[2 * j - 1]), rowmax[2 * j]),
                        rowmax[2 * j + 1],
                    );
                }
                for (j, o) in out_row.iter_mut().enumerate().skip(inner.max(1)) {
                    let (_, cols) = self.window(0, j);
                    *o = rowmax[cols].iter().fold(T::NEG_INFINITY, |m, &v| m.maximum(v));
                }
                continue;
            }
            for (ox, o) in out_row.iter_mut().enumerate() {
                let (_, cols) = self.window(0, ox);
                *o = rowmax[cols].iter().fold(T::NEG_INFINITY, |m, &v| m.maximum(v));
            }
        }
    }

    /// Adds each output's gradient `g` to every tap of its window of `img` that equals its max
    /// `y`, into `dx` (zeros on entry). Row by row of the input under each output row, so that
    /// the window's bounds are computed once per row and column instead of once per tap.
    fn backward_plane<T: Real>(&self, img: &[T], y: &[T], g: &[T], dx: &mut [T]) {
        let w = self.w;
        let stem = (self.kernel, self.stride, self.padding) == (3, 2, 1);
        let cols: Vec<Range<usize>> = (0..self.ow).map(|ox| self.window(0, ox).1).collect();
        for oy in 0..self.oh {
            let (rows, _) = self.window(oy, 0);
            let (y_row, g_row) = (&y[oy * self.ow..][..self.ow], &g[oy * self.ow..][..self.ow]);
            for r in rows {
                let (row, d_row) = (&img[r * w..][..w], &mut dx[r * w..][..w]);
                if stem {
                    backward_row_3s2p1(row, y_row, g_row, d_row);
                    continue;
                }
                for ((cols, &m), &go) in cols.iter().zip(y_row).zip(g_row) {
                    // Branch-free (which taps hold the max is data, a branch on it mispredicts):
                    // adding +0 to a tap that is not the max leaves it as it is, since `dx`
                    // starts at +0 and a sum from +0 never becomes -0.
                    for (&v, d) in row[cols.clone()].iter().zip(&mut d_row[cols.clone()]) {
                        *d += if v == m { go } else { T::zero() };
                    }
                }
            }
        }
    }
}

/// [`Pool::backward_plane`]'s inner loop for one input row under one output row of the 3 / 2 / 1
/// window (ResNet's stem pool), the same additions in the same order per element: column `2j`
/// lies in window `j` only, column `2j + 1` in windows `j` and `j + 1` (added in that order).
/// Two passes over the row (even, odd columns) instead of one short loop per window.
fn backward_row_3s2p1<T: Real>(row: &[T], y_row: &[T], g_row: &[T], d_row: &mut [T]) {
    let (w, ow) = (row.len(), y_row.len());
    let tap = |v: T, m: T, g: T| if v == m { g } else { T::zero() };
    for j in 0..ow.min(w.div_ceil(2)) {
        d_row[2 * j] += tap(row[2 * j], y_row[j], g_row[j]);
    }
    let odd = w / 2;
    let both = odd.min(ow.saturating_sub(1));
    for j in 0..both {
        let v = row[2 * j + 1];
        let d = &mut d_row[2 * j + 1];
        *d = *d + tap(v, y_row[j], g_row[j]) + tap(v, y_row[j + 1], g_row[j + 1]);
    }
    for j in both..odd.min(ow) {
        d_row[2 * j + 1] += tap(row[2 * j + 1], y_row[j], g_row[j]);
    }
}

/// Max pooling with a square window, `-inf` padding (the padding never wins, as in PyTorch) and
/// Candle's max gradient (every tap equal to the max gets the output's gradient); on CPU f32 / f64
/// tensors one parallel pass each way, elsewhere [`max_pool2d_train_ops`].
///
/// # Shapes
/// `x: [b, c, h, w]` -> `[b, c, (h + 2p - k) / s + 1, (w + 2p - k) / s + 1]`
pub fn max_pool2d_train(x: &Tensor, win: PoolWindow) -> Result<Tensor> {
    let pool = Pool::new("max_pool2d_train", x, win)?;
    if !train_kernels_supported(x) {
        return max_pool2d_train_ops(x, win);
    }
    Ok(x.contiguous()?.apply_op1(MaxPool(pool))?)
}

/// [`max_pool2d_train`] as differentiable Candle ops (other devices; the definition the kernel is
/// tested against): the map padded with `-inf`, every window's taps gathered by one
/// `index_select`, and their `max`. (Candle's own `max_pool2d` has no padding, and its backward
/// is wrong when kernel != stride.)
pub fn max_pool2d_train_ops(x: &Tensor, win: PoolWindow) -> Result<Tensor> {
    let pool = Pool::new("max_pool2d_train", x, win)?;
    let PoolWindow { kernel, stride, padding } = win;
    let (b, c, h, w) = x.dims4()?;
    let (hp, wp) = (h + 2 * padding, w + 2 * padding);
    let x = if padding > 0 {
        let full = |shape: (usize, usize, usize, usize)| {
            Tensor::full(f32::NEG_INFINITY, shape, x.device())?.to_dtype(x.dtype())
        };
        let rows = full((b, c, padding, w))?;
        let x = Tensor::cat(&[&rows, x, &rows], 2)?; // [b, c, hp, w]
        let cols = full((b, c, hp, padding))?;
        Tensor::cat(&[&cols, &x, &cols], 3)? // [b, c, hp, wp]
    } else {
        x.clone()
    };
    let mut ids = Vec::with_capacity(pool.oh * pool.ow * kernel * kernel);
    for oy in 0..pool.oh {
        for ox in 0..pool.ow {
            for ky in 0..kernel {
                for kx in 0..kernel {
                    ids.push(((oy * stride + ky) * wp + ox * stride + kx) as u32);
                }
            }
        }
    }
    let n = ids.len();
    let ids = Tensor::from_vec(ids, n, x.device())?;
    let taps = x.reshape((b, c, hp * wp))?.index_select(&ids, 2)?; // [b, c, oh * ow * k * k]
    Ok(taps.reshape((b, c, pool.oh, pool.ow, kernel * kernel))?.max(4)?)
}

#[derive(Debug, Clone, Copy)]
struct MaxPool(Pool);

impl MaxPool {
    fn plane_in(&self) -> usize {
        self.0.h * self.0.w
    }

    fn plane_out(&self) -> usize {
        self.0.oh * self.0.ow
    }

    fn fwd<T: Real>(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice::<T>(s, l, "max_pool2d_train", "input")?;
        let (pin, pout) = (self.plane_in(), self.plane_out());
        let (b, c, _, _) = l.shape().dims4()?;
        let y = par_chunks_zeroed::<T>(b * c * pout, pout, |p, out| {
            self.0.forward_plane(&x[p * pin..(p + 1) * pin], out)
        });
        Ok((T::to_cpu_storage_owned(y), Shape::from((b, c, self.0.oh, self.0.ow))))
    }

    fn bwd_as<T: Real>(
        &self,
        x: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (pin, pout) = (self.plane_in(), self.plane_out());
        let parts = [(x, "input"), (y, "output"), (grad, "gradient")];
        let dx = with_cpu_slices("max_pool2d_train", parts, |[xv, yv, gv]: [&[T]; 3]| {
            par_chunks_zeroed::<T>(xv.len(), pin, |p, d| {
                let outs = p * pout..(p + 1) * pout;
                self.0.backward_plane(&xv[p * pin..(p + 1) * pin], &yv[outs.clone()], &gv[outs], d)
            })
        })?;
        Tensor::from_vec(dx, x.shape(), x.device())
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "aue-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = "max_pool2d_train";
        by_dtype(s.dtype(), op, || self.fwd::<f32>(s, l), || self.fwd::<f64>(s, l))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let (f32, f64) = (|| self.bwd_as::<f32>(x, y, &grad), || self.bwd_as::<f64>(x, y, &grad));
        Ok(Some(by_dtype(x.dtype(), "max_pool2d_train", f32, f64)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_same_values, candle_grads, randn_var};
    use candle_core::DType;

    /// Values and the input gradient equal the Candle-ops definition bit for bit, in f32 and
    /// f64, for the model's pools (3/2/1 on odd and even sides, kernel = stride) and with ties
    /// (a plane of zeros and repeated values, as after a ReLU), where every tied tap gets the
    /// gradient.
    #[test]
    fn max_pool_equals_the_candle_ops_definition() {
        for dtype in [DType::F32, DType::F64] {
            for (dims, k, s, p) in [
                ([2, 3, 15, 12], 3, 2, 1),
                ([2, 3, 16, 16], 3, 2, 1),
                ([3, 2, 16, 8], 4, 4, 0),
                ([1, 2, 6, 6], 2, 2, 0),
            ] {
                let x = randn_var(&dims, dtype);
                // Sample 0 rounded to halves (ties), then channel 0 zeros (a plane of ties).
                let first = x.as_tensor().narrow(0, 0, 1).unwrap();
                x.slice_set(&(first * 2.).unwrap().round().unwrap(), 0, 0).unwrap();
                let plane = x.as_tensor().narrow(1, 0, 1).unwrap().zeros_like().unwrap();
                x.slice_set(&plane, 1, 0).unwrap();
                let win = PoolWindow { kernel: k, stride: s, padding: p };
                let mine = max_pool2d_train(&x, win).unwrap();
                let theirs = max_pool2d_train_ops(&x, win).unwrap();
                assert_same_values(&mine, &theirs, &format!("{dims:?} {k}/{s}/{p}"));
                let coef = randn_var(mine.dims(), dtype);
                let (g, gt) = candle_grads(&mine, &theirs, &coef, &[&x]);
                assert_same_values(&g[0], &gt[0], &format!("{dims:?} {k}/{s}/{p} gradient"));
            }
        }
    }

    #[test]
    fn windows_that_do_not_fit_are_errors() {
        let x = randn_var(&[1, 1, 2, 2], DType::F32);
        let err = max_pool2d_train(&x, PoolWindow { kernel: 3, stride: 1, padding: 0 });
        let err = err.unwrap_err().to_string();
        assert!(err.contains("max_pool2d_train") && err.contains("does not fit"), "{err}");
        assert!(max_pool2d_train(&x, PoolWindow { kernel: 2, stride: 2, padding: 2 }).is_err());
    }
}
