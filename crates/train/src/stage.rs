//! What makes a stage a stage, as the engine sees it: the [`StageDef`] trait. The engine runs
//! any implementation the same way (flags, run folder, epochs, evaluation, selection, commits);
//! the three reference stages implement it in their own crates (`crates/stage1`, `stage2`,
//! `stage3`), and a new stage (say, an AU trainer on real AU labels) is a new crate with one
//! more implementation, not an edit of the engine. docs/STAGES.md shows one.

use std::path::PathBuf;

use aue_contract::DeviceBatch;
use aue_contract::RecordSpec;
use aue_model::{AuKnowledge, ForwardOptions, Outputs, Stage};
use candle_core::Tensor;
use candle_nn::VarMap;

use crate::config::StageConfig;
use crate::error::Result;

/// Where a stage's starting weights came from, for the log and the checkpoint metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    /// The file (pretrained weights or a parent checkpoint), if any.
    pub path: Option<PathBuf>,
    /// Its sha256 (empty when the weights were initialised here).
    pub sha256: String,
}

/// What a stage's loss is computed from.
#[derive(Debug, Clone, Copy)]
pub struct LossInputs<'a> {
    /// The model's outputs for the batch.
    pub outputs: &'a Outputs,
    /// The batch: its labels, and its true AU intensities where the dataset has them
    /// (`au_gt`), for a stage that learns from annotated AUs.
    pub batch: &'a DeviceBatch,
    /// The model's AU knowledge (prior table, pseudo-targets, EIAU pairs).
    pub knowledge: &'a AuKnowledge,
    /// The weight of the EIAU term in force (`--eiau-weight`, or the stage's default; 0 drops
    /// it).
    pub eiau_weight: f64,
}

/// One training stage of the pipeline.
pub trait StageDef: Sync {
    /// The pipeline position this stage fills: written into its checkpoints and records, and
    /// what the next stage checks (`2` for any AU trainer that hands an AU branch to stage 3).
    fn stage(&self) -> Stage;

    /// The stage whose checkpoint this one starts from (`--resume-model`, by default the
    /// previous stage folder's `best.safetensors`); `None` when it starts from weights it
    /// makes itself ([`StageDef::init_weights`]). By default the stage before
    /// [`StageDef::stage`] in the pipeline (none for stage 1).
    fn parent(&self) -> Option<Stage> {
        self.stage().number().checked_sub(1).and_then(Stage::from_number)
    }

    /// Whether this stage trains the variable `key` (a reference key or a group variable's
    /// key); BatchNorm buffers are never trained whatever this says. By default the reference's
    /// table for [`StageDef::stage`] (docs/METHOD.md section 4), as aue-model records it.
    fn trainable(&self, key: &str) -> bool {
        aue_model::is_trainable(key, self.stage())
    }

    /// The forward modes of a training step; with `frozen_eval` every frozen part in eval mode.
    /// By default the reference's modes for [`StageDef::stage`].
    fn train_forward(&self, frozen_eval: bool) -> ForwardOptions {
        let opts = ForwardOptions::stage(self.stage());
        if frozen_eval { opts.frozen_eval() } else { opts }
    }

    /// What the stage's records (and its evaluation pass) hold. By default the reference's
    /// records for [`StageDef::stage`].
    fn records(&self) -> RecordSpec {
        RecordSpec::reference(self.stage())
    }

    /// The default weight of the loss's EIAU term; `None` when the loss has none (then
    /// `--eiau-weight` is refused). By default the reference's weight for [`StageDef::stage`]
    /// (0.5 in stage 2, 0.05 in stage 3; stage 1's loss has no such term).
    fn default_eiau_weight(&self) -> Option<f64> {
        match self.stage() {
            Stage::Em => None,
            stage => Some(aue_model::reference_eiau_weight(stage)),
        }
    }

    /// The loss of a batch (a 0-d tensor), from the outputs of [`StageDef::train_forward`] or
    /// of the evaluation pass.
    fn loss(&self, x: &LossInputs<'_>) -> aue_model::Result<Tensor>;

    /// Checks of the resolved configuration that only this stage makes.
    fn check(&self, _cfg: &StageConfig) -> Result<()> {
        Ok(())
    }

    /// Fills `varmap` with the starting weights of a stage without a parent (stage 1:
    /// initialisation, then `--pretrained`), after [`StageDef::check`] passed.
    fn init_weights(&self, _cfg: &StageConfig, _varmap: &VarMap) -> Result<Origin> {
        Err(crate::error::TrainError::Config {
            key: "resume_model",
            msg: format!("stage {} needs a starting checkpoint", self.stage().number()),
        })
    }
}
