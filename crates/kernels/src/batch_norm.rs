//! Train-mode batch normalisation as one op on the CPU, forward and backward.
//!
//! Written as Candle ops, a train-mode BatchNorm is a mean and a variance over every dim but the
//! channel (Candle reduces over leading dims with a strided fold, which is slow), four broadcast
//! ops, and in the backward pass each broadcast's gradient reduced over the same dims again: about
//! a third of a ResNet training step on the CPU. Here one task per channel (channels in
//! parallel) takes the statistics in two passes over the channel's contiguous runs (one per
//! sample), then writes its output; the backward takes both of its sums in one pass, then `dx`.
//! The passes after a channel's first find its runs in the cache instead of reading the whole
//! tensor from memory again (resnet18 stage-1 step, batch 8, Intel Xeon: 0.98 of the time at two
//! threads, the same at one). Sums are in f64 (PyTorch's accumulator type for f32 on the CPU),
//! eight partial sums per run (`lane_sum2`); the per-channel loops are compiled for AVX2 too
//! (0.97 / 0.95 of the step's time at one / two threads: f32 -> f64 conversions are most of
//! their work).
//!
//! [`batch_norm_train_relu`] puts the ReLU that follows most BatchNorms into the same op: its
//! output is the ReLU's, and the backward pass recomputes the normalised value from `x` for the
//! ReLU's mask, so the normalised tensor is neither written nor kept (0.97 / 0.98 of the step's
//! time, 57 MB less peak memory at resnet18 batch 8). [`batch_norm_train_add_relu`] does the same
//! for the end of a residual block, `relu(y + residual)`, writing the residual's gradient beside
//! `dx` (level in time, 24 MiB less peak memory in a resnet18 stage-1 step at batch 8).
//!
//! The formulas are PyTorch's CPU ones (`aten/src/ATen/native/Normalization.cpp`):
//! forward `y = x * a + s` with `a = w / sqrt(var + eps)`, `s = bias - mean * a` (biased var);
//! backward with `M` elements per channel, `dot = sum(dy * (x - mean))`:
//! `dbias = sum(dy)`, `dw = dot * invstd`,
//! `dx = (dy - sum(dy) / M - (x - mean) * dot * invstd^2 / M) * w * invstd`.

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor, WithDType};
use multiversion::multiversion;
use rayon::prelude::*;

use crate::cpu::{MIN_TASK, Real, SharedMut, par_chunks_from, slice};
use crate::error::{KernelError, Result};

/// Per-channel statistics of the forward pass, shared by the op (for its backward) and the caller.
#[derive(Debug, Default)]
struct Saved {
    mean: Vec<f64>,
    invstd: Vec<f64>,
    /// Biased variance.
    var: Vec<f64>,
    /// The output's scale and shift per channel (`y = x * a + s`), rounded to the dtype.
    scale: Vec<f64>,
    shift: Vec<f64>,
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
    train(x, weight, bias, eps, After::Nothing)
}

/// [`batch_norm_train`] followed by aue-kernels' ReLU ([`crate::relu`]), in one op: the same
/// values and gradients bit for bit, without the normalised tensor in memory or the ReLU's two
/// passes over it (the backward pass recomputes each normalised value from `x` for the ReLU's
/// mask: `y >= 0`, Candle's).
///
/// # Shapes
/// `x: [outer, c, inner]`, `weight`, `bias: [c]` -> `([outer, c, inner], [c], [c])`
pub fn batch_norm_train_relu(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    train(x, weight, bias, eps, After::Relu)
}

/// `relu(batch_norm_train(x) + residual)` in one op: the end of a residual block. The same values
/// and gradients bit for bit as [`batch_norm_train`] then aue-kernels' `add_relu`, without the
/// normalised tensor in memory: the backward pass recomputes the ReLU's mask from `x` and the
/// residual, and writes the residual's gradient (the masked output gradient) beside `dx`.
///
/// # Shapes
/// `x`, `residual: [outer, c, inner]`, `weight`, `bias: [c]` -> `([outer, c, inner], [c], [c])`
pub fn batch_norm_train_add_relu(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    train(x, weight, bias, eps, After::AddRelu(residual))
}

