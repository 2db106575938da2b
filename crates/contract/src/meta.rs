//! What a checkpoint says about itself: the `__metadata__` keys of model checkpoints (stage,
//! preset, config, epoch, metrics, dataset, labels, parent hash), the optimizer state file, the
//! commit point of a run (`commit.json`), and file hashes.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use aue_model::{Preset, Stage};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{CandleContext, ContractError, Result, io_err};
use crate::format;

/// Metadata keys of a model checkpoint written by the trainer.
pub mod keys {
    /// Stage number (`1`, `2`, `3`).
    pub const STAGE: &str = "stage";
    /// Preset name (`resnet101`, `tiny`, ...).
    pub const PRESET: &str = "preset";
    /// The resolved stage configuration as JSON.
    pub const CONFIG: &str = "config";
    /// Epochs completed when the checkpoint was written (1-based).
    pub const EPOCH: &str = "epoch";
    /// That epoch's test metrics as JSON.
    pub const METRICS: &str = "metrics";
    /// Dataset flag value (`rafdb`, ...).
    pub const DATASET: &str = "dataset";
    /// Class names as a JSON array, in label order.
    pub const LABELS: &str = "labels";
    /// sha256 (hex) of the checkpoint (or pretrained weights) the stage started from; empty
    /// when it started from scratch.
    pub const PARENT_SHA256: &str = "parent_sha256";
    /// Why this checkpoint was kept (`best`: test-set selection; `last`).
    pub const SELECTION: &str = "selection";
    /// Best test mean class accuracy so far and its epoch (for `--resume`).
    pub const BEST_MEAN_CLASS_ACC: &str = "best_mean_class_acc";
    /// See [`BEST_MEAN_CLASS_ACC`].
    pub const BEST_EPOCH: &str = "best_epoch";
    /// `model` or `optimizer`.
    pub const KIND: &str = "kind";
    /// Optimizer file: optimizer steps taken so far.
    pub const GLOBAL_STEP: &str = "global_step";
    /// Optimizer file: learning rate of the last epoch run.
    pub const LR: &str = "lr";
    /// Optimizer file: momentum factor.
    pub const MOMENTUM: &str = "momentum";
    /// Optimizer file: how the random state is kept.
    pub const RNG: &str = "rng";
}

/// The `selection` value of `best.safetensors`.
pub const SELECTION_BEST: &str =
    "best test mean class accuracy (test-set selection, as the reference)";
/// The `selection` value of `last.safetensors`.
pub const SELECTION_LAST: &str = "last epoch";

/// The metadata of a model checkpoint written by the trainer.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMeta {
    /// Stage that wrote it.
    pub stage: Stage,
    /// Preset it was trained with.
    pub preset: Preset,
    /// Resolved configuration (JSON).
    pub config_json: String,
    /// Epochs completed.
    pub epoch: usize,
    /// That epoch's test metrics (JSON).
    pub metrics_json: String,
    /// Dataset flag value.
    pub dataset: String,
    /// Class names in label order.
    pub labels: Vec<String>,
    /// sha256 of the starting checkpoint (empty: from scratch).
    pub parent_sha256: String,
    /// Why it was kept.
    pub selection: String,
    /// Best test mean class accuracy so far, and its epoch.
    pub best: Option<(f64, usize)>,
}

impl ModelMeta {
    /// The metadata of weights no training run wrote (initialised or converted weights, the
    /// checkpoints of tests and examples): a `stage` checkpoint of `preset` at `config`'s input
    /// side and fusion width, on RAF-DB's basic expressions, after one epoch, kept as the last.
    pub fn untrained(stage: Stage, preset: Preset, config: &aue_model::ModelConfig) -> Self {
        ModelMeta {
            stage,
            preset,
            config_json: format!(
                "{{\"input_size\": {}, \"fuse_dim\": {}}}",
                config.input_size, config.fuse_dim
            ),
            epoch: 1,
            metrics_json: "{}".into(),
            dataset: "rafdb".into(),
            labels: aue_core::EXPRESSIONS_BASIC.iter().map(|s| s.to_string()).collect(),
            parent_sha256: String::new(),
            selection: SELECTION_LAST.into(),
            best: None,
        }
    }

