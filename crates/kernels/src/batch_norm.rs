//! Train-mode batch normalisation as one op on the CPU, forward and backward.
//!
//! Written as Candle ops, a train-mode BatchNorm is a mean and a variance over every dim but the
//! channel (Candle reduces over leading dims with a strided fold, which is slow), four broadcast
//! ops, and in the backward pass each broadcast's gradient reduced over the same dims again: about
//! a third of a ResNet training step on the CPU. Here the statistics take two passes over the
//! data, the output one, and the backward two (both of its sums in one, then `dx`), each over
//! contiguous runs per (sample, channel), in parallel, with f64 accumulators (PyTorch's
//! accumulator type for f32 on the CPU), eight partial sums per run (`lane_sum2`).
//!
//! The formulas are PyTorch's CPU ones (`aten/src/ATen/native/Normalization.cpp`):
//! forward `y = x * a + s` with `a = w / sqrt(var + eps)`, `s = bias - mean * a` (biased var);
//! backward with `M` elements per channel, `dot = sum(dy * (x - mean))`:
//! `dbias = sum(dy)`, `dw = dot * invstd`,
//! `dx = (dy - sum(dy) / M - (x - mean) * dot * invstd^2 / M) * w * invstd`.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use crate::cpu::{MIN_TASK, par_chunks_from, slice};
use crate::error::{KernelError, Result};

/// Per-channel statistics of the forward pass, shared by the op (for its backward) and the caller.
#[derive(Debug, Default)]
struct Saved {
    mean: Vec<f64>,
    invstd: Vec<f64>,
    /// Biased variance.
    var: Vec<f64>,
}

/// Whether [`batch_norm_train`] runs on `x`: a CPU f32 or f64 tensor. (Other devices keep
/// Candle's ops, which are fast enough there.)
pub fn batch_norm_supported(x: &Tensor) -> bool {
    crate::cpu::train_kernels_supported(x)
}

/// Train-mode batch norm with batch statistics, as PyTorch's `F.batch_norm(training=True)`.
///
/// Returns the output, the batch mean and the *biased* batch variance (`[c]`, not part of any
/// graph; running statistics take the unbiased one). Gradients reach `x`, `weight` and `bias`.
///
/// # Shapes
/// `x: [outer, c, inner]`, `weight`, `bias: [c]` -> `([outer, c, inner], [c], [c])`
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let invalid = |msg: String| KernelError::InvalidArgs {
        op: "batch_norm_train",
        msg,
        input: x.shape().clone(),
        weight: weight.shape().clone(),
        params: format!("eps {eps}"),
    };
    let (outer, c, inner) =
        x.dims3().map_err(|_| invalid("the input must be [outer, c, inner]".into()))?;
    if weight.dims() != [c] || bias.dims() != [c] {
        return Err(invalid(format!("weight and bias must be [{c}], bias is {:?}", bias.dims())));
    }
    if !batch_norm_supported(x) || weight.dtype() != x.dtype() || bias.dtype() != x.dtype() {
        return Err(invalid("needs f32 or f64 tensors of one dtype on the CPU".into()));
    }
    if outer * inner < 2 {
        return Err(invalid("needs more than one value per channel".into()));
    }
    let saved = Arc::new(Mutex::new(Saved::default()));
    let op = BatchNormOp { eps, outer, c, inner, saved: saved.clone() };
    // Contiguous inputs, so that the kernels see plain slices.
    let (x, weight, bias) = (x.contiguous()?, weight.contiguous()?, bias.contiguous()?);
    let y = x.apply_op3(&weight, &bias, op)?;
    let s = saved.lock().map_err(|_| invalid("poisoned lock".into()))?;
    let stat = |v: &[f64]| -> Result<Tensor> {
        Ok(Tensor::from_vec(v.to_vec(), c, x.device())?.to_dtype(x.dtype())?)
    };
    Ok((y, stat(&s.mean)?, stat(&s.var)?))
}

/// Partial sums per run of the statistics: independent chains, so that the f64 adds do not
/// each wait for the previous one (one running sum adds one element per add latency).
const SUM_LANES: usize = 8;

