//! Reading stage run folders: the files the trainer writes (aue-train's `paths` module names
//! them): `config.json`, `metrics.jsonl` (one [`SplitRecord`] per epoch and split) and the
//! metadata of `best.safetensors` / `last.safetensors`. No tensor is loaded here.
//!
//! The best epoch is the reference's selection (docs/METHOD.md section 6): the test epoch with the
//! best mean class accuracy, which is test-set selection; the report shows it as such, with the
//! last epoch beside it.

use std::path::{Path, PathBuf};

use aue_contract::layout::{BEST_CHECKPOINT, CONFIG_FILE, LAST_CHECKPOINT, METRICS_FILE};
use aue_contract::{SplitName, SplitRecord};
use aue_data::DatasetKind;
use aue_model::Stage;
use serde::Deserialize;

use crate::checkpoint::CheckpointInfo;
use crate::error::{ReportError, Result, io_err};
use crate::scores::check_confusion;

/// The settings of `config.json` the report uses (the file holds more; unknown keys are
/// ignored so that the report reads runs of other versions).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RunConfig {
    /// Stage number.
    pub stage: Option<u8>,
    /// Dataset flag value (`rafdb`, `rafdb-compound`, `sfew`).
    pub dataset: Option<String>,
    /// Dataset root folder as given to the stage.
    pub data_root: Option<PathBuf>,
    /// Model preset.
    pub preset: Option<String>,
    /// Planned epochs.
    pub epochs: Option<usize>,
    /// Input side.
    pub input_size: Option<usize>,
    /// How `best` was chosen (`mean-class-acc` when absent: the reference's rule).
    pub select_by: Option<String>,
}

/// One stage run folder, read.
#[derive(Debug, Clone)]
pub struct StageRun {
    /// The stage folder.
    pub dir: PathBuf,
    /// The stage that wrote it.
    pub stage: Stage,
    /// Its `config.json` (default when the file is absent).
    pub config: RunConfig,
    /// Class names in label order (from the metrics).
    pub labels: Vec<String>,
    /// Every record of `metrics.jsonl`, sorted by epoch (train before test).
    pub records: Vec<SplitRecord>,
    /// Metadata of `best.safetensors`, when present.
    pub best_checkpoint: Option<CheckpointInfo>,
    /// Metadata of `last.safetensors`, when present.
    pub last_checkpoint: Option<CheckpointInfo>,
    /// Things a reader should know (unreadable checkpoint metadata, ...).
    pub warnings: Vec<String>,
    /// The one record was computed now from a checkpoint (see `eval`), not read from a folder.
    pub evaluated: bool,
}

/// Expands the folders given on the command line into stage folders: a folder holding
/// `metrics.jsonl` or `config.json` is a stage folder; a folder holding `stage1`, `stage2`,
/// `stage3` sub-folders stands for those, in stage order.
pub fn expand_run_dirs(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if !path.is_dir() {
            let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder");
            return Err(crate::error::io_err("no such run folder", path)(missing).into());
        }
        if path.join(METRICS_FILE).exists() || path.join(CONFIG_FILE).exists() {
            out.push(path.clone());
            continue;
        }
        let stages: Vec<PathBuf> = Stage::ALL
            .iter()
            .map(|s| path.join(format!("stage{}", s.number())))
            .filter(|p| p.is_dir())
            .collect();
        if stages.is_empty() {
            return Err(ReportError::NotARun { path: path.clone() });
        }
        out.extend(stages);
    }
    Ok(out)
}

