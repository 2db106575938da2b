//! The run-folder layout: every file name a stage reads or writes, in one place, so that the
//! stages, the report and the predictor never disagree about where things are.
//!
//! ```text
//! <run-dir>/                          default: checkpoints/<dataset>-<preset>
//!   stage1/ stage2/ stage3/           one folder per stage
//!     config.json                     the resolved configuration, written before the first step
//!     metrics.jsonl                   one JSON object per epoch and split
//!     train.log                       the log, as on the terminal
//!     commit.json                     the commit point: the last finished epoch and its files
//!     epoch-0007.safetensors          a model of an epoch that commit.json names
//!     epoch-0007.optim.safetensors    the optimizer state of the last epoch
//!     best.safetensors                hard link to commit.json's best model
//!     last.safetensors                hard link to commit.json's last model
//!     replaced/                       an earlier run moved aside by --overwrite, removed once
//!                                     the new run has committed its first epoch
//! ```
//! Stage N (N > 1) starts by default from `<run-dir>/stage<N-1>/best.safetensors`.
//! docs/FILES.md tells the whole contract, and what survives a kill at any instant.

use std::path::{Path, PathBuf};

use aue_data::DatasetKind;
use aue_model::{Preset, Stage};

/// The folder that holds all runs by default.
pub const RUNS_DIR: &str = "checkpoints";
/// The resolved configuration of a stage run.
pub const CONFIG_FILE: &str = "config.json";
/// One JSON object per epoch and split.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The run's log file.
pub const LOG_FILE: &str = "train.log";
/// The commit point of the run.
pub const COMMIT_FILE: &str = "commit.json";
/// The best checkpoint (by the run's selection rule; the reference's is test-set selection).
pub const BEST_CHECKPOINT: &str = "best.safetensors";
/// The checkpoint of the last committed epoch.
pub const LAST_CHECKPOINT: &str = "last.safetensors";
/// Where `--overwrite` keeps the run it replaces until the new run has committed an epoch.
pub const REPLACED_DIR: &str = "replaced";

/// The default experiment folder for a dataset and preset: `checkpoints/<dataset>-<preset>`.
pub fn default_run_dir(dataset: DatasetKind, preset: Preset) -> PathBuf {
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

    /// A stage folder given directly.
    pub fn at(dir: &Path) -> Self {
        Self { dir: dir.to_owned() }
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
    /// `commit.json`.
    pub fn commit(&self) -> PathBuf {
        self.dir.join(COMMIT_FILE)
    }
    /// `best.safetensors`.
    pub fn best(&self) -> PathBuf {
        self.dir.join(BEST_CHECKPOINT)
    }
    /// `last.safetensors`.
    pub fn last(&self) -> PathBuf {
        self.dir.join(LAST_CHECKPOINT)
    }
    /// `epoch-NNNN.safetensors`: the model of 1-based `epoch`.
    pub fn epoch_model(&self, epoch: usize) -> PathBuf {
        self.dir.join(format!("epoch-{epoch:04}.safetensors"))
    }
    /// `epoch-NNNN.optim.safetensors`: the optimizer state after 1-based `epoch`.
    pub fn epoch_optimizer(&self, epoch: usize) -> PathBuf {
        self.dir.join(format!("epoch-{epoch:04}.optim.safetensors"))
    }
    /// `replaced/`.
    pub fn replaced(&self) -> PathBuf {
        self.dir.join(REPLACED_DIR)
    }

    /// The files that make a run (what `--overwrite` moves aside), those that exist.
    pub fn run_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> =
            [self.config(), self.metrics(), self.log(), self.commit(), self.best(), self.last()]
                .into_iter()
                .filter(|p| p.exists())
                .collect();
        files.extend(self.epoch_files());
        files
    }

    /// Every `epoch-NNNN[.optim].safetensors` in the folder.
    pub fn epoch_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with("epoch-") && n.ends_with(".safetensors") && !n.contains(".tmp.")
                })
            })
            .collect();
        out.sort();
        out
    }
}

/// The stage whose checkpoint the reference's `stage` starts from (none for stage 1).
pub fn previous_stage(stage: Stage) -> Option<Stage> {
    match stage {
        Stage::Em => None,
        Stage::Au => Some(Stage::Em),
        Stage::Fuse => Some(Stage::Au),
    }
}

/// Where `stage` looks for its starting checkpoint when none is given: the previous stage's
/// best checkpoint in the same experiment folder (`None` for stage 1).
pub fn default_parent(run_dir: &Path, stage: Stage) -> Option<PathBuf> {
    previous_stage(stage).map(|prev| StagePaths::new(run_dir, prev).best())
}

/// "stage 2 (au)": how messages name a stage.
pub fn stage_label(stage: Stage) -> String {
    format!("stage {} ({})", stage.number(), stage.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let run = default_run_dir(DatasetKind::Rafdb, Preset::Tiny);
        assert_eq!(run, Path::new("checkpoints/rafdb-tiny"));
        let s2 = StagePaths::new(&run, Stage::Au);
        assert_eq!(s2.best(), Path::new("checkpoints/rafdb-tiny/stage2/best.safetensors"));
        assert_eq!(
            s2.epoch_optimizer(7),
            Path::new("checkpoints/rafdb-tiny/stage2/epoch-0007.optim.safetensors")
        );
        assert_eq!(
            default_parent(&run, Stage::Fuse).as_deref(),
            Some(Path::new("checkpoints/rafdb-tiny/stage2/best.safetensors"))
        );
        assert_eq!(default_parent(&run, Stage::Em), None);
    }
}
