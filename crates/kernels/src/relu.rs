//! ReLU and a residual block's `relu(a + b)` as single ops with gradients, in parallel on the CPU.
//!
//! Candle 0.11 runs `relu` on one thread, and its backward is six passes, all on one thread:
//! `zeros_like(x)`, `x >= 0` (a u8 mask), the mask to the float type, `grad * mask`, and the
//! store's `zeros + that`. A residual block's `(y + identity).relu()` adds one more pass forward.
//! Here each is one pass forward and one backward, split into parallel chunks (rayon), with
//! Candle's values bit for bit: forward `max(x, 0)`, backward `0 + grad * (x >= 0)` (the gradient
//! passes at `x == 0`, Candle's rule; PyTorch's does not, which no test input reaches).
//!
//! `relu(a + b)`'s backward recomputes `a + b` rather than storing it: one more read, but no
//! full-size buffer kept alive until the backward pass.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{
    MIN_TASK, Real, by_dtype, par_chunks_from, par_zip, slice, train_kernels_supported,
    with_cpu_slices,
};
use crate::error::{KernelError, Result};

/// `max(x, 0)` with Candle's gradient; one parallel pass each way on CPU f32 / f64 tensors,
/// Candle's `relu` elsewhere.
///
/// # Shapes
/// `x` any -> same
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !train_kernels_supported(x) {
        return Ok(x.relu()?);
    }
    Ok(x.contiguous()?.apply_op1(Relu)?)
}

/// `relu(a + b)` (a residual block's end) with Candle's gradient of `(a + b).relu()`: one
/// parallel pass each way on CPU f32 / f64 tensors, Candle's ops elsewhere.
///
/// # Shapes
/// `a`, `b` of one shape -> same
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() || a.dtype() != b.dtype() {
        return Err(KernelError::InvalidArgs {
            op: "add_relu",
            msg: format!("the summands differ: {:?} and {:?}", b.dtype(), a.dtype()),
            input: a.shape().clone(),
            weight: b.shape().clone(),
            params: String::new(),
        });
    }
    if !train_kernels_supported(a) || !a.device().same_device(b.device()) {
        return Ok((a + b)?.relu()?);
    }
    Ok(a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)?)
}

/// `relu(x + bias)` with the bias broadcast over the middle dimension (a group of linear layers or
/// 1x1 convolutions, one bias per group and channel), with Candle's gradient of
/// `x.broadcast_add(&bias.unsqueeze(1)?)?.relu()`: one parallel pass each way on CPU f32 / f64
/// tensors, Candle's ops elsewhere. Candle sums the bias gradient on one thread (`sum_keepdim`
/// over the middle dimension); here each group's sum runs on its own thread, in Candle's order
/// (rows in turn, from zero), so values and both gradients are Candle's bit for bit.
///
/// # Shapes
/// `x: [g, p, c]`, `bias: [g, c]` -> `[g, p, c]`
pub fn bias_relu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (g, _, c) = x.dims3()?;
    if bias.dims() != [g, c] || bias.dtype() != x.dtype() {
        return Err(KernelError::InvalidArgs {
            op: "bias_relu",
            msg: format!("the bias must be {:?} [{g}, {c}], got {:?}", x.dtype(), bias.dtype()),
            input: x.shape().clone(),
            weight: bias.shape().clone(),
            params: String::new(),
        });
    }
    if !train_kernels_supported(x) || !x.device().same_device(bias.device()) {
        return Ok(x.broadcast_add(&bias.unsqueeze(1)?)?.relu()?);
    }
    Ok(x.contiguous()?.apply_op2(&bias.contiguous()?, BiasRelu)?)
}

#[derive(Debug, Clone, Copy)]
struct Relu;

impl Relu {
    fn fwd<T: Real>(s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice::<T>(s, l, "relu", "input")?;
        let y: Vec<T> = x.par_iter().with_min_len(MIN_TASK).map(|&v| v.relu()).collect();
        Ok((T::to_cpu_storage_owned(y), l.shape().clone()))
    }

    fn bwd_as<T: Real>(x: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
        let parts = [(x, "input"), (grad, "gradient")];
        let dx = with_cpu_slices("relu", parts, |[x, g]| par_zip(x, g, T::relu_grad))?;
        Tensor::from_vec(dx, x.shape(), x.device())
    }
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "aue-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        by_dtype(s.dtype(), "relu", || Self::fwd::<f32>(s, l), || Self::fwd::<f64>(s, l))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let (f32, f64) = (|| Self::bwd_as::<f32>(x, &grad), || Self::bwd_as::<f64>(x, &grad));
        Ok(Some(by_dtype(x.dtype(), "relu", f32, f64)?))
    }
}