/// What the op applies after the normalisation.
#[derive(Clone, Copy)]
enum After<'a> {
    Nothing,
    Relu,
    /// `relu(y + residual)`.
    AddRelu(&'a Tensor),
}

fn train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    after: After<'_>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op_name = match after {
        After::Nothing => "batch_norm_train",
        After::Relu => "batch_norm_train_relu",
        After::AddRelu(_) => "batch_norm_train_add_relu",
    };
    let invalid = |msg: String| KernelError::InvalidArgs {
        op: op_name,
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
    if let After::AddRelu(r) = after
        && (r.dims() != x.dims() || r.dtype() != x.dtype() || !r.device().same_device(x.device()))
    {
        return Err(invalid(format!("the residual must be like the input, is {:?}", r.dims())));
    }
    if outer * inner < 2 {
        return Err(invalid("needs more than one value per channel".into()));
    }
    let saved = Arc::new(Mutex::new(Saved::default()));
    let relu = !matches!(after, After::Nothing);
    let op = BatchNormOp { eps, relu, outer, c, inner, saved: saved.clone() };
    // Contiguous inputs, so that the kernels see plain slices.
    let (x, weight, bias) = (x.contiguous()?, weight.contiguous()?, bias.contiguous()?);
    let y = match after {
        After::AddRelu(r) => {
            // Candle's custom ops take at most three tensors: weight and bias as one (its
            // gradient is split back by `cat`'s backward).
            let wb = Tensor::cat(&[&weight, &bias], 0)?;
            x.apply_op3(&r.contiguous()?, &wb, AddReluOp(op))?
        }
        _ => x.apply_op3(&weight, &bias, op)?,
    };
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
#[inline(always)]
fn lane_sum<T: Copy>(xs: &[T], f: impl Fn(T) -> f64) -> f64 {
    lane_sum2(xs, xs, |x, _| [f(x), 0.0])[0]
}

/// Two sums over the pairs `(xs[i], ys[i])` at once, as [`lane_sum`].
#[inline(always)]
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

/// A channel's runs of a tensor, sample by sample.
type Runs<'a, 'x, T> = &'a dyn Fn(usize) -> &'x [T];

/// One channel's forward pass over its runs `x(n)` (sample by sample) with weight and bias
/// `(w, b)`: `[mean, biased var, invstd, scale, shift]`, the output (after a ReLU with `relu`,
/// of the sum with the `residual`'s runs when given) written to `out`. Compiled also for AVX2
/// (the crate is built for baseline x86-64, where SSE2 converts and adds two f64 at a time); the
/// same values either way (no fused multiply-adds: Rust does not contract `a * b + c`).
#[multiversion(targets("x86_64+avx2+fma"))]
fn forward_channel<'x, T: Real>(
    x: impl Fn(usize) -> &'x [T],
    residual: Option<Runs<'_, 'x, T>>,
    (w, b): (f64, f64),
    (eps, relu): (f64, bool),
    out: &mut ChannelRuns<'_, T>,
) -> [f64; 5] {
    let outer = out.outer;
    let m = (outer * out.inner) as f64;
    let mean = (0..outer).map(|n| lane_sum(x(n), |v| v.to_f64())).fold(0.0, |a, b| a + b) / m;
    let var =
        (0..outer).map(|n| lane_sum(x(n), |v| (v.to_f64() - mean).powi(2))).fold(0.0, |a, b| a + b)
            / m;
    let invstd = 1.0 / (var + eps).sqrt();
    // y = x * a + s with a and s rounded to the dtype, as PyTorch's CPU kernel does.
    let a = T::from_f64(invstd * w).to_f64();
    let s = T::from_f64(b - mean * invstd * w).to_f64();
    for n in 0..outer {
        let (out, x) = (out.run(n), x(n));
        if let Some(residual) = residual {
            // Rounded to the dtype before the sum, as the unfused ops round it.
            for (slot, (v, &r)) in out.iter_mut().zip(x.iter().zip(residual(n))) {
                slot.write((T::from_f64(v.to_f64() * a + s) + r).relu());
            }
        } else if relu {
            for (slot, v) in out.iter_mut().zip(x) {
                slot.write(T::from_f64(v.to_f64() * a + s).relu());
            }
        } else {
            for (slot, v) in out.iter_mut().zip(x) {
                slot.write(T::from_f64(v.to_f64() * a + s));
            }
        }
    }
    [mean, var, invstd, a, s]
}

