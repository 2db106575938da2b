//! Evaluation, the one pass that turns model outputs into a [`SplitRecord`]: the training loop
//! (train and test splits), the report's `--checkpoint` evaluation and the benchmark all call it,
//! so every number is computed the same way (docs/METHOD.md section 6: eval mode, every test
//! sample).
//!
//! What a stage's records hold is a [`RecordSpec`]: which head is the stage's prediction, whether
//! the EM head is recorded beside it, and whether AU metrics are kept (against the
//! pseudo-targets, against true AUs where the dataset has them, and three reference points).

use aue_core::{NUM_AUS, NUM_BASIC, PriorLevel, prior_level};
use aue_model::{AuKnowledge, EvalForward, ForwardOptions, OutputSet, Outputs, Stage};
use candle_core::{DType, Device, Tensor};

use crate::error::{CandleContext, Result};
use crate::metrics::{AuAccumulator, AuMetrics, ClassAccumulator, MeanAccumulator};
use crate::records::{RecordInfo, SplitName, SplitRecord};

/// Which logits are a stage's expression prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// `pred_em` (pred1): the EM head.
    Em,
    /// `pred2`: the fusion head.
    Fused,
}

/// What the records of a stage hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSpec {
    /// The stage number written into every record.
    pub stage: Stage,
    /// The stage's expression prediction.
    pub prediction: Prediction,
    /// Also record the EM head when the prediction is the fused one.
    pub em_head: bool,
    /// Keep AU metrics (pseudo-targets, true AUs, reference points).
    pub au: bool,
}

impl RecordSpec {
    /// The records of the reference's stages: stage 1 its EM head; stage 2 its EM head and AU
    /// detection; stage 3 the fused prediction with the EM head beside it.
    pub fn reference(stage: Stage) -> Self {
        match stage {
            Stage::Em => Self { stage, prediction: Prediction::Em, em_head: false, au: false },
            Stage::Au => Self { stage, prediction: Prediction::Em, em_head: false, au: true },
            Stage::Fuse => Self { stage, prediction: Prediction::Fused, em_head: true, au: false },
        }
    }

    /// The outputs an evaluation pass must compute for these records.
    pub fn outputs(&self) -> OutputSet {
        match self.prediction {
            Prediction::Fused => OutputSet::ALL,
            Prediction::Em => OutputSet { em: true, au: self.au, fusion: false },
        }
    }

    /// Eval-mode forward options computing [`Self::outputs`].
    pub fn eval_options(&self) -> ForwardOptions {
        ForwardOptions { outputs: self.outputs(), ..ForwardOptions::eval() }
    }
}

/// A batch on the training device.
pub struct DeviceBatch {
    /// f32 `[B, 3, S, S]`.
    pub images: Tensor,
    /// i64 `[B, 17, 4]`, kept on the CPU: the model reads the crop centres on the host to build
    /// its gather indices, so a copy on a GPU would only add a device-to-host round trip.
    pub au_loc: Tensor,
    /// i64 `[B]`.
    pub labels: Tensor,
    /// f32 `[B, 17]`, ground-truth AU intensities when the dataset has them.
    pub au_gt: Option<Tensor>,
}

impl std::fmt::Debug for DeviceBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBatch").field("images", &self.images.dims()).finish_non_exhaustive()
    }
}

impl DeviceBatch {
    /// Moves a loader batch to `device`.
    pub fn new(batch: &aue_data::Batch, device: &Device) -> Result<Self> {
        let to = |t: &Tensor| t.to_device(device).op("batch to device");
        Ok(Self {
            images: to(&batch.images)?,
            au_loc: batch.au_loc.clone(),
            labels: to(&batch.labels)?,
            au_gt: batch.au_gt.as_ref().map(to).transpose()?,
        })
    }

    /// This batch with its images in `dtype` (a model's float type: the loader's are f32).
    pub fn images_as(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            images: self.images.to_dtype(dtype).op("images to the model's dtype")?,
            au_loc: self.au_loc.clone(),
            labels: self.labels.clone(),
            au_gt: self.au_gt.clone(),
        })
    }

    /// Number of samples.
    pub fn batch_size(&self) -> Result<usize> {
        self.labels.dim(0).op("batch size")
    }
}

