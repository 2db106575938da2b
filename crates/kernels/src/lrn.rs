//! The reference's local response norm over a channel and the one before it, as one training op
//! with its gradient, in parallel on the CPU:
//! `y_c = x_c / p_c`, `p_c = (k + alpha s_c)^beta`, `s_c = x_c^2 + x_{c-1}^2` (`x_{-1} = 0`).
//!
//! As Candle ops (`sqr`, a shifted copy, `add`, `affine`, `powf`, `div`) this is six passes
//! forward and about fifteen backward, every one on one thread, with a full-size tensor kept per
//! step. Here it is one pass forward and two backward (the first computes each element's share
//! of the `s` gradient once, the second combines a channel's with the next channel's), split by
//! planes between the pool's threads. Only `p` is kept for the backward pass.
//!
//! Every value is computed by the same operations in the same order as Candle's ops and its
//! backward pass compute them, so the results equal those of the op chain bit for bit (up to the
//! sign of a zero gradient): forward `x / (s * alpha + k)^beta`; backward, for the gradient `g`,
//! - `gp = -((g * x) / (p * p))` (the divisor's gradient),
//! - `gs = ((gp * a^(beta - 1)) * beta) * alpha` with `a = s * alpha + k`,
//! - `gx_c = g / p + (x * (gs_c + gs_{c+1})) * 2` (`gs_C = 0`).

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::cpu::{MIN_TASK, Real, by_dtype, par_chunks_zeroed, par_zip, slice, with_cpu_slices};
use crate::error::{KernelError, Result};

/// The norm's constants: `y_c = x_c / (k + alpha (x_{c-1}^2 + x_c^2))^beta`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrnParams {
    pub alpha: f64,
    pub beta: f64,
    pub k: f64,
}

/// [`LrnParams`]'s norm of `x: [b, c, h, w]` (CPU f32 / f64, see
/// [`crate::train_kernels_supported`]) with its gradient; the result has `x`'s shape.
pub fn lrn_prev_channel_train(x: &Tensor, params: LrnParams) -> Result<Tensor> {
    let invalid = |msg: String| KernelError::InvalidArgs {
        op: "lrn_prev_channel_train",
        msg,
        input: x.shape().clone(),
        weight: Shape::from(()),
        params: format!("{params:?}"),
    };
    if x.rank() != 4 {
        return Err(invalid("the input must be [b, c, h, w]".into()));
    }
    if !crate::train_kernels_supported(x) {
        return Err(invalid(format!("needs a CPU f32 or f64 tensor, got {:?}", x.dtype())));
    }
    Ok(x.contiguous()?.apply_op1(Lrn { params, p: Mutex::new(None) })?)
}

struct Lrn {
    params: LrnParams,
    /// `p` of the forward pass, for the backward.
    p: Mutex<Option<CpuStorage>>,
}

/// Channels and the plane size of a `[b, c, h, w]` layout.
fn planes(l: &Layout) -> candle_core::Result<(usize, usize)> {
    let (_, c, h, w) = l.shape().dims4()?;
    Ok((c, h * w))
}

/// Elements per parallel task (whole planes of `plane` elements) and planes per task.
fn chunk(plane: usize) -> (usize, usize) {
    let planes = MIN_TASK.div_ceil(plane.max(1));
    (plane * planes, planes)
}

/// `s = x_c^2 + x_{c-1}^2` at `i` of plane `pi` (channel `ch`) of `x`.
#[inline(always)]
fn s_at<T: Real>(x: &[T], pi: usize, ch: usize, plane: usize, i: usize) -> T {
    let v = x[pi * plane + i];
    let prev = if ch > 0 { x[(pi - 1) * plane + i] } else { T::zero() };
    v * v + prev * prev
}

impl Lrn {
    fn constants<T: Real>(&self) -> (T, T, T) {
        let LrnParams { alpha, beta, k } = self.params;
        (T::from_f64(alpha), T::from_f64(beta), T::from_f64(k))
    }

    fn fwd<T: Real>(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice::<T>(s, l, "lrn", "input")?;
        let (c, plane) = planes(l)?;
        let (alpha, beta, k) = self.constants::<T>();
        let (n, (per_task, planes_per_task)) = (x.len(), chunk(plane));
        let p: Vec<T> = par_chunks_zeroed(n, per_task, |idx, out: &mut [T]| {
            let first = idx * planes_per_task;
            for (j, row) in out.chunks_mut(plane).enumerate() {
                let pi = first + j;
                for (i, o) in row.iter_mut().enumerate() {
                    *o = (s_at(x, pi, pi % c, plane, i) * alpha + k).powf(beta);
                }
            }
        });
        let y = par_zip(x, &p, |v, p| v / p);
        *self.p.lock().map_err(|_| candle_core::Error::Msg("lrn: poisoned lock".into()))? =
            Some(T::to_cpu_storage_owned(p));
        Ok((T::to_cpu_storage_owned(y), l.shape().clone()))
    }

