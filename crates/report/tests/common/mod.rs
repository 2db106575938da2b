//! Helpers of the report tests: hand-made run folders written in the trainer's own formats
//! (aue-contract's `SplitRecord` and `ModelMeta`), and tiny checkpoints holding only the prior
//! table and metadata.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aue_contract::meta::{ModelMeta, SELECTION_BEST};
use aue_contract::metrics::ClassMetrics;
use aue_contract::{SplitName, SplitRecord};
use aue_core::{EXPRESSIONS_BASIC, NUM_AUS, NUM_BASIC};
use aue_model::{Preset, Stage};

/// The 7 basic class names, label order.
pub fn basic() -> Vec<String> {
    EXPRESSIONS_BASIC.iter().map(|s| s.to_string()).collect()
}

/// A confusion matrix from text, one row per line, counts separated by spaces (row = truth).
pub fn matrix(text: &str) -> Vec<Vec<u64>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(|n| n.parse().unwrap()).collect())
        .collect()
}

/// A metrics record as the trainer writes it, classification only.
pub fn record(
    split: SplitName,
    stage: u8,
    epoch: usize,
    loss: f64,
    confusion: &[Vec<u64>],
    best: Option<bool>,
) -> SplitRecord {
    let names: Vec<&str> = EXPRESSIONS_BASIC.to_vec();
    let samples = confusion.iter().flatten().sum();
    SplitRecord {
        split,
        stage,
        epoch,
        lr: 0.01,
        loss,
        samples,
        steps: 1,
        seconds: 1.0,
        images_per_s: samples as f64,
        class: Some(ClassMetrics::from_confusion(confusion.to_vec(), &names)),
        em_head: None,
        au_pseudo: None,
        au_true: None,
        au_prior_baseline: None,
        au_prior_predicted: None,
        au_all_present: None,
        best,
    }
}

/// Writes `records` as `dir/metrics.jsonl` and a config.json naming `stage` and `dataset`.
pub fn write_run(dir: &Path, stage: u8, dataset: &str, records: &[SplitRecord]) {
    std::fs::create_dir_all(dir).unwrap();
    let text: String = records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
    let config = serde_json::json!({
        "stage": stage,
        "dataset": dataset,
        "data_root": dir.join("no-such-data"),
        "preset": "tiny",
        "epochs": records.iter().map(|r| r.epoch).max().unwrap_or(0),
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// Stage-1 best epoch (2), label order Surprise, Fear, Disgust, Happiness, Sadness, Anger,
/// Neutral; Fear has no test samples. Recall: 8/10, n/a, 2/5, 18/20, 5/8, 3/4, 7/10;
/// mean over the 6 classes with samples = 4.175 / 6 = 69.58 %; accuracy 43/57 = 75.44 %.
pub fn stage1_best() -> Vec<Vec<u64>> {
    matrix(
        "
         8 0 0 1 0 0 1
         0 0 0 0 0 0 0
         0 0 2 0 1 1 1
         0 0 0 18 0 0 2
         0 1 0 1 5 0 1
         0 0 1 0 0 3 0
         1 0 0 1 1 0 7",
    )
}

/// Stage-1 epochs 1 and 3 (worse than epoch 2): everything predicted Happiness except
/// Surprise. Recall 1, n/a, 0, 1, 0, 0, 0 -> mean 2/6.
pub fn stage1_other() -> Vec<Vec<u64>> {
    let supports = [10u64, 0, 5, 20, 8, 4, 10];
    (0..7)
        .map(|i| {
            let mut row = vec![0; 7];
            row[if i == 0 { 0 } else { 3 }] = supports[i];
            row
        })
        .collect()
}

/// Stage-3 best epoch: recall 9/10, n/a, 3/5, 19/20, 6/8, 3/4, 8/10; mean 4.75 / 6 = 79.17 %;
/// accuracy 48/57 = 84.21 %.
pub fn stage3_best() -> Vec<Vec<u64>> {
    matrix(
        "
         9 0 0 0 0 0 1
         0 0 0 0 0 0 0
         0 0 3 0 1 0 1
         0 0 0 19 0 0 1
         0 0 0 1 6 0 1
         0 0 1 0 0 3 0
         0 0 0 1 1 0 8",
    )
}

/// A stage-1 run (3 epochs, best 2) and a stage-3 run (2 epochs, best 2) on `dataset` under
/// `root/stage1`, `root/stage3`.
pub fn write_stage1_and_3(root: &Path, dataset: &str) -> (PathBuf, PathBuf) {
    use SplitName::{Test, Train};
    let s1 = root.join("stage1");
    write_run(
        &s1,
        1,
        dataset,
        &[
            record(Train, 1, 1, 1.9, &stage1_other(), None),
            record(Test, 1, 1, 1.8, &stage1_other(), Some(true)),
            record(Train, 1, 2, 1.5, &stage1_best(), None),
            record(Test, 1, 2, 1.4, &stage1_best(), Some(true)),
            record(Train, 1, 3, 1.2, &stage1_best(), None),
            record(Test, 1, 3, 1.6, &stage1_other(), Some(false)),
        ],
    );
    let s3 = root.join("stage3");
    let mut last = record(Test, 3, 2, 0.9, &stage3_best(), Some(true));
    last.em_head = Some(ClassMetrics::from_confusion(stage1_best(), &EXPRESSIONS_BASIC));
    write_run(
        &s3,
        3,
        dataset,
        &[
            record(Train, 3, 1, 1.1, &stage1_best(), None),
            record(Test, 3, 1, 1.0, &stage1_best(), Some(true)),
            record(Train, 3, 2, 0.8, &stage3_best(), None),
            last,
        ],
    );
    (s1, s3)
}

/// A learned-looking prior table: the initial value plus 0.01 * (row - column) / 10.
pub fn learned_table() -> [[f32; NUM_AUS]; NUM_BASIC] {
    let mut t = aue_core::prior_table_init();
    for (e, row) in t.iter_mut().enumerate() {
        for (a, v) in row.iter_mut().enumerate() {
            *v += 0.001 * (e as f32 - a as f32);
        }
    }
    t
}

/// Checkpoint metadata of `stage` for `labels`.
pub fn meta(stage: Stage, epoch: usize, labels: &[String], dataset: &str) -> ModelMeta {
    ModelMeta {
        stage,
        preset: Preset::Tiny,
        config_json: "{}".into(),
        epoch,
        metrics_json: "{}".into(),
        dataset: dataset.into(),
        labels: labels.to_vec(),
        parent_sha256: String::new(),
        selection: SELECTION_BEST.into(),
        best: Some((0.5, epoch)),
    }
}

/// Writes a safetensors file holding only `PriorKnowledgeTable` = `table`, with `meta`'s
/// `__metadata__` (and aue-model's format version).
pub fn write_prior_checkpoint(path: &Path, table: &[[f32; NUM_AUS]; NUM_BASIC], meta: &ModelMeta) {
    let bytes: Vec<u8> = table.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![NUM_BASIC, NUM_AUS],
        &bytes,
    )
    .unwrap();
    let mut map: HashMap<String, String> = meta.to_map().into_iter().collect();
    map.insert(
        aue_contract::format::FORMAT_KEY.into(),
        aue_contract::format::FORMAT_VERSION.into(),
    );
    safetensors::serialize_to_file([("PriorKnowledgeTable", view)], Some(map), path).unwrap();
}