/// One channel's backward pass over its runs `(x(n), g(n))` with the forward's `(mean, invstd)`,
/// the weight `w` and, after a ReLU, the forward's `(scale, shift)`: `(sum dy, sum (x - mean)
/// dy)`, `dx` written to `out`, where `dy` is `g`, or after a ReLU the ReLU's gradient of `g`.
/// With a residual (its runs `r(n)` and their gradient's runs `dr`), the ReLU's mask is that of
/// the sum and `dy`, the gradient of both summands, is written to `dr` too. As
/// [`forward_channel`], also compiled for AVX2.
#[multiversion(targets("x86_64+avx2+fma"))]
fn backward_channel<'x, T: Real>(
    runs: impl Fn(usize) -> (&'x [T], &'x [T]),
    (mean, invstd, w): (f64, f64, f64),
    relu: Option<(f64, f64)>,
    residual: Option<(Runs<'_, 'x, T>, &mut ChannelRuns<'_, T>)>,
    out: &mut ChannelRuns<'_, T>,
) -> (f64, f64) {
    let outer = out.outer;
    let m = (outer * out.inner) as f64;
    let centred = |x: T| x.to_f64() - mean;
    let Some((a, s)) = relu else {
        // The sum of dy and of (x - mean) dy, in one pass over both.
        let [sum_dy, dot] = (0..outer)
            .map(|n| {
                let (x, g) = runs(n);
                lane_sum2(x, g, |x, g| [g.to_f64(), centred(x) * g.to_f64()])
            })
            .fold([0.0; 2], |[a, b], [p, q]| [a + p, b + q]);
        let (k, g_mean, scale) = (dot * invstd * invstd / m, sum_dy / m, w * invstd);
        for n in 0..outer {
            let (x, g) = runs(n);
            for (slot, (&x, &g)) in out.run(n).iter_mut().zip(x.iter().zip(g)) {
                slot.write(T::from_f64((g.to_f64() - g_mean - centred(x) * k) * scale));
            }
        }
        return (sum_dy, dot);
    };
    // After a ReLU: the gradient reaching the normalised value y is the ReLU's, `0 + g *
    // mask(y)` with y recomputed from x as the forward pass rounded it (`mask(y + r)` after a
    // residual r), written into the channel's runs of dx first (a loop of its own, so that every
    // loop vectorises), then replaced by dx in place; with a residual also kept as its gradient.
    if let Some((r, dr)) = residual {
        for n in 0..outer {
            let (x, g) = runs(n);
            let (out, dr) = (out.run(n), dr.run(n));
            for ((slot, d), ((&x, &g), &r)) in out.iter_mut().zip(dr).zip(x.iter().zip(g).zip(r(n)))
            {
                let dy = (T::from_f64(x.to_f64() * a + s) + r).relu_grad(g);
                slot.write(dy);
                d.write(dy);
            }
        }
    } else {
        for n in 0..outer {
            let (x, g) = runs(n);
            for (slot, (&x, &g)) in out.run(n).iter_mut().zip(x.iter().zip(g)) {
                slot.write(T::from_f64(x.to_f64() * a + s).relu_grad(g));
            }
        }
    }
    let [sum_dy, dot] = (0..outer)
        .map(|n| {
            // SAFETY: the loop above wrote every run of the channel.
            let dy = unsafe { out.written(n) };
            lane_sum2(runs(n).0, dy, |x, g| [g.to_f64(), centred(x) * g.to_f64()])
        })
        .fold([0.0; 2], |[a, b], [p, q]| [a + p, b + q]);
    let (k, g_mean, scale) = (dot * invstd * invstd / m, sum_dy / m, w * invstd);
    for n in 0..outer {
        // SAFETY: as above.
        let dy = unsafe { out.written(n) };
        for (d, &x) in dy.iter_mut().zip(runs(n).0) {
            *d = T::from_f64((d.to_f64() - g_mean - centred(x) * k) * scale);
        }
    }
    (sum_dy, dot)
}

