//! AUE-CRL stage 1, EM (docs/METHOD.md section 4): the backbone and the expression branch,
//! trained with cross-entropy from ImageNet weights (`--pretrained`) or from the initialisation
//! of section 3.
//!
//! What is this stage's own: it has no parent checkpoint and makes its starting weights itself
//! (initialisation, then the torchvision import, recorded by hash), it trains the backbone,
//! `reduce_dim_em` and `pred_em` with everything in train mode, its loss has no EIAU term, and
//! its records are the EM head's classification metrics.

use aue_contract::{format, meta};
use aue_model::{Preset, Stage, loss};
use aue_train::{LossInputs, Origin, StageConfig, StageDef};
use candle_core::Tensor;
use candle_nn::VarMap;

/// Stage 1 as the engine runs it (what the `aue-stage1` binary runs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Em;

impl StageDef for Em {
    fn stage(&self) -> Stage {
        Stage::Em
    }

    fn loss(&self, x: &LossInputs<'_>) -> aue_model::Result<Tensor> {
        loss::cross_entropy(x.outputs.pred_em()?, &x.batch.labels)
    }

    fn init_weights(&self, cfg: &StageConfig, varmap: &VarMap) -> aue_train::Result<Origin> {
        aue_model::init::init_default(varmap, cfg.seed)
            .map_err(aue_core::Context::op("initialise the model"))?;
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
