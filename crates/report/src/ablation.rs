//! The ablation grid's report (docs/ABLATION.md): stage 1 alone against stages 1 -> 2 -> 3, per
//! synthetic set and stage-2/3 variant, as mean and standard deviation over the seeds, with the
//! per-seed difference stage 3 - stage 1 drawn as a chart.
//!
//! It reads the grid folder `aue-ablation` wrote (`grid.toml` and the stage folders of
//! [`crate::grid::GridPaths`]); every number comes from the stages' `metrics.jsonl`. Two
//! checkpoints are scored per stage: the best epoch (the reference's test-set selection,
//! docs/METHOD.md section 6; stage 2's best is chosen by AU F1 against the pseudo-targets) and the
//! last epoch (no selection on the test split).

use std::path::{Path, PathBuf};

use aue_contract::layout::METRICS_FILE;
use aue_contract::{SplitName, SplitRecord};
use serde::Serialize;

use crate::document::{Block, Table};
use crate::error::{ReportError, Result, io_err};
use crate::grid::{GRID_FILE, GridConfig, GridPaths, Variant};
use crate::plots::{DeltaRow, delta_svg};
use crate::runs::read_metrics;

/// The classes reported one by one: the rarest of RAF-DB (and of the `rafdb-sqrt` synthetic
/// shares), which the paper says the AU knowledge helps most.
pub const RARE_CLASSES: [&str; 2] = ["Fear", "Disgust"];

/// The test scores of one checkpoint (fractions in [0, 1]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scores {
    /// Mean class accuracy (the paper's "Ave. acc").
    pub mean_class_acc: f64,
    /// Overall accuracy.
    pub acc: f64,
    /// Recall of each of [`RARE_CLASSES`] (`None`: no test sample).
    pub rare: [Option<f64>; 2],
}

impl Scores {
    fn of(record: &SplitRecord, head: Head, path: &Path) -> Result<Self> {
        let metrics = match head {
            Head::Stage => record.class.as_ref(),
            Head::EmHead => record.em_head.as_ref(),
        };
        let c = metrics.ok_or_else(|| ReportError::MetricsLine {
            path: path.to_owned(),
            line: 0,
            msg: format!("test record of epoch {} has no class metrics", record.epoch),
        })?;
        let recall =
            |name: &str| c.per_class.iter().find(|s| s.name == name).and_then(|s| s.recall);
        Ok(Scores { mean_class_acc: c.mean_class_acc, acc: c.acc, rare: RARE_CLASSES.map(recall) })
    }
}

/// The best (as the trainer chose it) and the last test record of a stage folder.
fn best_and_last(dir: &Path) -> Result<(SplitRecord, SplitRecord)> {
    let path = dir.join(METRICS_FILE);
    let records = read_metrics(&path)?;
    let tests: Vec<&SplitRecord> = records.iter().filter(|r| r.split == SplitName::Test).collect();
    let last = *tests.last().ok_or_else(|| ReportError::NoTestRecord { path: path.clone() })?;
    // The trainer marks each epoch that became best; the final best is the last one marked.
    let best = tests.iter().rev().find(|r| r.best == Some(true)).copied().unwrap_or(last);
    Ok((best.clone(), last.clone()))
}

/// Best and last scores of one stage-1 or stage-3 run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StageScores {
    /// The `best.safetensors` epoch.
    pub best: Scores,
    /// The last epoch.
    pub last: Scores,
}

/// Which prediction of a record is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// The stage's own (pred1 in stage 1, the fused pred2 in stage 3).
    Stage,
    /// Stage 3's EM head pred1: the same frozen backbone and `pred_em` trained on in stage 3,
    /// without the AU branch. Stage 3 fused minus this separates what the fusion adds from what
    /// the extra epochs of `pred_em` add.
    EmHead,
}

fn stage_scores(dir: &Path, head: Head) -> Result<StageScores> {
    let path = dir.join(METRICS_FILE);
    let (best, last) = best_and_last(dir)?;
    Ok(StageScores { best: Scores::of(&best, head, &path)?, last: Scores::of(&last, head, &path)? })
}

/// One variant of one set and seed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct VariantResult {
    /// Stage 3 (the fused prediction pred2).
    pub stage3: StageScores,
    /// Stage 3's EM head pred1, at the same epochs (`None` when the records lack it).
    pub stage3_em_head: Option<StageScores>,
    /// Stage 2's mean AU F1 against the true AUs at its best epoch (`None`: no ground truth).
    pub au_f1_true: Option<f64>,
    /// The same score of predicting every AU present (no image), for scale.
    pub au_f1_all_present: Option<f64>,
}

