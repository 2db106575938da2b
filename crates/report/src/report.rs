//! The report: from read stage runs to one [`Report`] (serialised as `report.json`) and its
//! document (printed, and written as `report.md`).
//!
//! Sections: the paper's table for the dataset (docs/METHOD.md section 7, in the paper's column
//! order) with our rows beside the published ones; per run the best epoch (test-set selection,
//! the reference's protocol of section 6, labelled as such) and the last epoch, overall accuracy
//! beside mean class accuracy, per-class precision / recall / F1; the ablation the method rests
//! on (stage 1's expression branch against stage 3's fused pred2); stage 2's AU detection; the
//! learned prior table (section 2) against its initial value.

use std::path::{Path, PathBuf};

use aue_contract::metrics::AuMetrics;
use aue_contract::{SplitName, SplitRecord};
use aue_core::{AU_NAMES, EXPRESSIONS_BASIC, NUM_AUS};
use aue_model::Stage;
use serde::Serialize;

use crate::checkpoint::{PriorTable, read_prior_table};
use crate::document::{Block, Table};
use crate::error::{ReportError, Result};
use crate::published::{AVE_COLUMN, Benchmark, PAPER_COLUMN_LABELS, PAPER_COLUMNS, PublishedRow};
use crate::runs::StageRun;
use crate::scores::{
    ClassScores, NO_SAMPLES, NOT_AVAILABLE, f1_cell, pct_delta, pct_or, precision_cell, recall_cell,
};

/// Which published table to show beside our rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compare {
    /// From the runs' dataset: RAF-DB or SFEW 2.0 when the runs are on them; none for the
    /// synthetic set (a RAF-DB layout with ground-truth AUs), compound or unknown datasets.
    #[default]
    Auto,
    /// Always the given benchmark's table (the runs must have the 7 basic classes).
    Benchmark(Benchmark),
    /// Our rows alone.
    None,
}

impl std::str::FromStr for Compare {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Compare::Auto),
            "rafdb" => Ok(Compare::Benchmark(Benchmark::RafDb)),
            "sfew" => Ok(Compare::Benchmark(Benchmark::Sfew)),
            "none" => Ok(Compare::None),
            _ => Err(format!("unknown comparison `{s}` (auto, rafdb, sfew or none)")),
        }
    }
}

/// Options of [`Report::build`].
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Which published table to show.
    pub compare: Compare,
}

/// One epoch's test results of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochResult {
    /// 1-based epoch.
    pub epoch: usize,
    /// Why this epoch is shown.
    pub selection: String,
    /// Mean test loss of the stage.
    pub loss: f64,
    /// Scores of the stage's prediction (pred1; pred2 in stage 3), label order.
    pub scores: ClassScores,
    /// Stage 3: the expression branch's pred1 at the same epoch.
    pub em_head: Option<ClassScores>,
}

/// AU detection at one epoch (stage 2).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuEpoch {
    /// 1-based epoch.
    pub epoch: usize,
    /// Against the pseudo-targets of the prior table (both binarised at 0.5).
    pub pseudo: Option<AuMetrics>,
    /// Against ground-truth AUs (present = intensity > 0), when the dataset has them.
    pub truth: Option<AuMetrics>,
    /// Reference point: the prior row of each image's label against the ground truth (needs the
    /// test label).
    pub prior_baseline: Option<AuMetrics>,
    /// Reference point: the prior rows of the model's own expression prediction.
    pub prior_predicted: Option<AuMetrics>,
    /// Reference point: every AU predicted present (looks at neither image nor label).
    pub all_present: Option<AuMetrics>,
}

/// One point of the training curves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurvePoint {
    /// 1-based epoch.
    pub epoch: usize,
    /// `train` or `test`.
    pub split: SplitName,
    /// Mean loss.
    pub loss: f64,
    /// Overall accuracy.
    pub acc: Option<f64>,
    /// Mean class accuracy.
    pub mean_class_acc: Option<f64>,
    /// Mean AU F1 against the pseudo-targets (stage 2).
    pub au_f1_pseudo: Option<f64>,
    /// Mean AU F1 against ground-truth AUs (stage 2, synthetic set).
    pub au_f1_truth: Option<f64>,
}

