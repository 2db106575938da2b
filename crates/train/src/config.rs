//! Stage configuration: raw flags and an optional TOML file become one checked [`StageConfig`]
//! with every default filled in (docs/METHOD.md section 6 gives the defaults).
//!
//! Precedence: command-line flag, then the `--config` file, then the default. The resolved
//! configuration is written to the stage folder (`config.json`) before the first step and into
//! every checkpoint's metadata.

use std::path::{Path, PathBuf};

use aue_cli::DeviceSpec;
use aue_contract::StagePaths;
use aue_contract::layout::{self, stage_label};
use aue_data::DatasetKind;
use aue_model::{ModelConfig, Preset, Stage};
use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError, io_err};
use crate::stage::StageDef;

/// Serialises a stage as its number (1, 2, 3), as config.json and the metadata write it.
mod stage_number {
    use aue_model::Stage;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(stage: &Stage, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(stage.number())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Stage, D::Error> {
        let n = u8::deserialize(d)?;
        Stage::from_number(n)
            .ok_or_else(|| serde::de::Error::custom(format!("stage must be 1, 2 or 3, not {n}")))
    }
}

/// Parses `--preset` with the preset names of aue-model as the possible values.
fn preset_parser() -> impl TypedValueParser<Value = Preset> {
    PossibleValuesParser::new(Preset::ALL.map(Preset::name)).try_map(|s| s.parse::<Preset>())
}

/// Parses `--dataset` with the dataset names of aue-data as the possible values.
fn dataset_parser() -> impl TypedValueParser<Value = DatasetKind> {
    PossibleValuesParser::new(DatasetKind::ALL.map(DatasetKind::name))
        .try_map(|s| s.parse::<DatasetKind>())
}

/// Which test epoch becomes `best.safetensors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SelectBy {
    /// The reference's: the best test mean class accuracy (ties to the later epoch).
    #[default]
    MeanClassAcc,
    /// Stage 2 only: the best test mean AU F1 against the pseudo-targets. The AU branch does not
    /// feed the expression head, so in stage 2 the reference's choice follows only the drift of
    /// the backbone's BatchNorm statistics.
    AuF1,
    /// The last epoch.
    Last,
}

aue_core::named_enum!(SelectBy, "selection", String => String::from, {
    MeanClassAcc => "mean-class-acc",
    AuF1 => "au-f1",
    Last => "last",
});

/// The float type of a run's parameters and computation. Checkpoints are f32 on disk either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Precision {
    /// The reference's float32.
    #[default]
    F32,
    /// float64 (CPU only): slow, for runs that must follow a float64 reference step by step
    /// (docs/STAGES.md "Trainer parity"); float32 runs of a deep network drift apart after a
    /// few steps whatever the implementation.
    F64,
}

impl Precision {
    /// The Candle dtype.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::F64 => candle_core::DType::F64,
        }
    }
}

aue_core::named_enum!(Precision, "dtype", String => String::from, { F32 => "f32", F64 => "f64" });

