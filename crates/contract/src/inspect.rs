//! What model a checkpoint holds, and whether a use may take it, decided before any tensor is
//! loaded, with every check in one place: the trainer's metadata (stage, preset, sizes, labels),
//! the tensor names and shapes of the file against the model that metadata describes (the
//! shapes win: metadata that claims another model is an error naming the first key that
//! disagrees), the parent checks of a stage that starts from it, then the strict, finite load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aue_core::{NUM_AUS, NUM_BASIC};
use aue_data::DatasetKind;
use aue_model::{AueModel, ModelConfig, Preset, Stage};
use candle_core::{DType, Device};

use crate::error::{ContractError, Result};
use crate::format::{self, FORMAT_KEY};
use crate::layout::stage_label;
use crate::meta::{ModelMeta, keys};

/// The parameter name of the prior table in a checkpoint (docs/METHOD.md section 2).
pub const PRIOR_TABLE_KEY: &str = "PriorKnowledgeTable";

/// A 7 x 17 prior table, rows = expressions (label order), columns = AUs (AU order).
pub type PriorTable = [[f32; NUM_AUS]; NUM_BASIC];

/// What a checkpoint is, resolved from its header and checked against its tensor shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// The file.
    pub path: PathBuf,
    /// The checkpoint format version (`aue_format`), if recorded.
    pub format: Option<String>,
    /// The trainer's metadata (stage, preset, labels, epoch, ...). For a foreign checkpoint
    /// (the reference's names only, [`CheckpointInfo::foreign`]) it is made up: stage 3, the
    /// `--preset` given, the basic labels, epoch 0.
    pub meta: ModelMeta,
    /// Whether the file has no trainer metadata.
    pub foreign: bool,
    /// The model it holds (input side, fusion width, classes).
    pub config: ModelConfig,
}

/// Default class names for a class count: the basic or compound names, else `class_k`.
fn default_labels(n: usize) -> Vec<String> {
    if n == aue_core::EXPRESSIONS_BASIC.len() {
        aue_core::EXPRESSIONS_BASIC.iter().map(|s| s.to_string()).collect()
    } else if n == aue_core::EXPRESSIONS_COMPOUND.len() {
        aue_core::EXPRESSIONS_COMPOUND.iter().map(|s| s.to_string()).collect()
    } else {
        (0..n).map(|k| format!("class_{k}")).collect()
    }
}

impl CheckpointInfo {
    /// Reads `path`'s header and resolves the model it holds. `preset` (a `--preset` flag) is
    /// required when the file has no trainer metadata, and must agree with it when it has. The
    /// tensor names and shapes must be exactly those of that model.
    pub fn read(path: &Path, preset: Option<Preset>) -> Result<Self> {
        let bad = |msg: String| ContractError::checkpoint(path, msg);
        let map = format::read_metadata(path)?;
        if map.get(keys::KIND).map(String::as_str) == Some("optimizer") {
            return Err(bad("this is an optimizer state file, not a model checkpoint".into()));
        }
        let shapes = format::tensor_infos(path)?;
        let shape = |key: &str| shapes.get(key).map(|(_, s)| s.clone());
        let meta = ModelMeta::from_map(path, &map)?;
        let foreign = meta.is_none();
        let (meta, config) = match meta {
            None => {
                let Some(preset) = preset else {
                    return Err(bad("it has no aue metadata (stage, preset, sizes): pass \
                                    --preset to say which model it holds"
                        .into()));
                };
                let mut config = ModelConfig::preset(preset);
                if let Some(s) = shape("pred_em.weight") {
                    config.num_classes = s.first().copied().unwrap_or(config.num_classes);
                }
                if let Some(s) = shape("fc_em_fuse_3.1.weight") {
                    config.fuse_dim = s.first().copied().unwrap_or(config.fuse_dim);
                }
                tracing::warn!(
                    checkpoint = %path.display(),
                    "no aue metadata: taking it as a stage-3 checkpoint of preset {preset} at \
                     input side {}",
                    config.input_size
                );
                let meta = ModelMeta {
                    stage: Stage::Fuse,
                    preset,
                    config_json: String::new(),
                    epoch: 0,
                    metrics_json: String::new(),
                    dataset: String::new(),
                    labels: default_labels(config.num_classes),
                    parent_sha256: String::new(),
                    selection: String::new(),
                    best: None,
                };
                (meta, config)
            }
            Some(meta) => {
                if let Some(p) = preset
                    && p != meta.preset
                {
                    return Err(bad(format!(
                        "it holds preset `{}`, but --preset says `{p}`",
                        meta.preset
                    )));
                }
                let config = config_from_meta(path, &meta)?;
                (meta, config)
            }
        };
        config
            .validate()
            .map_err(|e| bad(format!("its metadata describes an invalid model: {e}")))?;
        check_shapes(path, meta.preset, &config, &shapes)?;
        Ok(Self {
            path: path.to_owned(),
            format: map.get(FORMAT_KEY).cloned(),
            meta,
            foreign,
            config,
        })
    }

