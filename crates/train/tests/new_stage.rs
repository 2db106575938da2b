//! docs/STAGES.md's example of a new stage, compiled and run: stage 2 trained on annotated AUs
//! instead of the prior table's pseudo-targets is one `StageDef` implementation outside the
//! engine, and the engine's configuration accepts it as a stage in position 2.

use aue_contract::DeviceBatch;
use aue_model::{AueModel, ModelConfig, Outputs, Preset, Stage, loss};
use aue_train::{LossInputs, StageArgs, StageConfig, StageDef};
use candle_core::{DType, Device, Tensor};

/// Stage 2 trained on annotated AUs: same parts, same modes, another loss.
struct RealAus;

impl StageDef for RealAus {
    fn stage(&self) -> Stage {
        Stage::Au
    }
    fn default_eiau_weight(&self) -> Option<f64> {
        None
    }
    fn loss(&self, x: &LossInputs<'_>) -> aue_model::Result<Tensor> {
        let target = x.batch.au_gt.as_ref().ok_or_else(|| {
            aue_model::ModelError::Config("this stage needs a dataset with AU labels".into())
        })?;
        loss::wmse(x.outputs.pred_au()?, target)
    }
}

fn batch(au_gt: Option<Tensor>) -> candle_core::Result<DeviceBatch> {
    let dev = Device::Cpu;
    Ok(DeviceBatch {
        images: Tensor::zeros((2, 3, 32, 32), DType::F32, &dev)?,
        au_loc: Tensor::zeros((2, aue_core::NUM_AUS, 4), DType::I64, &dev)?,
        labels: Tensor::new(&[0i64, 3], &dev)?,
        au_gt,
    })
}

#[test]
fn a_stage_outside_the_engine_trains_on_annotated_aus() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let model = AueModel::new(&ModelConfig::preset(Preset::Tiny), &dev)?;
    let knowledge = model.knowledge();
    let p = Tensor::new(&[[0.25f32; aue_core::NUM_AUS], [0.75; aue_core::NUM_AUS]], &dev)?;
    let outputs = Outputs { pred_au: Some(p.clone()), ..Outputs::default() };

    // Its loss reads the batch's true AUs: zero where the outputs equal them.
    let exact = batch(Some(p.clone()))?;
    let x = LossInputs { outputs: &outputs, batch: &exact, knowledge, eiau_weight: 0.0 };
    assert_eq!(RealAus.loss(&x)?.to_scalar::<f32>()?, 0.0);
    let off = batch(Some((p + 0.5)?))?;
    let x = LossInputs { outputs: &outputs, batch: &off, knowledge, eiau_weight: 0.0 };
    assert!(RealAus.loss(&x)?.to_scalar::<f32>()? > 0.2);
    // A dataset without AU labels is an error, not a silent zero.
    let none = batch(None)?;
    let x = LossInputs { outputs: &outputs, batch: &none, knowledge, eiau_weight: 0.0 };
    assert!(RealAus.loss(&x).is_err());

    // The defaults give it position 2's parent and trainable parts, and the engine's
    // configuration takes it: no EIAU term, so `--eiau-weight` is refused.
    assert_eq!(RealAus.parent(), Some(Stage::Em));
    assert!(RealAus.trainable("PriorKnowledgeTable") && !RealAus.trainable("pred_em.weight"));
    let tmp = tempfile::tempdir()?;
    let args = |eiau_weight| StageArgs {
        data_root: Some(tmp.path().to_owned()),
        preset: Some(Preset::Tiny),
        eiau_weight,
        ..Default::default()
    };
    let err = StageConfig::resolve(&RealAus, args(Some(0.5))).err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("eiau")), "--eiau-weight must be refused");
    Ok(())
}