#[derive(Debug, Clone, Copy)]
struct AddRelu;

impl AddRelu {
    fn fwd<T: Real>(
        (sa, la): (&CpuStorage, &Layout),
        (sb, lb): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let a = slice::<T>(sa, la, "add_relu", "first summand")?;
        let b = slice::<T>(sb, lb, "add_relu", "second summand")?;
        let y = par_zip(a, b, |a, b| (a + b).relu());
        Ok((T::to_cpu_storage_owned(y), la.shape().clone()))
    }

    fn bwd_as<T: Real>(a: &Tensor, b: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
        let d = with_cpu_slices(
            "add_relu",
            [(a, "first summand"), (b, "second summand"), (grad, "gradient")],
            |[a, b, g]: [&[T]; 3]| {
                a.par_iter()
                    .zip(b)
                    .zip(g)
                    .with_min_len(MIN_TASK)
                    .map(|((&a, &b), &g)| (a + b).relu_grad(g))
                    .collect::<Vec<T>>()
            },
        )?;
        Tensor::from_vec(d, a.shape(), a.device())
    }
}

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "aue-add-relu"
    }

    fn cpu_fwd(
        &self,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let args = ((sa, la), (sb, lb));
        let (f32, f64) = (|| Self::fwd::<f32>(args.0, args.1), || Self::fwd::<f64>(args.0, args.1));
        by_dtype(sa.dtype(), "add_relu", f32, f64)
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (f32, f64) = (|| Self::bwd_as::<f32>(a, b, &grad), || Self::bwd_as::<f64>(a, b, &grad));
        let d = by_dtype(a.dtype(), "add_relu", f32, f64)?;
        // Both summands get the same gradient, as Candle's `add` backward gives them.
        Ok((Some(d.clone()), Some(d)))
    }
}

#[derive(Debug, Clone, Copy)]
struct BiasRelu;

impl BiasRelu {
    fn fwd<T: Real>(
        (sx, lx): (&CpuStorage, &Layout),
        (sb, lb): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice::<T>(sx, lx, "bias_relu", "input")?;
        let bias = slice::<T>(sb, lb, "bias_relu", "bias")?;
        let (_, p, c) = lx.shape().dims3()?;
        // Chunks of whole rows, so that each row meets its group's bias at offset 0.
        let c = c.max(1);
        let y = par_chunks_from(x.len(), c, |i| {
            let b = &bias[(i / p) * c..][..c];
            x[i * c..(i + 1) * c].iter().zip(b).map(|(&v, &b)| (v + b).relu())
        });
        Ok((T::to_cpu_storage_owned(y), lx.shape().clone()))
    }

    /// The gradients of `x` and of the bias.
    fn bwd_as<T: Real>(
        x: &Tensor,
        bias: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (g, p, c) = x.dims3()?;
        let parts = [(x, "input"), (bias, "bias"), (grad, "gradient")];
        let (dx, db) = with_cpu_slices("bias_relu", parts, |[x, bias, gy]: [&[T]; 3]| {
            let mut dx = vec![T::zero(); x.len()];
            let mut db = vec![T::zero(); g * c];
            // One group per task: its input gradient rows, then its bias gradient summed over
            // them in row order, as Candle's `sum_keepdim` adds them.
            dx.par_chunks_mut((p * c).max(1))
                .zip(db.par_chunks_mut(c.max(1)))
                .enumerate()
                .for_each(|(k, (dx, db))| {
                    let (x, gy, b) =
                        (&x[k * p * c..][..p * c], &gy[k * p * c..][..p * c], &bias[k * c..][..c]);
                    for ((dx, x), gy) in dx.chunks_mut(c).zip(x.chunks(c)).zip(gy.chunks(c)) {
                        for ((((d, &x), &gy), &b), s) in
                            dx.iter_mut().zip(x).zip(gy).zip(b).zip(db.iter_mut())
                        {
                            *d = (x + b).relu_grad(gy);
                            *s += *d;
                        }
                    }
                });
            (dx, db)
        })?;
        Ok((
            Tensor::from_vec(dx, (g, p, c), x.device())?,
            Tensor::from_vec(db, (g, c), x.device())?,
        ))
    }
}