/// One set and seed: stage 1 and each variant's stages 2 and 3.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// Stage 1.
    pub stage1: StageScores,
    /// Per variant, in the grid's order.
    pub variants: Vec<(Variant, VariantResult)>,
}

/// Every run of a grid folder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GridResults {
    /// The grid that was run.
    #[serde(skip)]
    pub grid: GridConfig,
    /// Per set (grid order): the set's name and its seeds' results (a seed without stage 1, or a
    /// variant without stages 2 and 3, is left out and named in `missing`).
    pub sets: Vec<(String, Vec<SeedResult>)>,
    /// Stage folders that were expected but hold no finished run.
    pub missing: Vec<PathBuf>,
}

impl GridResults {
    /// Reads the grid folder `root`. Runs not finished are left out (and named in `missing`); a
    /// malformed file is an error.
    pub fn load(root: &Path) -> Result<Self> {
        let grid = GridConfig::from_file(&root.join(GRID_FILE))?;
        let paths = GridPaths { root: root.to_owned() };
        let mut sets = Vec::new();
        let mut missing = Vec::new();
        for set in &grid.sets {
            let mut seeds = Vec::new();
            for &seed in &grid.seeds {
                let s1 = paths.stage1(&set.name, seed);
                if !s1.join(METRICS_FILE).is_file() {
                    missing.push(s1);
                    continue;
                }
                let stage1 = stage_scores(&s1, Head::Stage)?;
                let mut variants = Vec::new();
                for &v in grid.set_variants(set) {
                    let dir = paths.variant_dir(&set.name, seed, v);
                    let (s2, s3) = (dir.join("stage2"), dir.join("stage3"));
                    if let Some(absent) =
                        [&s2, &s3].into_iter().find(|d| !d.join(METRICS_FILE).is_file())
                    {
                        missing.push(absent.clone());
                        continue;
                    }
                    let (best2, _) = best_and_last(&s2)?;
                    let au_f1_true = best2.au_true.as_ref().and_then(|a| a.mean_f1);
                    let au_f1_all_present = best2.au_all_present.as_ref().and_then(|a| a.mean_f1);
                    let result = VariantResult {
                        stage3: stage_scores(&s3, Head::Stage)?,
                        stage3_em_head: stage_scores(&s3, Head::EmHead).ok(),
                        au_f1_true,
                        au_f1_all_present,
                    };
                    variants.push((v, result));
                }
                seeds.push(SeedResult { seed, stage1, variants });
            }
            sets.push((set.name.clone(), seeds));
        }
        Ok(GridResults { grid, sets, missing })
    }

    /// One row per set and variant.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for (set, seeds) in &self.sets {
            let Some(spec) = self.grid.sets.iter().find(|s| &s.name == set) else { continue };
            for &variant in self.grid.set_variants(spec) {
                let pairs: Vec<(u64, StageScores, VariantResult)> = seeds
                    .iter()
                    .filter_map(|s| {
                        let v = s.variants.iter().find(|(v, _)| *v == variant)?;
                        Some((s.seed, s.stage1, v.1))
                    })
                    .collect();
                if !pairs.is_empty() {
                    rows.push(Row { set: set.clone(), variant, seeds: pairs });
                }
            }
        }
        rows
    }
}

/// Mean and sample standard deviation (n - 1; 0 for one value) of the defined values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation.
    pub sd: f64,
    /// Number of values.
    pub n: usize,
}

impl Spread {
    /// Over the defined values; `None` when there is none.
    pub fn of(values: impl IntoIterator<Item = Option<f64>>) -> Option<Self> {
        let v: Vec<f64> = values.into_iter().flatten().collect();
        if v.is_empty() {
            return None;
        }
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Spread { mean, sd, n })
    }

    /// `81.2 ± 0.4` in percent (`n/a` for `None`).
    pub fn cell(s: Option<Spread>) -> String {
        s.map_or_else(|| "n/a".into(), |s| format!("{:.1} ± {:.1}", 100.0 * s.mean, 100.0 * s.sd))
    }

    /// `+1.2 ± 0.4` in percentage points (a mean that rounds to zero prints as `+0.0`).
    pub fn delta_cell(s: Option<Spread>) -> String {
        s.map_or_else(
            || "n/a".into(),
            |s| {
                let mean = format!("{:+.1}", 100.0 * s.mean).replace("-0.0", "+0.0");
                format!("{mean} ± {:.1}", 100.0 * s.sd)
            },
        )
    }
}

