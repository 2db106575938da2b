//! A whole stage run (docs/METHOD.md section 6: train, evaluate on the test split, keep the best
//! and the last epoch), in four parts:
//!
//! - [`prepare`]: every input checked and every starting weight loaded before anything on disk
//!   changes (datasets, the parent checkpoint or `--pretrained` file, the run folder's state);
//! - one epoch of training ([`train_epoch`]);
//! - evaluation and selection ([`evaluate_epoch`], [`select`]);
//! - the commit of the epoch ([`commit_epoch`]): the epoch's files first, then `commit.json`,
//!   the one write that makes the epoch count (docs/FILES.md).

use std::path::{Path, PathBuf};
use std::time::Instant;

use aue_cli::logging;
use aue_contract::layout::stage_label;
use aue_contract::meta::{self, BestEpoch, Commit, ModelMeta, OptimizerMeta};
use aue_contract::{
    CheckpointInfo, DeviceBatch, RecordInfo, SplitAccumulator, SplitName, SplitRecord, StagePaths,
    format, fsio,
};
use aue_data::{Dataset, DatasetOptions, Loader, LoaderOptions, Split};
use aue_model::AueModel;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

use crate::config::{SelectBy, StageConfig};
use crate::engine::Trainer;
use crate::error::{CandleContext, Result, TrainError, data_err, io_err, model_err};
use crate::schedule::StepSchedule;
use crate::stage::{Origin, StageDef};

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

/// Runs the stage `def` as `cfg` says. The stage folder receives config.json before the first
/// step, then per epoch its metrics lines, its files and the commit.
pub fn run(def: &dyn StageDef, cfg: &StageConfig) -> Result<RunSummary> {
    if let Some(n) = cfg.threads
        && let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).build_global()
    {
        tracing::warn!("--threads {n} not applied: {e}");
    }
    let device = cfg.device.open().map_err(|e| TrainError::Device(format!("{e:#}")))?;
    let prepared = prepare(def, cfg, &device)?;
    let paths = cfg.paths();
    if let Err(e) = logging::attach_file(&paths.log()) {
        tracing::warn!("cannot write the log file {}: {e}", paths.log().display());
    }
    let result = train(def, cfg, &device, prepared);
    if let Err(e) = &result {
        logging::write_file_only(&format!("error: {}", aue_contract::error::error_chain(e)));
    }
    logging::detach_file();
    result
}

/// Everything a run needs, checked and loaded; the run folder is ready for the first epoch.
struct Prepared {
    train_set: Dataset,
    test_set: Dataset,
    varmap: VarMap,
    model: AueModel,
    start: Start,
}

/// Where training starts: fresh (epoch 0) or after the last committed epoch.
struct Start {
    epoch: usize,
    global_step: usize,
    best: Option<BestEpoch>,
    parent_sha256: String,
    /// `metrics.jsonl` lines kept from before (one JSON object each, in the trainer's order).
    records: Vec<String>,
    optimizer: Option<std::collections::HashMap<String, Tensor>>,
}