impl CustomOp2 for BiasRelu {
    fn name(&self) -> &'static str {
        "aue-bias-relu"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let args = ((sx, lx), (sb, lb));
        let (f32, f64) = (|| Self::fwd::<f32>(args.0, args.1), || Self::fwd::<f64>(args.0, args.1));
        by_dtype(sx.dtype(), "bias_relu", f32, f64)
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (f32, f64) =
            (|| Self::bwd_as::<f32>(x, bias, &grad), || Self::bwd_as::<f64>(x, bias, &grad));
        let (dx, db) = by_dtype(x.dtype(), "bias_relu", f32, f64)?;
        Ok((x.track_op().then_some(dx), bias.track_op().then_some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_same_values, candle_grads, randn_var};
    use candle_core::{DType, Device};

    /// Values and gradients equal Candle's `relu` and `(a + b).relu()` bit for bit, in f32 and
    /// f64, including exact zeros (where Candle's gradient passes), over several parallel tasks.
    #[test]
    fn relu_and_add_relu_equal_candle_bit_for_bit() {
        for dtype in [DType::F32, DType::F64] {
            let a = randn_var(&[3, 5, 41, 67], dtype);
            // Exact zeros in `a` and in `a + b` (b = -a on a slice).
            let zeros = a.as_tensor().narrow(2, 0, 3).unwrap().zeros_like().unwrap();
            a.slice_set(&zeros, 2, 0).unwrap();
            let b = randn_var(a.dims(), dtype);
            let neg = a.as_tensor().narrow(2, 3, 2).unwrap().neg().unwrap();
            b.slice_set(&neg, 2, 3).unwrap();
            let coef = randn_var(a.dims(), dtype);

            let mine = relu(&a).unwrap();
            let theirs = a.relu().unwrap();
            assert_same_values(&mine, &theirs, "relu");
            let (g, gt) = candle_grads(&mine, &theirs, &coef, &[&a]);
            assert_same_values(&g[0], &gt[0], "relu gradient");

            let mine = add_relu(&a, &b).unwrap();
            let theirs = (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap();
            assert_same_values(&mine, &theirs, "add_relu");
            let (g, gt) = candle_grads(&mine, &theirs, &coef, &[&a, &b]);
            assert_same_values(&g[0], &gt[0], "add_relu gradient of a");
            assert_same_values(&g[1], &gt[1], "add_relu gradient of b");
        }
    }

    /// `bias_relu` equals Candle's `x.broadcast_add(&bias.unsqueeze(1)?)?.relu()` bit for bit,
    /// values and both gradients, in f32 and f64, with exact zeros of `x + bias` and groups of
    /// several tasks.
    #[test]
    fn bias_relu_equals_candle_bit_for_bit() {
        for dtype in [DType::F32, DType::F64] {
            for (g, p, c) in [(3, 700, 13), (5, 2, 64), (1, 1, 1)] {
                let bias = randn_var(&[g, c], dtype);
                let x = randn_var(&[g, p, c], dtype);
                // x = -bias on the first row: x + bias is exactly 0 there.
                let neg = bias.as_tensor().neg().unwrap().unsqueeze(1).unwrap();
                x.slice_set(&neg, 1, 0).unwrap();
                let coef = randn_var(&[g, p, c], dtype);
                let mine = bias_relu(&x, &bias).unwrap();
                let theirs = x.broadcast_add(&bias.unsqueeze(1).unwrap()).unwrap().relu().unwrap();
                let what = format!("{dtype:?} [{g}, {p}, {c}]");
                assert_same_values(&mine, &theirs, &what);
                let (gm, gt) = candle_grads(&mine, &theirs, &coef, &[&x, &bias]);
                assert_same_values(&gm[0], &gt[0], &format!("{what}: input gradient"));
                assert_same_values(&gm[1], &gt[1], &format!("{what}: bias gradient"));
            }
        }
        let x = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let err = bias_relu(&x, &x.get(0).unwrap()).unwrap_err().to_string();
        assert!(err.contains("bias_relu") && err.contains("[2, 4]"), "{err}");
    }

    #[test]
    fn add_relu_rejects_different_shapes() {
        let a = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        let err = add_relu(&a, &b).unwrap_err().to_string();
        assert!(err.contains("add_relu") && err.contains("summands differ"), "{err}");
    }
}