/// The runs of one channel in a `[outer, c, inner]` result being written by
/// [`BatchNormOp::per_channel`].
struct ChannelRuns<'a, T> {
    dst: &'a SharedMut<MaybeUninit<T>>,
    ch: usize,
    c: usize,
    inner: usize,
    outer: usize,
}

impl<T> ChannelRuns<'_, T> {
    /// Sample `n`'s run of the channel.
    fn run(&mut self, n: usize) -> &mut [MaybeUninit<T>] {
        assert!(n < self.outer, "sample {n} of {}", self.outer);
        // SAFETY: run `n * c + ch` belongs to channel `ch` alone (one task per channel, and the
        // `&mut self` borrow hands out one run at a time), inside the result's slots.
        unsafe { self.dst.run((n * self.c + self.ch) * self.inner, self.inner) }
    }

    /// Sample `n`'s run of the channel, as values.
    ///
    /// # Safety
    /// Every element of the run must have been written.
    unsafe fn written(&mut self, n: usize) -> &mut [T] {
        let run = self.run(n);
        // SAFETY: the caller promises that the run is initialised; `MaybeUninit<T>` has `T`'s
        // layout.
        unsafe { &mut *(run as *mut [MaybeUninit<T>] as *mut [T]) }
    }
}

#[derive(Debug, Clone)]
struct BatchNormOp {
    eps: f64,
    /// A ReLU after the normalisation ([`batch_norm_train_relu`]).
    relu: bool,
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

    /// `f(ch, out, second)` for every channel in parallel, where `out` (and `second`, when
    /// `two`) hands out the channel's runs of a `[outer, c, inner]` result (sample by sample) to
    /// be written whole; returns the values of `f` and the results (the second empty unless
    /// `two`). A channel's statistics and its output are computed by one task, one after the
    /// other, so that the passes after the first find the channel's runs in the cache (`outer *
    /// inner` values: 400 KB for resnet18's first BatchNorm at batch 8) instead of reading the
    /// whole tensor from memory again, pass after pass.
    fn per_channel<T: Real, R: Send>(
        &self,
        two: bool,
        f: impl Fn(usize, &mut ChannelRuns<'_, T>, Option<&mut ChannelRuns<'_, T>>) -> R + Sync,
    ) -> (Vec<R>, Vec<T>, Vec<T>) {
        let (outer, c, inner) = (self.outer, self.c, self.inner);
        let len = outer * c * inner;
        let mut out: Vec<T> = Vec::with_capacity(len);
        let mut second: Vec<T> = Vec::with_capacity(if two { len } else { 0 });
        let dst = SharedMut(out.spare_capacity_mut().as_mut_ptr());
        let dst2 = SharedMut(second.spare_capacity_mut().as_mut_ptr());
        let per_task = (MIN_TASK / (inner * outer).max(1)).max(1);
        let values = (0..c)
            .into_par_iter()
            .with_min_len(per_task)
            .map(|ch| {
                let runs = |dst| ChannelRuns { dst, ch, c, inner, outer };
                f(ch, &mut runs(&dst), two.then(|| runs(&dst2)).as_mut())
            })
            .collect();
        // SAFETY: every caller writes each of its channel's `outer` runs whole, of `second` too
        // when it is asked for (the runs of all channels cover the `len` slots); a panic
        // propagates before this line.
        unsafe {
            out.set_len(len);
            if two {
                second.set_len(len);
            }
        }
        (values, out, second)
    }