/// Raw settings, from flags or from the `--config` TOML file (same names, `_` for `-`).
/// Every field is optional: what neither gives takes its default in [`StageConfig::resolve`].
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StageArgs {
    /// TOML file with any of these settings (flags override it).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Dataset [default: rafdb].
    #[arg(long, value_parser = dataset_parser())]
    pub dataset: Option<DatasetKind>,

    /// Dataset root folder [default: data/rafdb, or data/sfew for sfew].
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,

    /// Model preset: the backbone and the branch widths [default: resnet101].
    #[arg(long, value_parser = preset_parser())]
    pub preset: Option<Preset>,

    /// Input image side in pixels, a multiple of 32 [default: the preset's].
    #[arg(long, value_name = "PIXELS")]
    pub input_size: Option<usize>,

    /// Width of the fusion branch, the reference's `Dim` [default: the preset's].
    #[arg(long)]
    pub fuse_dim: Option<usize>,

    /// Number of epochs [default: 40].
    #[arg(long)]
    pub epochs: Option<usize>,

    /// Initial learning rate [default: 0.01].
    #[arg(long)]
    pub lr: Option<f64>,

    /// Epoch counts after which the learning rate is multiplied by --lr-gamma [default: 15,30].
    #[arg(long, value_delimiter = ',', num_args = 0.., value_name = "EPOCHS")]
    pub lr_milestones: Option<Vec<usize>>,

    /// Learning-rate factor at each milestone [default: 0.1].
    #[arg(long)]
    pub lr_gamma: Option<f64>,

    /// SGD momentum [default: 0.9].
    #[arg(long)]
    pub momentum: Option<f64>,

    /// Training batch size; the last partial batch is dropped [default: 64].
    #[arg(long)]
    pub train_batch_size: Option<usize>,

    /// Test batch size [default: 64].
    #[arg(long)]
    pub test_batch_size: Option<usize>,

    /// Image decoding threads of the loader [default: one per core].
    #[arg(long)]
    pub workers: Option<usize>,

    /// Seed of the initialisation, data order and augmentation [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,

    /// cpu, cuda or cuda:N [default: cpu].
    #[arg(long)]
    pub device: Option<DeviceSpec>,

    /// Float type of the parameters and of every op of a step: f32, or f64 (CPU only, for
    /// parity runs against a float64 reference); checkpoints are written as f32 unless
    /// --checkpoint-dtype f64 [default: f32].
    #[arg(long, value_name = "f32|f64")]
    pub dtype: Option<Precision>,

    /// Float type of the checkpoints and optimizer files written: f32, or f64 (with --dtype f64:
    /// an f64 run kept in full precision, e.g. to continue a parity run exactly). Every reader
    /// takes either; an f32 model rounds f64 files to nearest [default: f32].
    #[arg(long, value_name = "f32|f64")]
    pub checkpoint_dtype: Option<Precision>,

    /// Development option for parity runs: every dropout probability set to 0 (the reference
    /// trains stages 2 and 3 with dropout 0.5, whose masks no other implementation draws alike).
    /// Not for real training.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub dev_no_dropout: Option<bool>,

    /// At most this many optimizer steps per epoch (smoke runs); the test split is still
    /// evaluated in full.
    #[arg(long)]
    pub max_steps: Option<usize>,

    /// CPU threads for the tensor kernels [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,

    /// Experiment folder; each stage writes into `<run-dir>/stage<N>`
    /// [default: checkpoints/<dataset>-<preset>].
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,

    /// Stages 2 and 3: the checkpoint to start from
    /// [default: <run-dir>/stage<N-1>/best.safetensors].
    #[arg(long, value_name = "FILE")]
    pub resume_model: Option<PathBuf>,

    /// Stage 1: torchvision ImageNet weights (.pth or .safetensors) for the backbone.
    #[arg(long, value_name = "FILE")]
    pub pretrained: Option<PathBuf>,

    /// Run the frozen parts in eval mode (the reference keeps them in train mode: section 4).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub frozen_eval: Option<bool>,

    /// Stages 2 and 3: weight of the EIAU loss term [default: the reference's, 0.5 in stage 2
    /// and 0.05 in stage 3; 0 drops the term].
    #[arg(long, value_name = "W")]
    pub eiau_weight: Option<f64>,

    /// Which test epoch becomes best.safetensors: mean-class-acc (the reference's), au-f1
    /// (stage 2: AU F1 against the pseudo-targets) or last [default: mean-class-acc].
    #[arg(long, value_name = "RULE")]
    pub select_by: Option<SelectBy>,

    /// Continue a killed run from the stage folder's `last` checkpoint.
    #[arg(long)]
    #[serde(skip)]
    pub resume: bool,

    /// Start afresh even if the stage folder already holds a run (its files are replaced).
    #[arg(long)]
    #[serde(skip)]
    pub overwrite: bool,
}

