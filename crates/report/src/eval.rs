//! Evaluating a checkpoint on a dataset's test split (docs/METHOD.md section 6's evaluation:
//! eval mode, every test sample, batch 64 by default), for checkpoints whose run folder is gone
//! or for another copy of the data. Unlike the rest of the report this loads the model; the pass
//! itself is the stage contract's `evaluate`, the one the training loop calls, so the numbers are
//! computed exactly as during training.

use std::path::PathBuf;

use aue_cli::DeviceSpec;
use aue_contract::{CheckpointInfo, DeviceBatch, RecordInfo, RecordSpec, evaluate};
use aue_data::{DatasetKind, DatasetOptions, Loader, LoaderOptions, Split};
use aue_model::Stage;
use serde::Deserialize;

use crate::error::{ReportError, Result};
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
    /// Dataset [default: the checkpoint's]; its classes must be the checkpoint's.
    pub dataset: Option<DatasetKind>,
    /// Where tensors live.
    pub device: DeviceSpec,
    /// Test batch size.
    pub batch_size: usize,
    /// Image decoding threads (0: one per core).
    pub workers: usize,
}

fn data_err(op: &'static str) -> impl FnOnce(aue_data::DataError) -> ReportError {
    move |source| aue_core::Context::new(op, source).into()
}

/// The settings of the checkpoint's training configuration an evaluation uses (the metadata's
/// `config`; other keys are ignored).
#[derive(Debug, Clone, Deserialize)]
struct TrainedWith {
    dataset: DatasetKind,
    data_root: PathBuf,
    input_size: usize,
    #[serde(default)]
    eiau_weight: Option<f64>,
}

/// The checked inputs of an evaluation, before any tensor is loaded.
struct Plan {
    info: CheckpointInfo,
    cfg: TrainedWith,
    labels: Vec<String>,
}

/// Reads the checkpoint's header and checks it against `opts`: the stage asked for, the tensors
/// against the model its metadata claims, and the dataset's class names.
fn plan(opts: &EvalOptions) -> Result<Plan> {
    let info = CheckpointInfo::read(&opts.checkpoint, None)?;
    if info.foreign {
        return Err(ReportError::Checkpoint {
            path: opts.checkpoint.clone(),
            msg: "has no training metadata (stage, labels, dataset): not written by the aue stages"
                .into(),
        });
    }
    if let Some(stage) = opts.expect_stage {
        info.expect_stage(&[stage], "--stage")?;
    }
    let mut cfg: TrainedWith =
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
    let labels: Vec<String> = cfg.dataset.class_names().iter().map(|s| s.to_string()).collect();
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
    let device = opts.device.open().map_err(|e| ReportError::Device(format!("{e:#}")))?;
    // The fused inference model (BatchNorm folded, fused layers), built once; the training
    // model it came from is dropped.
    let model = aue_model::InferenceModel::new(&info.load_model(&device)?)
        .map_err(aue_core::Context::op("build the inference model"))?;
    let data_opts =
        DatasetOptions { input_size: cfg.input_size as u32, ..DatasetOptions::default() };
    let test = aue_data::Dataset::open(cfg.dataset, &cfg.data_root, Split::Test, &data_opts)
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
    let total = loader.batches_per_epoch();
    // The reference's stage records and loss, as the stage binaries compute them.
    let spec = RecordSpec::reference(stage);
    let eiau = cfg.eiau_weight.unwrap_or_else(|| aue_model::reference_eiau_weight(stage));
    let loss = |out: &aue_model::Outputs, b: &DeviceBatch| {
        aue_model::stage_loss_weighted(stage, out, &b.labels, model.knowledge(), eiau)
    };
    let batches = loader.epoch(0).map(|b| {
        let b = b.map_err(aue_core::Context::op("load a test batch"))?;
        DeviceBatch::new(&b, &device)
    });
    let info_rec = RecordInfo { stage, epoch: info.meta.epoch, lr: 0.0, steps: 0, seconds: 0.0 };
    let mut record = evaluate(&model, spec, &loss, batches, &names, info_rec, &mut |done| {
        progress(done, total)
    })?;
    record.best = Some(true);
    Ok(StageRun {
        dir: opts.checkpoint.clone(),
        stage,
        config: RunConfig {
            stage: Some(stage.number()),
            dataset: Some(cfg.dataset.name().to_string()),
            data_root: Some(cfg.data_root.clone()),
            preset: Some(info.meta.preset.name().to_string()),
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
