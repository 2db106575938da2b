//! Classification scores from a confusion matrix (docs/METHOD.md section 6): overall accuracy, the
//! paper's "Ave. acc" (mean over classes of per-class accuracy = recall), and per-class
//! precision, recall and F1; plus the number formats of the report.
//!
//! Accuracy, recall and the mean class accuracy come from aue-train's
//! [`ClassMetrics::from_confusion`], the same definition the trainer selects `best` with: a class
//! without test samples has no recall and is left out of the mean (never counted as 0, never
//! divided by zero). Precision and F1 are added here.

use aue_contract::metrics::ClassMetrics;
use serde::{Deserialize, Serialize};

/// The cell text of a recall (per-class accuracy) for a class without samples.
pub const NO_SAMPLES: &str = "n/a (no samples)";
/// The cell text of a precision for a class never predicted.
pub const NONE_PREDICTED: &str = "n/a (never predicted)";
/// The cell text of any other undefined value.
pub const NOT_AVAILABLE: &str = "n/a";

/// One class's scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassLine {
    /// Class name (label order name).
    pub name: String,
    /// Test samples of this class (row sum).
    pub support: u64,
    /// Samples predicted as this class (column sum).
    pub predicted: u64,
    /// Samples of this class predicted as it (diagonal).
    pub correct: u64,
    /// `correct / support`: the per-class accuracy of the paper; `None` without samples.
    pub recall: Option<f64>,
    /// `correct / predicted`; `None` when the class is never predicted.
    pub precision: Option<f64>,
    /// `2 correct / (support + predicted)`; `None` when the class neither occurs nor is
    /// predicted.
    pub f1: Option<f64>,
}

/// The classification scores of one prediction head on one split and epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    /// Overall accuracy (correct / samples); `None` without samples.
    pub acc: Option<f64>,
    /// The paper's "Ave.": mean of per-class recall over the classes that have samples.
    pub mean_class_acc: Option<f64>,
    /// Number of classes the mean is over.
    pub classes_in_mean: usize,
    /// Per-class scores in label order.
    pub classes: Vec<ClassLine>,
    /// Classes without samples (left out of the mean).
    pub classes_without_samples: Vec<String>,
    /// Row = true class, column = predicted class, label order.
    pub confusion: Vec<Vec<u64>>,
}