impl StageArgs {
    /// Reads a `--config` TOML file.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(io_err("cannot read config file", path))?;
        toml::from_str(&text)
            .map_err(|e| TrainError::ConfigFile { path: path.to_owned(), msg: e.to_string() })
    }

    /// Fills every field this one lacks from `file`.
    fn or(self, file: StageArgs) -> StageArgs {
        macro_rules! pick {
            ($($field:ident),* $(,)?) => {
                StageArgs {
                    $($field: self.$field.or(file.$field),)*
                    config: self.config,
                    resume: self.resume,
                    overwrite: self.overwrite,
                }
            };
        }
        pick!(
            dataset,
            data_root,
            preset,
            input_size,
            fuse_dim,
            epochs,
            lr,
            lr_milestones,
            lr_gamma,
            momentum,
            train_batch_size,
            test_batch_size,
            workers,
            seed,
            device,
            dtype,
            checkpoint_dtype,
            dev_no_dropout,
            max_steps,
            threads,
            run_dir,
            resume_model,
            pretrained,
            frozen_eval,
            eiau_weight,
            select_by,
        )
    }
}

/// The resolved, checked configuration of one stage run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Which stage this run trains (1, 2 or 3).
    #[serde(with = "stage_number")]
    pub stage: Stage,
    /// Dataset.
    pub dataset: DatasetKind,
    /// Dataset root folder.
    pub data_root: PathBuf,
    /// Model preset.
    pub preset: Preset,
    /// Input image side in pixels.
    pub input_size: usize,
    /// Fusion width `Dim`.
    pub fuse_dim: usize,
    /// Number of epochs.
    pub epochs: usize,
    /// Initial learning rate.
    pub lr: f64,
    /// Epoch counts after which the rate is multiplied by `lr_gamma`.
    pub lr_milestones: Vec<usize>,
    /// Learning-rate factor at each milestone.
    pub lr_gamma: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Training batch size.
    pub train_batch_size: usize,
    /// Test batch size.
    pub test_batch_size: usize,
    /// Loader decoding threads.
    pub workers: usize,
    /// Seed of everything random.
    pub seed: u64,
    /// Where tensors live.
    pub device: DeviceSpec,
    /// Float type of the parameters and the computation.
    #[serde(default)]
    pub dtype: Precision,
    /// Float type of the files written (model and optimizer).
    #[serde(default)]
    pub checkpoint_dtype: Precision,
    /// Development option: every dropout probability 0 (parity runs).
    #[serde(default)]
    pub dev_no_dropout: bool,
    /// Cap on optimizer steps per epoch, for smoke runs.
    pub max_steps: Option<usize>,
    /// CPU kernel threads (`None`: all cores).
    pub threads: Option<usize>,
    /// Experiment folder; this stage writes into `<run_dir>/stage<N>`.
    pub run_dir: PathBuf,
    /// Checkpoint this stage starts from (stages 2 and 3).
    pub resume_model: Option<PathBuf>,
    /// torchvision weights for the backbone (stage 1).
    pub pretrained: Option<PathBuf>,
    /// Frozen parts in eval mode instead of the reference's train mode.
    pub frozen_eval: bool,
    /// Weight of the EIAU loss term; `None`: the reference's for the stage.
    #[serde(default)]
    pub eiau_weight: Option<f64>,
    /// Which test epoch becomes `best.safetensors`.
    #[serde(default)]
    pub select_by: SelectBy,
    /// Continue from the stage folder's `last` checkpoint (an invocation choice, not saved).
    #[serde(skip)]
    pub resume: bool,
    /// Replace an existing run in the stage folder (an invocation choice, not saved).
    #[serde(skip)]
    pub overwrite: bool,
}

/// Settings that may differ between a run and its `--resume`: they do not change the numbers
/// (or, for `epochs` and `max_steps`, only which epochs and steps are run).
/// (`run_dir` too: a run folder may be moved or copied and resumed where it now is.)
const RESUMABLE_CHANGES: [&str; 7] =
    ["epochs", "max_steps", "device", "threads", "workers", "test_batch_size", "run_dir"];

fn bad(key: &'static str, msg: impl Into<String>) -> TrainError {
    TrainError::Config { key, msg: msg.into() }
}