/// Everything the report says about one stage run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// The stage folder.
    pub dir: PathBuf,
    /// Stage number.
    pub stage: u8,
    /// "stage 1 (EM)", ...
    pub title: String,
    /// Which prediction the scores are of.
    pub prediction: String,
    /// Dataset flag value.
    pub dataset: Option<String>,
    /// Model preset.
    pub preset: Option<String>,
    /// Test epochs in the metrics.
    pub epochs_evaluated: usize,
    /// Epochs the configuration planned.
    pub epochs_planned: Option<usize>,
    /// Best epoch (test-set selection).
    pub best: EpochResult,
    /// Last epoch.
    pub last: EpochResult,
    /// Epoch recorded in `best.safetensors`, when present.
    pub best_checkpoint_epoch: Option<usize>,
    /// Stage 2: AU detection at the best and last epochs.
    pub au: Option<[AuEpoch; 2]>,
    /// Per-epoch values for the curves.
    pub curve: Vec<CurvePoint>,
    /// Things a reader should know.
    pub warnings: Vec<String>,
    /// Computed now by evaluating a checkpoint (`dir` is the checkpoint): one epoch, no curves.
    pub evaluated: bool,
}

/// One row of the ablation (values in display column order).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AblationRow {
    /// Row label.
    pub label: String,
    /// Epoch.
    pub epoch: usize,
    /// Per-class accuracy (recall) in display order; `None` without samples.
    pub per_class: Vec<Option<f64>>,
    /// Mean class accuracy.
    pub mean_class_acc: Option<f64>,
    /// Overall accuracy.
    pub acc: Option<f64>,
}

/// Stage 1 (expression branch alone) against stage 3 (with AU knowledge, pred2).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ablation {
    /// Stage-1 folder.
    pub stage1: PathBuf,
    /// Stage-3 folder.
    pub stage3: PathBuf,
    /// Best epochs (test-set selection): stage 1, stage 3 pred2, stage 3 pred1.
    pub best: [AblationRow; 3],
    /// Last epochs: same rows.
    pub last: [AblationRow; 3],
    /// A side is an evaluated checkpoint (one epoch): `best` and `last` are that epoch.
    pub evaluated: bool,
}

/// The learned prior table beside its initial value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriorReport {
    /// Checkpoint read.
    pub checkpoint: PathBuf,
    /// Its stage.
    pub stage: u8,
    /// Its epoch.
    pub epoch: usize,
    /// Row names (expressions, label order).
    pub expressions: Vec<String>,
    /// Column names (AUs).
    pub aus: Vec<String>,
    /// docs/METHOD.md section 2's initial table.
    pub initial: Vec<Vec<f32>>,
    /// The learned table.
    pub learned: Vec<Vec<f32>>,
    /// Largest absolute change of an entry.
    pub max_abs_change: f32,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Dataset flag value of the runs, if known.
    pub dataset: Option<String>,
    /// Human-readable dataset name.
    pub dataset_title: String,
    /// Whether the data carries ground-truth AUs (the synthetic set).
    pub synthetic: bool,
    /// The published table shown, if any.
    pub benchmark: Option<Benchmark>,
    /// Class columns of the tables, in display order (the paper's for the 7 basic classes).
    pub columns: Vec<String>,
    /// Label index of each column.
    pub column_labels: Vec<usize>,
    /// Published rows (docs/METHOD.md section 7).
    pub published: Vec<PublishedRow>,
    /// Per run.
    pub runs: Vec<RunReport>,
    /// Stage 1 against stage 3, when both are given.
    pub ablation: Option<Ablation>,
    /// The learned prior table, when a stage-2/3 checkpoint is present.
    pub prior_table: Option<PriorReport>,
    /// Notes on what is missing or odd.
    pub notes: Vec<String>,
}

/// Display columns of a label set: the paper's order and names for the 7 basic classes, label
/// order otherwise. Returns (names, label indices).
pub fn display_columns(labels: &[String]) -> (Vec<String>, Vec<usize>) {
    if labels.iter().map(String::as_str).eq(EXPRESSIONS_BASIC) {
        (PAPER_COLUMNS.iter().map(|s| s.to_string()).collect(), PAPER_COLUMN_LABELS.to_vec())
    } else {
        (labels.to_vec(), (0..labels.len()).collect())
    }
}

