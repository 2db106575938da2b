//! One training step and one evaluation pass of a stage (REFERENCE.md section 4), and the
//! per-split metric record of an epoch (section 6).
//!
//! The [`Trainer`] owns the model and the optimizer. Only the variables of the stage's trainable
//! set (aue-model's `trainable_vars`) are handed to the optimizer, so frozen parts can never be
//! updated; the forward modes are aue-model's `ForwardOptions::stage`, the reference's, quirk
//! included (frozen backbone BatchNorm in train mode in stage 2; frozen EM-reduce / AU-branch
//! BatchNorm and dropout in train mode in stage 3), or with `frozen_eval` every frozen part in
//! eval mode.

use aue_core::{NUM_AUS, NUM_BASIC, PriorLevel, prior_level};
use aue_model::{
    AueModel, ForwardOptions, OutputSet, Outputs, Stage, reference_eiau_weight, stage_loss_weighted,
};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{CandleContext, Result, model_err};
use crate::metrics::{AuAccumulator, AuMetrics, ClassAccumulator, ClassMetrics, MeanAccumulator};
use crate::optim::Sgd;

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

    /// Number of samples.
    pub fn batch_size(&self) -> Result<usize> {
        self.labels.dim(0).op("batch size")
    }
}

/// Which split a record or accumulator is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitName {
    /// Training batches (augmented, in train mode, before each step's update).
    Train,
    /// The test split, in eval mode, after the epoch.
    Test,
}

/// The outputs the evaluation of a stage computes.
fn eval_outputs(stage: Stage) -> OutputSet {
    match stage {
        Stage::Em => OutputSet { em: true, au: false, fusion: false },
        Stage::Au => OutputSet { em: true, au: true, fusion: false },
        Stage::Fuse => OutputSet::ALL,
    }
}

/// The stage's model, optimizer and forward modes.
pub struct Trainer {
    stage: Stage,
    model: AueModel,
    sgd: Sgd,
    train_opts: ForwardOptions,
    eval_opts: ForwardOptions,
    /// `[7, 17]` f32: 1 where the prior table's initial entry is 1.0 or 0.5 (the AUs whose
    /// pseudo-target is >= 0.5 for every table the clamps allow): the prior-lookup reference points.
    prior_present: Tensor,
    /// Weight of the EIAU term of the stage loss (the reference's unless changed).
    eiau_weight: f64,
}

impl Trainer {
    /// A trainer of `stage` over `model`'s trainable set, SGD with `momentum`. With
    /// `frozen_eval` the frozen parts run in eval mode instead of the reference's modes.
    pub fn new(stage: Stage, model: AueModel, momentum: f64, frozen_eval: bool) -> Result<Self> {
        let params = aue_model::trainable_vars(model.varmap(), stage);
        let mut train_opts = ForwardOptions::stage(stage);
        if frozen_eval {
            train_opts = train_opts.frozen_eval();
        }
        let eval_opts = ForwardOptions { outputs: eval_outputs(stage), ..ForwardOptions::eval() };
        let prior: Vec<f32> = (0..NUM_BASIC)
            .flat_map(|e| (0..NUM_AUS).map(move |a| (e, a)))
            .map(|(e, a)| if prior_level(e, a) == PriorLevel::Absent { 0.0 } else { 1.0 })
            .collect();
        let prior_present =
            Tensor::from_vec(prior, (NUM_BASIC, NUM_AUS), model.device()).op("prior mask")?;
        Ok(Self {
            stage,
            model,
            sgd: Sgd::new(params, momentum),
            train_opts,
            eval_opts,
            prior_present,
            eiau_weight: reference_eiau_weight(stage),
        })
    }

    /// Weights the EIAU term of the loss by `weight` instead of the reference's (stage 2: 0.5,
    /// stage 3: 0.05); 0 drops it.
    pub fn with_eiau_weight(mut self, weight: f64) -> Self {
        self.eiau_weight = weight;
        self
    }

    fn loss(&self, out: &Outputs, batch: &DeviceBatch, what: &'static str) -> Result<Tensor> {
        stage_loss_weighted(
            self.stage,
            out,
            &batch.labels,
            self.model.knowledge(),
            self.eiau_weight,
        )
        .map_err(|e| model_err(what, e))
    }

