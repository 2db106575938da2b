//! The model's state as the reference's state dict sees it.
//!
//! The reference has families of same-shaped modules used side by side: the 34 `Crop_Net_1.{k}`
//! and `Crop_Net_2.{k}` crop nets and the 17 `fc_au_fuse_3.{i}` fusion heads. Their parameters are
//! computed with as one batched product each, so the [`VarMap`] holds each family's tensor once,
//! stacked along a new first dimension, under a *group key* with `*` in place of the index
//! (`Crop_Net_2.*.0.weight`, shape [34, 256, 36864]). Stacking them inside every forward pass
//! instead would copy Crop_Net_2's 1.3 GB of weights per step and split its gradient again in
//! the backward pass.
//!
//! Everything that speaks reference keys (checkpoints, initialisers, parity and freezing tests)
//! goes through [`state_entries`], which expands a group into one [`StateEntry`] per index: key
//! `Crop_Net_2.5.0.weight`, a view of slice 5.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;

use crate::error::Result;

/// The index placeholder of a group key.
pub const GROUP_MARK: &str = ".*.";

/// The group key of the family `{family}.{i}.{suffix}`: `{family}.*.{suffix}`.
pub fn group_key(family: &str, suffix: &str) -> String {
    format!("{family}{GROUP_MARK}{suffix}")
}

/// `(family, suffix)` of a group key, `None` for an ordinary key.
pub fn split_group_key(key: &str) -> Option<(&str, &str)> {
    key.split_once(GROUP_MARK)
}

/// The reference key of index `i` of a group key (the key itself when it is not one).
pub fn member_key(key: &str, i: usize) -> String {
    match split_group_key(key) {
        Some((family, suffix)) => format!("{family}.{i}.{suffix}"),
        None => key.to_string(),
    }
}

/// One entry of the reference state dict: a whole variable, or one slice of a group variable.
#[derive(Debug, Clone)]
pub struct StateEntry {
    /// The reference key.
    pub key: String,
    /// The variable holding it.
    pub var: Var,
    /// The slice of a group variable, `None` for a whole variable.
    pub index: Option<usize>,
}

impl StateEntry {
    /// The entry's values: the variable, or a view of its slice (no copy).
    pub fn tensor(&self) -> Result<Tensor> {
        Ok(match self.index {
            Some(i) => self.var.as_tensor().get(i)?,
            None => self.var.as_tensor().clone(),
        })
    }

    /// The entry's shape (the reference tensor's).
    pub fn dims(&self) -> &[usize] {
        let dims = self.var.dims();
        if self.index.is_some() { &dims[1..] } else { dims }
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.dims().iter().product()
    }

    /// The dtype.
    pub fn dtype(&self) -> DType {
        self.var.dtype()
    }

    /// Overwrites the entry's values in place (`values` must have the entry's shape and dtype).
    pub fn set(&self, values: &Tensor) -> Result<()> {
        match self.index {
            Some(i) => {
                let v = values.to_device(self.var.device())?.contiguous()?.unsqueeze(0)?;
                self.var.as_tensor().slice_set(&v, 0, i)?;
            }
            None => self.var.set(&values.to_device(self.var.device())?)?,
        }
        Ok(())
    }

    /// This entry's part of `grad`, the gradient of the whole variable.
    pub fn part_of(&self, grad: &Tensor) -> Result<Tensor> {
        Ok(match self.index {
            Some(i) => grad.get(i)?,
            None => grad.clone(),
        })
    }
}