    /// Reads only the trainer metadata of `path` (the header; no tensor and no shape check), for
    /// listing runs. A file without trainer metadata is an error: listing needs its stage and
    /// labels. Anything that loads the model uses [`CheckpointInfo::read`].
    pub fn read_metadata(path: &Path) -> Result<Self> {
        let map = format::read_metadata(path)?;
        let meta = ModelMeta::from_map(path, &map)?.ok_or_else(|| {
            ContractError::checkpoint(
                path,
                "has no training metadata (stage, labels): not written by the aue stages",
            )
        })?;
        let config = config_from_meta(path, &meta)?;
        Ok(Self {
            path: path.to_owned(),
            format: map.get(FORMAT_KEY).cloned(),
            meta,
            foreign: false,
            config,
        })
    }

    /// The stage that wrote it.
    pub fn stage(&self) -> Stage {
        self.meta.stage
    }

    /// Class names in label order.
    pub fn labels(&self) -> &[String] {
        &self.meta.labels
    }

    /// Errors unless the checkpoint's class names equal `labels` (`source` names where those
    /// come from).
    pub fn expect_labels(&self, labels: &[String], source: &str) -> Result<()> {
        if self.meta.labels == labels {
            return Ok(());
        }
        Err(ContractError::checkpoint(
            &self.path,
            format!(
                "its classes (dataset `{}`: {}) differ from those of {source} ({})",
                self.meta.dataset,
                self.meta.labels.join(", "),
                labels.join(", ")
            ),
        ))
    }

    /// Errors unless the checkpoint was written by one of `allowed` (`what` says what for).
    pub fn expect_stage(&self, allowed: &[Stage], what: &str) -> Result<()> {
        if allowed.contains(&self.meta.stage) {
            return Ok(());
        }
        let names: Vec<String> = allowed.iter().map(|s| format!("stage {}", s.number())).collect();
        Err(ContractError::checkpoint(
            &self.path,
            format!(
                "is a stage {} checkpoint; {what} needs a {} checkpoint",
                self.meta.stage.number(),
                names.join(" or ")
            ),
        ))
    }

    /// Checks that a stage may start from this checkpoint (`want` says what that stage
    /// needs): written by the stage before it, same preset, classes, fusion width and input
    /// side. A foreign checkpoint (no metadata) passes with a warning: its shapes were checked
    /// against the preset on reading.
    pub fn check_parent(&self, want: &ParentRequirements) -> Result<()> {
        let bad = |msg: String| ContractError::checkpoint(&self.path, msg);
        let meta = &self.meta;
        if self.foreign {
            tracing::warn!(
                checkpoint = %self.path.display(),
                "the checkpoint has no aue metadata (a foreign checkpoint with the reference's \
                 names?): its stage and dataset cannot be checked; loading it strictly by tensor \
                 name"
            );
            return self.check_sizes(want);
        }
        if meta.stage != want.parent {
            return Err(bad(format!(
                "it was written by {}, but {} starts from a {} checkpoint (pass --resume-model \
                 with the previous stage's best.safetensors)",
                stage_label(meta.stage),
                stage_label(want.stage),
                stage_label(want.parent),
            )));
        }
        if meta.preset != want.preset {
            return Err(bad(format!(
                "it was trained with preset `{}`, this run uses `{}` (--preset)",
                meta.preset, want.preset
            )));
        }
        if meta.dataset != want.dataset.name() {
            tracing::warn!(
                checkpoint = %self.path.display(),
                "the checkpoint was trained on `{}`, this run uses `{}`",
                meta.dataset,
                want.dataset
            );
        }
        self.check_sizes(want)
    }

    fn check_sizes(&self, want: &ParentRequirements) -> Result<()> {
        let bad = |msg: String| ContractError::checkpoint(&self.path, msg);
        if self.meta.preset != want.preset {
            return Err(bad(format!(
                "it holds preset `{}`, this run uses `{}` (--preset)",
                self.meta.preset, want.preset
            )));
        }
        if self.config.num_classes != want.dataset.num_classes() {
            return Err(bad(format!(
                "it has {} classes, dataset `{}` has {}",
                self.config.num_classes,
                want.dataset,
                want.dataset.num_classes()
            )));
        }
        // The fusion width and input side fix the model: say which setting to change rather than
        // let the strict load name a tensor.
        for (key, then, now) in [
            ("fuse_dim", self.config.fuse_dim, want.fuse_dim),
            ("input_size", self.config.input_size, want.input_size),
        ] {
            if then != now {
                return Err(bad(format!(
                    "it was trained with {key} = {then}, this run uses {now}: {key} must stay \
                     the same across the stages (pass --{} {then})",
                    key.replace('_', "-")
                )));
            }
        }
        Ok(())
    }