    /// The stage.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The model.
    pub fn model(&self) -> &AueModel {
        &self.model
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &Sgd {
        &self.sgd
    }

    /// The optimizer, to restore its state.
    pub fn optimizer_mut(&mut self) -> &mut Sgd {
        &mut self.sgd
    }

    /// The forward modes of a training step.
    pub fn train_options(&self) -> &ForwardOptions {
        &self.train_opts
    }

    /// One SGD step with learning rate `lr`; the batch's metrics go into `acc` (computed from
    /// the outputs before the update). Returns the loss (0-d, on the device, not synchronised).
    pub fn train_step(
        &mut self,
        batch: &DeviceBatch,
        lr: f64,
        acc: &mut SplitAccumulator,
    ) -> Result<Tensor> {
        let out = self
            .model
            .forward(&batch.images, Some(&batch.au_loc), &self.train_opts)
            .map_err(|e| model_err("training forward", e))?;
        let loss = self.loss(&out, batch, "training loss")?;
        acc.add(self, &out, batch, &loss)?;
        let grads = loss.backward().op("backward")?;
        self.sgd.step(&grads, lr)?;
        // Detached: the returned loss must not keep the step's graph (every activation) alive
        // into the next step.
        Ok(loss.detach())
    }

    /// Evaluates one batch in eval mode into `acc`; returns the loss (0-d).
    pub fn eval_step(&self, batch: &DeviceBatch, acc: &mut SplitAccumulator) -> Result<Tensor> {
        let out = self
            .model
            .forward(&batch.images, Some(&batch.au_loc), &self.eval_opts)
            .map_err(|e| model_err("evaluation forward", e))?;
        let loss = self.loss(&out, batch, "evaluation loss")?;
        acc.add(self, &out, batch, &loss)?;
        Ok(loss)
    }
}

/// Metrics of one split over an epoch, accumulated on the device.
pub struct SplitAccumulator {
    split: SplitName,
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
    /// An empty accumulator for `split` of `stage` with `num_classes` classes.
    pub fn new(
        stage: Stage,
        split: SplitName,
        num_classes: usize,
        device: &Device,
    ) -> Result<Self> {
        let au = || AuAccumulator::new(NUM_AUS, device);
        let stage2 = stage == Stage::Au;
        Ok(Self {
            split,
            loss: MeanAccumulator::new(device)?,
            class: ClassAccumulator::new(num_classes, device)?,
            has_class: false,
            em_head: (stage == Stage::Fuse)
                .then(|| ClassAccumulator::new(num_classes, device))
                .transpose()?,
            au_pseudo: stage2.then(au).transpose()?,
            au_true: stage2.then(au).transpose()?,
            au_prior: (stage2 && split == SplitName::Test).then(au).transpose()?,
            au_prior_predicted: (stage2 && split == SplitName::Test).then(au).transpose()?,
            au_all_present: (stage2 && split == SplitName::Test).then(au).transpose()?,
        })
    }

