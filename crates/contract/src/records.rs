//! The metric records of a run (`metrics.jsonl`): one [`SplitRecord`] per epoch and split, as
//! the training loop writes them and the report reads them (docs/METHOD.md section 6).

use aue_model::Stage;
use serde::{Deserialize, Serialize};

use crate::metrics::{AuMetrics, ClassMetrics};

/// Which split a record or accumulator is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitName {
    /// Training batches (augmented, in train mode, before each step's update).
    Train,
    /// The test split, in eval mode, after the epoch.
    Test,
}

/// Counters of an epoch that the accumulator does not know.
#[derive(Debug, Clone, Copy)]
pub struct RecordInfo {
    /// Stage.
    pub stage: Stage,
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Batches run.
    pub steps: usize,
    /// Wall time of the pass.
    pub seconds: f64,
}

/// One line of `metrics.jsonl`: one split of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitRecord {
    /// `train` or `test`.
    pub split: SplitName,
    /// Stage number.
    pub stage: u8,
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Mean stage loss per sample.
    pub loss: f64,
    /// Samples seen.
    pub samples: u64,
    /// Batches run.
    pub steps: usize,
    /// Wall time of the pass, seconds.
    pub seconds: f64,
    /// Throughput of the pass.
    pub images_per_s: f64,
    /// Classification metrics of the stage's prediction (pred1; pred2 in stage 3). Absent for
    /// stage 2's training split, whose forward pass computes only the AU outputs.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub class: Option<ClassMetrics>,
    /// Stage 3: the EM head's pred1, beside the fused pred2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub em_head: Option<ClassMetrics>,
    /// Stage 2: AU detection against the pseudo-targets (both binarised at 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub au_pseudo: Option<AuMetrics>,
    /// Stage 2: AU detection against the ground-truth AUs (present = intensity > 0), when the
    /// dataset has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub au_true: Option<AuMetrics>,
    /// Stage 2, test: the prior row of each image's label (the AUs whose pseudo-target is >= 0.5)
    /// against the ground-truth AUs. It needs the test label (an oracle), and on labels without
    /// noise it is the ceiling of what the constant per-class pseudo-targets can teach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub au_prior_baseline: Option<AuMetrics>,
    /// Stage 2, test: the prior rows of the model's own expression prediction (pred1) against
    /// the ground-truth AUs: what an expression classifier and the table give, with no AU branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub au_prior_predicted: Option<AuMetrics>,
    /// Stage 2, test: every AU predicted present, the best rule for per-AU F1 that looks at
    /// neither the image nor the label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub au_all_present: Option<AuMetrics>,
    /// Test: whether this epoch became `best.safetensors` (test-set selection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<bool>,
}

impl SplitRecord {
    /// The test mean class accuracy that selects `best` (NaN when the split has no classes).
    pub fn mean_class_acc(&self) -> f64 {
        self.class.as_ref().map_or(f64::NAN, |c| c.mean_class_acc)
    }

    /// A one-line summary for the log.
    pub fn summary(&self) -> String {
        let mut s = format!("loss {:.4}", self.loss);
        if let Some(c) = &self.class {
            s += &format!(
                ", acc {:.2}%, mean class acc {:.2}%",
                100.0 * c.acc,
                100.0 * c.mean_class_acc
            );
            if !c.classes_without_samples.is_empty() {
                s += &format!(" (no samples: {})", c.classes_without_samples.join(", "));
            }
        }
        if let Some(c) = &self.em_head {
            s += &format!(
                ", EM head acc {:.2}% / mean class {:.2}%",
                100.0 * c.acc,
                100.0 * c.mean_class_acc
            );
        }
        let f1 = |m: &Option<AuMetrics>| m.as_ref().and_then(|m| m.mean_f1).map(|f| 100.0 * f);
        if let Some(f) = f1(&self.au_pseudo) {
            s += &format!(", AU F1 vs pseudo-targets {f:.2}%");
        }
        if let Some(f) = f1(&self.au_true) {
            s += &format!(", AU F1 vs true AUs {f:.2}%");
        }
        let refs: Vec<String> = [
            ("no image: all present", &self.au_all_present),
            ("prior of the predicted expression", &self.au_prior_predicted),
            ("prior of the label", &self.au_prior_baseline),
        ]
        .into_iter()
        .filter_map(|(name, m)| f1(m).map(|f| format!("{name} {f:.2}%")))
        .collect();
        if !refs.is_empty() {
            s += &format!(" (reference points: {})", refs.join(", "));
        }
        s
    }
}
