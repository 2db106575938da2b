//! BatchNorm folded into the layer before it, for eval-mode inference ([`crate::infer`]) and the
//! ONNX export (crates/export).
//!
//! Eval-mode BatchNorm is `y = (x - mean) / sqrt(var + eps) * gamma + beta`
//! (`crate::nn::batch_norm_eval`). After a layer `x = W v + b` it folds into that layer:
//! `W' = W s`, `b' = (b - mean) s + beta` with `s = gamma / sqrt(var + eps)` per output channel:
//! `s` and `b'` computed in f64, `W s` in the weight's dtype (so that folding a large weight makes
//! one copy of it, not three), both stored in the dtype asked for.

use candle_core::{DType, Tensor};

use crate::error::{ModelError, Result};
pub use crate::nn::BN_EPS;

/// An eval-mode BatchNorm's parameters and running statistics (any float dtype, one shape).
#[derive(Debug, Clone, Copy)]
pub struct BnStats<'a> {
    /// `weight` (gamma).
    pub gamma: &'a Tensor,
    /// `bias` (beta).
    pub beta: &'a Tensor,
    /// `running_mean`.
    pub mean: &'a Tensor,
    /// `running_var`.
    pub var: &'a Tensor,
}

impl BnStats<'_> {
    /// The per-channel scale `s` and shift `beta - mean s`, in f64.
    pub fn scale_shift(&self) -> Result<(Tensor, Tensor)> {
        // Detached: the parameters are variables, and a result computed from them would record
        // its ops, so that a weight folded with it kept the layer's original weight alive
        // through its graph (the fused inference model held both copies of every folded layer).
        let f = |t: &Tensor| t.detach().to_dtype(DType::F64);
        let s = f(self.gamma)?.div(&(f(self.var)? + BN_EPS)?.sqrt()?)?;
        let shift = (f(self.beta)? - f(self.mean)?.mul(&s)?)?;
        Ok((s, shift))
    }
}

/// A layer's weight and bias after folding.
#[derive(Debug, Clone)]
pub struct Folded {
    /// The weight, in the layer's own layout.
    pub weight: Tensor,
    /// The bias, one per output channel (with the BN's shape).
    pub bias: Tensor,
}

/// `weight` (with optional `bias`) followed by the BatchNorm `bn`, whose channels lie on axis
/// `out_axis` of the weight; a BatchNorm of shape [g, C] (a group of layers) covers axes
/// `out_axis - 1` and `out_axis`. The result has dtype `dtype`.
///
/// # Shapes
/// weight [.., C (out_axis), ..], bias like the BN -> Folded { weight like weight, bias like the BN }
pub fn fold(
    weight: &Tensor,
    bias: Option<&Tensor>,
    bn: BnStats<'_>,
    out_axis: usize,
    dtype: DType,
) -> Result<Folded> {
    let (s, shift) = bn.scale_shift()?;
    let (rank, bn_dims) = (weight.rank(), s.dims().to_vec());
    if out_axis >= rank || out_axis + 1 < bn_dims.len() {
        return Err(ModelError::Config(format!(
            "folding a BatchNorm of shape {bn_dims:?}: axis {out_axis} does not fit a weight of \
             shape {:?}",
            weight.dims()
        )));
    }
    // s laid over the weight: its dims end at out_axis, ones elsewhere.
    let mut s_shape = vec![1usize; rank];
    for (i, &d) in bn_dims.iter().rev().enumerate() {
        s_shape[out_axis - i] = d;
    }
    // The weight is scaled in its own dtype (an f32 weight by the f32-rounded scale): no f64
    // copy of a large weight, and the product differs from the f64 one by at most an ulp.
    let w = weight.broadcast_mul(&s.to_dtype(weight.dtype())?.reshape(s_shape)?)?;
    let b = match bias {
        Some(b) => (b.to_dtype(DType::F64)?.mul(&s)? + shift)?,
        None => shift,
    };
    Ok(Folded { weight: w.to_dtype(dtype)?.detach(), bias: b.to_dtype(dtype)?.detach() })
}