    /// Builds the model strictly from the checkpoint, every float tensor checked to be finite.
    pub fn load_model(&self, device: &Device) -> Result<AueModel> {
        let (model, _) = format::load_model(&self.path, &self.config, device)?;
        Ok(model)
    }
}

/// The model a trainer's metadata describes: the preset at the configuration's input side and
/// fusion width, with the metadata's class count.
fn config_from_meta(path: &Path, meta: &ModelMeta) -> Result<ModelConfig> {
    let json: serde_json::Value = serde_json::from_str(&meta.config_json).map_err(|e| {
        ContractError::checkpoint(path, format!("metadata `config` is not JSON: {e}"))
    })?;
    let field = |k: &str| json.get(k).and_then(serde_json::Value::as_u64).map(|v| v as usize);
    let mut config = ModelConfig::preset(meta.preset);
    if let Some(s) = field("input_size") {
        config.input_size = s;
    }
    if let Some(d) = field("fuse_dim") {
        config.fuse_dim = d;
    }
    config.num_classes = meta.labels.len();
    Ok(config)
}

/// What a stage needs of the checkpoint it starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentRequirements {
    /// The stage that will start from it.
    pub stage: Stage,
    /// The stage that must have written it.
    pub parent: Stage,
    /// The run's preset.
    pub preset: Preset,
    /// The run's dataset (its class count must match; another dataset is a warning).
    pub dataset: DatasetKind,
    /// The run's fusion width.
    pub fuse_dim: usize,
    /// The run's input side.
    pub input_size: usize,
}

/// The strict key and shape check of a file's header against the model of `config`.
fn check_shapes(
    path: &Path,
    preset: Preset,
    config: &ModelConfig,
    shapes: &BTreeMap<String, (DType, Vec<usize>)>,
) -> Result<()> {
    // A probe whose (zero) variables are never touched, so never paged in.
    let probe = AueModel::new(config, &Device::Cpu)?;
    let want: BTreeMap<String, Vec<usize>> = aue_model::state::state_entries(probe.varmap())
        .into_iter()
        .map(|e| {
            let dims = e.dims().to_vec();
            (e.key, dims)
        })
        .collect();
    let describe = |what: &str| {
        format!(
            "{what}: its tensors do not fit the model it claims to hold (preset {preset} at input \
             side {}, {} classes, fusion width {})",
            config.input_size, config.num_classes, config.fuse_dim
        )
    };
    if let Some(key) = want.keys().find(|k| !shapes.contains_key(*k)) {
        return Err(ContractError::checkpoint(path, describe(&format!("missing tensor `{key}`"))));
    }
    if let Some(key) = shapes.keys().find(|k| !want.contains_key(*k)) {
        return Err(ContractError::checkpoint(
            path,
            describe(&format!("unexpected tensor `{key}`")),
        ));
    }
    for (key, dims) in &want {
        let found = &shapes[key].1;
        if found != dims {
            return Err(ContractError::checkpoint(
                path,
                describe(&format!("tensor `{key}` has shape {found:?}, expected {dims:?}")),
            ));
        }
    }
    Ok(())
}

/// Reads the `PriorKnowledgeTable` tensor of a checkpoint: only the header and the table's 476
/// bytes, checking dtype, shape and that every value is finite.
pub fn read_prior_table(path: &Path) -> Result<PriorTable> {
    let bad = |msg: String| ContractError::checkpoint(path, msg);
    let infos = format::tensor_infos(path)?;
    let Some((dtype, shape)) = infos.get(PRIOR_TABLE_KEY) else {
        return Err(bad(format!("holds no `{PRIOR_TABLE_KEY}` tensor")));
    };
    // F64 from an f64 run's `--checkpoint-dtype f64` files, rounded as every reader does.
    if !matches!(dtype, DType::F32 | DType::F64) || shape[..] != [NUM_BASIC, NUM_AUS] {
        return Err(bad(format!(
            "`{PRIOR_TABLE_KEY}` is {dtype:?} {shape:?}, expected F32 (or F64) \
             [{NUM_BASIC}, {NUM_AUS}]"
        )));
    }
    let t = format::read_tensor(path, PRIOR_TABLE_KEY, &Device::Cpu)?;
    let values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let mut table = [[0f32; NUM_AUS]; NUM_BASIC];
    for (i, v) in values.into_iter().enumerate() {
        table[i / NUM_AUS][i % NUM_AUS] = v;
    }
    Ok(table)
}