    /// The string map stored as `__metadata__` (aue-model adds its format version).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        put(keys::KIND, "model".into());
        put(keys::STAGE, self.stage.number().to_string());
        put(keys::PRESET, self.preset.name().into());
        put(keys::CONFIG, self.config_json.clone());
        put(keys::EPOCH, self.epoch.to_string());
        put(keys::METRICS, self.metrics_json.clone());
        put(keys::DATASET, self.dataset.clone());
        put(keys::LABELS, serde_json::to_string(&self.labels).unwrap_or_default());
        put(keys::PARENT_SHA256, self.parent_sha256.clone());
        put(keys::SELECTION, self.selection.clone());
        if let Some((acc, epoch)) = self.best {
            put(keys::BEST_MEAN_CLASS_ACC, acc.to_string());
            put(keys::BEST_EPOCH, epoch.to_string());
        }
        m
    }

    /// Parses the metadata of `path`. `Ok(None)` when the file carries no trainer metadata
    /// (a foreign checkpoint, e.g. converted from the reference's PyTorch weights).
    pub fn from_map(path: &Path, m: &BTreeMap<String, String>) -> Result<Option<Self>> {
        let Some(stage) = m.get(keys::STAGE) else { return Ok(None) };
        let bad = |msg: String| ContractError::checkpoint(path, msg);
        let get = |k: &'static str| m.get(k).ok_or_else(|| bad(format!("metadata lacks `{k}`")));
        let stage = stage
            .parse::<u8>()
            .ok()
            .and_then(Stage::from_number)
            .ok_or_else(|| bad(format!("metadata `stage` is `{stage}`, not 1, 2 or 3")))?;
        let preset = get(keys::PRESET)?;
        let preset =
            preset.parse::<Preset>().map_err(|e| bad(format!("metadata `preset`: {e}")))?;
        let epoch = get(keys::EPOCH)?;
        let epoch = epoch.parse().map_err(|_| bad(format!("metadata `epoch` is `{epoch}`")))?;
        let labels = get(keys::LABELS)?;
        let labels = serde_json::from_str(labels)
            .map_err(|e| bad(format!("metadata `labels` is not a JSON list of names: {e}")))?;
        let best = match (m.get(keys::BEST_MEAN_CLASS_ACC), m.get(keys::BEST_EPOCH)) {
            (Some(a), Some(e)) => match (a.parse(), e.parse()) {
                (Ok(a), Ok(e)) => Some((a, e)),
                _ => return Err(bad(format!("metadata best `{a}` at epoch `{e}` does not parse"))),
            },
            _ => None,
        };
        Ok(Some(ModelMeta {
            stage,
            preset,
            config_json: get(keys::CONFIG)?.clone(),
            epoch,
            metrics_json: m.get(keys::METRICS).cloned().unwrap_or_default(),
            dataset: get(keys::DATASET)?.clone(),
            labels,
            parent_sha256: m.get(keys::PARENT_SHA256).cloned().unwrap_or_default(),
            selection: m.get(keys::SELECTION).cloned().unwrap_or_default(),
            best,
        }))
    }

    /// Reads and parses the metadata of `path` without loading any tensor.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        Self::from_map(path, &format::read_metadata(path)?)
    }
}

/// The sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(io_err("cannot open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err("cannot read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Saves the model's variables with `meta` (atomic), floats as `float` (F32, the default of
/// every stage, or F64).
pub fn save_model(varmap: &VarMap, path: &Path, meta: &ModelMeta, float: DType) -> Result<()> {
    format::save_as(varmap, path, &meta.to_map(), float)
}

/// The optimizer state paired with `last.safetensors`.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerMeta {
    /// Stage.
    pub stage: Stage,
    /// Epochs completed (must equal the paired model checkpoint's).
    pub epoch: usize,
    /// Optimizer steps taken.
    pub global_step: usize,
    /// Learning rate of the last epoch run.
    pub lr: f64,
    /// Momentum factor.
    pub momentum: f64,
}

