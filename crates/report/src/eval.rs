//! Evaluating a checkpoint on a dataset's test split (REFERENCE.md section 6's evaluation: eval
//! mode, every test sample, batch 64 by default), for checkpoints whose run folder is gone or
//! for another copy of the data. Unlike the rest of the report this loads the model; the pass
//! itself is aue-train's (its `Trainer::eval_step` and `SplitAccumulator`), so the numbers are
//! computed exactly as during training.

use std::path::PathBuf;
use std::time::Instant;

use aue_data::{DatasetOptions, Loader, LoaderOptions, Split};
use aue_model::{AueModel, Stage, checkpoint};
use aue_train::engine::{DeviceBatch, RecordInfo, SplitAccumulator, SplitName, Trainer};
use aue_train::{Dataset, DeviceSpec, StageConfig};
use candle_nn::VarMap;

use crate::checkpoint::CheckpointInfo;
use crate::error::{ReportError, Result, train_err};
use crate::runs::{RunConfig, StageRun};

/// What to evaluate and how.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// The checkpoint (written by a stage: its metadata holds the configuration).
    pub checkpoint: PathBuf,
    /// The stage the checkpoint must come from, if one is expected.
    pub expect_stage: Option<Stage>,
    /// Dataset root [default: the one the checkpoint was trained on].
    pub data_root: Option<PathBuf>,
    /// Dataset kind [default: the checkpoint's]; its classes must be the checkpoint's.
    pub dataset: Option<Dataset>,
    /// Where tensors live.
    pub device: DeviceSpec,
    /// Test batch size.
    pub batch_size: usize,
    /// Image decoding threads (0: one per core).
    pub workers: usize,
}

fn data_err(op: &'static str) -> impl FnOnce(aue_data::DataError) -> ReportError {
    move |source| ReportError::Data { op, source: Box::new(source) }
}

fn model_err(op: &'static str) -> impl FnOnce(aue_model::ModelError) -> ReportError {
    move |source| ReportError::Model { op, source: Box::new(source) }
}

/// The checked inputs of an evaluation, before any tensor is loaded.
struct Plan {
    info: CheckpointInfo,
    cfg: StageConfig,
    labels: Vec<String>,
}

/// Reads the checkpoint's metadata and checks it against `opts`: the stage asked for, the
/// configuration it was trained with, and the dataset's class names.
fn plan(opts: &EvalOptions) -> Result<Plan> {
    let info = CheckpointInfo::read(&opts.checkpoint)?;
    if let Some(stage) = opts.expect_stage {
        info.expect_stage(&[stage], "asked for with --stage")?;
    }
    let mut cfg: StageConfig =
        serde_json::from_str(&info.meta.config_json).map_err(|e| ReportError::Json {
            what: "training configuration (checkpoint metadata `config`)",
            path: opts.checkpoint.clone(),
            msg: e.to_string(),
        })?;
    if let Some(d) = opts.dataset {
        cfg.dataset = d;
    }
    if let Some(root) = &opts.data_root {
        cfg.data_root = root.clone();
    }
    let labels: Vec<String> = cfg.dataset.labels().iter().map(|s| s.to_string()).collect();
    info.expect_labels(&labels, &format!("dataset `{}`", cfg.dataset))?;
    Ok(Plan { info, cfg, labels })
}

/// Evaluates `opts.checkpoint` on the test split; `progress(done, total)` is called after each
/// batch. Returns a one-epoch [`StageRun`] that [`crate::Report::build`] takes like a folder.
pub fn evaluate_checkpoint(
    opts: &EvalOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<StageRun> {
    let Plan { info, cfg, labels } = plan(opts)?;
    let stage = info.stage();
    let device = aue_train::run::open_device(opts.device).map_err(train_err("open the device"))?;
    let varmap = VarMap::new();
    let model_cfg =
        cfg.model_config().map_err(train_err("model configuration of the checkpoint"))?;
    let model = AueModel::with_varmap(&varmap, &model_cfg, &device)
        .map_err(model_err("build the model"))?;
    checkpoint::load(&varmap, &opts.checkpoint).map_err(model_err("load the checkpoint"))?;
    let trainer = Trainer::new(stage, model, cfg.momentum, cfg.frozen_eval)
        .map_err(train_err("prepare the evaluation"))?;
    let data_opts =
        DatasetOptions { image_size: cfg.input_size as u32, ..DatasetOptions::default() };
    let test = aue_data::Dataset::open(cfg.dataset.kind(), &cfg.data_root, Split::Test, &data_opts)
        .map_err(data_err("open the test split"))?;
    let loader = Loader::new(
        &test,
        LoaderOptions { threads: opts.workers, ..LoaderOptions::eval(opts.batch_size) },
    )
    .map_err(data_err("test loader"))?;
    tracing::info!(
        "evaluating {} ({}, epoch {}) on {} test images of {}",
        opts.checkpoint.display(),
        crate::runs::stage_title(stage),
        info.meta.epoch,
        test.len(),
        cfg.data_root.display()
    );
    let names: Vec<&str> = labels.iter().map(String::as_str).collect();
    let mut acc = SplitAccumulator::new(stage, SplitName::Test, names.len(), &device)
        .map_err(train_err("evaluation"))?;
    let total = loader.batches_per_epoch();
    let t0 = Instant::now();
    let mut steps = 0;
    for batch in loader.epoch(0) {
        let batch = batch.map_err(data_err("load a test batch"))?;
        let batch = DeviceBatch::new(&batch, &device).map_err(train_err("evaluation"))?;
        trainer.eval_step(&batch, &mut acc).map_err(train_err("evaluation step"))?;
        steps += 1;
        progress(steps, total);
    }
    let info_rec = RecordInfo {
        stage,
        epoch: info.meta.epoch,
        lr: 0.0,
        steps,
        seconds: t0.elapsed().as_secs_f64(),
    };
    let mut record = acc.finish(&names, info_rec).map_err(train_err("evaluation"))?;
    record.best = Some(true);
    Ok(StageRun {
        dir: opts.checkpoint.clone(),
        stage,
        config: RunConfig {
            stage: Some(stage.number()),
            dataset: Some(cfg.dataset.name().to_string()),
            data_root: Some(cfg.data_root.clone()),
            preset: Some(cfg.preset.name().to_string()),
            epochs: Some(info.meta.epoch),
            input_size: Some(cfg.input_size),
            select_by: None,
        },
        labels,
        records: vec![record],
        best_checkpoint: Some(info),
        last_checkpoint: None,
        warnings: Vec::new(),
        evaluated: true,
    })
}

/// Checks an evaluation's inputs without loading the model (the stage, the configuration and the
/// class names): what [`evaluate_checkpoint`] checks first.
pub fn check_checkpoint(opts: &EvalOptions) -> Result<()> {
    plan(opts).map(|_| ())
}