/// `sum_i f(xs[i])` in f64, element `i` into partial sum `i % SUM_LANES` (the tail into its
/// own), the partial sums then added pairwise: a fixed order, the same at any thread count.
#[inline]
fn lane_sum<T: Copy>(xs: &[T], f: impl Fn(T) -> f64) -> f64 {
    lane_sum2(xs, xs, |x, _| [f(x), 0.0])[0]
}

/// Two sums over the pairs `(xs[i], ys[i])` at once, as [`lane_sum`].
#[inline]
fn lane_sum2<A: Copy, B: Copy>(xs: &[A], ys: &[B], f: impl Fn(A, B) -> [f64; 2]) -> [f64; 2] {
    let n = xs.len().min(ys.len());
    let whole = n - n % SUM_LANES;
    let mut acc = [[0f64; SUM_LANES]; 2];
    for (a, b) in xs[..whole].chunks_exact(SUM_LANES).zip(ys[..whole].chunks_exact(SUM_LANES)) {
        for l in 0..SUM_LANES {
            let [p, q] = f(a[l], b[l]);
            acc[0][l] += p;
            acc[1][l] += q;
        }
    }
    let mut tail = [0f64; 2];
    for (&a, &b) in xs[whole..n].iter().zip(&ys[whole..n]) {
        let [p, q] = f(a, b);
        tail[0] += p;
        tail[1] += q;
    }
    let fold = |a: &[f64; SUM_LANES]| {
        let h: [f64; 4] = std::array::from_fn(|i| a[i] + a[i + 4]);
        (h[0] + h[2]) + (h[1] + h[3])
    };
    [fold(&acc[0]) + tail[0], fold(&acc[1]) + tail[1]]
}

#[derive(Debug, Clone)]
struct BatchNormOp {
    eps: f64,
    outer: usize,
    c: usize,
    inner: usize,
    saved: Arc<Mutex<Saved>>,
}

impl BatchNormOp {
    /// The elements of run `r` (sample `r / c`, channel `r % c`).
    fn run(&self, r: usize) -> Range<usize> {
        r * self.inner..(r + 1) * self.inner
    }

    /// `sum over samples n of f(channel, run)`, per channel.
    fn per_channel(&self, f: impl Fn(usize, Range<usize>) -> f64 + Sync) -> Vec<f64> {
        self.per_channel2(|ch, r| [f(ch, r), 0.0]).into_iter().map(|[s, _]| s).collect()
    }

    /// Two sums at once, as [`Self::per_channel`] (one pass over the runs for both).
    fn per_channel2(&self, f: impl Fn(usize, Range<usize>) -> [f64; 2] + Sync) -> Vec<[f64; 2]> {
        let (outer, c) = (self.outer, self.c);
        let per_task = (MIN_TASK / (self.inner * outer)).max(1);
        (0..c)
            .into_par_iter()
            .with_min_len(per_task)
            .map(|ch| {
                (0..outer)
                    .map(|n| f(ch, self.run(n * c + ch)))
                    .fold([0.0; 2], |[a, b], [x, y]| [a + x, b + y])
            })
            .collect()
    }

    fn forward<T: WithDType>(&self, x: &[T], w: &[T], b: &[T]) -> Vec<T> {
        let c = self.c;
        let m = (self.outer * self.inner) as f64;
        let mean: Vec<f64> = self
            .per_channel(|_, r| lane_sum(&x[r], |v| v.to_f64()))
            .into_iter()
            .map(|s| s / m)
            .collect();
        let var: Vec<f64> = self
            .per_channel(|ch, r| lane_sum(&x[r], |v| (v.to_f64() - mean[ch]).powi(2)))
            .into_iter()
            .map(|s| s / m)
            .collect();
        let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        // y = x * a + s with a and s rounded to the dtype, as PyTorch's CPU kernel does.
        let a: Vec<f64> =
            (0..c).map(|ch| T::from_f64(invstd[ch] * w[ch].to_f64()).to_f64()).collect();
        let s: Vec<f64> = (0..c)
            .map(|ch| T::from_f64(b[ch].to_f64() - mean[ch] * invstd[ch] * w[ch].to_f64()).to_f64())
            .collect();
        let y = par_chunks_from(x.len(), self.inner, |r| {
            let (a, s) = (a[r % c], s[r % c]);
            x[self.run(r)].iter().map(move |v| T::from_f64(v.to_f64() * a + s))
        });
        if let Ok(mut saved) = self.saved.lock() {
            *saved = Saved { mean, invstd, var };
        }
        y
    }