/// How randomness is kept across `--resume`: recorded in the optimizer file so that a reader
/// knows no generator state needs restoring.
const RNG_NOTE: &str = "data order and augmentation are functions of (seed, epoch); \
                        dropout masks come from the device generator and are not restored";

/// Saves momentum buffers and counters to `path` (atomic), floats as `float` (as [`save_model`]).
pub fn save_optimizer(
    buffers: &[(String, Tensor)],
    path: &Path,
    meta: &OptimizerMeta,
    float: DType,
) -> Result<()> {
    let map = VarMap::new();
    {
        let mut data = map.data().lock().unwrap_or_else(|e| e.into_inner());
        for (name, t) in buffers {
            let var = Var::from_tensor(t).op("optimizer state: copy buffer")?;
            data.insert(name.clone(), var);
        }
    }
    let mut m = BTreeMap::new();
    m.insert(keys::KIND.to_string(), "optimizer".to_string());
    m.insert(keys::STAGE.to_string(), meta.stage.number().to_string());
    m.insert(keys::EPOCH.to_string(), meta.epoch.to_string());
    m.insert(keys::GLOBAL_STEP.to_string(), meta.global_step.to_string());
    m.insert(keys::LR.to_string(), meta.lr.to_string());
    m.insert(keys::MOMENTUM.to_string(), meta.momentum.to_string());
    m.insert(keys::RNG.to_string(), RNG_NOTE.to_string());
    format::save_as(&map, path, &m, float)
}

/// Loads an optimizer file: its counters and momentum buffers (on `device`).
pub fn load_optimizer(
    path: &Path,
    device: &Device,
) -> Result<(OptimizerMeta, HashMap<String, Tensor>)> {
    let (m, tensors) = format::read_safetensors(path, device)?;
    let bad = |msg: String| ContractError::checkpoint(path, msg);
    let get = |k: &'static str| {
        m.get(k).ok_or_else(|| bad(format!("optimizer state lacks metadata `{k}`")))
    };
    if get(keys::KIND)? != "optimizer" {
        return Err(bad("not an optimizer state file".into()));
    }
    fn parse<T: std::str::FromStr>(
        v: &str,
        k: &str,
        bad: &dyn Fn(String) -> ContractError,
    ) -> Result<T> {
        v.parse().map_err(|_| bad(format!("metadata `{k}` is `{v}`")))
    }
    let stage: u8 = parse(get(keys::STAGE)?, keys::STAGE, &bad)?;
    let meta = OptimizerMeta {
        stage: Stage::from_number(stage).ok_or_else(|| bad(format!("stage {stage}")))?,
        epoch: parse(get(keys::EPOCH)?, keys::EPOCH, &bad)?,
        global_step: parse(get(keys::GLOBAL_STEP)?, keys::GLOBAL_STEP, &bad)?,
        lr: parse(get(keys::LR)?, keys::LR, &bad)?,
        momentum: parse(get(keys::MOMENTUM)?, keys::MOMENTUM, &bad)?,
    };
    Ok((meta, tensors.into_iter().collect()))
}

/// The commit point of a stage run (`commit.json`): the last finished epoch and the files that
/// hold it. It is written last, atomically, after every file it names is complete, and files are
/// removed only once a later commit no longer names them: whatever instant a run is killed at,
/// `commit.json` names a consistent epoch (docs/FILES.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commit {
    /// Stage number.
    pub stage: u8,
    /// Epochs finished (1-based number of the last one).
    pub epoch: usize,
    /// Optimizer steps taken.
    pub global_step: usize,
    /// The model of the last epoch (a file name in the stage folder).
    pub last: String,
    /// Its optimizer state (a file name in the stage folder).
    pub optimizer: String,
    /// The best epoch so far by the run's selection rule, if any epoch qualified.
    pub best: Option<BestEpoch>,
}

/// The best epoch of a run, as [`Commit`] records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BestEpoch {
    /// Its model (a file name in the stage folder).
    pub file: String,
    /// 1-based epoch.
    pub epoch: usize,
    /// The value of the selection metric.
    pub metric: f64,
}