/// The seeds of one set and variant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Set name.
    pub set: String,
    /// Variant.
    pub variant: Variant,
    /// (seed, stage 1, the variant's stages 2 and 3) per finished seed.
    pub seeds: Vec<(u64, StageScores, VariantResult)>,
}

/// Which checkpoint of each stage a table scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// `best.safetensors` (the reference's test-set selection).
    Best,
    /// The last epoch.
    Last,
}

impl Row {
    fn pick(s: &StageScores, pick: Pick) -> Scores {
        match pick {
            Pick::Best => s.best,
            Pick::Last => s.last,
        }
    }

    /// The spread of `f` of stage 1 and of stage 3, and of their per-seed difference.
    pub fn compare(
        &self,
        pick: Pick,
        f: impl Fn(&Scores) -> Option<f64>,
    ) -> (Option<Spread>, Option<Spread>, Option<Spread>) {
        let s1: Vec<Option<f64>> =
            self.seeds.iter().map(|(_, s, _)| f(&Self::pick(s, pick))).collect();
        let s3: Vec<Option<f64>> =
            self.seeds.iter().map(|(_, _, v)| f(&Self::pick(&v.stage3, pick))).collect();
        let delta = s1.iter().zip(&s3).map(|(a, b)| Some((*b)? - (*a)?));
        (Spread::of(s1.clone()), Spread::of(s3.clone()), Spread::of(delta))
    }

    /// The spread of stage 3's EM head mean class accuracy, and of fused minus EM head.
    pub fn em_head_compare(&self, pick: Pick) -> (Option<Spread>, Option<Spread>) {
        let pairs: Vec<(f64, Option<f64>)> = self
            .seeds
            .iter()
            .map(|(_, _, v)| {
                let head = v.stage3_em_head.map(|h| Self::pick(&h, pick).mean_class_acc);
                (Self::pick(&v.stage3, pick).mean_class_acc, head)
            })
            .collect();
        let head = Spread::of(pairs.iter().map(|p| p.1));
        let delta = Spread::of(pairs.iter().map(|(fused, head)| Some(fused - (*head)?)));
        (head, delta)
    }

    /// Per-seed differences stage 3 - stage 1 of the mean class accuracy.
    pub fn mca_deltas(&self, pick: Pick) -> Vec<f64> {
        self.seeds
            .iter()
            .map(|(_, s1, v)| {
                Self::pick(&v.stage3, pick).mean_class_acc - Self::pick(s1, pick).mean_class_acc
            })
            .collect()
    }

    /// `set / variant`, the row's label.
    pub fn label(&self) -> String {
        format!("{} / {}", self.set, self.variant)
    }
}

