//! The model's state as the exporter reads it, and BatchNorm folded into the layer before it.
//!
//! Keys are the reference state-dict keys the model itself uses (crates/model), group variables
//! (the 34 crop nets, the 17 fusion heads) under their group keys `Crop_Net_1.*.0.weight` etc.
//! (crates/model/src/state.rs), so the stacked tensors are read once, not re-stacked.
//!
//! The folding arithmetic is aue-model's (`aue_model::fold`, shared with its fused inference
//! model); here it reads the BatchNorm's tensors by key and stores the result as f32.

use std::collections::BTreeMap;

use aue_model::AueModel;
use candle_core::{DType, Tensor};

use aue_model::fold::BnStats;
pub use aue_model::fold::{BN_EPS, Folded};

use crate::error::{ExportError, Result};

/// The model's float parameters and buffers by key (group keys included).
pub struct State {
    tensors: BTreeMap<String, Tensor>,
}

impl State {
    /// The float variables of `model` (views of its storage, no copy; the i64 batch counters
    /// are left out).
    pub fn of(model: &AueModel) -> Self {
        let data = model.varmap().data().lock().unwrap_or_else(|e| e.into_inner());
        let tensors = data
            .iter()
            .filter(|(_, var)| var.dtype().is_float())
            .map(|(key, var)| (key.clone(), var.as_tensor().detach()))
            .collect();
        State { tensors }
    }

    /// The tensor `key`, which must have shape `dims`.
    pub fn get(&self, key: &str, dims: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(key)
            .ok_or_else(|| ExportError::state(key, "missing from the model state"))?;
        if t.dims() != dims {
            return Err(ExportError::state(
                key,
                format!("has shape {:?}, the graph needs {dims:?}", t.dims()),
            ));
        }
        Ok(t.clone())
    }

    /// `weight` (with optional `bias`) followed by the BatchNorm at `bn` (`bn.weight`, `.bias`,
    /// `.running_mean`, `.running_var`, each of shape `bn_dims`), folded by
    /// [`aue_model::fold::fold`] into f32; see there for `out_axis`.
    ///
    /// # Shapes
    /// weight [.., C (out_axis), ..], bias like the BN -> Folded { weight like weight, bias like the BN }
    pub fn fold(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        bn: &str,
        bn_dims: &[usize],
        out_axis: usize,
    ) -> Result<Folded> {
        let get = |name: &str| self.get(&format!("{bn}.{name}"), bn_dims);
        let (gamma, beta, mean, var) =
            (get("weight")?, get("bias")?, get("running_mean")?, get("running_var")?);
        let stats = BnStats { gamma: &gamma, beta: &beta, mean: &mean, var: &var };
        Ok(aue_model::fold::fold(weight, bias, stats, out_axis, DType::F32)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aue_model::{ModelConfig, Preset};
    use candle_core::Device;

    /// Folding a 1x1 conv's BN gives the same numbers as conv then BN, per element.
    #[test]
    fn folded_linear_equals_linear_then_batch_norm() {
        let cfg = ModelConfig::preset(Preset::Tiny);
        let model = AueModel::new(&cfg, &Device::Cpu).unwrap();
        aue_model::init::fill_parity(model.varmap()).unwrap();
        let state = State::of(&model);
        // fc_em_fuse_3: Linear(em_dim -> Dim) then BatchNorm1d(Dim).
        let (dim, em) = (cfg.fuse_dim, cfg.em_dim);
        let w = state.get("fc_em_fuse_3.1.weight", &[dim, em]).unwrap();
        let b = state.get("fc_em_fuse_3.1.bias", &[dim]).unwrap();
        let f = state.fold(&w, Some(&b), "fc_em_fuse_3.2", &[dim], 0).unwrap();
        let (w, b) = (w.to_dtype(DType::F64).unwrap(), b.to_dtype(DType::F64).unwrap());
        let x = Tensor::randn(0f64, 1., (3, em), &Device::Cpu).unwrap();
        let y = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
        let get = |k: &str| {
            state.get(&format!("fc_em_fuse_3.2.{k}"), &[dim]).unwrap().to_dtype(DType::F64).unwrap()
        };
        let bn = y
            .broadcast_sub(&get("running_mean"))
            .unwrap()
            .broadcast_div(&(get("running_var") + BN_EPS).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&get("weight"))
            .unwrap()
            .broadcast_add(&get("bias"))
            .unwrap();
        let folded = x
            .matmul(&f.weight.to_dtype(DType::F64).unwrap().t().unwrap())
            .unwrap()
            .broadcast_add(&f.bias.to_dtype(DType::F64).unwrap())
            .unwrap();
        let diff = (bn - folded).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-5);
        // A group BN [17, Dim] over a [17, Dim, 2F] weight scales axis 1.
        let heads = state.get("fc_au_fuse_3.*.1.weight", &[17, dim, 2 * cfg.au_feat]).unwrap();
        let f = state.fold(&heads, None, "fc_au_fuse_3.*.2", &[17, dim], 1).unwrap();
        assert_eq!(f.weight.dims(), heads.dims());
        assert_eq!(f.bias.dims(), [17, dim]);
        assert!(state.get("no.such.key", &[1]).unwrap_err().to_string().contains("no.such.key"));
    }
}