    /// The output, from `x` (and the `residual` after which the ReLU comes, when given).
    fn forward<'x, T: Real>(
        &self,
        x: &'x [T],
        residual: Option<&'x [T]>,
        w: &[T],
        b: &[T],
    ) -> Vec<T> {
        let (stats, y, _) = self.per_channel(false, |ch, out, _| {
            let runs = |n: usize| &x[self.run(n * self.c + ch)];
            let res_runs = residual.map(|r| move |n: usize| &r[self.run(n * self.c + ch)]);
            let res = res_runs.as_ref().map(|f| f as Runs<'_, 'x, T>);
            let (wb, after) = ((w[ch].to_f64(), b[ch].to_f64()), (self.eps, self.relu));
            forward_channel(runs, res, wb, after, out)
        });
        if let Ok(mut saved) = self.saved.lock() {
            let column = |i: usize| stats.iter().map(|s| s[i]).collect();
            *saved = Saved {
                mean: column(0),
                var: column(1),
                invstd: column(2),
                scale: column(3),
                shift: column(4),
            };
        }
        y
    }

    /// The gradients from the statistics the forward pass saved (the residual's when given).
    fn backward<'x, T: Real>(
        &self,
        x: &'x [T],
        residual: Option<&'x [T]>,
        w: &[T],
        dy: &'x [T],
    ) -> candle_core::Result<Grads<T>> {
        let c = self.c;
        let saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch_norm_train: poisoned lock".into()))?;
        if saved.mean.len() != c {
            candle_core::bail!("batch_norm_train: backward before forward");
        }
        let (mean, invstd) = (&saved.mean, &saved.invstd);
        let (sums, dx, dr) = self.per_channel(residual.is_some(), |ch, out, dr| {
            let runs = |n: usize| {
                let r = self.run(n * c + ch);
                (&x[r.clone()], &dy[r])
            };
            let res_runs = residual.map(|r| move |n: usize| &r[self.run(n * c + ch)]);
            let res = res_runs.as_ref().zip(dr).map(|(f, dr)| (f as Runs<'_, 'x, T>, dr));
            let relu = self.relu.then(|| (saved.scale[ch], saved.shift[ch]));
            backward_channel(runs, (mean[ch], invstd[ch], w[ch].to_f64()), relu, res, out)
        });
        let (sum_dy, dot): (Vec<f64>, Vec<f64>) = sums.into_iter().unzip();
        let dw = (0..c).map(|ch| T::from_f64(dot[ch] * invstd[ch])).collect();
        let db = sum_dy.iter().map(|&s| T::from_f64(s)).collect();
        Ok(Grads { dx, dw, db, dr })
    }
}

/// [`BatchNormOp::backward`]'s gradients: of the input, the weight, the bias and (else empty)
/// the residual.
struct Grads<T> {
    dx: Vec<T>,
    dw: Vec<T>,
    db: Vec<T>,
    dr: Vec<T>,
}

impl BatchNormOp {
    /// The forward pass on CPU storages: `x`, the residual when given, weight and bias.
    fn cpu_fwd_as<T: Real>(
        &self,
        (x, x_layout): (&CpuStorage, &Layout),
        residual: Option<(&CpuStorage, &Layout)>,
        (w, w_layout): (&CpuStorage, &Layout),
        (b, b_layout): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let what = "batch_norm_train";
        let residual = residual.map(|(r, l)| slice::<T>(r, l, what, "residual")).transpose()?;
        let y = self.forward(
            slice::<T>(x, x_layout, what, "input")?,
            residual,
            &slice::<T>(w, w_layout, what, "weight")?[..self.c],
            &slice::<T>(b, b_layout, what, "bias")?[..self.c],
        );
        Ok((T::to_cpu_storage_owned(y), x_layout.shape().clone()))
    }