/// Expands `(key, var)` pairs (group keys included) into reference entries, sorted by key.
pub fn expand(vars: impl IntoIterator<Item = (String, Var)>) -> Vec<StateEntry> {
    let mut out = Vec::new();
    for (key, var) in vars {
        if split_group_key(&key).is_some() {
            let n = var.dims().first().copied().unwrap_or(0);
            out.extend((0..n).map(|i| StateEntry {
                key: member_key(&key, i),
                var: var.clone(),
                index: Some(i),
            }));
        } else {
            out.push(StateEntry { key, var, index: None });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// Every entry of the reference state dict of `varmap`, sorted by key.
pub fn state_entries(varmap: &VarMap) -> Vec<StateEntry> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    expand(data.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>())
}

/// The reference state dict of `varmap`: key -> tensor (group slices are views).
pub fn state_tensors(varmap: &VarMap) -> Result<BTreeMap<String, Tensor>> {
    state_entries(varmap).into_iter().map(|e| Ok((e.key.clone(), e.tensor()?))).collect()
}

/// The gradients of `vars` (as from `trainable_vars`) by reference key; `None` where the backward
/// pass reached no part of the variable.
pub fn gradients_by_key(
    vars: &[(String, Var)],
    grads: &GradStore,
) -> Result<BTreeMap<String, Option<Tensor>>> {
    let mut out = BTreeMap::new();
    for entry in expand(vars.iter().cloned()) {
        let g = grads.get(entry.var.as_tensor()).map(|g| entry.part_of(g)).transpose()?;
        out.insert(entry.key, g);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn group_keys_expand_to_reference_keys() {
        assert_eq!(group_key("Crop_Net_2", "0.weight"), "Crop_Net_2.*.0.weight");
        assert_eq!(split_group_key("Crop_Net_2.*.0.weight"), Some(("Crop_Net_2", "0.weight")));
        assert_eq!(split_group_key("pred_au.0.weight"), None);
        assert_eq!(
            member_key("fc_au_fuse_3.*.2.running_mean", 16),
            "fc_au_fuse_3.16.2.running_mean"
        );
        assert_eq!(member_key("pred_em.bias", 3), "pred_em.bias");
    }

    #[test]
    fn entries_are_views_that_read_and_write_their_slice() -> Result<()> {
        let dev = Device::Cpu;
        let map = VarMap::new();
        let group = Var::from_vec((0..12).map(|v| v as f32).collect::<Vec<_>>(), (3, 2, 2), &dev)?;
        let plain = Var::zeros(2, DType::F32, &dev)?;
        {
            let mut data = map.data().lock().unwrap();
            data.insert("net.*.w".into(), group.clone());
            data.insert("head.b".into(), plain.clone());
        }
        let entries = state_entries(&map);
        let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["head.b", "net.0.w", "net.1.w", "net.2.w"]);
        let one = &entries[2];
        assert_eq!(one.dims(), [2, 2]);
        assert_eq!(one.tensor()?.to_vec2::<f32>()?, [[4.0, 5.0], [6.0, 7.0]]);
        one.set(&Tensor::new(&[[-1f32, -2.0], [-3.0, -4.0]], &dev)?)?;
        let all = group.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(all, [0., 1., 2., 3., -1., -2., -3., -4., 8., 9., 10., 11.]);
        entries[0].set(&Tensor::new(&[5f32, 6.0], &dev)?)?;
        assert_eq!(plain.as_tensor().to_vec1::<f32>()?, [5.0, 6.0]);
        Ok(())
    }

    #[test]
    fn gradients_split_by_member() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::ones((2, 3), DType::F32, &dev)?;
        let scale = Tensor::new(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &dev)?;
        let loss = (w.as_tensor() * &scale)?.sum_all()?;
        let grads = loss.backward()?;
        let unused = Var::ones(1, DType::F32, &dev)?;
        let vars = vec![("g.*.w".to_string(), w), ("u".to_string(), unused)];
        let by_key = gradients_by_key(&vars, &grads)?;
        assert_eq!(by_key["g.1.w"].as_ref().unwrap().to_vec1::<f32>()?, [4.0, 5.0, 6.0]);
        assert!(by_key["u"].is_none());
        assert_eq!(by_key.len(), 3);
        Ok(())
    }
}
