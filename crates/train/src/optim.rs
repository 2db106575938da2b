//! SGD with momentum, written by hand with PyTorch's semantics (docs/METHOD.md section 6: momentum
//! 0.9, no weight decay, no dampening, no Nesterov). Candle's own `SGD` has no momentum.
//!
//! PyTorch's `torch.optim.SGD` step for a parameter `p` with gradient `g`:
//! `buf = g` on the first step (a copy, not `momentum * 0 + g` of a zero buffer: the same value),
//! then `buf = momentum * buf + g`; and `p -= lr * buf`. A parameter whose gradient is absent is
//! skipped entirely (its buffer does not decay), as PyTorch skips `p.grad is None`.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::error::{CandleContext, Result, TrainError};

/// One optimised parameter and its momentum buffer.
struct Param {
    name: String,
    var: Var,
    /// `None` until the parameter first receives a gradient (PyTorch creates it lazily too).
    momentum_buffer: Option<Tensor>,
}

/// Stochastic gradient descent with heavy-ball momentum over a fixed, named set of variables.
pub struct Sgd {
    params: Vec<Param>,
    momentum: f64,
    /// Update in place where the device and tensors allow it (see [`Sgd::step`]).
    in_place: bool,
}

impl Sgd {
    /// An optimizer over `params` (name, variable). Only these variables are ever changed.
    pub fn new(params: Vec<(String, Var)>, momentum: f64) -> Self {
        let params = params
            .into_iter()
            .map(|(name, var)| Param { name, var, momentum_buffer: None })
            .collect();
        Self { params, momentum, in_place: true }
    }

    /// The momentum factor.
    pub fn momentum(&self) -> f64 {
        self.momentum
    }

    /// Names of the optimised variables, in the order given to [`Sgd::new`].
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// One update with learning rate `lr` from the gradients of a backward pass.
    ///
    /// On the CPU the buffer and the parameter are updated in place, one pass each (no temporary
    /// the size of the parameter: Crop_Net_2 alone is 1.3 GB); elsewhere with tensor ops. Both
    /// round exactly alike: `buf = buf * m + g`, then `p = p - lr * buf`, each product and sum
    /// rounded once to the parameter's dtype.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for p in &mut self.params {
            let Some(grad) = grads.get(p.var.as_tensor()) else { continue };
            let in_place = self.in_place
                && p.var.device().is_cpu()
                && inplace::supported(p.var.as_tensor())
                && inplace::supported(grad);
            match &p.momentum_buffer {
                // First step: the buffer is a detached copy of the gradient (of its elements
                // only: `copy` would clone the whole buffer of a view).
                None => {
                    let buf = grad.detach().force_contiguous().op("sgd: init momentum buffer")?;
                    p.momentum_buffer = Some(buf);
                }
                Some(buf) if in_place && inplace::supported(buf) => {
                    buf.inplace_op2(
                        grad,
                        &inplace::Axpby { a: self.momentum, b: 1.0, name: "sgd-momentum" },
                    )
                    .op("sgd: buf = momentum * buf + grad")?;
                }
                Some(buf) => {
                    let next = (buf.affine(self.momentum, 0.0).op("sgd: momentum * buf")? + grad)
                        .op("sgd: buf + grad")?
                        .detach();
                    p.momentum_buffer = Some(next);
                }
            }
            let Some(buf) = &p.momentum_buffer else { continue };
            if in_place && inplace::supported(buf) {
                p.var
                    .as_tensor()
                    .inplace_op2(buf, &inplace::Axpby { a: 1.0, b: -lr, name: "sgd-update" })
                    .op("sgd: p -= lr * buf")?;
            } else {
                let update = buf.affine(lr, 0.0).op("sgd: lr * buf")?;
                let next = p.var.as_tensor().sub(&update).op("sgd: p - lr * buf")?.detach();
                p.var.set(&next).op("sgd: write parameter")?;
            }
        }
        Ok(())
    }

    /// The momentum buffers that exist, by parameter name (for the resume file).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .filter_map(|p| p.momentum_buffer.as_ref().map(|b| (p.name.clone(), b.clone())))
            .collect()
    }

    /// Restores momentum buffers saved by [`Sgd::state`]. Every saved buffer must belong to an
    /// optimised parameter of the same shape and dtype; parameters without one start fresh, as
    /// they had never received a gradient.
    pub fn load_state(&mut self, mut buffers: HashMap<String, Tensor>) -> Result<()> {
        for p in &mut self.params {
            p.momentum_buffer = None;
            if let Some(buf) = buffers.remove(&p.name) {
                let want = p.var.as_tensor();
                // Buffers are saved as f32 (or f64, `--checkpoint-dtype f64`); a run of the
                // other float type converts them.
                let float = |d| matches!(d, DType::F32 | DType::F64);
                let converts = float(buf.dtype()) && float(want.dtype());
                if buf.dims() != want.dims() || (buf.dtype() != want.dtype() && !converts) {
                    return Err(TrainError::OptimizerState(format!(
                        "momentum buffer `{}` is {:?} {:?}, the parameter is {:?} {:?}",
                        p.name,
                        buf.dtype(),
                        buf.dims(),
                        want.dtype(),
                        want.dims()
                    )));
                }
                let buf = buf
                    .to_device(want.device())
                    .and_then(|b| b.to_dtype(want.dtype()))
                    .op("sgd: move momentum buffer")?;
                p.momentum_buffer = Some(buf);
            }
        }
        if let Some(extra) = buffers.keys().min() {
            return Err(TrainError::OptimizerState(format!(
                "momentum buffer `{extra}` belongs to no trainable parameter of this stage"
            )));
        }
        Ok(())
    }
}