    /// `(dx, dw, dbias)` from the statistics the forward pass saved.
    fn backward<T: WithDType>(
        &self,
        x: &[T],
        w: &[T],
        dy: &[T],
    ) -> candle_core::Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let c = self.c;
        let m = (self.outer * self.inner) as f64;
        let saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch_norm_train: poisoned lock".into()))?;
        if saved.mean.len() != c {
            candle_core::bail!("batch_norm_train: backward before forward");
        }
        let (mean, invstd) = (&saved.mean, &saved.invstd);
        // Per channel: the sum of dy and of (x - mean) dy, in one pass over both.
        let sums = self.per_channel2(|ch, r| {
            lane_sum2(&x[r.clone()], &dy[r], |x, g| {
                let g = g.to_f64();
                [g, (x.to_f64() - mean[ch]) * g]
            })
        });
        let (sum_dy, dot): (Vec<f64>, Vec<f64>) = sums.into_iter().map(|[a, b]| (a, b)).unzip();
        let dx = par_chunks_from(x.len(), self.inner, |r| {
            let ch = r % c;
            let k = dot[ch] * invstd[ch] * invstd[ch] / m;
            let g_mean = sum_dy[ch] / m;
            let scale = w[ch].to_f64() * invstd[ch];
            let mean = mean[ch];
            let run = self.run(r);
            x[run.clone()].iter().zip(&dy[run]).map(move |(xv, g)| {
                let centred = xv.to_f64() - mean;
                T::from_f64((g.to_f64() - g_mean - centred * k) * scale)
            })
        });
        let dw = (0..c).map(|ch| T::from_f64(dot[ch] * invstd[ch])).collect();
        let db = sum_dy.iter().map(|&s| T::from_f64(s)).collect();
        Ok((dx, dw, db))
    }
}

impl BatchNormOp {
    fn cpu_fwd_as<T: WithDType>(
        &self,
        (x, x_layout): (&CpuStorage, &Layout),
        (w, w_layout): (&CpuStorage, &Layout),
        (b, b_layout): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x_data = slice::<T>(x, x_layout, "batch_norm_train", "input")?;
        let y = self.forward(
            x_data,
            slice::<T>(w, w_layout, "batch_norm_train", "weight")?,
            slice::<T>(b, b_layout, "batch_norm_train", "bias")?,
        );
        Ok((T::to_cpu_storage_owned(y), x_layout.shape().clone()))
    }

