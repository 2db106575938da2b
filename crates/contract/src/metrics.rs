//! Evaluation metrics (docs/METHOD.md section 6): per-class accuracy (recall), the paper's
//! "Ave. acc" (mean over classes of per-class recall), overall accuracy, the confusion matrix,
//! mean loss, and AU precision / recall / F1.
//!
//! Counts accumulate in tensors on the training device, batch after batch, and come to the host
//! once per epoch in `finish`: the loop needs no host synchronisation for metrics.

use candle_core::{D, DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{CandleContext, Result};

/// `[b, k]` one-hot f32 rows of `indices` `[b]` (any integer dtype).
fn one_hot(indices: &Tensor, k: usize) -> Result<Tensor> {
    let classes = Tensor::arange(0u32, k as u32, indices.device()).op("one_hot: arange")?;
    let idx = indices.to_dtype(DType::U32).op("one_hot: to u32")?;
    let idx = idx.unsqueeze(1).op("one_hot: unsqueeze")?; // [b, 1]
    idx.broadcast_eq(&classes.unsqueeze(0).op("one_hot")?) // [b, k]
        .op("one_hot: eq")?
        .to_dtype(DType::F32)
        .op("one_hot: to f32")
}

/// Accumulates the per-sample mean of a loss over batches.
pub struct MeanAccumulator {
    /// Sum over batches of `loss * batch_size` (a 0-d f32 tensor).
    sum: Tensor,
    samples: usize,
}

impl MeanAccumulator {
    /// An empty accumulator on `device`.
    pub fn new(device: &Device) -> Result<Self> {
        Ok(Self { sum: Tensor::zeros((), DType::F32, device).op("mean: zeros")?, samples: 0 })
    }

    /// Adds a batch of `batch` samples whose mean is `value` (0-d).
    pub fn add(&mut self, value: &Tensor, batch: usize) -> Result<()> {
        let weighted = (value.detach().to_dtype(DType::F32).op("mean: to f32")? * batch as f64)
            .op("mean: value * b")?;
        self.sum = (&self.sum + weighted).op("mean: add")?;
        self.samples += batch;
        Ok(())
    }

    /// Samples added so far.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The mean (NaN when nothing was added).
    pub fn finish(&self) -> Result<f64> {
        let sum = self.sum.to_scalar::<f32>().op("mean: read")?;
        Ok(if self.samples > 0 { sum as f64 / self.samples as f64 } else { f64::NAN })
    }
}

/// Accumulates a classification head's confusion matrix over batches.
pub struct ClassAccumulator {
    num_classes: usize,
    /// `[k, k]` f32 counts: row = true class, column = predicted class.
    confusion: Tensor,
}

impl ClassAccumulator {
    /// An empty accumulator for `num_classes` classes on `device`.
    pub fn new(num_classes: usize, device: &Device) -> Result<Self> {
        Ok(Self {
            num_classes,
            confusion: Tensor::zeros((num_classes, num_classes), DType::F32, device)
                .op("metrics: zeros")?,
        })
    }

    /// Adds one batch: `logits` `[b, k]`, `labels` `[b]` (integer).
    pub fn add(&mut self, logits: &Tensor, labels: &Tensor) -> Result<()> {
        let pred = logits.argmax(D::Minus1).op("metrics: argmax")?; // [b]
        let truth = one_hot(labels, self.num_classes)?; // [b, k]
        let guess = one_hot(&pred, self.num_classes)?; // [b, k]
        let counts = truth.t().op("metrics: t")?.matmul(&guess).op("metrics: confusion")?; // [k, k]
        self.confusion = (&self.confusion + counts).op("metrics: add confusion")?;
        Ok(())
    }

    /// Brings the counts to the host and computes the metrics.
    pub fn finish(&self, labels: &[&str]) -> Result<ClassMetrics> {
        let rows = self.confusion.to_vec2::<f32>().op("metrics: read confusion")?;
        let confusion: Vec<Vec<u64>> =
            rows.iter().map(|r| r.iter().map(|&c| c.round() as u64).collect()).collect();
        Ok(ClassMetrics::from_confusion(confusion, labels))
    }
}

/// One class's line of the evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    /// Class name.
    pub name: String,
    /// Number of samples of this class.
    pub support: u64,
    /// Samples of this class predicted as it.
    pub correct: u64,
    /// `correct / support`; `None` when the class has no samples.
    pub recall: Option<f64>,
}

/// The classification metrics of one split and epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Overall accuracy.
    pub acc: f64,
    /// The paper's "Ave. acc": the mean of per-class recall over the classes that have samples.
    pub mean_class_acc: f64,
    /// Per-class recall, in label order.
    pub per_class: Vec<ClassScore>,
    /// Classes with no samples in this split: excluded from `mean_class_acc`.
    pub classes_without_samples: Vec<String>,
    /// Row = true class, column = predicted class.
    pub confusion: Vec<Vec<u64>>,
}