/// "RAF-DB (basic)" etc. for a dataset flag value.
fn dataset_title(dataset: Option<&str>, synthetic: bool) -> String {
    match (dataset, synthetic) {
        (Some("rafdb"), true) => "synthetic set (RAF-DB basic layout, ground-truth AUs)".into(),
        (Some("rafdb"), false) => "RAF-DB (basic)".into(),
        (Some("rafdb-compound"), _) => "RAF-DB (compound)".into(),
        (Some("sfew"), _) => "SFEW 2.0".into(),
        (Some(other), _) => format!("`{other}`"),
        (None, _) => "unknown dataset".into(),
    }
}

fn epoch_result(run: &StageRun, r: &SplitRecord, selection: &str) -> Result<EpochResult> {
    let class = r.class.as_ref().ok_or_else(|| ReportError::Inconsistent {
        dir: run.dir.clone(),
        msg: format!("the test record of epoch {} has no classification metrics", r.epoch),
    })?;
    Ok(EpochResult {
        epoch: r.epoch,
        selection: selection.to_string(),
        loss: r.loss,
        scores: ClassScores::from_confusion(&class.confusion, &run.labels),
        em_head: r.em_head.as_ref().map(|m| ClassScores::from_confusion(&m.confusion, &run.labels)),
    })
}

/// What a stage's class scores are of.
fn prediction_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Em => "pred1 (expression branch)",
        Stage::Au => "pred1 (expression branch, frozen; the stage trains the AU branch)",
        Stage::Fuse => "pred2 (fusion with AU knowledge)",
    }
}

/// The selection label of the best epoch.
pub const BEST_SELECTION: &str =
    "best test mean class accuracy (test-set selection, as the reference)";
/// The selection label of the best epoch of a run chosen by `select_by` (its `config.json`).
fn best_selection(select_by: Option<&str>) -> &'static str {
    match select_by {
        Some("au-f1") => {
            "best test AU F1 against the pseudo-targets (test-set selection, --select-by au-f1)"
        }
        Some("last") => "last epoch (--select-by last)",
        _ => BEST_SELECTION,
    }
}

/// The selection label of the last epoch.
pub const LAST_SELECTION: &str = "last epoch";

fn run_report(run: &StageRun) -> Result<RunReport> {
    let (Some(best), Some(last)) = (run.best(), run.last()) else {
        return Err(ReportError::NoTestRecord {
            path: run.dir.join(aue_contract::layout::METRICS_FILE),
        });
    };
    let f1 = |m: &Option<AuMetrics>| m.as_ref().and_then(|m| m.mean_f1);
    let curve = run
        .records
        .iter()
        .map(|r| CurvePoint {
            epoch: r.epoch,
            split: r.split,
            loss: r.loss,
            acc: r.class.as_ref().map(|c| c.acc).filter(|v| v.is_finite()),
            mean_class_acc: r.class.as_ref().map(|c| c.mean_class_acc).filter(|v| v.is_finite()),
            au_f1_pseudo: f1(&r.au_pseudo),
            au_f1_truth: f1(&r.au_true),
        })
        .collect();
    let au_epoch = |r: &SplitRecord| AuEpoch {
        epoch: r.epoch,
        pseudo: r.au_pseudo.clone(),
        truth: r.au_true.clone(),
        prior_baseline: r.au_prior_baseline.clone(),
        prior_predicted: r.au_prior_predicted.clone(),
        all_present: r.au_all_present.clone(),
    };
    let au = (run.stage == Stage::Au).then(|| [au_epoch(best), au_epoch(last)]);
    Ok(RunReport {
        dir: run.dir.clone(),
        stage: run.stage.number(),
        title: run.stage_title(),
        prediction: prediction_name(run.stage).into(),
        dataset: run.dataset(),
        preset: run
            .config
            .preset
            .clone()
            .or_else(|| run.best_checkpoint.as_ref().map(|c| c.meta.preset.name().to_string())),
        epochs_evaluated: run.tests().count(),
        epochs_planned: run.config.epochs,
        best: epoch_result(run, best, best_selection(run.config.select_by.as_deref()))?,
        last: epoch_result(run, last, LAST_SELECTION)?,
        best_checkpoint_epoch: run.best_checkpoint.as_ref().map(|c| c.meta.epoch),
        au,
        curve,
        warnings: run.warnings.clone(),
        evaluated: run.evaluated,
    })
}

