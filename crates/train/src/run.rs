//! A whole stage run: run folder, starting weights, the epoch loop of REFERENCE.md section 6
//! (train, evaluate on the test split, keep `best` by test mean class accuracy and `last`),
//! metrics, checkpoints, and `--resume`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use aue_data::{Dataset, DatasetOptions, Loader, LoaderOptions, Split};
use aue_model::{AueModel, Preset, Stage, checkpoint};
use candle_core::Device;
use candle_nn::VarMap;
use indicatif::{ProgressBar, ProgressStyle};

use crate::checkpoints::{
    self, ModelMeta, OptimizerMeta, SELECTION_BEST, SELECTION_LAST, sha256_file,
};
use crate::config::{DeviceSpec, SelectBy, StageConfig, stage_label};
use crate::engine::{DeviceBatch, RecordInfo, SplitAccumulator, SplitName, SplitRecord, Trainer};
use crate::error::{CandleContext, Result, TrainError, data_err, error_chain, io_err, model_err};
use crate::fsio::{remove_stale_temp_files, write_atomic};
use crate::logging;
use crate::paths::StagePaths;
use crate::schedule::StepSchedule;

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The stage folder.
    pub dir: PathBuf,
    /// Test record of the epoch kept as `best.safetensors`.
    pub best: Option<SplitRecord>,
    /// Test record of the last epoch.
    pub last: Option<SplitRecord>,
}

/// Runs one stage as `cfg` says. The stage folder receives config.json before the first step,
/// then per epoch metrics.jsonl lines and the checkpoints.
pub fn run(cfg: &StageConfig) -> Result<RunSummary> {
    if let Some(n) = cfg.threads
        && let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).build_global()
    {
        tracing::warn!("--threads {n} not applied: {e}");
    }
    let device = open_device(cfg.device)?;
    let paths = cfg.paths();
    prepare_folder(cfg, &paths)?;
    logging::attach_file(&paths.log())?;
    let result = run_in_folder(cfg, &paths, &device);
    if let Err(e) = &result {
        logging::write_file_only(&format!("error: {}", error_chain(e)));
    }
    logging::detach_file();
    result
}

/// The tensor device of a device setting.
pub fn open_device(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => Device::new_cuda(n)
            .op("open the CUDA device (aue must be built with `--features cuda` for GPUs)"),
    }
}

/// Creates the stage folder; refuses to clobber an existing run unless told.
fn prepare_folder(cfg: &StageConfig, paths: &StagePaths) -> Result<()> {
    let dir = paths.dir();
    std::fs::create_dir_all(dir).map_err(io_err("cannot create run folder", dir))?;
    let existing: Vec<PathBuf> = [paths.config(), paths.metrics(), paths.best(), paths.last()]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    if !existing.is_empty() && !cfg.resume {
        if !cfg.overwrite {
            let names: Vec<String> = existing
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            return Err(TrainError::RunFolder {
                path: dir.to_owned(),
                msg: format!(
                    "already holds a run ({}): pass --resume to continue it, --overwrite to \
                     replace it, or choose another --run-dir",
                    names.join(", ")
                ),
            });
        }
        for p in [
            paths.config(),
            paths.metrics(),
            paths.best(),
            paths.last(),
            paths.last_optimizer(),
            paths.log(),
        ] {
            if p.exists() {
                std::fs::remove_file(&p).map_err(io_err("cannot remove", &p))?;
            }
        }
    }
    remove_stale_temp_files(dir);
    Ok(())
}

/// Where training starts: fresh (epoch 0) or from `last`.
struct Start {
    epoch: usize,
    global_step: usize,
    best: Option<(f64, usize)>,
    parent_sha256: String,
    /// `metrics.jsonl` lines kept from before (one JSON object each, in the trainer's field order).
    records: Vec<String>,
    optimizer: Option<std::collections::HashMap<String, candle_core::Tensor>>,
}