/// Metrics of one split over an epoch, accumulated on the device.
pub struct SplitAccumulator {
    spec: RecordSpec,
    split: SplitName,
    /// `[7, 17]` f32: 1 where the prior table's initial entry is 1.0 or 0.5 (the AUs whose
    /// pseudo-target is >= 0.5 for every table the clamps allow): the prior-lookup reference points.
    prior_present: Option<Tensor>,
    loss: MeanAccumulator,
    /// The stage's prediction: pred1 in stages 1 and 2, pred2 (fusion) in stage 3.
    class: ClassAccumulator,
    has_class: bool,
    /// Stage 3: the EM head's pred1 beside the fused prediction.
    em_head: Option<ClassAccumulator>,
    au_pseudo: Option<AuAccumulator>,
    au_true: Option<AuAccumulator>,
    /// Reference points against the true AUs (test split of stage 2): the prior row of the
    /// label, the prior row of the model's own expression prediction, every AU present.
    au_prior: Option<AuAccumulator>,
    au_prior_predicted: Option<AuAccumulator>,
    au_all_present: Option<AuAccumulator>,
}

impl SplitAccumulator {
    /// An empty accumulator for `split` of a stage whose records are `spec`, with
    /// `num_classes` classes.
    pub fn new(
        spec: RecordSpec,
        split: SplitName,
        num_classes: usize,
        device: &Device,
    ) -> Result<Self> {
        let au = || AuAccumulator::new(NUM_AUS, device);
        let test_au = spec.au && split == SplitName::Test;
        let prior_present = if test_au {
            let prior: Vec<f32> = (0..NUM_BASIC)
                .flat_map(|e| (0..NUM_AUS).map(move |a| (e, a)))
                .map(|(e, a)| if prior_level(e, a) == PriorLevel::Absent { 0.0 } else { 1.0 })
                .collect();
            Some(Tensor::from_vec(prior, (NUM_BASIC, NUM_AUS), device).op("prior mask")?)
        } else {
            None
        };
        Ok(Self {
            spec,
            split,
            prior_present,
            loss: MeanAccumulator::new(device)?,
            class: ClassAccumulator::new(num_classes, device)?,
            has_class: false,
            em_head: (spec.em_head && spec.prediction == Prediction::Fused)
                .then(|| ClassAccumulator::new(num_classes, device))
                .transpose()?,
            au_pseudo: spec.au.then(au).transpose()?,
            au_true: spec.au.then(au).transpose()?,
            au_prior: test_au.then(au).transpose()?,
            au_prior_predicted: test_au.then(au).transpose()?,
            au_all_present: test_au.then(au).transpose()?,
        })
    }

    /// Adds one batch: its outputs, and its loss (0-d, the batch mean). `knowledge` gives the
    /// AU pseudo-targets.
    pub fn add(
        &mut self,
        knowledge: &AuKnowledge,
        out: &Outputs,
        batch: &DeviceBatch,
        loss: &Tensor,
    ) -> Result<()> {
        let b = batch.batch_size()?;
        self.loss.add(loss, b)?;
        let main = match self.spec.prediction {
            Prediction::Fused => &out.pred2,
            Prediction::Em => &out.pred_em,
        };
        if let Some(logits) = main {
            self.class.add(&logits.detach(), &batch.labels)?;
            self.has_class = true;
        }
        if let (Some(acc), Some(logits)) = (self.em_head.as_mut(), &out.pred_em) {
            acc.add(&logits.detach(), &batch.labels)?;
        }
        if let Some(p) = &out.pred_au {
            let p = p.detach();
            if let Some(acc) = self.au_pseudo.as_mut() {
                let target = knowledge
                    .au_target(&batch.labels)
                    .map_err(aue_core::Context::op("AU pseudo-targets"))?
                    .detach();
                acc.add_thresholded(&p, &target)?;
            }
            if let (Some(acc), Some(gt)) = (self.au_true.as_mut(), &batch.au_gt) {
                // An AU is present when its ground-truth intensity is > 0 (docs/METHOD.md
                // section 5, the synthetic set's AU files).
                let present = gt.gt(0.0).op("au gt > 0")?.to_dtype(DType::F32).op("au gt")?;
                let predicted = p.ge(0.5).op("p >= 0.5")?.to_dtype(DType::F32).op("p")?;
                acc.add(&predicted, &present)?;
                if let (Some(prior), Some(table)) = (self.au_prior.as_mut(), &self.prior_present) {
                    let guess = table.index_select(&batch.labels, 0).op("prior baseline")?; // [b, 17]
                    prior.add(&guess, &present)?;
                }
                if let (Some(acc), Some(logits), Some(table)) =
                    (self.au_prior_predicted.as_mut(), &out.pred_em, &self.prior_present)
                {
                    let expression = logits.argmax(candle_core::D::Minus1).op("argmax")?; // [b]
                    let guess = table.index_select(&expression, 0).op("prior of the prediction")?; // [b, 17]
                    acc.add(&guess, &present)?;
                }
                if let Some(acc) = self.au_all_present.as_mut() {
                    acc.add(&present.ones_like().op("all present")?, &present)?;
                }
            }
        }
        Ok(())
    }

