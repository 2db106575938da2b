//! Which model a checkpoint holds: stage, preset, sizes and class names, from the trainer's
//! metadata (aue-train's `checkpoints::keys`) or, for a checkpoint without it, from `--preset`
//! and the tensor shapes; then the strict load of aue-model.

use std::path::Path;

use aue_model::checkpoint;
use aue_model::{AueModel, ModelConfig, Preset, Stage};
use aue_train::checkpoints::ModelMeta;
use candle_core::Device;

use crate::error::{PredictError, Result};

/// What the checkpoint is, resolved before any tensor is read.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// The stage that wrote it (decides which outputs are meaningful).
    pub stage: Stage,
    /// Its preset.
    pub preset: Preset,
    /// The model's sizes (input side S, fusion width, classes).
    pub config: ModelConfig,
    /// Class names in label order.
    pub labels: Vec<String>,
    /// Whether the stage, sizes and labels came from trainer metadata (else guessed).
    pub from_metadata: bool,
}

fn bad(path: &Path, msg: impl Into<String>) -> PredictError {
    PredictError::Checkpoint { path: path.to_owned(), msg: msg.into() }
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

/// Reads the checkpoint's header and resolves the model it holds. `preset` (the `--preset` flag)
/// is required when the file has no trainer metadata, and must agree with it when it has.
pub fn inspect(path: &Path, preset: Option<Preset>) -> Result<CheckpointInfo> {
    let map = checkpoint::read_metadata(path)
        .map_err(|e| bad(path, format!("not a readable safetensors checkpoint ({e})")))?;
    if map.get(aue_train::checkpoints::keys::KIND).map(String::as_str) == Some("optimizer") {
        return Err(bad(path, "this is an optimizer state file, not a model checkpoint"));
    }
    let meta = ModelMeta::from_map(path, &map).map_err(|e| bad(path, e.to_string()))?;
    let Some(meta) = meta else {
        // A checkpoint without trainer metadata (e.g. converted from the reference's weights).
        let Some(preset) = preset else {
            return Err(bad(
                path,
                "it has no aue metadata (stage, preset, sizes): pass --preset to say which model it holds",
            ));
        };
        let shapes = checkpoint::tensor_infos(path).map_err(|e| bad(path, e.to_string()))?;
        let mut config = ModelConfig::preset(preset);
        if let Some((_, s)) = shapes.get("pred_em.weight") {
            config.num_classes = s.first().copied().unwrap_or(config.num_classes);
        }
        if let Some((_, s)) = shapes.get("fc_em_fuse_3.1.weight") {
            config.fuse_dim = s.first().copied().unwrap_or(config.fuse_dim);
        }
        config.validate().map_err(|e| bad(path, e.to_string()))?;
        tracing::warn!(
            checkpoint = %path.display(),
            "no aue metadata: assuming a stage-3 checkpoint of preset {preset} at input side {}",
            config.input_size
        );
        let labels = default_labels(config.num_classes);
        return Ok(CheckpointInfo {
            stage: Stage::Fuse,
            preset,
            config,
            labels,
            from_metadata: false,
        });
    };
    if let Some(p) = preset
        && p != meta.preset
    {
        return Err(bad(
            path,
            format!("it holds preset `{}`, but --preset says `{p}`", meta.preset),
        ));
    }
    let json: serde_json::Value = serde_json::from_str(&meta.config_json)
        .map_err(|e| bad(path, format!("metadata `config` is not JSON: {e}")))?;
    let field = |k: &str| json.get(k).and_then(serde_json::Value::as_u64).map(|v| v as usize);
    let mut config = ModelConfig::preset(meta.preset);
    if let Some(s) = field("input_size") {
        config.input_size = s;
    }
    if let Some(d) = field("dim") {
        config.fuse_dim = d;
    }
    if meta.labels.len() >= 2 {
        config.num_classes = meta.labels.len();
    }
    config
        .validate()
        .map_err(|e| bad(path, format!("metadata describes an invalid model: {e}")))?;
    let labels = if meta.labels.len() == config.num_classes {
        meta.labels.clone()
    } else {
        default_labels(config.num_classes)
    };
    Ok(CheckpointInfo {
        stage: meta.stage,
        preset: meta.preset,
        config,
        labels,
        from_metadata: true,
    })
}

/// Builds the model strictly from the checkpoint (a missing, extra or misshapen tensor is an
/// error naming the file and the key).
pub fn load(path: &Path, info: &CheckpointInfo, device: &Device) -> Result<AueModel> {
    let (model, _) = checkpoint::load_model(path, &info.config, device).map_err(|e| {
        bad(
            path,
            format!(
                "does not match preset `{}` at input side {}: {e}",
                info.preset, info.config.input_size
            ),
        )
    })?;
    Ok(model)
}