    fn bwd_as<T: Real>(&self, x: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
        let guard =
            self.p.lock().map_err(|_| candle_core::Error::Msg("lrn: poisoned lock".into()))?;
        let Some(p) = guard.as_ref() else { candle_core::bail!("lrn: backward before forward") };
        let Ok(p) = p.as_slice::<T>() else { candle_core::bail!("lrn: p is not {:?}", T::DTYPE) };
        let (_, c, h, w) = x.dims4()?;
        let plane = h * w;
        let (alpha, beta, k) = self.constants::<T>();
        let beta_1 = T::from_f64(self.params.beta - 1.0);
        let two = T::from_f64(2.0);
        let (per_task, planes_per_task) = chunk(plane);
        let gx =
            with_cpu_slices("lrn", [(x, "input"), (grad, "gradient")], |[x, g]: [&[T]; 2]| {
                let n = x.len();
                if p.len() != n || g.len() != n {
                    return None;
                }
                // gs per element: the gradient of s_c through p_c.
                let gs: Vec<T> = par_chunks_zeroed(n, per_task, |idx, out: &mut [T]| {
                    let first = idx * planes_per_task;
                    for (j, row) in out.chunks_mut(plane).enumerate() {
                        let pi = first + j;
                        let at = pi * plane;
                        for (i, o) in row.iter_mut().enumerate() {
                            let (gv, xv, pv) = (g[at + i], x[at + i], p[at + i]);
                            let a = s_at(x, pi, pi % c, plane, i) * alpha + k;
                            let gp = T::zero() - (gv * xv) / (pv * pv);
                            *o = (gp * a.powf(beta_1)) * beta * alpha;
                        }
                    }
                });
                // gx_c = g / p + (x * (gs_c + gs_{c+1})) * 2.
                Some(par_chunks_zeroed(n, per_task, |idx, out: &mut [T]| {
                    let first = idx * planes_per_task;
                    for (j, row) in out.chunks_mut(plane).enumerate() {
                        let pi = first + j;
                        let at = pi * plane;
                        let next = (pi % c + 1 < c).then(|| &gs[at + plane..at + 2 * plane]);
                        for (i, o) in row.iter_mut().enumerate() {
                            let gsq = gs[at + i] + next.map_or(T::zero(), |q| q[i]);
                            *o = g[at + i] / p[at + i] + (x[at + i] * gsq) * two;
                        }
                    }
                }))
            })?;
        let Some(gx) = gx else {
            candle_core::bail!("lrn: the gradient's size differs from the input's")
        };
        Tensor::from_vec(gx, x.shape(), x.device())
    }
}

impl CustomOp1 for Lrn {
    fn name(&self) -> &'static str {
        "aue-lrn-prev-channel"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        by_dtype(s.dtype(), "lrn", || self.fwd::<f32>(s, l), || self.fwd::<f64>(s, l))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let (f32, f64) = (|| self.bwd_as::<f32>(x, &grad), || self.bwd_as::<f64>(x, &grad));
        Ok(Some(by_dtype(x.dtype(), "lrn", f32, f64)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    const P: LrnParams = LrnParams { alpha: 1e-4, beta: 0.75, k: 1.0 };

    /// The op chain the model used before (and uses off the CPU).
    fn by_ops(x: &Tensor) -> Tensor {
        let c = x.dim(1).unwrap();
        let sq = x.sqr().unwrap();
        let s = if c > 1 {
            let prev = sq.narrow(1, 0, c - 1).unwrap().pad_with_zeros(1, 1, 0).unwrap();
            (&sq + prev).unwrap()
        } else {
            sq
        };
        x.div(&s.affine(P.alpha, P.k).unwrap().powf(P.beta).unwrap()).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u64> {
        let t = t.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
        t.to_vec1::<f64>().unwrap().iter().map(|v| v.to_bits()).collect()
    }

    /// Values, and the input gradient under a random upstream gradient, equal the op chain's bit
    /// for bit, in f32 and f64, for one and several channels, on a pool of 3 threads (planes split
    /// between tasks) and inline.
    #[test]
    fn equals_the_op_chain_bit_for_bit() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for dtype in [DType::F32, DType::F64] {
            // Large values too, so that alpha s is not negligible next to k.
            for dims in [(2, 5, 3, 4), (3, 1, 2, 2), (2, 7, 40, 40)] {
                let dev = Device::Cpu;
                let x = (Tensor::randn(0f64, 1., dims, &dev).unwrap() * 60.)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let up = Tensor::randn(0f64, 1., dims, &dev).unwrap().to_dtype(dtype).unwrap();
                let v = Var::from_tensor(&x).unwrap();
                let want = by_ops(v.as_tensor());
                let want_g = want.mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
                let want_g = want_g.get(v.as_tensor()).unwrap().clone();
                let (got, got_g) = pool.install(|| {
                    let got = lrn_prev_channel_train(v.as_tensor(), P).unwrap();
                    let g = got.mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
                    (got, g.get(v.as_tensor()).unwrap().clone())
                });
                assert_eq!(bits(&got), bits(&want), "{dtype:?} {dims:?} values");
                assert_eq!(bits(&got_g), bits(&want_g), "{dtype:?} {dims:?} gradient");
            }
        }
    }

    #[test]
    fn rejects_other_ranks() {
        let x = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let err = lrn_prev_channel_train(&x, P).unwrap_err().to_string();
        assert!(err.contains("[b, c, h, w]"), "{err}");
    }
}
