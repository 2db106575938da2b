//! The step learning-rate schedule of docs/METHOD.md section 6: lr 0.01, x0.1 after epoch 15 and
//! again after epoch 30 (PyTorch `MultiStepLR(milestones=[15, 30], gamma=0.1)` stepped per epoch).

use serde::{Deserialize, Serialize};

/// A multi-step schedule: `base * gamma^k` where `k` counts the milestones already passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSchedule {
    /// Learning rate of the first epochs.
    pub base_lr: f64,
    /// Epoch counts after which the rate is multiplied by `gamma` (ascending).
    pub milestones: Vec<usize>,
    /// The factor applied at each milestone.
    pub gamma: f64,
}

impl StepSchedule {
    /// The learning rate of the 0-based epoch `epoch`.
    ///
    /// Milestone `m` means "after `m` epochs": epochs `0..m` use the rate before it, epoch `m`
    /// (the `m + 1`-th) the rate after it. With milestones 15 and 30, 1-based epochs 1-15 run at
    /// 0.01, 16-30 at 0.001 and 31-40 at 0.0001.
    pub fn lr(&self, epoch: usize) -> f64 {
        let passed = self.milestones.iter().filter(|&&m| epoch >= m).count();
        // powi keeps the reference's float arithmetic close: 0.01 * 0.1^2 as PyTorch computes it
        // (PyTorch multiplies the running value; both give 1e-4 up to the last bit or so).
        self.base_lr * self.gamma.powi(passed as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_schedule() {
        let s = StepSchedule { base_lr: 0.01, milestones: vec![15, 30], gamma: 0.1 };
        for e in 0..15 {
            assert_eq!(s.lr(e), 0.01, "epoch {e}");
        }
        for e in 15..30 {
            assert!((s.lr(e) - 0.001).abs() < 1e-15, "epoch {e}");
        }
        for e in 30..40 {
            assert!((s.lr(e) - 0.0001).abs() < 1e-16, "epoch {e}");
        }
    }

    #[test]
    fn no_milestones_is_constant() {
        let s = StepSchedule { base_lr: 0.05, milestones: vec![], gamma: 0.1 };
        assert_eq!(s.lr(0), 0.05);
        assert_eq!(s.lr(100), 0.05);
    }
}