    fn bwd_as<T: WithDType>(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (dev, c) = (x.device().clone(), self.c);
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(gs)) = (&*xs, &*ws, &*gs) else {
            candle_core::bail!("batch_norm_train: the backward pass needs CPU tensors")
        };
        let (dx, dw, db) = self.backward(
            slice::<T>(xs, xl, "batch_norm_train", "input")?,
            slice::<T>(ws, wl, "batch_norm_train", "weight")?,
            slice::<T>(gs, gl, "batch_norm_train", "gradient")?,
        )?;
        Ok((
            Tensor::from_vec(dx, x.shape(), &dev)?,
            Tensor::from_vec(dw, c, &dev)?,
            Tensor::from_vec(db, c, &dev)?,
        ))
    }
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "aue-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let args = ((x, x_layout), (w, w_layout), (b, b_layout));
        match x.dtype() {
            DType::F32 => self.cpu_fwd_as::<f32>(args.0, args.1, args.2),
            DType::F64 => self.cpu_fwd_as::<f64>(args.0, args.1, args.2),
            other => candle_core::bail!("batch_norm_train: {other:?} input (f32 or f64 only)"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dx, dw, db) = match x.dtype() {
            DType::F32 => self.bwd_as::<f32>(x, w, &grad)?,
            DType::F64 => self.bwd_as::<f64>(x, w, &grad)?,
            other => candle_core::bail!("batch_norm_train: {other:?} input (f32 or f64 only)"),
        };
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Eval-mode batch norm folded into one scale and shift per channel, `x * scale + shift`
/// (each product rounded, then the sum, as Candle's `broadcast_mul` then `broadcast_add`), in
/// one parallel pass over CPU f32 / f64 tensors; Candle's two broadcast ops elsewhere, and
/// whenever an argument tracks a gradient (this pass has no backward: it is for frozen parts,
/// e.g. stage 3's backbone, whose two passes Candle ran op by op).
///
/// # Shapes
/// `x: [b, c, ...]`, `scale`, `shift`: `[c]` or keep-dim `[1, c, 1, ...]` -> same as `x`
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    let c = x.dim(1)?;
    let fits = |t: &Tensor| t.elem_count() == c && t.dtype() == x.dtype();
    if !fits(scale) || !fits(shift) {
        return Err(KernelError::InvalidArgs {
            op: "channel_affine",
            msg: format!("scale and shift must hold {c} {:?} values", x.dtype()),
            input: x.shape().clone(),
            weight: scale.shape().clone(),
            params: format!("shift {:?}", shift.shape()),
        });
    }
    let tracked = x.track_op() || scale.track_op() || shift.track_op();
    if tracked || !crate::cpu::train_kernels_supported(x) || x.rank() < 2 {
        let keep: Vec<usize> = (0..x.rank()).map(|d| if d == 1 { c } else { 1 }).collect();
        let (s, t) = (scale.reshape(keep.as_slice())?, shift.reshape(keep.as_slice())?);
        return Ok(x.broadcast_mul(&s)?.broadcast_add(&t)?);
    }
    let inner: usize = x.dims()[2..].iter().product();
    fn go<T: WithDType>(x: &[T], s: &[T], t: &[T], c: usize, inner: usize) -> Vec<T> {
        // Chunks of whole planes (one channel of one sample each).
        let inner = inner.max(1);
        par_chunks_from(x.len(), inner, |i| {
            let (s, t) = (s[i % c], t[i % c]);
            x[i * inner..(i + 1) * inner].iter().map(move |&v| v * s + t)
        })
    }
    let (x, s, t) = (x.contiguous()?, scale.flatten_all()?, shift.flatten_all()?);
    let y = match x.dtype() {
        DType::F32 => {
            let (s, t) = (s.to_vec1::<f32>()?, t.to_vec1::<f32>()?);
            let y = crate::cpu::with_cpu_slices("channel_affine", [(&x, "input")], |[x]| {
                go(x, &s, &t, c, inner)
            })?;
            Tensor::from_vec(y, x.shape(), x.device())?
        }
        _ => {
            let (s, t) = (s.to_vec1::<f64>()?, t.to_vec1::<f64>()?);
            let y = crate::cpu::with_cpu_slices("channel_affine", [(&x, "input")], |[x]| {
                go(x, &s, &t, c, inner)
            })?;
            Tensor::from_vec(y, x.shape(), x.device())?
        }
    };
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The same batch norm written with Candle ops (differentiable): the definition.
    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Tensor {
        let (_, c, _) = x.dims3().unwrap();
        let mean = x.mean_keepdim(2).unwrap().mean_keepdim(0).unwrap();
        let centred = x.broadcast_sub(&mean).unwrap();
        let var = centred.sqr().unwrap().mean_keepdim(2).unwrap().mean_keepdim(0).unwrap();
        let inv = (var + eps).unwrap().sqrt().unwrap().recip().unwrap();
        let w = w.reshape((1, c, 1)).unwrap();
        let b = b.reshape((1, c, 1)).unwrap();
        centred.broadcast_mul(&inv.broadcast_mul(&w).unwrap()).unwrap().broadcast_add(&b).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        let n = b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        d / n.max(1e-30)
    }

    /// f64: outputs, statistics and all three gradients equal the definition's to rounding, for
    /// the layouts the model uses ([B, C, HW], [B, C, 1], [1, C, B]).
    /// `channel_affine` equals Candle's `x.broadcast_mul(scale)?.broadcast_add(shift)` bit for
    /// bit, in f32 and f64, for [b, c] and [b, c, h, w] inputs; with a tracked input it is those
    /// ops (so the gradient flows).
    #[test]
    fn channel_affine_equals_candle_ops() {
        for dtype in [DType::F32, DType::F64] {
            for dims in [&[4, 6][..], &[3, 5, 17, 19], &[2, 3, 1, 1]] {
                let r = |d: &[usize]| {
                    Tensor::randn(0f32, 1., d, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
                };
                let (x, c) = (r(dims), dims[1]);
                let keep: Vec<usize> =
                    (0..dims.len()).map(|d| if d == 1 { c } else { 1 }).collect();
                let (s, t) = (r(&keep), r(&keep));
                let want = x.broadcast_mul(&s).unwrap().broadcast_add(&t).unwrap();
                let got = channel_affine(&x, &s, &t).unwrap();
                let flat = |t: &Tensor| {
                    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
                };
                assert_eq!(flat(&got), flat(&want), "{dtype:?} {dims:?}");
                assert_eq!(got.dims(), dims);
                let v = Var::from_tensor(&x).unwrap();
                let y = channel_affine(&v, &s, &t).unwrap();
                let g = y.sum_all().unwrap().backward().unwrap();
                assert!(g.get(v.as_tensor()).is_some(), "{dtype:?} {dims:?}: no gradient");
            }
        }
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let bad = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let err = channel_affine(&x, &bad, &bad).unwrap_err().to_string();
        assert!(err.contains("channel_affine") && err.contains("3"), "{err}");
    }

    #[test]
    fn matches_the_op_by_op_definition_with_gradients() {
        let dev = Device::Cpu;
        for (outer, c, inner) in [(3, 5, 7), (8, 6, 1), (1, 4, 9), (2, 3, 5000)] {
            let x = Var::randn(0.5f64, 2.0, (outer, c, inner), &dev).unwrap();
            let w = Var::randn(1f64, 0.3, c, &dev).unwrap();
            let b = Var::randn(0f64, 0.3, c, &dev).unwrap();
            let coef = Tensor::randn(0f64, 1.0, (outer, c, inner), &dev).unwrap();
            let (y, mean, var) = batch_norm_train(&x, &w, &b, 1e-5).unwrap();
            let want = reference(&x, &w, &b, 1e-5);
            assert!(max_rel(&y, &want) < 1e-12, "{outer}x{c}x{inner}: output");
            let m = x.mean_keepdim(2).unwrap().mean_keepdim(0).unwrap().flatten_all().unwrap();
            assert!(max_rel(&mean, &m) < 1e-12);
            let v = x.broadcast_sub(&m.reshape((1, c, 1)).unwrap()).unwrap().sqr().unwrap();
            let v = v.mean_keepdim(2).unwrap().mean_keepdim(0).unwrap().flatten_all().unwrap();
            assert!(max_rel(&var, &v) < 1e-12);
            let g = (y * &coef).unwrap().sum_all().unwrap().backward().unwrap();
            let gw = (want * &coef).unwrap().sum_all().unwrap().backward().unwrap();
            for (t, what) in [(&x, "dx"), (&w, "dw"), (&b, "db")] {
                let r = max_rel(g.get(t).unwrap(), gw.get(t).unwrap());
                assert!(r < 1e-10, "{outer}x{c}x{inner}: {what} relative error {r}");
            }
        }
    }

    #[test]
    fn f32_is_close_and_bad_arguments_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (4, 3, 10), &dev).unwrap();
        let (w, b) = (
            Tensor::ones(3, DType::F32, &dev).unwrap(),
            Tensor::zeros(3, DType::F32, &dev).unwrap(),
        );
        let (y, ..) = batch_norm_train(&x, &w, &b, 1e-5).unwrap();
        let want = reference(&x, &w, &b, 1e-5);
        let d = (y - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "f32 difference {d}");
        let err = batch_norm_train(&x, &Tensor::ones(4, DType::F32, &dev).unwrap(), &b, 1e-5);
        assert!(err.unwrap_err().to_string().contains("batch_norm_train"));
        let one = Tensor::ones((1, 3, 1), DType::F32, &dev).unwrap();
        assert!(batch_norm_train(&one, &w, &b, 1e-5).is_err());
    }
}