/// The two in-place CPU updates of [`Sgd::step`], as Candle `InplaceOp2`s (the only way to write
/// into a tensor's storage without allocating a new one).
mod inplace {
    use std::ops::{Add, Mul};

    use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor, bail};
    use rayon::prelude::*;

    /// Whether `t` can take part: a contiguous f32 or f64 tensor.
    pub(super) fn supported(t: &Tensor) -> bool {
        t.is_contiguous() && matches!(t.dtype(), DType::F32 | DType::F64)
    }

    /// The contiguous element ranges of the destination and the source, checked to match.
    fn ranges(
        l1: &Layout,
        l2: &Layout,
        op: &str,
    ) -> candle_core::Result<((usize, usize), (usize, usize))> {
        match (l1.contiguous_offsets(), l2.contiguous_offsets()) {
            (Some(a), Some(b)) if a.1 - a.0 == b.1 - b.0 => Ok((a, b)),
            _ => bail!("{op}: needs two contiguous tensors of the same size"),
        }
    }

    /// `d = a * d + b * s` elementwise, in place: the momentum update is `a = momentum, b = 1`,
    /// the parameter update `a = 1, b = -lr`. (A product by 1 and a negation are exact, so each
    /// rounds like `buf * m + g` and `p - lr * buf`.)
    pub(super) struct Axpby {
        pub(super) a: f64,
        pub(super) b: f64,
        pub(super) name: &'static str,
    }

    impl InplaceOp2 for Axpby {
        fn name(&self) -> &'static str {
            self.name
        }

        fn cpu_fwd(
            &self,
            s1: &mut CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> candle_core::Result<()> {
            let ((a0, a1), (b0, b1)) = ranges(l1, l2, self.name)?;
            match (s1, s2) {
                (CpuStorage::F32(d), CpuStorage::F32(s)) => {
                    axpby(&mut d[a0..a1], &s[b0..b1], self.a as f32, self.b as f32)
                }
                (CpuStorage::F64(d), CpuStorage::F64(s)) => {
                    axpby(&mut d[a0..a1], &s[b0..b1], self.a, self.b)
                }
                _ => bail!("{}: needs two f32 or two f64 tensors", self.name),
            }
            Ok(())
        }
    }

    /// Elements per rayon task: the update is memory-bound, and Crop_Net_2's 1.3 GB on one
    /// thread was 180 ms of a resnet18 stage-2 step.
    const CHUNK: usize = 1 << 16;

    /// `d = d * a + s * b`, in parallel chunks (elementwise: the same bits as one loop).
    fn axpby<T: Copy + Send + Sync + Mul<Output = T> + Add<Output = T>>(
        d: &mut [T],
        s: &[T],
        a: T,
        b: T,
    ) {
        d.par_chunks_mut(CHUNK).zip(s.par_chunks(CHUNK)).for_each(|(d, s)| {
            d.iter_mut().zip(s).for_each(|(d, &s)| *d = *d * a + s * b);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Three steps of PyTorch SGD(lr, momentum=0.9) on known gradients, computed by hand:
    /// p0 = [1, 2], g = [0.5, -1], [0.25, 0.5], [-1, 0] with lr 0.1, 0.1, 0.01.
    ///   buf1 = g1 = [0.5, -1]                 p1 = p0 - 0.1 * buf1  = [0.95, 2.1]
    ///   buf2 = 0.9 * buf1 + g2 = [0.7, -0.4]  p2 = p1 - 0.1 * buf2  = [0.88, 2.14]
    ///   buf3 = 0.9 * buf2 + g3 = [-0.37, -0.36] p3 = p2 - 0.01 * buf3 = [0.8837, 2.1436]
    #[test]
    fn momentum_matches_hand_computation() -> Result<()> {
        let dev = Device::Cpu;
        let var = Var::from_slice(&[1f32, 2.0], 2, &dev).op("var")?;
        let mut sgd = Sgd::new(vec![("w".into(), var.clone())], 0.9);
        let steps = [([0.5f32, -1.0], 0.1), ([0.25, 0.5], 0.1), ([-1.0, 0.0], 0.01)];
        for (g, lr) in steps {
            // loss = sum(w * g) has gradient g with respect to w.
            let g = Tensor::from_slice(&g, 2, &dev).op("g")?;
            let loss = (var.as_tensor() * &g).op("mul")?.sum_all().op("sum")?;
            let grads = loss.backward().op("backward")?;
            sgd.step(&grads, lr)?;
        }
        let got = var.as_tensor().to_vec1::<f32>().op("read")?;
        let want = [0.8837f32, 2.1436];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "got {got:?}, want {want:?}");
        }
        let buf = sgd.state()[0].1.to_vec1::<f32>().op("read")?;
        for (a, b) in buf.iter().zip([-0.37f32, -0.36]) {
            assert!((a - b).abs() < 1e-6, "buffer {buf:?}");
        }
        Ok(())
    }

    /// The in-place CPU update and the tensor-op update (other devices) give the same bits.
    #[test]
    fn in_place_and_tensor_updates_are_bit_identical() -> Result<()> {
        let dev = Device::Cpu;
        let run = |in_place: bool| -> Result<Vec<f32>> {
            let var = Var::from_slice(&[0.3f32, -1.7, 2.9, 1e-3, -4e4], 5, &dev).op("var")?;
            let mut sgd = Sgd::new(vec![("w".into(), var.clone())], 0.9);
            sgd.in_place = in_place;
            for (k, lr) in [(1.0f32, 0.1), (-0.37, 0.1), (2.3, 0.013), (0.7, 0.013)] {
                let g = Tensor::from_slice(&[k, 3.1 * k, -0.2 * k, 1e-5 * k, 7.0 * k], 5, &dev)
                    .op("g")?;
                let loss = (var.as_tensor() * &g).op("mul")?.sum_all().op("sum")?;
                sgd.step(&loss.backward().op("backward")?, lr)?;
            }
            var.as_tensor().to_vec1::<f32>().op("read")
        };
        let (a, b) = (run(true)?, run(false)?);
        assert_eq!(
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        Ok(())
    }

    #[test]
    fn untouched_params_keep_value_and_no_buffer() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::ones(3, DType::F32, &dev).op("a")?;
        let b = Var::ones(3, DType::F32, &dev).op("b")?;
        let mut sgd = Sgd::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())], 0.9);
        let grads = a.as_tensor().sum_all().op("sum")?.backward().op("backward")?;
        sgd.step(&grads, 0.5)?;
        assert_eq!(a.as_tensor().to_vec1::<f32>().op("read")?, vec![0.5; 3]);
        assert_eq!(b.as_tensor().to_vec1::<f32>().op("read")?, vec![1.0; 3]);
        let names: Vec<_> = sgd.state().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a"]);
        Ok(())
    }

    #[test]
    fn state_round_trip_and_mismatch() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::ones(2, DType::F32, &dev).op("a")?;
        let mut sgd = Sgd::new(vec![("a".into(), a.clone())], 0.9);
        let ok = HashMap::from([("a".to_string(), Tensor::ones(2, DType::F32, &dev).op("t")?)]);
        sgd.load_state(ok)?;
        assert_eq!(sgd.state().len(), 1);
        let wrong_shape =
            HashMap::from([("a".to_string(), Tensor::ones(3, DType::F32, &dev).op("t")?)]);
        let err = sgd.load_state(wrong_shape).unwrap_err().to_string();
        assert!(err.contains("`a`"), "{err}");
        let extra = HashMap::from([("z".to_string(), Tensor::ones(2, DType::F32, &dev).op("t")?)]);
        let err = sgd.load_state(extra).unwrap_err().to_string();
        assert!(err.contains("`z`"), "{err}");
        Ok(())
    }
}