fn ablation_row(label: &str, epoch: usize, s: &ClassScores, order: &[usize]) -> AblationRow {
    AblationRow {
        label: label.into(),
        epoch,
        per_class: order.iter().map(|&i| s.classes.get(i).and_then(|c| c.recall)).collect(),
        mean_class_acc: s.mean_class_acc,
        acc: s.acc,
    }
}

fn ablation(runs: &[RunReport], order: &[usize]) -> Option<Ablation> {
    let s1 = runs.iter().find(|r| r.stage == 1)?;
    let s3 = runs.iter().find(|r| r.stage == 3)?;
    let rows = |e1: &EpochResult, e3: &EpochResult| {
        let em = e3.em_head.as_ref().unwrap_or(&e3.scores);
        [
            ablation_row("stage 1: expression branch alone (pred1)", e1.epoch, &e1.scores, order),
            ablation_row("stage 3: with AU knowledge (pred2)", e3.epoch, &e3.scores, order),
            ablation_row("stage 3: its expression branch (pred1)", e3.epoch, em, order),
        ]
    };
    Some(Ablation {
        stage1: s1.dir.clone(),
        stage3: s3.dir.clone(),
        best: rows(&s1.best, &s3.best),
        last: rows(&s1.last, &s3.last),
        evaluated: s1.evaluated || s3.evaluated,
    })
}

fn prior_report(runs: &[StageRun]) -> Result<Option<PriorReport>> {
    // The table is trained in stage 2; stage 3 carries the table it started from. Prefer the
    // stage-2 checkpoint, where it is learned.
    let candidates = [Stage::Au, Stage::Fuse];
    let Some(path) = candidates.iter().find_map(|stage| {
        runs.iter()
            .filter(|r| r.stage == *stage)
            .find_map(|r| r.best_checkpoint.as_ref().or(r.last_checkpoint.as_ref()))
            .map(|c| c.path.clone())
    }) else {
        return Ok(None);
    };
    let (info, learned) = read_prior_table(&path)?;
    let initial = aue_core::prior_table_init();
    Ok(Some(prior_from_tables(
        &path,
        info.meta.stage.number(),
        info.meta.epoch,
        &initial,
        &learned,
    )))
}