/// Checks every input and loads the starting weights, then (and only then) changes the run
/// folder: `--overwrite` moves the old run aside, and config.json is written.
fn prepare(def: &dyn StageDef, cfg: &StageConfig, device: &Device) -> Result<Prepared> {
    let paths = cfg.paths();
    tracing::info!(
        "{} on {} ({}), preset {}, device {} ({}), run folder {}",
        stage_label(cfg.stage),
        cfg.dataset,
        cfg.data_root.display(),
        cfg.preset,
        cfg.device,
        cfg.dtype,
        paths.dir().display()
    );
    if cfg.dev_no_dropout {
        tracing::warn!("--dev-no-dropout: every dropout probability is 0 (a parity setting)");
    }
    restore_interrupted_set_aside(&paths)?;
    let existing = paths.run_files();
    let commit = Commit::read(&paths.commit())?;
    if !existing.is_empty() && !cfg.resume && !cfg.overwrite {
        let names: Vec<String> = existing
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        return Err(TrainError::RunFolder {
            path: paths.dir().to_owned(),
            msg: format!(
                "already holds a run ({}): pass --resume to continue it, --overwrite to replace \
                 it, or choose another --run-dir",
                names.join(", ")
            ),
        });
    }
    check_folder_writable(paths.dir())?;

    let open = |split| {
        let opts =
            DatasetOptions { input_size: cfg.input_size as u32, ..DatasetOptions::default() };
        Dataset::open(cfg.dataset, &cfg.data_root, split, &opts)
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
    if def.records().au && !test_set.has_au_gt() {
        tracing::info!(
            "the dataset has no ground-truth AUs: AU metrics are against the pseudo-targets only"
        );
    }

    let varmap = VarMap::new();
    let model = AueModel::with_dtype(&varmap, &cfg.model_config()?, device, cfg.dtype.dtype())
        .map_err(|e| model_err("build the model", e))?;
    // Checkpoints without a commit point: a run of an older aue, or files put there by hand.
    // They are never deleted: --resume refuses them, --overwrite sets them aside.
    let uncommitted_checkpoints =
        commit.is_none() && (paths.best().exists() || paths.last().exists());
    let start = match (&commit, cfg.resume) {
        (None, true) if uncommitted_checkpoints => {
            return Err(TrainError::RunFolder {
                path: paths.dir().to_owned(),
                msg: format!(
                    "holds checkpoints but no {} (a run of an older aue?): it cannot be resumed; \
                     --overwrite sets it aside in {}/ and starts afresh",
                    aue_contract::layout::COMMIT_FILE,
                    aue_contract::layout::REPLACED_DIR
                ),
            });
        }
        (Some(commit), true) => resume_point(cfg, &paths, commit, &varmap, device)?,
        (None, true) if !existing.is_empty() => {
            tracing::warn!(
                "--resume: {} has no committed epoch yet (killed during the first epoch?): \
                 starting afresh",
                paths.dir().display()
            );
            fresh_start(def, cfg, &varmap)?
        }
        _ => fresh_start(def, cfg, &varmap)?,
    };

    // Every input is good: now the folder may change.
    fsio::remove_stale_temp_files(paths.dir());
    if start.epoch == 0 && !existing.is_empty() {
        set_aside(&paths, commit.is_some() || uncommitted_checkpoints)?;
    }
    fsio::write_atomic(&paths.config(), cfg.to_json().as_bytes())?;
    Ok(Prepared { train_set, test_set, varmap, model, start })
}

/// Creates the stage folder if needed and checks that files can be made in it.
fn check_folder_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err("cannot create run folder", dir))?;
    let probe = dir.join(format!(".write-test.tmp.{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(io_err("cannot write into run folder", dir))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Moves an earlier run out of the way of a fresh one (`--overwrite`, or an uncommitted first
/// epoch): into `replaced/`, which goes once the new run commits its first epoch. A run that
/// never committed has nothing to keep, and an earlier `replaced/` run is kept unless a
/// committed run has replaced it since. The files are gathered in `replaced.tmp/` first and the
/// folder renamed, so a kill in the middle leaves every file in one of the two places, and
/// [`restore_interrupted_set_aside`] puts them back on the next start.
fn set_aside(paths: &StagePaths, committed: bool) -> Result<()> {
    if !committed {
        for f in paths.run_files() {
            fsio::remove_file(&f)?;
        }
        return Ok(());
    }
    let replaced = paths.replaced();
    let gathering = replaced.with_extension("tmp");
    fsio::remove_dir_all(&replaced)?;
    std::fs::create_dir_all(&gathering).map_err(io_err("cannot create", &gathering))?;
    for f in paths.run_files() {
        if let Some(name) = f.file_name() {
            fsio::rename(&f, &gathering.join(name))?;
        }
    }
    fsio::rename(&gathering, &replaced)?;
    tracing::info!(
        "--overwrite: the earlier run is kept in {} until this one commits its first epoch",
        replaced.display()
    );
    Ok(())
}

/// Puts back the files of a set-aside that a kill interrupted (`replaced.tmp/`).
fn restore_interrupted_set_aside(paths: &StagePaths) -> Result<()> {
    let gathering = paths.replaced().with_extension("tmp");
    let Ok(entries) = std::fs::read_dir(&gathering) else { return Ok(()) };
    for e in entries.flatten() {
        let to = paths.dir().join(e.file_name());
        if !to.exists() {
            fsio::rename(&e.path(), &to)?;
        }
    }
    tracing::warn!(
        "{} held files of an interrupted --overwrite: they are back in {}",
        gathering.display(),
        paths.dir().display()
    );
    Ok(fsio::remove_dir_all(&gathering)?)
}

/// Fresh weights: the stage's own initialisation, or its parent checkpoint, checked first.
fn fresh_start(def: &dyn StageDef, cfg: &StageConfig, varmap: &VarMap) -> Result<Start> {
    let origin = match def.parent() {
        None => def.init_weights(cfg, varmap)?,
        Some(parent) => {
            let path = cfg.resume_model.as_ref().ok_or_else(|| TrainError::Config {
                key: "resume_model",
                msg: format!("{} needs a starting checkpoint", stage_label(cfg.stage)),
            })?;
            let info = CheckpointInfo::read(path, Some(cfg.preset))?;
            info.check_parent(&cfg.parent_requirements(parent))?;
            format::load(varmap, path)?;
            tracing::info!("weights from {}", path.display());
            Origin { path: Some(path.clone()), sha256: meta::sha256_file(path)? }
        }
    };
    Ok(Start {
        epoch: 0,
        global_step: 0,
        best: None,
        parent_sha256: origin.sha256,
        records: Vec::new(),
        optimizer: None,
    })
}

/// Restores the model, optimizer and counters of the last committed epoch for `--resume`.
fn resume_point(
    cfg: &StageConfig,
    paths: &StagePaths,
    commit: &Commit,
    varmap: &VarMap,
    device: &Device,
) -> Result<Start> {
    let config_path = paths.config();
    let text =
        std::fs::read_to_string(&config_path).map_err(io_err("cannot read", &config_path))?;
    let saved: StageConfig = serde_json::from_str(&text).map_err(|e| TrainError::Json {
        what: "configuration",
        path: config_path.clone(),
        msg: e.to_string(),
    })?;
    cfg.check_resumes(&saved, &config_path)?;
    let commit_path = paths.commit();
    let bad = |msg: String| TrainError::RunFolder { path: commit_path.clone(), msg };
    if commit.stage != cfg.stage.number() {
        return Err(bad(format!(
            "is a stage {} run; this is {}",
            commit.stage,
            stage_label(cfg.stage)
        )));
    }
    let last = paths.dir().join(&commit.last);
    let meta = ModelMeta::read(&last)?
        .ok_or_else(|| bad(format!("names {}, which has no training metadata", commit.last)))?;
    if meta.epoch != commit.epoch || meta.stage != cfg.stage || meta.preset != cfg.preset {
        return Err(bad(format!(
            "names {} (stage {} {} epoch {}), which is not the committed stage {} {} epoch {}",
            commit.last,
            meta.stage.number(),
            meta.preset,
            meta.epoch,
            cfg.stage.number(),
            cfg.preset,
            commit.epoch
        )));
    }
    format::load(varmap, &last)?;
    let optimizer = paths.dir().join(&commit.optimizer);
    let (opt, buffers) = meta::load_optimizer(&optimizer, device)?;
    if opt.epoch != commit.epoch {
        return Err(bad(format!(
            "names {} of epoch {}, not the committed epoch {}",
            commit.optimizer, opt.epoch, commit.epoch
        )));
    }
    // Repair what a kill between the commit and its links left undone.
    publish(paths, commit)?;
    let records = read_metrics(&paths.metrics(), commit.epoch)?;
    tracing::info!(
        "resuming after epoch {} (step {}, lr {:.3e}) from {}",
        commit.epoch,
        commit.global_step,
        opt.lr,
        last.display()
    );
    Ok(Start {
        epoch: commit.epoch,
        global_step: commit.global_step,
        best: commit.best.clone(),
        parent_sha256: meta.parent_sha256,
        records,
        optimizer: Some(buffers),
    })
}

/// The epoch loop over what [`prepare`] made ready.
fn train(
    def: &dyn StageDef,
    cfg: &StageConfig,
    device: &Device,
    prepared: Prepared,
) -> Result<RunSummary> {
    let Prepared { train_set, test_set, varmap, model, start } = prepared;
    let paths = cfg.paths();
    let mut trainer = Trainer::new(def, model, cfg.momentum, cfg.frozen_eval);
    if let Some(w) = cfg.eiau_weight {
        tracing::info!(
            "EIAU loss weight {w} (the stage's default: {})",
            def.default_eiau_weight().unwrap_or(0.0)
        );
        trainer = trainer.with_eiau_weight(w);
    }
    if let Some(buffers) = start.optimizer {
        trainer.optimizer_mut().load_state(buffers)?;
    }
    let trainable: usize = crate::engine::trainable_vars(trainer.model(), def)
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum();
    tracing::info!(
        "{} trainable tensors ({trainable} parameters); frozen parts {}",
        trainer.optimizer().param_names().count(),
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
    let mut state = EpochState {
        records: start.records,
        best: start.best,
        global_step: start.global_step,
        parent_sha256: start.parent_sha256,
    };
    if start.epoch >= cfg.epochs {
        tracing::info!("all {} epochs are done; nothing to train", cfg.epochs);
    }
    for epoch in start.epoch..cfg.epochs {
        let lr = schedule.lr(epoch);
        let train_record = train_epoch(cfg, &mut trainer, &train_loader, epoch, lr, &mut state)?;
        let mut test_record = evaluate_epoch(cfg, &trainer, &test_loader, epoch, lr, device)?;
        let improved = select(cfg, &mut test_record, &state.best);
        tracing::info!(
            "epoch {}/{} lr {lr:.3e} train: {}",
            epoch + 1,
            cfg.epochs,
            train_record.summary()
        );
        tracing::info!(
            "epoch {}/{} test: {}{}",
            epoch + 1,
            cfg.epochs,
            test_record.summary(),
            if improved.is_some() { " [best]" } else { "" }
        );
        commit_epoch(
            cfg,
            &paths,
            &varmap,
            &trainer,
            &mut state,
            [train_record, test_record],
            improved,
            lr,
        )?;
    }
    let summary = summarise(cfg, &paths, &state.records);
    Ok(summary)
}

/// What the epochs carry from one to the next.
struct EpochState {
    records: Vec<String>,
    best: Option<BestEpoch>,
    global_step: usize,
    parent_sha256: String,
}

/// One epoch of optimizer steps; the train split's record.
fn train_epoch(
    cfg: &StageConfig,
    trainer: &mut Trainer<'_>,
    loader: &Loader,
    epoch: usize,
    lr: f64,
    state: &mut EpochState,
) -> Result<SplitRecord> {
    let shown = epoch + 1;
    let labels = cfg.dataset.class_names();
    let device = trainer.model().device().clone();
    let mut acc =
        SplitAccumulator::new(trainer.def().records(), SplitName::Train, labels.len(), &device)?;
    let steps_planned =
        cfg.max_steps.map_or(loader.batches_per_epoch(), |m| m.min(loader.batches_per_epoch()));
    // Dropout masks from the run seed and the epoch: a run (and its --resume) repeats exactly.
    aue_model::seed_dropout(cfg.seed, epoch as u64);
    let bar = logging::progress_bar(steps_planned, format!("epoch {shown}/{}", cfg.epochs));
    let t0 = Instant::now();
    let mut steps = 0;
    let mut loss_sum = 0.0f64;
    for batch in loader.epoch(epoch).take(steps_planned) {
        let batch = batch.map_err(|e| data_err("load a train batch", e))?;
        let batch = DeviceBatch::new(&batch, &device)?;
        let loss = trainer.train_step(&batch, lr, &mut acc)?;
        // The one host synchronisation per step: the loss, for the bar and the NaN check.
        let value =
            loss.to_dtype(DType::F64).and_then(|l| l.to_scalar::<f64>()).op("read the loss")?;
        if !value.is_finite() {
            bar.abandon();
            let last = cfg.paths().last();
            return Err(TrainError::NonFiniteLoss {
                value,
                epoch: shown,
                step: steps + 1,
                lr,
                last: if last.exists() {
                    last.display().to_string()
                } else {
                    "none written yet".into()
                },
            });
        }
        steps += 1;
        state.global_step += 1;
        loss_sum += value;
        let rate = acc.samples() as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("loss {:.4} | {rate:.0} img/s", loss_sum / steps as f64));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let info = RecordInfo {
        stage: cfg.stage,
        epoch: shown,
        lr,
        steps,
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok(acc.finish(labels, info)?)
}

/// The test split in eval mode after `epoch`.
fn evaluate_epoch(
    cfg: &StageConfig,
    trainer: &Trainer<'_>,
    loader: &Loader,
    epoch: usize,
    lr: f64,
    device: &Device,
) -> Result<SplitRecord> {
    let bar = logging::progress_bar(loader.batches_per_epoch(), "test".into());
    let batches = loader.epoch(epoch).map(|b| {
        let b = b.map_err(aue_core::Context::op("load a test batch"))?;
        DeviceBatch::new(&b, device)
    });
    let info = RecordInfo { stage: cfg.stage, epoch: epoch + 1, lr, steps: 0, seconds: 0.0 };
    let record = trainer.evaluate(batches, cfg.dataset.class_names(), info, &mut |_| bar.inc(1))?;
    bar.finish_and_clear();
    Ok(record)
}

/// Applies the run's selection rule to the test record: `Some(metric)` when this epoch becomes
/// the best (ties go to the later epoch: with --frozen-eval the stage-2 EM head's accuracy does
/// not change, and the later AU branch is the better one to hand on).
fn select(cfg: &StageConfig, test: &mut SplitRecord, best: &Option<BestEpoch>) -> Option<f64> {
    let m = match cfg.select_by {
        SelectBy::MeanClassAcc => test.mean_class_acc(),
        SelectBy::AuF1 => test.au_pseudo.as_ref().and_then(|a| a.mean_f1).unwrap_or(f64::NAN),
        SelectBy::Last => test.epoch as f64,
    };
    let improved = !m.is_nan() && best.as_ref().is_none_or(|b| m >= b.metric);
    test.best = Some(improved);
    improved.then_some(m)
}

/// Makes the epoch count: its metrics lines, model and optimizer files, then `commit.json`;
/// then the `best` / `last` links and the removal of files no commit names any more.
#[allow(clippy::too_many_arguments)]
fn commit_epoch(
    cfg: &StageConfig,
    paths: &StagePaths,
    varmap: &VarMap,
    trainer: &Trainer<'_>,
    state: &mut EpochState,
    records: [SplitRecord; 2],
    improved: Option<f64>,
    lr: f64,
) -> Result<()> {
    let epoch = records[1].epoch;
    for r in &records {
        state.records.push(serde_json::to_string(r).unwrap_or_default());
    }
    write_metrics(&paths.metrics(), &state.records)?;
    let best_after = match improved {
        Some(metric) => Some((metric, epoch)),
        None => state.best.as_ref().map(|b| (b.metric, b.epoch)),
    };
    let model_meta = ModelMeta {
        stage: cfg.stage,
        preset: cfg.preset,
        config_json: cfg.to_json(),
        epoch,
        metrics_json: serde_json::to_string(&records[1]).unwrap_or_default(),
        dataset: cfg.dataset.name().into(),
        labels: cfg.dataset.class_names().iter().map(|s| s.to_string()).collect(),
        parent_sha256: state.parent_sha256.clone(),
        selection: if improved.is_some() { meta::SELECTION_BEST } else { meta::SELECTION_LAST }
            .into(),
        best: best_after,
    };
    let model_file = paths.epoch_model(epoch);
    meta::save_model(varmap, &model_file, &model_meta, cfg.checkpoint_dtype.dtype())?;
    let optim_file = paths.epoch_optimizer(epoch);
    let opt_meta = OptimizerMeta {
        stage: cfg.stage,
        epoch,
        global_step: state.global_step,
        lr,
        momentum: cfg.momentum,
    };
    let float = cfg.checkpoint_dtype.dtype();
    meta::save_optimizer(&trainer.optimizer().state(), &optim_file, &opt_meta, float)?;
    let name =
        |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let best = match improved {
        Some(metric) => Some(BestEpoch { file: name(&model_file), epoch, metric }),
        None => state.best.clone(),
    };
    let commit = Commit {
        stage: cfg.stage.number(),
        epoch,
        global_step: state.global_step,
        last: name(&model_file),
        optimizer: name(&optim_file),
        best: best.clone(),
    };
    commit.write(&paths.commit())?;
    state.best = best;
    publish(paths, &commit)
}

/// Points `best.safetensors` and `last.safetensors` at the commit's files, and removes epoch
/// files it no longer names and the run `--overwrite` set aside.
fn publish(paths: &StagePaths, commit: &Commit) -> Result<()> {
    if let Some(best) = &commit.best {
        fsio::link_atomic(&paths.dir().join(&best.file), &paths.best())?;
    }
    fsio::link_atomic(&paths.dir().join(&commit.last), &paths.last())?;
    let keep = commit.files();
    for f in paths.epoch_files() {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !keep.contains(&name.as_str()) {
            fsio::remove_file(&f)?;
        }
    }
    fsio::remove_dir_all(&paths.replaced())?;
    Ok(())
}

/// Reads `metrics.jsonl`, keeping the lines of epochs `<= up_to` (a killed run may have
/// written the lines of an epoch it did not commit).
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
        match v.get("epoch").and_then(serde_json::Value::as_u64) {
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
    Ok(fsio::write_atomic(path, text.as_bytes())?)
}

/// Logs the final results: the best epoch and the last epoch beside it.
fn summarise(cfg: &StageConfig, paths: &StagePaths, records: &[String]) -> RunSummary {
    let tests: Vec<SplitRecord> = records
        .iter()
        .filter_map(|r| serde_json::from_str::<SplitRecord>(r).ok())
        .filter(|r| r.split == SplitName::Test)
        .collect();
    let summary = RunSummary {
        dir: paths.dir().to_owned(),
        last: tests.last().cloned(),
        best: tests.iter().rfind(|r| r.best == Some(true)).cloned(),
    };
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
    summary
}