    fn add(
        &mut self,
        trainer: &Trainer,
        out: &Outputs,
        batch: &DeviceBatch,
        loss: &Tensor,
    ) -> Result<()> {
        let b = batch.batch_size()?;
        self.loss.add(loss, b)?;
        let main = if trainer.stage == Stage::Fuse { &out.pred2 } else { &out.pred_em };
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
                let target = trainer
                    .model
                    .knowledge()
                    .au_target(&batch.labels)
                    .map_err(|e| model_err("AU pseudo-targets", e))?
                    .detach();
                acc.add_thresholded(&p, &target)?;
            }
            if let (Some(acc), Some(gt)) = (self.au_true.as_mut(), &batch.au_gt) {
                // An AU is present when its ground-truth intensity is > 0 (CONTRACT "Data").
                let present = gt.gt(0.0).op("au gt > 0")?.to_dtype(DType::F32).op("au gt")?;
                let predicted = p.ge(0.5).op("p >= 0.5")?.to_dtype(DType::F32).op("p")?;
                acc.add(&predicted, &present)?;
                if let Some(prior) = self.au_prior.as_mut() {
                    let guess = trainer
                        .prior_present
                        .index_select(&batch.labels, 0)
                        .op("prior baseline")?; // [b, 17]
                    prior.add(&guess, &present)?;
                }
                if let (Some(acc), Some(logits)) = (self.au_prior_predicted.as_mut(), &out.pred_em)
                {
                    let expression = logits.argmax(candle_core::D::Minus1).op("argmax")?; // [b]
                    let guess = trainer
                        .prior_present
                        .index_select(&expression, 0)
                        .op("prior of the prediction")?; // [b, 17]
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

/// Counters of an epoch that the accumulator does not know.
#[derive(Debug, Clone, Copy)]
pub struct RecordInfo {
    /// Stage.
    pub stage: Stage,
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Batches run.
    pub steps: usize,
    /// Wall time of the pass.
    pub seconds: f64,
}

/// One line of `metrics.jsonl`: one split of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitRecord {
    /// `train` or `test`.
    pub split: SplitName,
    /// Stage number.
    pub stage: u8,
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Mean stage loss per sample.
    pub loss: f64,
    /// Samples seen.
    pub samples: u64,
    /// Batches run.
    pub steps: usize,
    /// Wall time of the pass, seconds.
    pub seconds: f64,
    /// Throughput of the pass.
    pub images_per_s: f64,
    /// Classification metrics of the stage's prediction (pred1; pred2 in stage 3). Absent for
    /// stage 2's training split, whose forward pass computes only the AU outputs.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub class: Option<ClassMetrics>,
    /// Stage 3: the EM head's pred1, beside the fused pred2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub em_head: Option<ClassMetrics>,
    /// Stage 2: AU detection against the pseudo-targets (both binarised at 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub au_pseudo: Option<AuMetrics>,
    /// Stage 2: AU detection against the ground-truth AUs (present = intensity > 0), when the
    /// dataset has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub au_true: Option<AuMetrics>,
    /// Stage 2, test: the prior row of each image's label (the AUs whose pseudo-target is >= 0.5)
    /// against the ground-truth AUs. It needs the test label (an oracle), and on labels without
    /// noise it is the ceiling of what the constant per-class pseudo-targets can teach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub au_prior_baseline: Option<AuMetrics>,
    /// Stage 2, test: the prior rows of the model's own expression prediction (pred1) against
    /// the ground-truth AUs: what an expression classifier and the table give, with no AU branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub au_prior_predicted: Option<AuMetrics>,
    /// Stage 2, test: every AU predicted present, the best rule for per-AU F1 that looks at
    /// neither the image nor the label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub au_all_present: Option<AuMetrics>,
    /// Test: whether this epoch became `best.safetensors` (test-set selection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<bool>,
}

impl SplitRecord {
    /// The test mean class accuracy that selects `best` (NaN when the split has no classes).
    pub fn mean_class_acc(&self) -> f64 {
        self.class.as_ref().map_or(f64::NAN, |c| c.mean_class_acc)
    }

    /// A one-line summary for the log.
    pub fn summary(&self) -> String {
        let mut s = format!("loss {:.4}", self.loss);
        if let Some(c) = &self.class {
            s += &format!(
                ", acc {:.2}%, mean class acc {:.2}%",
                100.0 * c.acc,
                100.0 * c.mean_class_acc
            );
            if !c.classes_without_samples.is_empty() {
                s += &format!(" (no samples: {})", c.classes_without_samples.join(", "));
            }
        }
        if let Some(c) = &self.em_head {
            s += &format!(
                ", EM head acc {:.2}% / mean class {:.2}%",
                100.0 * c.acc,
                100.0 * c.mean_class_acc
            );
        }
        let f1 = |m: &Option<AuMetrics>| m.as_ref().and_then(|m| m.mean_f1).map(|f| 100.0 * f);
        if let Some(f) = f1(&self.au_pseudo) {
            s += &format!(", AU F1 vs pseudo-targets {f:.2}%");
        }
        if let Some(f) = f1(&self.au_true) {
            s += &format!(", AU F1 vs true AUs {f:.2}%");
        }
        let refs: Vec<String> = [
            ("no image: all present", &self.au_all_present),
            ("prior of the predicted expression", &self.au_prior_predicted),
            ("prior of the label", &self.au_prior_baseline),
        ]
        .into_iter()
        .filter_map(|(name, m)| f1(m).map(|f| format!("{name} {f:.2}%")))
        .collect();
        if !refs.is_empty() {
            s += &format!(" (reference points: {})", refs.join(", "));
        }
        s
    }
}
