//! Weight initialisers over the model's [`VarMap`]:
//! - [`init_default`]: training from scratch, as PyTorch would build the reference model
//!   (torchvision's ResNet init for the backbone, PyTorch's layer defaults elsewhere), seeded;
//! - [`fill_parity`]: the deterministic parity filler of docs/FILES.md ("Golden parity fixtures"),
//!   bit-identical to the PyTorch side's (`tools/aue_reference.py`).
//!
//! Both decide what a variable is from its key and shape alone: a BatchNorm layer is one whose key
//! has a sibling `running_mean`.

use std::collections::BTreeSet;

use aue_core::prior_table_init;
use candle_core::{DType, Tensor};
use candle_nn::VarMap;

use crate::error::{ModelError, Result};
use crate::state::{StateEntry, state_entries};

/// FNV-1a 32-bit hash of `key`'s UTF-8 bytes.
pub fn fnv1a32(key: &str) -> u32 {
    key.bytes().fold(2166136261u32, |h, b| (h ^ u32::from(b)).wrapping_mul(16777619))
}

/// splitmix64's output function applied to `x` (after its golden-ratio increment).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

/// The parity filler's uniform u in [0, 1) for element `i` of the key with hash `h` (24 bits).
pub fn parity_uniform(h: u32, i: u64) -> f64 {
    let z = splitmix64((u64::from(h) << 32) | i);
    (z >> 40) as f64 / 16777216.0
}

/// What a state entry is, from its key and shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    BatchesTracked,
    RunningMean,
    RunningVar,
    BnWeight,
    BnBias,
    PriorTable,
    /// A conv / conv-transpose / linear weight (ndim >= 2).
    Weight,
    /// A conv / linear bias.
    Bias,
}

