//! One training step of a stage (docs/METHOD.md section 4) and its evaluation pass.
//!
//! The [`Trainer`] owns the model and the optimizer. Only the variables the stage trains
//! ([`StageDef::trainable`]) are handed to the optimizer, so frozen parts can never be updated;
//! the forward modes are the stage's ([`StageDef::train_forward`]): the reference's, quirk
//! included, or with `frozen_eval` every frozen part in eval mode.

use aue_contract::{DeviceBatch, RecordInfo, SplitAccumulator, SplitRecord, evaluate};
use aue_model::{AueModel, ForwardOptions};
use candle_core::{Tensor, Var};

use crate::error::{CandleContext, Result, TrainError, model_err};
use crate::optim::Sgd;
use crate::stage::{LossInputs, StageDef};

/// The float variables `def` trains, sorted by key: what its optimizer updates.
pub fn trainable_vars(model: &AueModel, def: &dyn StageDef) -> Vec<(String, Var)> {
    let data = model.varmap().data().lock().unwrap_or_else(|e| e.into_inner());
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(k, v)| v.dtype().is_float() && !aue_model::is_bn_buffer(k) && def.trainable(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// A stage's model, optimizer and forward modes.
pub struct Trainer<'a> {
    def: &'a dyn StageDef,
    model: AueModel,
    sgd: Sgd,
    train_opts: ForwardOptions,
    /// Weight of the EIAU term of the stage loss (the stage's default unless changed).
    eiau_weight: f64,
}

impl<'a> Trainer<'a> {
    /// A trainer of `def` over `model`, SGD with `momentum`. With `frozen_eval` the frozen
    /// parts run in eval mode instead of the reference's modes.
    pub fn new(def: &'a dyn StageDef, model: AueModel, momentum: f64, frozen_eval: bool) -> Self {
        let params = trainable_vars(&model, def);
        Self {
            def,
            train_opts: def.train_forward(frozen_eval),
            sgd: Sgd::new(params, momentum),
            model,
            eiau_weight: def.default_eiau_weight().unwrap_or(0.0),
        }
    }

    /// Weights the EIAU term of the loss by `weight` instead of the stage's default; 0 drops it.
    pub fn with_eiau_weight(mut self, weight: f64) -> Self {
        self.eiau_weight = weight;
        self
    }

    fn loss(&self, out: &aue_model::Outputs, batch: &DeviceBatch) -> aue_model::Result<Tensor> {
        let knowledge = self.model.knowledge();
        self.def.loss(&LossInputs { outputs: out, batch, knowledge, eiau_weight: self.eiau_weight })
    }

    /// The stage.
    pub fn def(&self) -> &dyn StageDef {
        self.def
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
    /// the outputs before the update). The images are taken in the model's dtype. Returns the
    /// loss (0-d, in the model's dtype, on the device, not synchronised).
    pub fn train_step(
        &mut self,
        batch: &DeviceBatch,
        lr: f64,
        acc: &mut SplitAccumulator,
    ) -> Result<Tensor> {
        // Forward, backward and update on a thread of the pool: see `aue_model::in_pool`.
        aue_model::in_pool(|| self.train_step_here(batch, lr, acc))
    }

    fn train_step_here(
        &mut self,
        batch: &DeviceBatch,
        lr: f64,
        acc: &mut SplitAccumulator,
    ) -> Result<Tensor> {
        let batch = &batch.images_as(self.model.dtype())?;
        let out = self
            .model
            .forward(&batch.images, Some(&batch.au_loc), &self.train_opts)
            .map_err(|e| model_err("training forward", e))?;
        let loss = self.loss(&out, batch).map_err(|e| model_err("training loss", e))?;
        acc.add(self.model.knowledge(), &out, batch, &loss)?;
        let grads = loss.backward().op("backward")?;
        self.sgd.step(&grads, lr)?;
        // Detached: the returned loss must not keep the step's graph (every activation) alive
        // into the next step.
        Ok(loss.detach())
    }

    /// Evaluates `batches` in eval mode (the one evaluation pass of aue-contract) into the
    /// record of the test split.
    pub fn evaluate(
        &self,
        batches: impl IntoIterator<Item = aue_contract::Result<DeviceBatch>>,
        labels: &[&str],
        info: RecordInfo,
        progress: &mut dyn FnMut(usize),
    ) -> Result<SplitRecord> {
        let spec = self.def.records();
        let loss = |out: &aue_model::Outputs, b: &DeviceBatch| self.loss(out, b);
        let dtype = self.model.dtype();
        let batches = batches.into_iter().map(|b| b.and_then(|b| b.images_as(dtype)));
        evaluate(&self.model, spec, &loss, batches, labels, info, progress)
            .map_err(TrainError::from)
    }
}
