//! AUE-CRL stage 3, Fuse (docs/METHOD.md section 4): the fusion branch and the EM head, trained
//! on everything else frozen, from a stage-2 checkpoint.
//!
//! What is this stage's own: it starts from a stage-2 checkpoint; it trains the fusion layers
//! and `pred_em`, with the reference's quirk of the frozen EM reduce and AU branch in train mode
//! (`--frozen-eval` turns it off); its loss is CE(pred1) + CE(pred2) + EIAU on the AU
//! probabilities (weight 0.05 by default); and its records are the fused prediction's metrics
//! with the EM head's beside them.

use aue_model::{Stage, loss};
use aue_train::{LossInputs, StageDef};
use candle_core::Tensor;

/// Stage 3 as the engine runs it (what the `aue-stage3` binary runs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Fuse;

impl StageDef for Fuse {
    fn stage(&self) -> Stage {
        Stage::Fuse
    }

    fn loss(&self, x: &LossInputs<'_>) -> aue_model::Result<Tensor> {
        let (out, labels) = (x.outputs, &x.batch.labels);
        let mut total = (loss::cross_entropy(out.pred_em()?, labels)?
            + loss::cross_entropy(out.pred2()?, labels)?)?;
        if x.eiau_weight != 0.0 {
            // Quirk: on the softmax AU probabilities, every value < 0.5, so the term is 0.
            total = (total + (x.knowledge.eiau_loss(out.au_prob()?)? * x.eiau_weight)?)?;
        }
        Ok(total)
    }
}