    /// Samples seen.
    pub fn samples(&self) -> usize {
        self.loss.samples()
    }

    /// Brings everything to the host as an epoch record.
    pub fn finish(&self, labels: &[&str], info: RecordInfo) -> Result<SplitRecord> {
        let au = |a: &Option<AuAccumulator>| -> Result<Option<AuMetrics>> {
            a.as_ref()
                .filter(|a| a.samples() > 0)
                .map(|a| a.finish(&aue_core::AU_NAMES))
                .transpose()
        };
        let samples = self.samples();
        Ok(SplitRecord {
            split: self.split,
            stage: info.stage.number(),
            epoch: info.epoch,
            lr: info.lr,
            loss: self.loss.finish()?,
            samples: samples as u64,
            steps: info.steps,
            seconds: info.seconds,
            images_per_s: if info.seconds > 0.0 { samples as f64 / info.seconds } else { 0.0 },
            class: self.has_class.then(|| self.class.finish(labels)).transpose()?,
            em_head: self.em_head.as_ref().map(|a| a.finish(labels)).transpose()?,
            au_pseudo: au(&self.au_pseudo)?,
            au_true: au(&self.au_true)?,
            au_prior_baseline: au(&self.au_prior)?,
            au_prior_predicted: au(&self.au_prior_predicted)?,
            au_all_present: au(&self.au_all_present)?,
            best: None,
        })
    }
}
/// Evaluates `model` on `batches` in one pass (eval-mode forward of the outputs `spec` needs,
/// `loss` per batch) and returns the split's record. `model` is the training model (the training
/// loop) or its fused [`aue_model::InferenceModel`] (the report's `--checkpoint` evaluation).
/// `progress` is called with the number of batches done.
pub fn evaluate<I>(
    model: &dyn EvalForward,
    spec: RecordSpec,
    loss: &dyn Fn(&Outputs, &DeviceBatch) -> aue_model::Result<Tensor>,
    batches: I,
    labels: &[&str],
    info: RecordInfo,
    progress: &mut dyn FnMut(usize),
) -> Result<SplitRecord>
where
    I: IntoIterator<Item = Result<DeviceBatch>>,
{
    let t0 = std::time::Instant::now();
    let mut acc = SplitAccumulator::new(spec, SplitName::Test, labels.len(), model.device())?;
    let mut steps = 0;
    for batch in batches {
        let batch = batch?;
        let out = model
            .eval_forward(&batch.images, Some(&batch.au_loc), spec.outputs())
            .map_err(aue_core::Context::op("evaluation forward"))?;
        let value = loss(&out, &batch).map_err(aue_core::Context::op("evaluation loss"))?;
        acc.add(model.knowledge(), &out, &batch, &value)?;
        steps += 1;
        progress(steps);
    }
    acc.finish(labels, RecordInfo { steps, seconds: t0.elapsed().as_secs_f64(), ..info })
}