impl StageConfig {
    /// Resolves flags (over the `--config` file, over defaults) into a checked configuration.
    /// `preset_defaults` gives a preset's input side and fusion width.
    pub fn resolve(def: &dyn StageDef, args: StageArgs) -> Result<Self> {
        let stage = def.stage();
        let args = match &args.config {
            Some(path) => {
                let file = StageArgs::from_toml_file(path)?;
                args.or(file)
            }
            None => args,
        };
        let dataset = args.dataset.unwrap_or(DatasetKind::Rafdb);
        let preset = args.preset.unwrap_or(Preset::Resnet101);
        let defaults = ModelConfig::preset(preset);
        let run_dir = args.run_dir.unwrap_or_else(|| layout::default_run_dir(dataset, preset));
        let resume_model = match def.parent() {
            None => None,
            Some(parent) => {
                args.resume_model.clone().or_else(|| Some(StagePaths::new(&run_dir, parent).best()))
            }
        };
        let cfg = StageConfig {
            stage,
            dataset,
            data_root: args.data_root.unwrap_or_else(|| dataset.default_root()),
            preset,
            input_size: args.input_size.unwrap_or(defaults.input_size),
            fuse_dim: args.fuse_dim.unwrap_or(defaults.fuse_dim),
            epochs: args.epochs.unwrap_or(40),
            lr: args.lr.unwrap_or(0.01),
            lr_milestones: args.lr_milestones.unwrap_or_else(|| vec![15, 30]),
            lr_gamma: args.lr_gamma.unwrap_or(0.1),
            momentum: args.momentum.unwrap_or(0.9),
            train_batch_size: args.train_batch_size.unwrap_or(64),
            test_batch_size: args.test_batch_size.unwrap_or(64),
            workers: args.workers.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            }),
            seed: args.seed.unwrap_or(0),
            device: args.device.unwrap_or_default(),
            dtype: args.dtype.unwrap_or_default(),
            checkpoint_dtype: args.checkpoint_dtype.unwrap_or_default(),
            dev_no_dropout: args.dev_no_dropout.unwrap_or(false),
            max_steps: args.max_steps,
            threads: args.threads,
            run_dir,
            resume_model,
            pretrained: args.pretrained,
            frozen_eval: args.frozen_eval.unwrap_or(false),
            eiau_weight: args.eiau_weight,
            select_by: args.select_by.unwrap_or_default(),
            resume: args.resume,
            overwrite: args.overwrite,
        };
        // Flags that make no sense for this stage are errors rather than silently ignored.
        if def.parent().is_some() && cfg.pretrained.is_some() {
            return Err(bad(
                "pretrained",
                format!(
                    "{} starts from the previous stage's checkpoint (--resume-model)",
                    stage_label(stage)
                ),
            ));
        }
        if def.default_eiau_weight().is_none() && cfg.eiau_weight.is_some() {
            return Err(bad(
                "eiau_weight",
                format!("{}'s loss has no EIAU term", stage_label(stage)),
            ));
        }
        if let Some(w) = cfg.eiau_weight
            && !(w.is_finite() && w >= 0.0)
        {
            return Err(bad("eiau_weight", format!("must be a number >= 0, not {w}")));
        }
        if !def.records().au && cfg.select_by == SelectBy::AuF1 {
            return Err(bad(
                "select_by",
                format!("au-f1 selects AU-trained runs; {} has no AU F1", stage_label(stage)),
            ));
        }
        if def.parent().is_none() && args.resume_model.is_some() {
            return Err(bad(
                "resume_model",
                format!(
                    "{} has no previous stage; use --pretrained for ImageNet weights",
                    stage_label(stage)
                ),
            ));
        }
        cfg.check()?;
        def.check(&cfg)?;
        Ok(cfg)
    }

    /// Checks every value (ranges, files that must exist).
    pub fn check(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(bad("epochs", "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(bad("lr", format!("must be a positive number, not {}", self.lr)));
        }
        if !(self.lr_gamma.is_finite() && self.lr_gamma > 0.0) {
            return Err(bad(
                "lr_gamma",
                format!("must be a positive number, not {}", self.lr_gamma),
            ));
        }
        if self.lr_milestones.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad(
                "lr_milestones",
                format!("must be strictly increasing, not {:?}", self.lr_milestones),
            ));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(bad("momentum", format!("must be in [0, 1), not {}", self.momentum)));
        }
        if self.train_batch_size == 0 {
            return Err(bad("train_batch_size", "must be at least 1"));
        }
        if self.test_batch_size == 0 {
            return Err(bad("test_batch_size", "must be at least 1"));
        }
        if self.input_size == 0 || !self.input_size.is_multiple_of(32) {
            return Err(bad(
                "input_size",
                format!("must be a positive multiple of 32, not {}", self.input_size),
            ));
        }
        if self.fuse_dim == 0 {
            return Err(bad("fuse_dim", "must be at least 1"));
        }
        if self.workers == 0 {
            return Err(bad("workers", "must be at least 1"));
        }
        if self.max_steps == Some(0) {
            return Err(bad("max_steps", "must be at least 1"));
        }
        if self.threads == Some(0) {
            return Err(bad("threads", "must be at least 1"));
        }
        if !self.data_root.is_dir() {
            return Err(bad(
                "data_root",
                format!("{} is not a folder (pass --data-root)", self.data_root.display()),
            ));
        }
        if let Some(p) = &self.pretrained
            && !p.is_file()
        {
            return Err(bad("pretrained", format!("{} does not exist", p.display())));
        }
        if let Some(p) = &self.resume_model
            && !p.is_file()
        {
            let prev = layout::previous_stage(self.stage).map_or(0, Stage::number);
            return Err(bad(
                "resume_model",
                format!(
                    "{} starts from {}, which does not exist: run stage {prev} first (with the \
                     same --run-dir) or pass --resume-model FILE",
                    stage_label(self.stage),
                    p.display()
                ),
            ));
        }
        if self.dtype == Precision::F64 && self.device != DeviceSpec::Cpu {
            return Err(bad(
                "dtype",
                format!("f64 runs on the CPU only, not on --device {}", self.device),
            ));
        }
        if self.checkpoint_dtype == Precision::F64 && self.dtype != Precision::F64 {
            return Err(bad(
                "checkpoint_dtype",
                "--checkpoint-dtype f64 needs --dtype f64 (an f32 run's weights widened hold \
                 nothing more)",
            ));
        }
        if self.resume && self.overwrite {
            return Err(bad("resume", "--resume and --overwrite exclude each other"));
        }
        Ok(())
    }

    /// The model configuration this run builds (preset, input side, classes, fusion width).
    pub fn model_config(&self) -> Result<ModelConfig> {
        let mut m = ModelConfig::preset(self.preset)
            .with_input_size(self.input_size)
            .and_then(|m| m.with_num_classes(self.dataset.num_classes()))
            .map_err(|e| bad("preset", e.to_string()))?;
        m.fuse_dim = self.fuse_dim;
        m.validate().map_err(|e| bad("fuse_dim", e.to_string()))?;
        if self.dev_no_dropout {
            m = m.with_dropout(0.0).map_err(|e| bad("dev_no_dropout", e.to_string()))?;
        }
        Ok(m)
    }

    /// The files of this stage's run.
    pub fn paths(&self) -> StagePaths {
        StagePaths::new(&self.run_dir, self.stage)
    }

    /// What this run needs of the checkpoint it starts from (stages with a parent).
    pub fn parent_requirements(&self, parent: Stage) -> aue_contract::ParentRequirements {
        aue_contract::ParentRequirements {
            stage: self.stage,
            parent,
            preset: self.preset,
            dataset: self.dataset,
            fuse_dim: self.fuse_dim,
            input_size: self.input_size,
        }
    }

    /// The configuration as pretty JSON (config.json and checkpoint metadata).
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks that `--resume` continues the run described by `saved` (its config.json): only
    /// the settings in [`RESUMABLE_CHANGES`] may differ.
    pub fn check_resumes(&self, saved: &StageConfig, saved_path: &Path) -> Result<()> {
        let now = serde_json::to_value(self).unwrap_or_default();
        let then = serde_json::to_value(saved).unwrap_or_default();
        let (Some(now), Some(then)) = (now.as_object(), then.as_object()) else {
            return Ok(());
        };
        let mut diffs = Vec::new();
        for (key, value) in now {
            if RESUMABLE_CHANGES.contains(&key.as_str()) {
                continue;
            }
            let old = then.get(key).cloned().unwrap_or_default();
            if &old != value {
                diffs.push(format!("{key}: {old} in the run, {value} now"));
            }
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(TrainError::RunFolder {
                path: saved_path.to_owned(),
                msg: format!(
                    "--resume must continue with the run's settings; these differ: {}",
                    diffs.join("; ")
                ),
            })
        }
    }
}