/// A [`PriorReport`] from two tables.
pub fn prior_from_tables(
    path: &Path,
    stage: u8,
    epoch: usize,
    initial: &PriorTable,
    learned: &PriorTable,
) -> PriorReport {
    let max_abs_change = initial
        .iter()
        .flatten()
        .zip(learned.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    PriorReport {
        checkpoint: path.to_owned(),
        stage,
        epoch,
        expressions: EXPRESSIONS_BASIC.iter().map(|s| s.to_string()).collect(),
        aus: AU_NAMES.iter().map(|s| s.to_string()).collect(),
        initial: initial.iter().map(|r| r.to_vec()).collect(),
        learned: learned.iter().map(|r| r.to_vec()).collect(),
        max_abs_change,
    }
}

impl Report {
    /// Builds the report of `runs` (stage folders, read). Errors: no run, runs with different
    /// class names or datasets, a forced benchmark on runs without the 7 basic classes, an
    /// unreadable or wrong-stage checkpoint for the prior table.
    pub fn build(runs: &[StageRun], opts: &ReportOptions) -> Result<Self> {
        let first = runs
            .first()
            .ok_or(ReportError::Config { key: "run", msg: "no run folder given".into() })?;
        for r in &runs[1..] {
            if r.labels != first.labels {
                return Err(ReportError::LabelMismatch {
                    left: first.dir.display().to_string(),
                    left_labels: first.labels.clone(),
                    right: r.dir.display().to_string(),
                    right_labels: r.labels.clone(),
                });
            }
            if let (Some(a), Some(b)) = (first.dataset(), r.dataset())
                && a != b
            {
                return Err(ReportError::Inconsistent {
                    dir: r.dir.clone(),
                    msg: format!(
                        "is on dataset `{b}`, {} on `{a}`: report them separately",
                        first.dir.display()
                    ),
                });
            }
        }
        let dataset = runs.iter().find_map(StageRun::dataset);
        let synthetic = runs.iter().any(StageRun::has_au_ground_truth);
        let basic = first.labels.iter().map(String::as_str).eq(EXPRESSIONS_BASIC);
        let benchmark = match opts.compare {
            Compare::Auto => match (dataset.as_deref(), synthetic) {
                (Some("rafdb"), false) => Some(Benchmark::RafDb),
                (Some("sfew"), _) => Some(Benchmark::Sfew),
                _ => None,
            },
            Compare::Benchmark(b) => {
                if !basic {
                    return Err(ReportError::Config {
                        key: "compare",
                        msg: format!(
                            "the {} table has the 7 basic classes; the runs have [{}]",
                            b.title(),
                            first.labels.join(", ")
                        ),
                    });
                }
                Some(b)
            }
            Compare::None => None,
        };
        let (columns, column_labels) = display_columns(&first.labels);
        let reports = runs.iter().map(run_report).collect::<Result<Vec<_>>>()?;
        let mut notes = Vec::new();
        let ablation = ablation(&reports, &column_labels);
        if ablation.is_none() {
            notes.push(
                "No ablation: it needs a stage-1 and a stage-3 run (pass both folders, or their \
                 parent)."
                    .to_string(),
            );
        }
        let prior_table = prior_report(runs)?;
        if prior_table.is_none() {
            notes.push(
                "No prior table: it is read from a stage-2 or stage-3 checkpoint, and none was \
                 found."
                    .to_string(),
            );
        }
        Ok(Self {
            dataset_title: dataset_title(dataset.as_deref(), synthetic),
            dataset,
            synthetic,
            benchmark,
            columns,
            column_labels,
            published: benchmark.map(|b| b.published().to_vec()).unwrap_or_default(),
            runs: reports,
            ablation,
            prior_table,
            notes,
        })
    }

    /// Per-class recall cells of `s` in display order.
    fn class_cells(&self, s: &ClassScores) -> Vec<String> {
        self.column_labels
            .iter()
            .map(|&i| s.classes.get(i).map_or(NOT_AVAILABLE.into(), recall_cell))
            .collect()
    }

    /// The main table: published rows, then ours (best and last per run).
    pub fn main_table(&self) -> Table {
        let mut t = Table::new(
            std::iter::once("Method".to_string())
                .chain(self.columns.iter().cloned())
                .chain(std::iter::once(AVE_COLUMN.to_string())),
        );
        for row in &self.published {
            t.push(std::iter::once(row.method.to_string()).chain(row.cells()));
        }
        for r in &self.runs {
            let rows = if r.evaluated {
                vec![(&r.best, format!("checkpoint of epoch {}, evaluated now", r.best.epoch))]
            } else {
                vec![
                    (&r.best, format!("best epoch {} (test-set selection)", r.best.epoch)),
                    (&r.last, format!("last epoch {}", r.last.epoch)),
                ]
            };
            for (e, what) in rows {
                let label = format!("Ours: {}, {}, {what}", r.title, short_prediction(r.stage));
                t.push(
                    std::iter::once(label)
                        .chain(self.class_cells(&e.scores))
                        .chain(std::iter::once(pct_or(e.scores.mean_class_acc, NO_SAMPLES))),
                );
            }
        }
        t
    }

    /// The document: headings, tables, pictures. `images` lists the pictures written (file names
    /// relative to the output folder) by run index; pass none for the printed report.
    pub fn document(&self, images: &Images) -> Vec<Block> {
        let mut doc =
            vec![Block::Heading(1, format!("AUE-CRL results on the {}", self.dataset_title))];
        let classes_note = if self.column_labels.len() == 7 && self.columns[0] == "Angry" {
            "Columns in the paper's order (alphabetical), not the label index order."
        } else {
            "Columns in label index order."
        };
        doc.push(Block::Text(format!(
            "Per-class accuracy (%) = recall on the test split; Ave. = mean class accuracy (the \
             mean over classes of per-class accuracy, docs/METHOD.md section 6; a class without \
             test samples shows \"{NO_SAMPLES}\" and is left out of the mean). \"Best epoch\" is \
             the epoch with the best test mean class accuracy: test-set selection, as the \
             reference does; the last epoch is shown beside it. {classes_note}"
        )));
        match self.benchmark {
            Some(b) => {
                doc.push(Block::Heading(2, format!("{}: published results and ours", b.title())))
            }
            None => {
                doc.push(Block::Heading(2, "Our results".into()));
                doc.push(Block::Text(format!(
                    "The paper publishes no numbers for the {}: our rows alone.",
                    self.dataset_title
                )));
            }
        }
        doc.push(Block::Table(self.main_table()));
        if let Some(a) = &self.ablation {
            doc.extend(self.ablation_blocks(a));
        }
        for (i, r) in self.runs.iter().enumerate() {
            doc.extend(self.run_blocks(r, images.runs.get(i)));
        }
        if let Some(p) = &self.prior_table {
            doc.extend(prior_blocks(p, images.prior.as_deref()));
        }
        if !self.notes.is_empty() {
            doc.push(Block::Heading(2, "Notes".into()));
            for n in &self.notes {
                doc.push(Block::Text(format!("- {n}")));
            }
        }
        doc
    }

    fn ablation_blocks(&self, a: &Ablation) -> Vec<Block> {
        let mut out = vec![
            Block::Heading(2, "Ablation: expression branch alone vs. with AU knowledge".into()),
            Block::Text(format!(
                "Per-class accuracy (%), Ave. (mean class accuracy) and Acc. (overall accuracy). \
                 Stage 1: {}; stage 3: {}. The difference is in percentage points.",
                a.stage1.display(),
                a.stage3.display()
            )),
        ];
        let tables = if a.evaluated {
            vec![(&a.best, "best epochs or evaluated checkpoints")]
        } else {
            vec![(&a.best, "best epochs (test-set selection)"), (&a.last, "last epochs")]
        };
        for (rows, what) in tables {
            let mut t = Table::new(
                std::iter::once(format!("Model ({what})"))
                    .chain(std::iter::once("Epoch".to_string()))
                    .chain(self.columns.iter().cloned())
                    .chain([AVE_COLUMN.to_string(), "Acc.".to_string()]),
            );
            for row in rows {
                t.push(
                    [row.label.clone(), row.epoch.to_string()]
                        .into_iter()
                        .chain(row.per_class.iter().map(|v| pct_or(*v, NO_SAMPLES)))
                        .chain([
                            pct_or(row.mean_class_acc, NO_SAMPLES),
                            pct_or(row.acc, NOT_AVAILABLE),
                        ]),
                );
            }
            let (s1, s3) = (&rows[0], &rows[1]);
            t.push(
                ["difference: stage 3 (pred2) - stage 1".to_string(), String::new()]
                    .into_iter()
                    .chain(s3.per_class.iter().zip(&s1.per_class).map(|(b, a)| pct_delta(*b, *a)))
                    .chain([
                        pct_delta(s3.mean_class_acc, s1.mean_class_acc),
                        pct_delta(s3.acc, s1.acc),
                    ]),
            );
            out.push(Block::Table(t));
        }
        out
    }

    fn run_blocks(&self, r: &RunReport, images: Option<&RunImages>) -> Vec<Block> {
        let mut out = vec![Block::Heading(2, format!("{}: {}", r.title, r.dir.display()))];
        let planned = r.epochs_planned.map_or(String::new(), |p| format!(" of {p} planned"));
        out.push(Block::Text(if r.evaluated {
            format!(
                "Checkpoint of epoch {} evaluated now on the test split of dataset {} (preset {}). \
                 Scores of {}.",
                r.best.epoch,
                r.dataset.as_deref().unwrap_or("unknown"),
                r.preset.as_deref().unwrap_or("unknown"),
                r.prediction
            )
        } else {
            format!(
                "Dataset {}, preset {}, {} epochs evaluated{planned}. Scores of {}.",
                r.dataset.as_deref().unwrap_or("unknown"),
                r.preset.as_deref().unwrap_or("unknown"),
                r.epochs_evaluated,
                r.prediction
            )
        }));
        if let Some(e) = r.best_checkpoint_epoch
            && e != r.best.epoch
        {
            out.push(Block::Text(format!(
                "Warning: best.safetensors is from epoch {e}, the metrics mark epoch {} as best.",
                r.best.epoch
            )));
        }
        for w in &r.warnings {
            out.push(Block::Text(format!("Warning: {w}")));
        }
        let mut summary =
            Table::new(["Epoch", "Selection", "Prediction", "Loss", "Acc.", AVE_COLUMN]);
        let epochs = if r.evaluated {
            vec![(&r.best, "checkpoint, evaluated now")]
        } else {
            vec![(&r.best, "best (test-set selection)"), (&r.last, "last")]
        };
        for (e, tag) in epochs {
            summary.push([
                e.epoch.to_string(),
                tag.to_string(),
                short_prediction(r.stage).to_string(),
                format!("{:.4}", e.loss),
                pct_or(e.scores.acc, NOT_AVAILABLE),
                pct_or(e.scores.mean_class_acc, NO_SAMPLES),
            ]);
            if let Some(em) = &e.em_head {
                summary.push([
                    e.epoch.to_string(),
                    tag.to_string(),
                    "pred1 (expression branch)".to_string(),
                    String::new(),
                    pct_or(em.acc, NOT_AVAILABLE),
                    pct_or(em.mean_class_acc, NO_SAMPLES),
                ]);
            }
        }
        out.push(Block::Table(summary));
        out.push(Block::Text(format!(
            "Per-class precision, recall (= per-class accuracy) and F1 (%) from the confusion \
             matrix; best epoch {}, last epoch {}.",
            r.best.epoch, r.last.epoch
        )));
        let mut t = Table::new([
            "Class",
            "Support",
            "Precision (best)",
            "Recall (best)",
            "F1 (best)",
            "Precision (last)",
            "Recall (last)",
            "F1 (last)",
        ]);
        for (col, &i) in self.columns.iter().zip(&self.column_labels) {
            let (Some(b), Some(l)) = (r.best.scores.classes.get(i), r.last.scores.classes.get(i))
            else {
                continue;
            };
            t.push([
                col.clone(),
                b.support.to_string(),
                precision_cell(b),
                recall_cell(b),
                f1_cell(b),
                precision_cell(l),
                recall_cell(l),
                f1_cell(l),
            ]);
        }
        let (b, l) = (&r.best.scores, &r.last.scores);
        t.push([
            "Macro mean".to_string(),
            b.classes.iter().map(|c| c.support).sum::<u64>().to_string(),
            pct_or(b.mean_precision(), NOT_AVAILABLE),
            pct_or(b.mean_class_acc, NO_SAMPLES),
            pct_or(b.mean_f1(), NOT_AVAILABLE),
            pct_or(l.mean_precision(), NOT_AVAILABLE),
            pct_or(l.mean_class_acc, NO_SAMPLES),
            pct_or(l.mean_f1(), NOT_AVAILABLE),
        ]);
        out.push(Block::Table(t));
        if !b.classes_without_samples.is_empty() {
            out.push(Block::Text(format!(
                "Classes without test samples (left out of Ave.): {}.",
                b.classes_without_samples.join(", ")
            )));
        }
        if let Some(au) = &r.au {
            out.extend(au_blocks(au));
        }
        if let Some(img) = images {
            for (alt, file) in &img.files {
                out.push(Block::Image { alt: alt.clone(), file: file.clone() });
            }
        }
        out
    }
}

/// A short name of the scored prediction.
fn short_prediction(stage: u8) -> &'static str {
    if stage == 3 { "pred2" } else { "pred1" }
}