/// The report's blocks: the settings, the two tables, the chart and what is missing.
pub fn blocks(results: &GridResults, chart_file: &str) -> Vec<Block> {
    let g = &results.grid;
    let mut out = vec![Block::Heading(1, "Ablation: does the AU knowledge help?".into())];
    out.push(Block::Text(format!(
        "Stage 1 alone (expression branch) against stages 1 -> 2 -> 3 (AU branch, then fusion) on \
         the synthetic sets of the grid: {} train / {} test images of {} px per set, preset {}, \
         seeds {:?} (each seed draws its own copy of every set and seeds every stage). Epochs: \
         stage 1 {}, stage 2 {}, stage 3 {}. Mean ± standard deviation over the seeds, in percent; \
         Δ is stage 3 - stage 1 per seed, in points. Stage 1 is the checkpoint stage 2 starts \
         from. Stage 3 is its fused prediction; \"EM head 3\" is stage 3's other output, the \
         expression head alone after stage 3's epochs (same backbone, no AU branch), so \
         \"Δ fused - EM head\" is what the fusion with the AU branch adds beyond the extra \
         training of the head. AU F1: stage 2's mean F1 against the true AUs, beside the F1 of \
         predicting every AU present (no image) for scale.",
        g.train,
        g.test,
        g.image_size,
        g.preset,
        g.seeds,
        g.stage1.epochs,
        g.stage2.epochs,
        g.stage3.epochs
    )));
    let mut sets = Table::new(["set", "difficulty", "balance", "train label noise", "variants"]);
    for s in &g.sets {
        let variants: Vec<&str> = g.set_variants(s).iter().map(|v| v.name()).collect();
        sets.push([
            s.name.clone(),
            s.difficulty.clone(),
            s.balance.clone(),
            format!("{:.0}%", 100.0 * s.label_noise),
            variants.join(", "),
        ]);
    }
    out.push(Block::Table(sets));
    let rows = results.rows();
    for (pick, title) in [
        (Pick::Best, "Best epochs (the reference's selection on the test split)"),
        (Pick::Last, "Last epochs (no selection)"),
    ] {
        out.push(Block::Heading(2, title.into()));
        let mut t = Table::new([
            "set / variant",
            "seeds",
            "mean class acc. 1",
            "mean class acc. 3",
            "Δ mean class acc.",
            "EM head 3",
            "Δ fused - EM head",
            "acc. 1",
            "acc. 3",
            "Δ acc.",
            "Fear 1",
            "Fear 3",
            "Disgust 1",
            "Disgust 3",
            "AU F1 (stage 2)",
            "AU F1, all present",
        ]);
        for row in &rows {
            let (m1, m3, dm) = row.compare(pick, |s| Some(s.mean_class_acc));
            let (head, dh) = row.em_head_compare(pick);
            let (a1, a3, da) = row.compare(pick, |s| Some(s.acc));
            let (f1, f3, _) = row.compare(pick, |s| s.rare[0]);
            let (d1, d3, _) = row.compare(pick, |s| s.rare[1]);
            let au = Spread::of(row.seeds.iter().map(|(_, _, v)| v.au_f1_true));
            let all = Spread::of(row.seeds.iter().map(|(_, _, v)| v.au_f1_all_present));
            t.push([
                row.label(),
                row.seeds.len().to_string(),
                Spread::cell(m1),
                Spread::cell(m3),
                Spread::delta_cell(dm),
                Spread::cell(head),
                Spread::delta_cell(dh),
                Spread::cell(a1),
                Spread::cell(a3),
                Spread::delta_cell(da),
                Spread::cell(f1),
                Spread::cell(f3),
                Spread::cell(d1),
                Spread::cell(d3),
                Spread::cell(au),
                Spread::cell(all),
            ]);
        }
        out.push(Block::Table(t));
    }
    out.push(Block::Image {
        alt: "stage 3 - stage 1, mean class accuracy, per set and variant".into(),
        file: chart_file.into(),
    });
    if !results.missing.is_empty() {
        let names: Vec<String> = results.missing.iter().map(|p| p.display().to_string()).collect();
        out.push(Block::Text(format!(
            "Not finished (left out of the tables): {}.",
            names.join(", ")
        )));
    }
    out
}

/// The chart: per set and variant, the difference stage 3 - stage 1 of the mean class accuracy
/// in points, for the best and the last epochs (see [`crate::plots::delta_svg`]).
pub fn delta_chart(results: &GridResults) -> Result<String> {
    let points = |r: &Row, pick| r.mca_deltas(pick).iter().map(|d| 100.0 * d).collect();
    let rows: Vec<DeltaRow> = results
        .rows()
        .iter()
        .map(|r| DeltaRow {
            label: r.label(),
            groups: vec![points(r, Pick::Best), points(r, Pick::Last)],
        })
        .collect();
    delta_svg(
        "stage 3 - stage 1, test mean class accuracy (points)",
        "points (+: the AU knowledge helps); blue: best epochs, red: last epochs",
        &rows,
    )
}

/// Writes `ablation.md`, `ablation.json` and `ablation-delta.svg` into `out` and returns the
/// document (for printing).
pub fn write_ablation(results: &GridResults, out: &Path) -> Result<Vec<Block>> {
    const CHART: &str = "ablation-delta.svg";
    std::fs::create_dir_all(out).map_err(io_err("cannot create", out))?;
    let doc = blocks(results, CHART);
    let write = |name: &str, text: String| {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(io_err("cannot write", &path))
    };
    write("ablation.md", crate::document::to_markdown(&doc))?;
    let rows = results.rows();
    let json =
        serde_json::json!({ "sets": results.sets, "missing": results.missing, "rows": rows });
    write("ablation.json", serde_json::to_string_pretty(&json).unwrap_or_default())?;
    write(CHART, delta_chart(results)?)?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_cells() {
        // 0.10, 0.20, missing: mean 0.15, sd sqrt(0.005) = 0.0707.
        let s = Spread::of([Some(0.1), Some(0.2), None]).unwrap();
        assert_eq!((s.n, Spread::cell(Some(s))), (2, "15.0 ± 7.1".to_string()));
        assert_eq!(Spread::delta_cell(Some(s)), "+15.0 ± 7.1");
        let tiny = Spread::of([Some(-0.0001)]).unwrap();
        assert_eq!(Spread::delta_cell(Some(tiny)), "+0.0 ± 0.0");
        assert_eq!(Spread::cell(Spread::of([None])), "n/a");
    }
}