impl ClassMetrics {
    /// Metrics from a confusion matrix (row = truth).
    pub fn from_confusion(confusion: Vec<Vec<u64>>, labels: &[&str]) -> Self {
        let mut per_class = Vec::with_capacity(confusion.len());
        let mut without = Vec::new();
        let (mut total, mut correct_total) = (0u64, 0u64);
        for (i, row) in confusion.iter().enumerate() {
            let name = labels.get(i).map_or_else(|| format!("class {i}"), |s| s.to_string());
            let support: u64 = row.iter().sum();
            let correct = row.get(i).copied().unwrap_or(0);
            total += support;
            correct_total += correct;
            let recall = (support > 0).then(|| correct as f64 / support as f64);
            if support == 0 {
                without.push(name.clone());
            }
            per_class.push(ClassScore { name, support, correct, recall });
        }
        let recalls: Vec<f64> = per_class.iter().filter_map(|c| c.recall).collect();
        let mean_class_acc = if recalls.is_empty() {
            f64::NAN
        } else {
            recalls.iter().sum::<f64>() / recalls.len() as f64
        };
        let acc = if total > 0 { correct_total as f64 / total as f64 } else { f64::NAN };
        Self { acc, mean_class_acc, per_class, classes_without_samples: without, confusion }
    }
}

/// Accumulates AU detection counts (true/false positives, false negatives) per AU.
pub struct AuAccumulator {
    /// `[3, n]` f32: rows tp, fp, fn.
    counts: Tensor,
    /// `[n]` f32: positives in the targets.
    support: Tensor,
    samples: usize,
}

impl AuAccumulator {
    /// An empty accumulator for `num_aus` AUs on `device`.
    pub fn new(num_aus: usize, device: &Device) -> Result<Self> {
        Ok(Self {
            counts: Tensor::zeros((3, num_aus), DType::F32, device).op("au metrics: zeros")?,
            support: Tensor::zeros(num_aus, DType::F32, device).op("au metrics: zeros")?,
            samples: 0,
        })
    }

    /// Adds one batch of binary decisions: `predicted`, `present` `[b, n]` f32 in {0, 1}.
    pub fn add(&mut self, predicted: &Tensor, present: &Tensor) -> Result<()> {
        let tp = (predicted * present).op("au: tp")?.sum(0).op("au: tp")?; // [n]
        let fp = (predicted - predicted * present).op("au: fp")?.sum(0).op("au: fp")?;
        let fneg = (present - predicted * present).op("au: fn")?.sum(0).op("au: fn")?;
        let batch = Tensor::stack(&[&tp, &fp, &fneg], 0).op("au: stack")?; // [3, n]
        self.counts = (&self.counts + batch).op("au: add")?;
        self.support = (&self.support + present.sum(0).op("au: support")?).op("au: add")?;
        self.samples += predicted.dim(0).op("au: batch")?;
        Ok(())
    }

    /// Adds one batch of scores thresholded at 0.5 (`>= 0.5` is present, as the reference
    /// binarises both predictions and pseudo-targets): `scores`, `targets` `[b, n]` f32.
    pub fn add_thresholded(&mut self, scores: &Tensor, targets: &Tensor) -> Result<()> {
        let p = scores.ge(0.5).op("au: >= 0.5")?.to_dtype(DType::F32).op("au")?;
        let t = targets.ge(0.5).op("au: >= 0.5")?.to_dtype(DType::F32).op("au")?;
        self.add(&p, &t)
    }

    /// Samples added so far.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Brings the counts to the host and computes per-AU and mean scores.
    pub fn finish(&self, names: &[&str]) -> Result<AuMetrics> {
        let rows = self.counts.to_vec2::<f32>().op("au: read counts")?;
        let support = self.support.to_vec1::<f32>().op("au: read support")?;
        let per_au = (0..support.len())
            .map(|i| {
                let name = names.get(i).map_or_else(|| format!("AU index {i}"), |s| s.to_string());
                AuScore::new(name, rows[0][i] as u64, rows[1][i] as u64, rows[2][i] as u64)
            })
            .collect();
        Ok(AuMetrics::from_scores(per_au, self.samples as u64))
    }
}

/// Detection scores of one AU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuScore {
    /// AU name (`AU01`, ...).
    pub name: String,
    /// True positives.
    pub tp: u64,
    /// False positives.
    pub fp: u64,
    /// False negatives.
    #[serde(rename = "fn")]
    pub fn_: u64,
    /// `tp / (tp + fp)`; `None` when nothing was predicted present.
    pub precision: Option<f64>,
    /// `tp / (tp + fn)`; `None` when the AU is never present.
    pub recall: Option<f64>,
    /// `2 tp / (2 tp + fp + fn)`; `None` when the AU is neither present nor predicted anywhere
    /// (nothing to detect and nothing wrongly detected).
    pub f1: Option<f64>,
}

