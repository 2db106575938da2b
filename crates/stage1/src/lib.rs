//! AUE-CRL stage 1, EM (docs/METHOD.md section 4): the backbone and the expression branch,
//! trained with cross-entropy from ImageNet weights (`--pretrained`) or from the initialisation
//! of section 3.
//!
//! What is this stage's own: it has no parent checkpoint and makes its starting weights itself
//! (initialisation, then the torchvision import, recorded by hash), it trains the backbone,
//! `reduce_dim_em` and `pred_em` with everything in train mode, its loss has no EIAU term, and
//! its records are the EM head's classification metrics.

use aue_contract::{RecordSpec, format, meta};
use aue_model::{AuKnowledge, ForwardOptions, Outputs, Preset, Stage, loss};
use aue_train::{Origin, StageConfig, StageDef, TrainError};
use candle_core::Tensor;
use candle_nn::VarMap;

/// Stage 1 as the engine runs it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Em;

/// The stage the `aue-stage1` binary runs.
pub const STAGE: Em = Em;

impl StageDef for Em {
    fn stage(&self) -> Stage {
        Stage::Em
    }

    fn command_name(&self) -> &'static str {
        "aue-stage1"
    }

    fn about(&self) -> &'static str {
        "AUE-CRL stage 1 (EM): trains the backbone and the expression branch with cross-entropy \
         (docs/METHOD.md section 4)"
    }

    fn parent(&self) -> Option<Stage> {
        None
    }

    fn trainable(&self, key: &str) -> bool {
        // The reference's table (docs/METHOD.md section 4), as aue-model records it.
        aue_model::is_trainable(key, Stage::Em)
    }

    fn train_forward(&self, frozen_eval: bool) -> ForwardOptions {
        // Nothing is frozen in stage 1, so `frozen_eval` changes nothing but the parts whose
        // outputs are not computed.
        let opts = ForwardOptions::stage(Stage::Em);
        if frozen_eval { opts.frozen_eval() } else { opts }
    }

    fn records(&self) -> RecordSpec {
        RecordSpec::reference(Stage::Em)
    }

    fn default_eiau_weight(&self) -> Option<f64> {
        None
    }

    fn loss(
        &self,
        outputs: &Outputs,
        labels: &Tensor,
        _knowledge: &AuKnowledge,
        _eiau_weight: f64,
    ) -> aue_model::Result<Tensor> {
        loss::cross_entropy(outputs.pred_em()?, labels)
    }

    fn init_weights(&self, cfg: &StageConfig, varmap: &VarMap) -> aue_train::Result<Origin> {
        aue_model::init::init_default(varmap, cfg.seed).map_err(|source| TrainError::Model {
            op: "initialise the model",
            source: Box::new(source),
        })?;
        match &cfg.pretrained {
            Some(path) => {
                let summary = format::import_torchvision(varmap, path)?;
                tracing::info!("backbone from {} ({} tensors)", path.display(), summary.loaded);
                Ok(Origin { path: Some(path.clone()), sha256: meta::sha256_file(path)? })
            }
            None if cfg.preset == Preset::Tiny => {
                tracing::info!("the tiny preset has no ImageNet weights: training from scratch");
                Ok(Origin::default())
            }
            None => {
                tracing::warn!(
                    "no --pretrained: the backbone starts from random weights; the paper's \
                     numbers need torchvision's ImageNet weights (e.g. --pretrained \
                     resnet101-63fe2227.pth)"
                );
                Ok(Origin::default())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trains_what_the_reference_trains() {
        for key in ["backbone.layer1.0.conv1.weight", "reduce_dim_em.0.weight", "pred_em.bias"] {
            assert!(Em.trainable(key), "{key}");
        }
        for key in ["pred_au.weight", "PriorKnowledgeTable", "fc_em_fuse_3.1.weight"] {
            assert!(!Em.trainable(key), "{key}");
        }
    }
}