fn au_cell(v: Option<f64>) -> String {
    pct_or(v, NOT_AVAILABLE)
}

/// Which reference point of an epoch's AU scores a column shows.
type ReferencePoint = fn(&AuEpoch) -> &Option<AuMetrics>;

fn au_blocks(au: &[AuEpoch; 2]) -> Vec<Block> {
    let [best, last] = au;
    let mut out = vec![Block::Text(format!(
        "AU detection of the AU branch at the best epoch ({}), per AU (%): against the prior \
         table's pseudo-targets (both binarised at 0.5){}. n/a: undefined (nothing predicted, or \
         the AU never present).",
        best.epoch,
        if best.truth.is_some() {
            ", against the ground-truth AUs (present = intensity > 0), and three reference points \
             against the ground truth: every AU present (no image, no label), the prior table's \
             AUs of the expression the model predicts, and of the image's label (an oracle: it \
             needs the test label)"
        } else {
            "; the dataset has no ground-truth AUs"
        }
    ))];
    let mut header = vec!["AU", "Precision (pseudo)", "Recall (pseudo)", "F1 (pseudo)"];
    if best.truth.is_some() {
        header.extend(["Precision (true)", "Recall (true)", "F1 (true)"]);
    }
    let refs: [(ReferencePoint, &str); 3] = [
        (|e| &e.all_present, "F1 (all present)"),
        (|e| &e.prior_predicted, "F1 (prior of prediction)"),
        (|e| &e.prior_baseline, "F1 (prior of label)"),
    ];
    let refs: Vec<_> = refs.into_iter().filter(|(f, _)| f(best).is_some()).collect();
    header.extend(refs.iter().map(|(_, h)| *h));
    let mut t = Table::new(header);
    let get = |m: &Option<AuMetrics>, i: usize| m.as_ref().and_then(|m| m.per_au.get(i)).cloned();
    for (i, name) in AU_NAMES.iter().enumerate().take(NUM_AUS) {
        let mut row = vec![name.to_string()];
        let p = get(&best.pseudo, i);
        row.extend([
            au_cell(p.as_ref().and_then(|s| s.precision)),
            au_cell(p.as_ref().and_then(|s| s.recall)),
            au_cell(p.as_ref().and_then(|s| s.f1)),
        ]);
        if best.truth.is_some() {
            let g = get(&best.truth, i);
            row.extend([
                au_cell(g.as_ref().and_then(|s| s.precision)),
                au_cell(g.as_ref().and_then(|s| s.recall)),
                au_cell(g.as_ref().and_then(|s| s.f1)),
            ]);
        }
        for (f, _) in &refs {
            row.push(au_cell(get(f(best), i).and_then(|s| s.f1)));
        }
        t.push(row);
    }
    let means = |m: &Option<AuMetrics>| {
        let m = m.as_ref();
        [
            au_cell(m.and_then(|m| m.mean_precision)),
            au_cell(m.and_then(|m| m.mean_recall)),
            au_cell(m.and_then(|m| m.mean_f1)),
        ]
    };
    for (e, label) in [(best, "Mean, best epoch"), (last, "Mean, last epoch")] {
        let mut row = vec![format!("{label} {}", e.epoch)];
        row.extend(means(&e.pseudo));
        if best.truth.is_some() {
            row.extend(means(&e.truth));
        }
        for (f, _) in &refs {
            row.push(au_cell(f(e).as_ref().and_then(|m| m.mean_f1)));
        }
        t.push(row);
    }
    out.push(Block::Table(t));
    out
}