impl AuScore {
    fn new(name: String, tp: u64, fp: u64, fn_: u64) -> Self {
        let ratio = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
        Self {
            name,
            tp,
            fp,
            fn_,
            precision: ratio(tp, tp + fp),
            recall: ratio(tp, tp + fn_),
            f1: ratio(2 * tp, 2 * tp + fp + fn_),
        }
    }
}

/// AU detection metrics of one split and epoch against one kind of target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuMetrics {
    /// Mean precision over AUs where it is defined.
    pub mean_precision: Option<f64>,
    /// Mean recall over AUs where it is defined.
    pub mean_recall: Option<f64>,
    /// Mean F1 over AUs where it is defined.
    pub mean_f1: Option<f64>,
    /// Per-AU scores, in AU order.
    pub per_au: Vec<AuScore>,
    /// Number of samples.
    pub samples: u64,
}

impl AuMetrics {
    fn from_scores(per_au: Vec<AuScore>, samples: u64) -> Self {
        let mean = |f: fn(&AuScore) -> Option<f64>| {
            let v: Vec<f64> = per_au.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        Self {
            mean_precision: mean(|s| s.precision),
            mean_recall: mean(|s| s.recall),
            mean_f1: mean(|s| s.f1),
            per_au,
            samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_and_mean_class_accuracy() -> Result<()> {
        let dev = Device::Cpu;
        let mut acc = ClassAccumulator::new(3, &dev)?;
        // Truth 0,0,1,1 predicted 0,1,1,1; class 2 has no samples.
        let logits = Tensor::new(&[[2f32, 1., 0.], [0., 3., 1.], [0., 1., 0.], [1., 2., 0.]], &dev)
            .op("t")?;
        let labels = Tensor::new(&[0i64, 0, 1, 1], &dev).op("t")?;
        acc.add(&logits, &labels)?;
        let labels2 = Tensor::new(&[1i64], &dev).op("t")?;
        let logits2 = Tensor::new(&[[5f32, 0., 0.]], &dev).op("t")?;
        acc.add(&logits2, &labels2)?;
        let m = acc.finish(&["a", "b", "c"])?;
        assert_eq!(m.confusion, vec![vec![1, 1, 0], vec![1, 2, 0], vec![0, 0, 0]]);
        assert!((m.acc - 3.0 / 5.0).abs() < 1e-12);
        // Recall a = 1/2, b = 2/3; c excluded.
        assert!((m.mean_class_acc - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert_eq!(m.classes_without_samples, ["c"]);
        assert_eq!(m.per_class[2].recall, None);
        Ok(())
    }

    #[test]
    fn mean_is_per_sample() -> Result<()> {
        let dev = Device::Cpu;
        let mut mean = MeanAccumulator::new(&dev)?;
        mean.add(&Tensor::new(0.5f32, &dev).op("t")?, 4)?;
        mean.add(&Tensor::new(2f32, &dev).op("t")?, 1)?;
        assert!((mean.finish()? - (0.5 * 4.0 + 2.0) / 5.0).abs() < 1e-6);
        assert!(MeanAccumulator::new(&dev)?.finish()?.is_nan());
        Ok(())
    }

    #[test]
    fn au_precision_recall_f1() -> Result<()> {
        let dev = Device::Cpu;
        let mut acc = AuAccumulator::new(3, &dev)?;
        // AU0: tp 1 fp 1 fn 0; AU1: tp 0 fp 0 fn 2; AU2: never present nor predicted.
        let scores = Tensor::new(&[[0.9f32, 0.1, 0.2], [0.6, 0.4, 0.0]], &dev).op("t")?;
        let targets = Tensor::new(&[[1f32, 0.5, 0.0], [0.2, 0.75, 0.49]], &dev).op("t")?;
        acc.add_thresholded(&scores, &targets)?;
        let m = acc.finish(&["x", "y", "z"])?;
        assert_eq!((m.per_au[0].tp, m.per_au[0].fp, m.per_au[0].fn_), (1, 1, 0));
        assert_eq!(m.per_au[0].precision, Some(0.5));
        assert_eq!(m.per_au[0].recall, Some(1.0));
        assert!((m.per_au[0].f1.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.per_au[1].precision, None);
        assert_eq!(m.per_au[1].recall, Some(0.0));
        assert_eq!(m.per_au[1].f1, Some(0.0));
        assert_eq!(m.per_au[2].f1, None);
        assert!((m.mean_f1.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.mean_precision, Some(0.5));
        Ok(())
    }
}
