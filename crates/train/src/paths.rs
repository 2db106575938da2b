//! The run-folder layout: every file name a stage reads or writes, in one place, so that the
//! stages (and the report) never disagree about where things are.
//!
//! ```text
//! <run-dir>/                      default: runs/<dataset>-<preset>
//!   stage1/ stage2/ stage3/       one folder per stage
//!     config.json                 the resolved configuration, written before the first step
//!     metrics.jsonl               one JSON object per epoch and split
//!     train.log                   the log, as on the terminal
//!     best.safetensors            best test mean class accuracy so far (test-set selection)
//!     last.safetensors            the latest epoch's weights
//!     last.optim.safetensors      momentum buffers and counters for `--resume`
//! ```
//! Stage N (N > 1) starts by default from `<run-dir>/stage<N-1>/best.safetensors`.

use std::path::{Path, PathBuf};

use aue_model::{Preset, Stage};

use crate::config::{Dataset, previous_stage};

/// The folder that holds all runs by default.
pub const RUNS_DIR: &str = "runs";
/// The resolved configuration of a stage run.
pub const CONFIG_FILE: &str = "config.json";
/// One JSON object per epoch and split.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The run's log file.
pub const LOG_FILE: &str = "train.log";
/// The checkpoint with the best test mean class accuracy (test-set selection, as the reference).
pub const BEST_CHECKPOINT: &str = "best.safetensors";
/// The checkpoint of the last finished epoch.
pub const LAST_CHECKPOINT: &str = "last.safetensors";
/// The optimizer state paired with [`LAST_CHECKPOINT`].
pub const LAST_OPTIMIZER: &str = "last.optim.safetensors";

/// The default experiment folder for a dataset and preset: `runs/<dataset>-<preset>`.
pub fn default_run_dir(dataset: Dataset, preset: Preset) -> PathBuf {
    Path::new(RUNS_DIR).join(format!("{}-{}", dataset.name(), preset.name()))
}

/// The files of one stage inside an experiment folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagePaths {
    dir: PathBuf,
}

impl StagePaths {
    /// The folder of `stage` inside the experiment folder `run_dir`.
    pub fn new(run_dir: &Path, stage: Stage) -> Self {
        Self { dir: run_dir.join(format!("stage{}", stage.number())) }
    }

    /// The stage folder itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }
    /// `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.dir.join(METRICS_FILE)
    }
    /// `train.log`.
    pub fn log(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }
    /// `best.safetensors`.
    pub fn best(&self) -> PathBuf {
        self.dir.join(BEST_CHECKPOINT)
    }
    /// `last.safetensors`.
    pub fn last(&self) -> PathBuf {
        self.dir.join(LAST_CHECKPOINT)
    }
    /// `last.optim.safetensors`.
    pub fn last_optimizer(&self) -> PathBuf {
        self.dir.join(LAST_OPTIMIZER)
    }
}

/// Where stage `stage` looks for its starting checkpoint when `--resume-model` is not given:
/// the previous stage's best checkpoint in the same experiment folder (`None` for stage 1).
pub fn default_resume_model(run_dir: &Path, stage: Stage) -> Option<PathBuf> {
    previous_stage(stage).map(|prev| StagePaths::new(run_dir, prev).best())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let run = default_run_dir(Dataset::Rafdb, Preset::Tiny);
        assert_eq!(run, Path::new("runs/rafdb-tiny"));
        let s2 = StagePaths::new(&run, Stage::Au);
        assert_eq!(s2.best(), Path::new("runs/rafdb-tiny/stage2/best.safetensors"));
        assert_eq!(s2.last_optimizer(), Path::new("runs/rafdb-tiny/stage2/last.optim.safetensors"));
        assert_eq!(
            default_resume_model(&run, Stage::Fuse).as_deref(),
            Some(Path::new("runs/rafdb-tiny/stage2/best.safetensors"))
        );
        assert_eq!(default_resume_model(&run, Stage::Em), None);
    }
}
