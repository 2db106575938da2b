//! AUE-CRL stage 2, AU (docs/METHOD.md section 4): the AU branch and the prior knowledge table,
//! trained on the frozen stage-1 backbone against the table's AU pseudo-targets.
//!
//! What is this stage's own: it starts from a stage-1 checkpoint; it trains the AU decoder, the
//! 34 crop nets, `pred_au` and `PriorKnowledgeTable`, with the reference's quirk of the frozen
//! backbone's BatchNorm in train mode (`--frozen-eval` turns it off); its loss is WMSE + EIAU +
//! TABLE (EIAU weighted 0.5 by default); it needs the 7 basic expressions, because the
//! pseudo-targets are the table's 7 rows; and its records hold AU detection, against the
//! pseudo-targets, against true AUs where the dataset has them, and three reference points.

use aue_model::{Stage, loss};
use aue_train::config::StageConfig;
use aue_train::{LossInputs, StageDef, TrainError};
use candle_core::Tensor;

/// Stage 2 as the engine runs it (what the `aue-stage2` binary runs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Au;

impl StageDef for Au {
    fn stage(&self) -> Stage {
        Stage::Au
    }

    fn loss(&self, x: &LossInputs<'_>) -> aue_model::Result<Tensor> {
        let p = x.outputs.pred_au()?;
        let target = x.knowledge.au_target(&x.batch.labels)?;
        // Summed in the reference's order: WMSE + EIAU + TABLE.
        let mut total = loss::wmse(p, &target)?;
        if x.eiau_weight != 0.0 {
            total = (total + (x.knowledge.eiau_loss(p)? * x.eiau_weight)?)?;
        }
        Ok((total + x.knowledge.table_loss()?)?)
    }

    fn check(&self, cfg: &StageConfig) -> aue_train::Result<()> {
        if cfg.dataset.num_classes() != aue_core::NUM_BASIC {
            return Err(TrainError::Config {
                key: "dataset",
                msg: format!(
                    "stage 2's AU pseudo-targets come from the 7-row prior table \
                     (docs/METHOD.md section 2), so it needs basic-expression labels; {} has {} \
                     classes",
                    cfg.dataset,
                    cfg.dataset.num_classes()
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aue_contract::DeviceBatch;
    use aue_model::Outputs;
    use aue_model::{AueModel, ModelConfig, Preset};
    use candle_core::{DType, Device};

    #[test]
    fn loss_is_the_reference_stage_loss() -> aue_model::Result<()> {
        let dev = Device::Cpu;
        let model = AueModel::new(&ModelConfig::preset(Preset::Tiny), &dev)?;
        let p = Tensor::rand(0f32, 1f32, (3, aue_core::NUM_AUS), &dev)?;
        let labels = Tensor::new(&[0i64, 3, 6], &dev)?;
        let batch = DeviceBatch {
            images: Tensor::zeros((3, 3, 32, 32), DType::F32, &dev)?,
            au_loc: Tensor::zeros((3, aue_core::NUM_AUS, 4), DType::I64, &dev)?,
            labels: labels.clone(),
            au_gt: None,
        };
        let out = Outputs { pred_au: Some(p), ..Outputs::default() };
        let knowledge = model.knowledge();
        for w in [0.0, aue_model::reference_eiau_weight(Stage::Au), 2.0] {
            let ours =
                Au.loss(&LossInputs { outputs: &out, batch: &batch, knowledge, eiau_weight: w })?;
            let reference =
                aue_model::stage_loss_weighted(Stage::Au, &out, &labels, model.knowledge(), w)?;
            let d = (ours - reference)?.abs()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            assert!(d == 0.0, "weight {w}: {d}");
        }
        Ok(())
    }
}