fn role(key: &str, shape: &[usize], bn_layers: &BTreeSet<String>) -> Result<Role> {
    let (prefix, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let is_bn = bn_layers.contains(prefix);
    Ok(match leaf {
        "num_batches_tracked" => Role::BatchesTracked,
        "running_mean" => Role::RunningMean,
        "running_var" => Role::RunningVar,
        "PriorKnowledgeTable" => Role::PriorTable,
        "weight" if is_bn => Role::BnWeight,
        "bias" if is_bn => Role::BnBias,
        "weight" if shape.len() >= 2 => Role::Weight,
        "bias" => Role::Bias,
        _ => {
            return Err(ModelError::Config(format!(
                "no initialisation rule for `{key}` of shape {shape:?}"
            )));
        }
    })
}

/// All reference state entries (group variables expanded), sorted by key, and the set of
/// BatchNorm layer prefixes.
fn entries(varmap: &VarMap) -> (Vec<StateEntry>, BTreeSet<String>) {
    let vars = state_entries(varmap);
    let bn = vars
        .iter()
        .filter_map(|e| e.key.strip_suffix(".running_mean").map(str::to_string))
        .collect();
    (vars, bn)
}

/// Set `var` to `values` rounded to f32 (then widened if the model is f64, as the PyTorch side
/// fills an f32 model and converts it).
fn set_f64(var: &StateEntry, values: Vec<f64>) -> Result<()> {
    let v: Vec<f32> = values.into_iter().map(|x| x as f32).collect();
    var.set(&Tensor::from_vec(v, var.dims(), var.var.device())?.to_dtype(var.dtype())?)?;
    Ok(())
}

fn set_i64_zero(var: &StateEntry) -> Result<()> {
    var.set(&Tensor::zeros(var.dims(), DType::I64, var.var.device())?)?;
    Ok(())
}

/// Fan-in as PyTorch computes it: shape[1] times the receptive field (for a ConvTranspose2d weight
/// [in, out, k, k] that is out * k * k, PyTorch's own convention).
fn torch_fan_in(shape: &[usize]) -> usize {
    shape[1..].iter().product()
}

/// The parity filler of docs/FILES.md: every variable gets its deterministic value (computed in f64,
/// stored as f32; `num_batches_tracked` 0).
pub fn fill_parity(varmap: &VarMap) -> Result<()> {
    let (vars, bn) = entries(varmap);
    let table: Vec<f64> = prior_table_init().iter().flatten().map(|&v| f64::from(v)).collect();
    for var in &vars {
        let (key, shape) = (&var.key, var.dims().to_vec());
        let role = role(key, &shape, &bn)?;
        let h = fnv1a32(key);
        let n = var.elem_count();
        let u = (0..n as u64).map(|i| parity_uniform(h, i));
        let values: Vec<f64> = match role {
            Role::PriorTable => u.zip(&table).map(|(u, t)| t + 0.2 * (2.0 * u - 1.0)).collect(),
            Role::RunningMean | Role::Bias | Role::BnBias => {
                u.map(|u| 0.1 * (2.0 * u - 1.0)).collect()
            }
            Role::RunningVar => u.map(|u| 1.0 + 0.5 * u).collect(),
            Role::BnWeight => u.map(|u| 1.0 + 0.1 * (2.0 * u - 1.0)).collect(),
            Role::Weight => {
                let fan_in = (n / shape[0]) as f64;
                u.map(|u| (2.0 * u - 1.0) / fan_in.sqrt()).collect()
            }
            Role::BatchesTracked => {
                set_i64_zero(var)?;
                continue;
            }
        };
        set_f64(var, values)?;
    }
    Ok(())
}

/// A seeded stream of uniforms in [0, 1) per key (53 bits), independent of iteration order.
struct KeyStream {
    state: u64,
}

impl KeyStream {
    fn new(seed: u64, key: &str) -> Self {
        KeyStream { state: splitmix64(seed ^ splitmix64(u64::from(fnv1a32(key)))) }
    }

    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(1);
        (splitmix64(self.state) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal by Box-Muller.
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Initialise for training from scratch, as PyTorch builds the reference model:
/// - backbone convs: torchvision's kaiming-normal, fan_out, ReLU gain (std sqrt(2 / fan_out));
/// - every BatchNorm: weight 1, bias 0, running mean 0, running var 1, num_batches_tracked 0;
/// - other conv / conv-transpose / linear layers (the heads, `backbone.fc`): PyTorch's default,
///   weight and bias uniform in +-1/sqrt(fan_in);
/// - `PriorKnowledgeTable`: the initial table of docs/METHOD.md section 2.
///
/// The values depend only on `seed` and each key.
pub fn init_default(varmap: &VarMap, seed: u64) -> Result<()> {
    let (vars, bn) = entries(varmap);
    let shapes: std::collections::BTreeMap<&str, Vec<usize>> =
        vars.iter().map(|e| (e.key.as_str(), e.dims().to_vec())).collect();
    for var in &vars {
        let (key, shape) = (&var.key, var.dims().to_vec());
        let n = var.elem_count();
        let mut rng = KeyStream::new(seed, key);
        let mut uniform = |bound: f64| -> Vec<f64> {
            (0..n).map(|_| bound * (2.0 * rng.uniform() - 1.0)).collect()
        };
        let values = match role(key, &shape, &bn)? {
            Role::BatchesTracked => {
                set_i64_zero(var)?;
                continue;
            }
            Role::RunningMean | Role::BnBias => vec![0.0; n],
            Role::RunningVar | Role::BnWeight => vec![1.0; n],
            Role::PriorTable => {
                prior_table_init().iter().flatten().map(|&v| f64::from(v)).collect()
            }
            Role::Weight if key.starts_with("backbone.") && shape.len() == 4 => {
                let std = (2.0 / (shape[0] * shape[2] * shape[3]) as f64).sqrt();
                (0..n).map(|_| std * rng.normal()).collect()
            }
            Role::Weight => uniform(1.0 / (torch_fan_in(&shape) as f64).sqrt()),
            Role::Bias => {
                let weight_key = format!("{}.weight", key.rsplit_once('.').map_or("", |(p, _)| p));
                let w = shapes.get(weight_key.as_str()).ok_or_else(|| {
                    ModelError::Config(format!("bias `{key}` has no sibling `{weight_key}`"))
                })?;
                uniform(1.0 / (torch_fan_in(w) as f64).sqrt())
            }
        };
        set_f64(var, values)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AueModel, ModelConfig, Preset};
    use candle_core::Device;

    #[test]
    fn fnv_and_splitmix_match_hand_computed_values() {
        // FNV-1a of "" is the offset basis; of "a" = (0x811c9dc5 ^ 0x61) * 16777619 mod 2^32.
        assert_eq!(fnv1a32(""), 0x811c9dc5);
        assert_eq!(fnv1a32("a"), 0xe40c292c);
        // splitmix64 from state 0: the first output of the reference generator.
        assert_eq!(splitmix64(0), 0xe220a8397b1dcdaf);
    }

    /// Values printed by `python3 tools/aue_reference.py --filler-values` (the PyTorch side's
    /// independent implementation), as f32 bit patterns.
    #[test]
    fn parity_values_match_the_reference_script() {
        assert_eq!(fnv1a32("backbone.conv1.weight"), 0x45917d97);
        assert_eq!(fnv1a32("PriorKnowledgeTable"), 0x22a21daf);
        assert_eq!((parity_uniform(0x45917d97, 0) * 16777216.0) as u32, 8477065);
        let map = VarMap::new();
        AueModel::with_varmap(&map, &ModelConfig::preset(Preset::Tiny), &Device::Cpu).unwrap();
        fill_parity(&map).unwrap();
        let bits = |k: &str| -> Vec<u32> {
            let t = map.data().lock().unwrap()[k].as_tensor().flatten_all().unwrap();
            t.to_vec1::<f32>().unwrap()[..3].iter().map(|v| v.to_bits()).collect()
        };
        assert_eq!(bits("backbone.conv1.weight"), [0x3a63fe7c, 0x3da50d65, 0x3d758fee]);
        assert_eq!(bits("backbone.bn1.weight"), [0x3f8c0d9c, 0x3f840e3e, 0x3f8c7d8f]);
        assert_eq!(bits("backbone.bn1.running_var"), [0x3facf379, 0x3fa9afef, 0x3f9148d4]);
        assert_eq!(bits("pred_em.bias"), [0x3d37ee16, 0xbdac3a68, 0xbc84a046]);
        assert_eq!(bits("PriorKnowledgeTable"), [0x3f890db2, 0x3f948f64, 0x3e766efe]);
        let nbt = map.data().lock().unwrap()["backbone.bn1.num_batches_tracked"]
            .to_scalar::<i64>()
            .unwrap();
        assert_eq!(nbt, 0);
    }

    #[test]
    fn default_init_follows_pytorch_rules_and_the_seed() {
        let map = VarMap::new();
        AueModel::with_varmap(&map, &ModelConfig::preset(Preset::Tiny), &Device::Cpu).unwrap();
        init_default(&map, 7).unwrap();
        let get = |k: &str| {
            map.data().lock().unwrap()[k]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        // Backbone conv: kaiming normal, fan_out = 16 * 7 * 7.
        let w = get("backbone.conv1.weight");
        let std = (w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
        let expect = (2.0 / (16.0 * 49.0f64)).sqrt();
        assert!((std / expect - 1.0).abs() < 0.1, "std {std} vs {expect}");
        // Head linear: uniform within 1/sqrt(fan_in).
        let bound = 1.0 / (34.0 * 16.0f64).sqrt();
        let p = get("pred_au.0.weight");
        assert!(p.iter().all(|v| (*v as f64).abs() <= bound));
        assert!(p.iter().any(|v| (*v as f64).abs() > 0.9 * bound));
        // ConvTranspose2d [in, out, 4, 4]: PyTorch's fan_in is out * 16.
        let d = get("deconv_layer1.0.weight");
        let bound = 1.0 / (64.0 * 16.0f64).sqrt();
        assert!(
            d.iter().all(|v| (*v as f64).abs() <= bound)
                && d.iter().any(|v| (*v as f64).abs() > 0.9 * bound)
        );
        assert!(get("backbone.layer1.0.bn1.weight").iter().all(|&v| v == 1.0));
        assert!(get("reduce_dim_em.1.running_var").iter().all(|&v| v == 1.0));
        assert_eq!(get("PriorKnowledgeTable")[0], 1.0);
        // Same seed, same values; another seed, other values.
        let again = VarMap::new();
        AueModel::with_varmap(&again, &ModelConfig::preset(Preset::Tiny), &Device::Cpu).unwrap();
        init_default(&again, 7).unwrap();
        let conv1 = |vm: &VarMap| {
            let data = vm.data().lock().unwrap();
            data["backbone.conv1.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(w, conv1(&again));
        init_default(&again, 8).unwrap();
        assert_ne!(w, conv1(&again));
    }
}