fn prior_blocks(p: &PriorReport, image: Option<&str>) -> Vec<Block> {
    let mut out = vec![
        Block::Heading(2, "Prior knowledge table (7 x 17)".into()),
        Block::Text(format!(
            "Learned `PriorKnowledgeTable` from {} (stage {}, epoch {}) beside its initial value \
             (docs/METHOD.md section 2); largest change of an entry: {:.3}.",
            p.checkpoint.display(),
            p.stage,
            p.epoch,
            p.max_abs_change
        )),
    ];
    let mut t = Table::new(std::iter::once("Expression".to_string()).chain(p.aus.iter().cloned()));
    for (e, name) in p.expressions.iter().enumerate() {
        t.push(
            std::iter::once(format!("{name} (learned)"))
                .chain(p.learned[e].iter().map(|v| format!("{v:.2}"))),
        );
        t.push(
            std::iter::once(format!("{name} (initial)"))
                .chain(p.initial[e].iter().map(|v| format!("{v:.2}"))),
        );
    }
    out.push(Block::Table(t));
    if let Some(file) = image {
        out.push(Block::Image {
            alt: "prior table, initial and learned".into(),
            file: file.into(),
        });
    }
    out
}

/// The pictures of one run, (alt text, file name) pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunImages {
    /// (alt text, file name relative to the output folder).
    pub files: Vec<(String, String)>,
}

/// Pictures written beside `report.md`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Images {
    /// Per run, same order as [`Report::runs`].
    pub runs: Vec<RunImages>,
    /// The prior table heatmap.
    pub prior: Option<String>,
}