impl Commit {
    /// Reads `commit.json`; `Ok(None)` when there is none (no epoch committed yet).
    pub fn read(path: &Path) -> Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot read", path)(e).into()),
        };
        let commit: Commit = serde_json::from_str(&text).map_err(|e| ContractError::Json {
            what: "commit point",
            path: path.to_owned(),
            msg: e.to_string(),
        })?;
        let names =
            [Some(&commit.last), Some(&commit.optimizer), commit.best.as_ref().map(|b| &b.file)];
        for name in names.into_iter().flatten() {
            // Names, not paths: a forged commit must not point outside the stage folder.
            if name.is_empty() || name.contains('/') || name.contains('\\') || name.starts_with('.')
            {
                return Err(ContractError::Json {
                    what: "commit point",
                    path: path.to_owned(),
                    msg: format!("`{name}` is not a file name in the stage folder"),
                });
            }
        }
        Ok(Some(commit))
    }

    /// Writes `commit.json` atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        crate::fsio::write_atomic(path, text.as_bytes())
    }

    /// Every file the commit names.
    pub fn files(&self) -> Vec<&str> {
        let mut v = vec![self.last.as_str(), self.optimizer.as_str()];
        if let Some(b) = &self.best {
            v.push(b.file.as_str());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ModelMeta {
        ModelMeta {
            stage: Stage::Au,
            preset: Preset::Tiny,
            config_json: "{\"dim\": 32}".into(),
            epoch: 3,
            metrics_json: "{\"acc\": 0.5}".into(),
            dataset: "rafdb".into(),
            labels: aue_core::EXPRESSIONS_BASIC.iter().map(|s| s.to_string()).collect(),
            parent_sha256: "ab".repeat(32),
            selection: SELECTION_BEST.into(),
            best: Some((0.625, 2)),
        }
    }

    #[test]
    fn metadata_round_trips_through_the_string_map() -> Result<()> {
        let m = meta();
        let back = ModelMeta::from_map(Path::new("x"), &m.to_map())?;
        assert_eq!(back, Some(m));
        Ok(())
    }

    #[test]
    fn no_trainer_metadata_is_foreign() -> Result<()> {
        let mut map = BTreeMap::new();
        map.insert("aue_format".to_string(), "1".to_string());
        assert_eq!(ModelMeta::from_map(Path::new("x"), &map)?, None);
        Ok(())
    }

    #[test]
    fn malformed_metadata_names_the_key_and_file() {
        let mut map = meta().to_map();
        map.insert(keys::STAGE.into(), "7".into());
        let err = ModelMeta::from_map(Path::new("ck.safetensors"), &map).unwrap_err().to_string();
        assert!(err.contains("ck.safetensors") && err.contains("stage"), "{err}");
        let mut map = meta().to_map();
        map.remove(keys::PRESET);
        let err = ModelMeta::from_map(Path::new("ck.safetensors"), &map).unwrap_err().to_string();
        assert!(err.contains("`preset`"), "{err}");
    }

    #[test]
    fn sha256_of_a_known_string() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(io_err("tempdir", "/tmp"))?;
        let p = tmp.path().join("abc");
        std::fs::write(&p, b"abc").map_err(io_err("write", &p))?;
        assert_eq!(
            sha256_file(&p)?,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        Ok(())
    }

    #[test]
    fn optimizer_state_round_trips() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(io_err("tempdir", "/tmp"))?;
        let p = tmp.path().join("o.safetensors");
        let buf = Tensor::new(&[1f32, -2.5, 3.0], &Device::Cpu).op("t")?;
        let meta = OptimizerMeta {
            stage: Stage::Fuse,
            epoch: 4,
            global_step: 40,
            lr: 0.001,
            momentum: 0.9,
        };
        save_optimizer(&[("pred_em.weight".into(), buf.clone())], &p, &meta, DType::F32)?;
        let (back, tensors) = load_optimizer(&p, &Device::Cpu)?;
        assert_eq!(back, meta);
        let t = tensors["pred_em.weight"].to_vec1::<f32>().op("read")?;
        assert_eq!(t, [1.0, -2.5, 3.0]);
        Ok(())
    }
}