fn run_in_folder(cfg: &StageConfig, paths: &StagePaths, device: &Device) -> Result<RunSummary> {
    tracing::info!(
        "{} on {} ({}), preset {}, device {}, run folder {}",
        stage_label(cfg.stage),
        cfg.dataset,
        cfg.data_root.display(),
        cfg.preset,
        cfg.device,
        paths.dir().display()
    );
    let open = |split| {
        let opts =
            DatasetOptions { image_size: cfg.input_size as u32, ..DatasetOptions::default() };
        Dataset::open(cfg.dataset.kind(), &cfg.data_root, split, &opts)
            .map_err(|e| data_err("open dataset", e))
    };
    let train_set = open(Split::Train)?;
    let test_set = open(Split::Test)?;
    tracing::info!(
        "{} train and {} test images ({} classes)",
        train_set.len(),
        test_set.len(),
        train_set.num_classes()
    );
    if cfg.stage == Stage::Au && !test_set.has_au_gt() {
        tracing::info!(
            "the dataset has no ground-truth AUs: AU metrics are against the pseudo-targets only"
        );
    }

    let varmap = VarMap::new();
    let model_cfg = cfg.model_config()?;
    let model = AueModel::with_varmap(&varmap, &model_cfg, device)
        .map_err(|e| model_err("build the model", e))?;
    let start = starting_point(cfg, paths, &varmap, device)?;
    write_atomic(&paths.config(), cfg.to_json().as_bytes())?;

    let mut trainer = Trainer::new(cfg.stage, model, cfg.momentum, cfg.frozen_eval)?;
    if let Some(w) = cfg.eiau_weight {
        tracing::info!(
            "EIAU loss weight {w} (the reference's: {})",
            aue_model::reference_eiau_weight(cfg.stage)
        );
        trainer = trainer.with_eiau_weight(w);
    }
    if let Some(buffers) = start.optimizer {
        trainer.optimizer_mut().load_state(buffers)?;
    }
    tracing::info!(
        "{} trainable tensors ({} parameters); frozen parts {}",
        trainer.optimizer().param_names().count(),
        trainable_count(&varmap, cfg.stage),
        if cfg.frozen_eval { "in eval mode (--frozen-eval)" } else { "in the reference's modes" }
    );

    let train_loader = Loader::new(
        &train_set,
        LoaderOptions {
            threads: cfg.workers,
            ..LoaderOptions::train(cfg.train_batch_size, cfg.seed)
        },
    )
    .map_err(|e| data_err("train loader", e))?;
    let test_loader = Loader::new(
        &test_set,
        LoaderOptions { threads: cfg.workers, ..LoaderOptions::eval(cfg.test_batch_size) },
    )
    .map_err(|e| data_err("test loader", e))?;
    let schedule = StepSchedule {
        base_lr: cfg.lr,
        milestones: cfg.lr_milestones.clone(),
        gamma: cfg.lr_gamma,
    };
    let labels = cfg.dataset.labels();
    let mut records = start.records;
    let mut best = start.best;
    let mut global_step = start.global_step;
    let mut summary = RunSummary { dir: paths.dir().to_owned(), best: None, last: None };
    if start.epoch >= cfg.epochs {
        tracing::info!("all {} epochs are done; nothing to train", cfg.epochs);
    }

    for epoch in start.epoch..cfg.epochs {
        let lr = schedule.lr(epoch);
        let shown = epoch + 1;
        // Train.
        let mut acc = SplitAccumulator::new(cfg.stage, SplitName::Train, labels.len(), device)?;
        let steps_planned = cfg
            .max_steps
            .map_or(train_loader.batches_per_epoch(), |m| m.min(train_loader.batches_per_epoch()));
        let bar = progress_bar(steps_planned, format!("epoch {shown}/{}", cfg.epochs));
        let t0 = Instant::now();
        let mut steps = 0;
        let mut loss_sum = 0.0f64;
        for batch in train_loader.epoch(epoch).take(steps_planned) {
            let batch = batch.map_err(|e| data_err("load a train batch", e))?;
            let batch = DeviceBatch::new(&batch, device)?;
            let loss = trainer.train_step(&batch, lr, &mut acc)?;
            // The one host synchronisation per step: the loss, for the bar and the NaN check.
            let value = loss.to_scalar::<f32>().op("read the loss")?;
            if !value.is_finite() {
                bar.abandon();
                return Err(TrainError::NonFiniteLoss {
                    value,
                    epoch: shown,
                    step: steps + 1,
                    lr,
                    last: if paths.last().exists() {
                        paths.last().display().to_string()
                    } else {
                        "none written yet".into()
                    },
                });
            }
            steps += 1;
            global_step += 1;
            loss_sum += f64::from(value);
            let rate = acc.samples() as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {:.4} | {rate:.0} img/s", loss_sum / steps as f64));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let info =
            |steps, seconds| RecordInfo { stage: cfg.stage, epoch: shown, lr, steps, seconds };
        let train_record = acc.finish(labels, info(steps, t0.elapsed().as_secs_f64()))?;

        // Evaluate on the test split.
        let mut acc = SplitAccumulator::new(cfg.stage, SplitName::Test, labels.len(), device)?;
        let bar = progress_bar(test_loader.batches_per_epoch(), "test".into());
        let t0 = Instant::now();
        let mut test_steps = 0;
        for batch in test_loader.epoch(epoch) {
            let batch = batch.map_err(|e| data_err("load a test batch", e))?;
            trainer.eval_step(&DeviceBatch::new(&batch, device)?, &mut acc)?;
            test_steps += 1;
            bar.inc(1);
        }
        bar.finish_and_clear();
        let mut test_record = acc.finish(labels, info(test_steps, t0.elapsed().as_secs_f64()))?;
        let m = match cfg.select_by {
            SelectBy::MeanClassAcc => test_record.mean_class_acc(),
            SelectBy::AuF1 => {
                test_record.au_pseudo.as_ref().and_then(|a| a.mean_f1).unwrap_or(f64::NAN)
            }
            SelectBy::Last => shown as f64,
        };
        // Ties go to the later epoch: with --frozen-eval the stage-2 EM head's accuracy does not
        // change, and the later AU branch is the better one to hand to stage 3.
        let improved = !m.is_nan() && best.is_none_or(|(b, _)| m >= b);
        test_record.best = Some(improved);
        if improved {
            best = Some((m, shown));
        }
        tracing::info!(
            "epoch {shown}/{} lr {lr:.3e} train: {}",
            cfg.epochs,
            train_record.summary()
        );
        tracing::info!(
            "epoch {shown}/{} test: {}{}",
            cfg.epochs,
            test_record.summary(),
            if improved { " [best]" } else { "" }
        );

        // Persist: metrics first, then best, the optimizer state and last. A kill in between
        // leaves metrics ahead of `last`; --resume drops those lines.
        for r in [&train_record, &test_record] {
            records.push(serde_json::to_string(r).unwrap_or_default());
        }
        write_metrics(&paths.metrics(), &records)?;
        let meta = |selection: &str| ModelMeta {
            stage: cfg.stage,
            preset: cfg.preset,
            config_json: cfg.to_json(),
            epoch: shown,
            metrics_json: serde_json::to_string(&test_record).unwrap_or_default(),
            dataset: cfg.dataset.name().into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            parent_sha256: start.parent_sha256.clone(),
            selection: selection.into(),
            best,
        };
        if improved {
            checkpoints::save_model(&varmap, &paths.best(), &meta(SELECTION_BEST))?;
        }
        let opt_meta = OptimizerMeta {
            stage: cfg.stage,
            epoch: shown,
            global_step,
            lr,
            momentum: cfg.momentum,
        };
        checkpoints::save_optimizer(
            &trainer.optimizer().state(),
            &paths.last_optimizer(),
            &opt_meta,
        )?;
        checkpoints::save_model(&varmap, &paths.last(), &meta(SELECTION_LAST))?;
    }
    report(cfg, paths, &records, &mut summary);
    Ok(summary)
}

/// Loads or initialises the weights and says where the epoch loop starts.
fn starting_point(
    cfg: &StageConfig,
    paths: &StagePaths,
    varmap: &VarMap,
    device: &Device,
) -> Result<Start> {
    let config_path = paths.config();
    if cfg.resume && config_path.exists() {
        let text =
            std::fs::read_to_string(&config_path).map_err(io_err("cannot read", &config_path))?;
        let saved: StageConfig = serde_json::from_str(&text).map_err(|e| TrainError::Json {
            what: "configuration",
            path: config_path.clone(),
            msg: e.to_string(),
        })?;
        cfg.check_resumes(&saved, &config_path)?;
    }
    if cfg.resume && paths.last().exists() {
        return resume_point(cfg, paths, varmap, device);
    }
    if cfg.resume {
        tracing::warn!(
            "--resume: {} has no {} yet (killed during the first epoch?): starting afresh",
            paths.dir().display(),
            crate::paths::LAST_CHECKPOINT
        );
    }
    let fresh = |parent_sha256| Start {
        epoch: 0,
        global_step: 0,
        best: None,
        parent_sha256,
        records: Vec::new(),
        optimizer: None,
    };
    match (cfg.stage, &cfg.resume_model) {
        (Stage::Em, _) => {
            aue_model::init::init_default(varmap, cfg.seed)
                .map_err(|e| model_err("initialise the model", e))?;
            match &cfg.pretrained {
                Some(path) => {
                    let summary = checkpoint::import_torchvision(varmap, path)
                        .map_err(|e| model_err("import torchvision weights", e))?;
                    tracing::info!("backbone from {} ({} tensors)", path.display(), summary.loaded);
                    Ok(fresh(sha256_file(path)?))
                }
                None if cfg.preset == Preset::Tiny => {
                    tracing::info!(
                        "the tiny preset has no ImageNet weights: training from scratch"
                    );
                    Ok(fresh(String::new()))
                }
                None => {
                    tracing::warn!(
                        "no --pretrained: the backbone starts from random weights; the paper's \
                         numbers need torchvision's ImageNet weights (e.g. --pretrained \
                         resnet101-63fe2227.pth)"
                    );
                    Ok(fresh(String::new()))
                }
            }
        }
        (_, Some(path)) => {
            checkpoints::check_parent(cfg, path)?;
            checkpoint::load(varmap, path)
                .map_err(|e| model_err("load the starting checkpoint", e))?;
            tracing::info!("weights from {}", path.display());
            Ok(fresh(sha256_file(path)?))
        }
        (stage, None) => Err(TrainError::Config {
            key: "resume_model",
            msg: format!("{} needs a starting checkpoint", stage_label(stage)),
        }),
    }
}

/// Restores the model, optimizer and counters from `last` for `--resume`.
fn resume_point(
    cfg: &StageConfig,
    paths: &StagePaths,
    varmap: &VarMap,
    device: &Device,
) -> Result<Start> {
    let last = paths.last();
    let bad = |msg: String| TrainError::Checkpoint { path: last.clone(), msg };
    let meta = ModelMeta::read(&last)?
        .ok_or_else(|| bad("has no training metadata; cannot resume from it".into()))?;
    if meta.stage != cfg.stage || meta.preset != cfg.preset {
        return Err(bad(format!(
            "is a {} {} checkpoint; this run is {} {}",
            stage_label(meta.stage),
            meta.preset,
            stage_label(cfg.stage),
            cfg.preset
        )));
    }
    checkpoint::load(varmap, &last).map_err(|e| model_err("load last checkpoint", e))?;
    let (opt, buffers) = checkpoints::load_optimizer(&paths.last_optimizer(), device)?;
    if opt.epoch != meta.epoch {
        return Err(bad(format!(
            "is from epoch {} but {} is from epoch {}: the run was killed while saving; \
             start afresh with --overwrite",
            meta.epoch,
            paths.last_optimizer().display(),
            opt.epoch
        )));
    }
    let records = read_metrics(&paths.metrics(), meta.epoch)?;
    tracing::info!(
        "resuming after epoch {} (step {}, lr {:.3e}) from {}",
        meta.epoch,
        opt.global_step,
        opt.lr,
        last.display()
    );
    Ok(Start {
        epoch: meta.epoch,
        global_step: opt.global_step,
        best: meta.best,
        parent_sha256: meta.parent_sha256,
        records,
        optimizer: Some(buffers),
    })
}

/// Reads `metrics.jsonl`, keeping the lines of epochs `<= up_to` (a killed run may have
/// written the lines of an epoch whose checkpoint it did not finish).
fn read_metrics(path: &Path, up_to: usize) -> Result<Vec<String>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(io_err("cannot read", path))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| TrainError::Json {
            what: "metrics line",
            path: path.to_owned(),
            msg: format!("line {}: {e}", i + 1),
        })?;
        let epoch = v.get("epoch").and_then(serde_json::Value::as_u64);
        match epoch {
            Some(e) if e as usize <= up_to => out.push(line.to_string()),
            Some(_) => {}
            None => {
                return Err(TrainError::Json {
                    what: "metrics line",
                    path: path.to_owned(),
                    msg: format!("line {} has no `epoch`", i + 1),
                });
            }
        }
    }
    Ok(out)
}