    /// `(dx, d residual (when given), dw, dbias)` as tensors; the weight is `w`'s first `c`
    /// values.
    fn bwd_as<T: Real>(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        w: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Tensor, Option<Tensor>, Tensor, Tensor)> {
        let (dev, c, what) = (x.device().clone(), self.c, "batch_norm_train");
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let rs = residual.map(|r| r.storage_and_layout());
        let (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(gs)) = (&*xs, &*ws, &*gs) else {
            candle_core::bail!("{what}: the backward pass needs CPU tensors")
        };
        let r = match &rs {
            Some((rs, rl)) => match &**rs {
                Storage::Cpu(rs) => Some(slice::<T>(rs, rl, what, "residual")?),
                _ => candle_core::bail!("{what}: the backward pass needs CPU tensors"),
            },
            None => None,
        };
        let Grads { dx, dw, db, dr } = self.backward(
            slice::<T>(xs, xl, what, "input")?,
            r,
            &slice::<T>(ws, wl, what, "weight")?[..c],
            slice::<T>(gs, gl, what, "gradient")?,
        )?;
        let dr = r.map(|_| Tensor::from_vec(dr, x.shape(), &dev)).transpose()?;
        Ok((
            Tensor::from_vec(dx, x.shape(), &dev)?,
            dr,
            Tensor::from_vec(dw, c, &dev)?,
            Tensor::from_vec(db, c, &dev)?,
        ))
    }
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        if self.relu { "aue-batch-norm-train-relu" } else { "aue-batch-norm-train" }
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
            DType::F32 => self.cpu_fwd_as::<f32>(args.0, None, args.1, args.2),
            DType::F64 => self.cpu_fwd_as::<f64>(args.0, None, args.1, args.2),
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
        let (dx, _, dw, db) = match x.dtype() {
            DType::F32 => self.bwd_as::<f32>(x, None, w, &grad)?,
            DType::F64 => self.bwd_as::<f64>(x, None, w, &grad)?,
            other => candle_core::bail!("batch_norm_train: {other:?} input (f32 or f64 only)"),
        };
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// [`batch_norm_train_add_relu`]'s op on `(x, residual, [weight; bias])`: Candle's custom ops
/// take at most three tensors.
#[derive(Debug, Clone)]
struct AddReluOp(BatchNormOp);

impl CustomOp3 for AddReluOp {
    fn name(&self) -> &'static str {
        "aue-batch-norm-train-add-relu"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        r: &CpuStorage,
        r_layout: &Layout,
        wb: &CpuStorage,
        wb_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        // The bias is the second half of `wb`.
        let b_layout = wb_layout.narrow(0, self.0.c, self.0.c)?;
        let args = ((x, x_layout), Some((r, r_layout)), (wb, wb_layout), (wb, &b_layout));
        match x.dtype() {
            DType::F32 => self.0.cpu_fwd_as::<f32>(args.0, args.1, args.2, args.3),
            DType::F64 => self.0.cpu_fwd_as::<f64>(args.0, args.1, args.2, args.3),
            other => candle_core::bail!("batch_norm_train: {other:?} input (f32 or f64 only)"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        r: &Tensor,
        wb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dx, dr, dw, db) = match x.dtype() {
            DType::F32 => self.0.bwd_as::<f32>(x, Some(r), wb, &grad)?,
            DType::F64 => self.0.bwd_as::<f64>(x, Some(r), wb, &grad)?,
            other => candle_core::bail!("batch_norm_train: {other:?} input (f32 or f64 only)"),
        };
        Ok((Some(dx), dr, Some(Tensor::cat(&[&dw, &db], 0)?)))
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

    /// f64: outputs, statistics and all three gradients equal the definition's to rounding, for
    /// the layouts the model uses ([B, C, HW], [B, C, 1], [1, C, B]).
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

    /// A tensor's values, widened to f64 (exact), flattened.
    fn values(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
    }

    /// A tensor's values as bits (f32 and f64 widen exactly).
    fn bits(t: &Tensor) -> Vec<u64> {
        values(t).iter().map(|v| v.to_bits()).collect()
    }

    /// The fused op (`batch_norm_train_relu`, or with `add` `batch_norm_train_add_relu`) equals
    /// `batch_norm_train` then `relu` (or `add_relu`) bit for bit, in the output, the statistics
    /// and every gradient, in f32 and f64, with a channel whose ReLU input is exactly 0 (weight,
    /// bias and residual 0: the ReLU's mask passes the gradient at 0).
    fn fused_equals_unfused(add: bool) {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            for (outer, c, inner) in [(3, 5, 7), (8, 6, 1), (2, 3, 5000)] {
                let r = |mean: f32, std: f32, shape: &[usize]| {
                    Tensor::randn(mean, std, shape, &dev).unwrap().to_dtype(dtype).unwrap()
                };
                // Channel 0 of `t` (`[c]` or `[outer, c, inner]`, the channel at `dim`) zeroed.
                let zero_first = |t: Tensor, dim: usize| {
                    let rest = t.narrow(dim, 1, c - 1).unwrap();
                    let zero = t.narrow(dim, 0, 1).unwrap().zeros_like().unwrap();
                    Var::from_tensor(&Tensor::cat(&[&zero, &rest], dim).unwrap()).unwrap()
                };
                let x = Var::from_tensor(&r(0.5, 2.0, &[outer, c, inner])).unwrap();
                let w = zero_first(r(1.0, 0.3, &[c]), 0);
                let b = zero_first(r(0.0, 0.3, &[c]), 0);
                let res = zero_first(r(0.0, 1.0, &[outer, c, inner]), 1);
                let coef = r(0.0, 1.0, &[outer, c, inner]);
                let (y, mean, var) = if add {
                    batch_norm_train_add_relu(&x, &res, &w, &b, 1e-5).unwrap()
                } else {
                    batch_norm_train_relu(&x, &w, &b, 1e-5).unwrap()
                };
                let (y0, mean0, var0) = batch_norm_train(&x, &w, &b, 1e-5).unwrap();
                let y0 = if add { crate::add_relu(&y0, &res) } else { crate::relu(&y0) }.unwrap();
                let at = format!("{dtype:?} {outer}x{c}x{inner}");
                assert_eq!(bits(&y), bits(&y0), "{at}: output");
                assert_eq!(bits(&mean), bits(&mean0), "{at}: mean");
                assert_eq!(bits(&var), bits(&var0), "{at}: var");
                let g = (y * &coef).unwrap().sum_all().unwrap().backward().unwrap();
                let g0 = (&y0 * &coef).unwrap().sum_all().unwrap().backward().unwrap();
                let mut vars = vec![(&x, "dx"), (&w, "dw"), (&b, "db")];
                if add {
                    vars.push((&res, "d residual"));
                    // The residual's mask cuts some gradients and passes others.
                    let dr = values(g.get(&res).unwrap());
                    assert!(dr.contains(&0.0) && dr.iter().any(|&v| v != 0.0), "{at}");
                }
                for (t, what) in vars {
                    let (got, want) = (g.get(t).unwrap(), g0.get(t).unwrap());
                    assert_eq!(bits(got), bits(want), "{at}: {what}");
                }
                // Channel 0 is exactly 0 and its gradient passed the ReLU (mask 1 at 0).
                let first = y0.narrow(1, 0, 1).unwrap();
                assert!(values(&first).iter().all(|&v| v == 0.0), "{at}: channel 0 not zero");
                assert_ne!(values(g.get(&b).unwrap())[0], 0.0, "{at}: db of channel 0");
            }
        }
    }

    #[test]
    fn relu_fused_equals_batch_norm_then_relu_bit_for_bit() {
        fused_equals_unfused(false);
    }

    /// As the ReLU's, and residuals unlike the input are errors.
    #[test]
    fn add_relu_fused_equals_batch_norm_then_add_relu_bit_for_bit() {
        fused_equals_unfused(true);
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (4, 3, 10), &dev).unwrap();
        let (w, b) = (
            Tensor::ones(3, DType::F32, &dev).unwrap(),
            Tensor::zeros(3, DType::F32, &dev).unwrap(),
        );
        for bad in [x.narrow(2, 0, 9).unwrap(), x.to_dtype(DType::F64).unwrap()] {
            let err = batch_norm_train_add_relu(&x, &bad, &w, &b, 1e-5).unwrap_err().to_string();
            assert!(err.contains("batch_norm_train_add_relu") && err.contains("residual"), "{err}");
        }
    }
}