impl ClassScores {
    /// Scores of a square confusion matrix (row = true class) with class names `labels`.
    /// The caller checks the shape (see [`check_confusion`]).
    pub fn from_confusion(confusion: &[Vec<u64>], labels: &[String]) -> Self {
        let names: Vec<&str> = labels.iter().map(String::as_str).collect();
        let m = ClassMetrics::from_confusion(confusion.to_vec(), &names);
        let k = confusion.len();
        let classes = m
            .per_class
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let predicted: u64 =
                    confusion.iter().map(|row| row.get(i).copied().unwrap_or(0)).sum();
                let precision = (predicted > 0).then(|| c.correct as f64 / predicted as f64);
                let den = c.support + predicted;
                let f1 = (den > 0).then(|| 2.0 * c.correct as f64 / den as f64);
                ClassLine {
                    name: c.name.clone(),
                    support: c.support,
                    predicted,
                    correct: c.correct,
                    recall: c.recall,
                    precision,
                    f1,
                }
            })
            .collect::<Vec<_>>();
        let finite = |v: f64| v.is_finite().then_some(v);
        Self {
            acc: finite(m.acc),
            mean_class_acc: finite(m.mean_class_acc),
            classes_in_mean: k - m.classes_without_samples.len(),
            classes,
            classes_without_samples: m.classes_without_samples,
            confusion: confusion.to_vec(),
        }
    }

    /// Macro-averaged precision over the classes where it is defined.
    pub fn mean_precision(&self) -> Option<f64> {
        mean(self.classes.iter().filter_map(|c| c.precision))
    }

    /// Macro-averaged F1 over the classes where it is defined.
    pub fn mean_f1(&self) -> Option<f64> {
        mean(self.classes.iter().filter_map(|c| c.f1))
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = values.collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Checks that `confusion` is a `k x k` matrix for `k = labels.len()`; the message says what
/// is wrong (the caller adds the file and line).
pub fn check_confusion(confusion: &[Vec<u64>], k: usize) -> std::result::Result<(), String> {
    if confusion.len() != k {
        return Err(format!("confusion matrix has {} rows for {k} classes", confusion.len()));
    }
    if let Some((i, row)) = confusion.iter().enumerate().find(|(_, r)| r.len() != k) {
        return Err(format!("confusion matrix row {i} has {} entries for {k} classes", row.len()));
    }
    Ok(())
}

/// A fraction as a percentage with the paper's precision (one decimal, no sign): `0.8125` ->
/// `81.2`.
pub fn pct(value: f64) -> String {
    format!("{:.1}", 100.0 * value)
}

/// [`pct`], or `missing` when the value is undefined.
pub fn pct_or(value: Option<f64>, missing: &str) -> String {
    value.map_or_else(|| missing.to_string(), pct)
}

/// A difference of two fractions in percentage points with its sign: `+1.2`, `-0.4`, `+0.0`.
pub fn pct_delta(after: Option<f64>, before: Option<f64>) -> String {
    match (after, before) {
        (Some(a), Some(b)) => {
            let d = 100.0 * (a - b);
            // Keep "-0.0" from appearing for tiny negative differences.
            let d = if format!("{d:.1}") == "-0.0" { 0.0 } else { d };
            format!("{d:+.1}")
        }
        _ => NOT_AVAILABLE.to_string(),
    }
}

/// The cell text of a class's recall (per-class accuracy).
pub fn recall_cell(line: &ClassLine) -> String {
    pct_or(line.recall, NO_SAMPLES)
}

/// The cell text of a class's precision.
pub fn precision_cell(line: &ClassLine) -> String {
    pct_or(line.precision, NONE_PREDICTED)
}

/// The cell text of a class's F1.
pub fn f1_cell(line: &ClassLine) -> String {
    pct_or(line.f1, NO_SAMPLES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(k: usize) -> Vec<String> {
        (0..k).map(|i| format!("c{i}")).collect()
    }

    /// A 3-class matrix worked by hand:
    ///
    /// ```text
    ///            pred c0  c1  c2   support
    /// true c0        8   1   1       10
    /// true c1        2   3   0        5
    /// true c2        0   5  15       20
    /// predicted     10   9  16       35
    /// ```
    /// recall 8/10, 3/5, 15/20 -> mean (0.8 + 0.6 + 0.75) / 3 = 0.71667; acc 26/35;
    /// precision 8/10, 3/9, 15/16; F1 16/20, 6/14, 30/36.
    #[test]
    fn hand_computed_three_classes() {
        let c = vec![vec![8, 1, 1], vec![2, 3, 0], vec![0, 5, 15]];
        let s = ClassScores::from_confusion(&c, &names(3));
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-12;
        assert!(close(s.acc, 26.0 / 35.0));
        assert!(close(s.mean_class_acc, (0.8 + 0.6 + 0.75) / 3.0));
        assert_eq!(s.classes_in_mean, 3);
        assert!(close(s.classes[1].recall, 0.6));
        assert!(close(s.classes[1].precision, 3.0 / 9.0));
        assert!(close(s.classes[1].f1, 6.0 / 14.0));
        assert!(close(s.classes[2].precision, 15.0 / 16.0));
        assert!(close(s.classes[2].f1, 30.0 / 36.0));
        assert_eq!(s.classes[2].predicted, 16);
        assert_eq!(pct_or(s.mean_class_acc, "x"), "71.7");
        assert_eq!(pct_or(s.acc, "x"), "74.3");
    }

    /// Class c1 has no samples and is never predicted; c2 has no samples but is predicted once.
    #[test]
    fn classes_without_samples_are_not_zero_and_not_in_the_mean() {
        let c = vec![vec![3, 0, 1], vec![0, 0, 0], vec![0, 0, 0]];
        let s = ClassScores::from_confusion(&c, &names(3));
        assert_eq!(s.classes[1].recall, None);
        assert_eq!(s.classes[2].recall, None);
        assert_eq!(recall_cell(&s.classes[1]), NO_SAMPLES);
        // The mean is over c0 alone: 3/4, not (0.75 + 0 + 0) / 3 and not NaN.
        assert_eq!(s.mean_class_acc, Some(0.75));
        assert_eq!(s.classes_in_mean, 1);
        assert_eq!(s.classes_without_samples, ["c1", "c2"]);
        assert_eq!(s.classes[1].precision, None);
        assert_eq!(precision_cell(&s.classes[1]), NONE_PREDICTED);
        assert_eq!(s.classes[1].f1, None);
        // c2: predicted once, never right: precision 0, F1 0.
        assert_eq!(s.classes[2].precision, Some(0.0));
        assert_eq!(s.classes[2].f1, Some(0.0));
    }

    #[test]
    fn no_samples_at_all() {
        let c = vec![vec![0, 0], vec![0, 0]];
        let s = ClassScores::from_confusion(&c, &names(2));
        assert_eq!((s.acc, s.mean_class_acc), (None, None));
        assert_eq!(pct_or(s.mean_class_acc, NO_SAMPLES), NO_SAMPLES);
    }

    #[test]
    fn formats() {
        assert_eq!(pct(0.81), "81.0");
        assert_eq!(pct(0.6789), "67.9");
        assert_eq!(pct(1.0), "100.0");
        assert_eq!(pct_delta(Some(0.5), Some(0.4)), "+10.0");
        assert_eq!(pct_delta(Some(0.4), Some(0.5)), "-10.0");
        assert_eq!(pct_delta(Some(0.4), Some(0.4000001)), "+0.0");
        assert_eq!(pct_delta(None, Some(0.4)), NOT_AVAILABLE);
        assert!(check_confusion(&[vec![1, 2], vec![3]], 2).is_err());
        assert!(check_confusion(&[vec![1, 2]], 2).is_err());
        assert!(check_confusion(&[vec![1, 2], vec![3, 4]], 2).is_ok());
    }
}