/// Rewrites `metrics.jsonl` atomically with every record so far.
fn write_metrics(path: &Path, records: &[String]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        text.push_str(r);
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

/// Number of scalar parameters the stage trains.
fn trainable_count(varmap: &VarMap, stage: Stage) -> usize {
    aue_model::trainable_vars(varmap, stage).iter().map(|(_, v)| v.elem_count()).sum()
}

/// A progress bar in the shared group (hidden when stderr is not a terminal).
fn progress_bar(len: usize, prefix: String) -> ProgressBar {
    let bar = logging::bars().add(ProgressBar::new(len as u64));
    let style =
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix);
    bar
}

/// Logs the final results: the best epoch (test-set selection) and the last epoch beside it.
fn report(cfg: &StageConfig, paths: &StagePaths, records: &[String], summary: &mut RunSummary) {
    let tests: Vec<SplitRecord> = records
        .iter()
        .filter_map(|r| serde_json::from_str::<SplitRecord>(r).ok())
        .filter(|r| r.split == SplitName::Test)
        .collect();
    summary.last = tests.last().cloned();
    summary.best = tests.iter().rfind(|r| r.best == Some(true)).cloned();
    if let Some(best) = &summary.best {
        let rule = match cfg.select_by {
            SelectBy::MeanClassAcc => String::new(),
            other => format!(" by {}", other.name()),
        };
        tracing::info!(
            "{} best (test-set selection{rule}, epoch {}): {}",
            stage_label(cfg.stage),
            best.epoch,
            best.summary()
        );
    }
    if let Some(last) = &summary.last {
        tracing::info!(
            "{} last (epoch {}): {}",
            stage_label(cfg.stage),
            last.epoch,
            last.summary()
        );
    }
    tracing::info!("checkpoints and metrics in {}", paths.dir().display());
}