/// Reads `metrics.jsonl`: one [`SplitRecord`] per non-blank line. Errors name the file and the
/// line: a line that is not JSON or not a record, records of mixed stages or class names, a
/// confusion matrix of the wrong shape, an empty file. A later record of the same epoch and
/// split replaces an earlier one. Returned sorted by epoch, train before test.
pub fn read_metrics(path: &Path) -> Result<Vec<SplitRecord>> {
    if !path.exists() {
        let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        return Err(ReportError::NoMetrics { dir });
    }
    let text = std::fs::read_to_string(path).map_err(io_err("cannot read", path))?;
    let bad =
        |line: usize, msg: String| ReportError::MetricsLine { path: path.to_owned(), line, msg };
    let mut records: Vec<SplitRecord> = Vec::new();
    let mut labels: Option<(usize, Vec<String>)> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let r: SplitRecord =
            serde_json::from_str(line).map_err(|e| bad(n, format!("not a metrics record: {e}")))?;
        if Stage::from_number(r.stage).is_none() {
            return Err(bad(n, format!("stage is {}, not 1, 2 or 3", r.stage)));
        }
        if let Some(first) = records.first()
            && first.stage != r.stage
        {
            return Err(bad(
                n,
                format!("a stage {} record after stage {} records", r.stage, first.stage),
            ));
        }
        for m in [&r.class, &r.em_head].into_iter().flatten() {
            let names: Vec<String> = m.per_class.iter().map(|c| c.name.clone()).collect();
            check_confusion(&m.confusion, names.len()).map_err(|msg| bad(n, msg))?;
            match &labels {
                None => labels = Some((n, names)),
                Some((at, known)) if *known != names => {
                    return Err(bad(
                        n,
                        format!(
                            "classes [{}] differ from line {at}'s [{}]",
                            names.join(", "),
                            known.join(", ")
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        records.retain(|old| (old.epoch, old.split) != (r.epoch, r.split));
        records.push(r);
    }
    if records.is_empty() {
        return Err(ReportError::EmptyMetrics { path: path.to_owned() });
    }
    records.sort_by_key(|r| (r.epoch, r.split == SplitName::Test));
    Ok(records)
}

/// Reads `config.json` when present.
fn read_config(dir: &Path) -> Result<Option<RunConfig>> {
    let path = dir.join(CONFIG_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(io_err("cannot read", &path))?;
    serde_json::from_str(&text).map(Some).map_err(|e| ReportError::Json {
        what: "run configuration",
        path,
        msg: e.to_string(),
    })
}

/// The class names of a dataset flag value, if the value is known.
pub fn dataset_labels(name: &str) -> Option<Vec<String>> {
    let d: DatasetKind = name.parse().ok()?;
    Some(d.class_names().iter().map(|s| s.to_string()).collect())
}

impl StageRun {
    /// Reads the stage folder `dir`; see the module doc. Errors: no or empty or malformed
    /// metrics, no test record, files that disagree about the stage, a checkpoint written by
    /// another stage, class names that differ between the metrics, the dataset and the
    /// checkpoints.
    pub fn load(dir: &Path) -> Result<Self> {
        let metrics_path = dir.join(METRICS_FILE);
        if !metrics_path.exists() {
            return Err(ReportError::NoMetrics { dir: dir.to_owned() });
        }
        let config = read_config(dir)?;
        let records = read_metrics(&metrics_path)?;
        let stage_number = records[0].stage;
        if let Some(c) = config.as_ref().and_then(|c| c.stage)
            && c != stage_number
        {
            return Err(ReportError::Inconsistent {
                dir: dir.to_owned(),
                msg: format!(
                    "{CONFIG_FILE} says stage {c}, {METRICS_FILE} holds stage {stage_number} records"
                ),
            });
        }
        let stage = Stage::from_number(stage_number).ok_or_else(|| ReportError::Inconsistent {
            dir: dir.to_owned(),
            msg: format!("unknown stage {stage_number}"),
        })?;
        if !records.iter().any(|r| r.split == SplitName::Test && r.class.is_some()) {
            return Err(ReportError::NoTestRecord { path: metrics_path });
        }
        let config = config.unwrap_or_default();
        let labels: Vec<String> = records
            .iter()
            .find_map(|r| r.class.as_ref())
            .map(|m| m.per_class.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        if let Some(name) = &config.dataset
            && let Some(expected) = dataset_labels(name)
            && expected != labels
        {
            return Err(ReportError::Inconsistent {
                dir: dir.to_owned(),
                msg: format!(
                    "{} says dataset `{name}` ({}), but {} records the classes {}",
                    dir.join(CONFIG_FILE).display(),
                    expected.join(", "),
                    metrics_path.display(),
                    labels.join(", ")
                ),
            });
        }
        let mut warnings = Vec::new();
        let mut read_checkpoint = |file: &str| -> Result<Option<CheckpointInfo>> {
            let path = dir.join(file);
            if !path.exists() {
                return Ok(None);
            }
            match CheckpointInfo::read_metadata(&path) {
                Ok(info) => {
                    info.expect_stage(
                        &[stage],
                        &format!("it lies in a stage {stage_number} run folder"),
                    )?;
                    info.expect_labels(&labels, &metrics_path.display().to_string())?;
                    Ok(Some(info))
                }
                // An unreadable checkpoint does not stop the report: the metrics are the data.
                Err(e) => {
                    tracing::warn!("{e}");
                    warnings.push(e.to_string());
                    Ok(None)
                }
            }
        };
        let best_checkpoint = read_checkpoint(BEST_CHECKPOINT)?;
        let last_checkpoint = read_checkpoint(LAST_CHECKPOINT)?;
        let run = Self {
            dir: dir.to_owned(),
            stage,
            config,
            labels,
            records,
            best_checkpoint,
            last_checkpoint,
            warnings,
            evaluated: false,
        };
        if let (Some(ck), Some(best)) = (&run.best_checkpoint, run.best())
            && ck.meta.epoch != best.epoch
        {
            let msg = format!(
                "{BEST_CHECKPOINT} is from epoch {}, {METRICS_FILE} marks epoch {} as best (a run \
                 killed while saving?)",
                ck.meta.epoch, best.epoch
            );
            tracing::warn!("{}: {msg}", run.dir.display());
            let mut run = run;
            run.warnings.push(msg);
            return Ok(run);
        }
        Ok(run)
    }

    /// The test records with class metrics, by epoch.
    pub fn tests(&self) -> impl Iterator<Item = &SplitRecord> {
        self.records.iter().filter(|r| r.split == SplitName::Test && r.class.is_some())
    }

    /// The training records, by epoch.
    pub fn trains(&self) -> impl Iterator<Item = &SplitRecord> {
        self.records.iter().filter(|r| r.split == SplitName::Train)
    }

    /// The best epoch's test record: the last one the trainer marked `best` (the epoch saved as
    /// `best.safetensors`); for records without marks, the best test mean class accuracy, ties
    /// to the later epoch as the trainer does.
    pub fn best(&self) -> Option<&SplitRecord> {
        let tests: Vec<&SplitRecord> = self.tests().collect();
        if let Some(r) = tests.iter().rev().find(|r| r.best == Some(true)) {
            return Some(r);
        }
        let mut best: Option<&SplitRecord> = None;
        for r in tests {
            let m = r.mean_class_acc();
            if m.is_nan() {
                continue;
            }
            if best.is_none_or(|b| m >= b.mean_class_acc()) {
                best = Some(r);
            }
        }
        best.or_else(|| self.last())
    }

    /// The last epoch's test record.
    pub fn last(&self) -> Option<&SplitRecord> {
        self.tests().last()
    }

    /// The dataset flag value, from config.json or the checkpoint metadata.
    pub fn dataset(&self) -> Option<String> {
        self.config.dataset.clone().or_else(|| {
            self.best_checkpoint
                .as_ref()
                .or(self.last_checkpoint.as_ref())
                .map(|c| c.meta.dataset.clone())
        })
    }

    /// Whether the run's data carries ground-truth AUs (only the synthetic set does): stage 2
    /// measured against them, or the data root holds `basic/Annotation/AU_gt`.
    pub fn has_au_ground_truth(&self) -> bool {
        self.records.iter().any(|r| r.au_true.is_some())
            || self
                .config
                .data_root
                .as_ref()
                .is_some_and(|root| root.join("basic/Annotation/AU_gt").is_dir())
    }

    /// "stage 1 (EM)", "stage 2 (AU)", "stage 3 (Fuse)".
    pub fn stage_title(&self) -> String {
        stage_title(self.stage)
    }
}

/// "stage 1 (EM)", "stage 2 (AU)", "stage 3 (Fuse)": the reference's `--Experiment` names.
pub fn stage_title(stage: Stage) -> String {
    let name = match stage {
        Stage::Em => "EM",
        Stage::Au => "AU",
        Stage::Fuse => "Fuse",
    };
    format!("stage {} ({name})", stage.number())
}
