//! The AUE-CRL model (docs/METHOD.md section 3), its forward options and the stages' trainable sets
//! and modes (section 4).

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use crate::branches::{AuBranch, EmBranch, Fusion};
use crate::config::ModelConfig;
use crate::crops::CropCentres;
use crate::error::{ModelError, Result};
use crate::loss::AuKnowledge;
use crate::nn::{Linear, Params, PartMode};
use crate::resnet::ResNet;

/// The three training stages of section 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Stage 1: backbone + EM branch, CE(pred1).
    Em,
    /// Stage 2: AU branch and prior table on the frozen backbone.
    Au,
    /// Stage 3: fusion branch and `pred_em` on everything else frozen.
    Fuse,
}

impl Stage {
    /// All stages in training order.
    pub const ALL: [Stage; 3] = [Stage::Em, Stage::Au, Stage::Fuse];

    /// 1, 2 or 3.
    pub fn number(self) -> u8 {
        match self {
            Stage::Em => 1,
            Stage::Au => 2,
            Stage::Fuse => 3,
        }
    }

    /// The stage with this number.
    pub fn from_number(n: u8) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.number() == n)
    }

    /// The reference's name (`main.py --Experiment EM|AU|Fuse`), lower case.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Em => "em",
            Stage::Au => "au",
            Stage::Fuse => "fuse",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Stage {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        Stage::ALL
            .into_iter()
            .find(|st| st.name() == lower || st.number().to_string() == lower)
            .ok_or_else(|| ModelError::Config(format!("unknown stage `{s}` (em|au|fuse or 1|2|3)")))
    }
}

/// Key prefixes of the variables a stage trains (section 4's table). A key matches a prefix that
/// ends in `.` when it starts with it, and a prefix without a trailing `.` when it equals it.
/// BatchNorm buffers match too but are never trained (see [`trainable_vars`]).
pub fn trainable_prefixes(stage: Stage) -> &'static [&'static str] {
    match stage {
        Stage::Em => &["backbone.", "reduce_dim_em.", "pred_em."],
        Stage::Au => &[
            "deconv_layer1.",
            "deconv_layer2.",
            "deconv_layer3.",
            "reduce_dim_1_au.",
            "reduce_dim_2_au.",
            "reduce_dim_3_au.",
            "Crop_Net_1.",
            "Crop_Net_2.",
            "pred_au.",
            "PriorKnowledgeTable",
        ],
        Stage::Fuse => &[
            "fc_em_fuse_3.",
            "fc_au_fuse_3.",
            "fc_attention_fuse_3.",
            "pred_em_fuse_3.",
            "pred_em.",
        ],
    }
}

/// Whether `key` names a BatchNorm buffer (running statistics or the batch counter).
pub fn is_bn_buffer(key: &str) -> bool {
    ["running_mean", "running_var", "num_batches_tracked"]
        .iter()
        .any(|b| key.rsplit('.').next() == Some(b))
}

/// Whether stage `stage` trains the variable `key` (a trainable prefix matches, not a BN buffer).
pub fn is_trainable(key: &str, stage: Stage) -> bool {
    !is_bn_buffer(key)
        && trainable_prefixes(stage)
            .iter()
            .any(|p| if p.ends_with('.') { key.starts_with(p) } else { key == *p })
}

/// The float variables stage `stage` trains, sorted by key: what its optimizer updates.
pub fn trainable_vars(varmap: &VarMap, stage: Stage) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(k, v)| v.dtype().is_float() && is_trainable(k, stage))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Which outputs a forward pass computes. The parts run are those the outputs need: `em` needs the
/// backbone and EM branch, `au` the backbone and AU branch, `fusion` everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputSet {
    /// `feature` and `pred_em` (pred1).
    pub em: bool,
    /// `au_feat` and `pred_au`.
    pub au: bool,
    /// `pred2` and `au_prob` (implies the other two).
    pub fusion: bool,
}

impl OutputSet {
    /// Every output.
    pub const ALL: OutputSet = OutputSet { em: true, au: true, fusion: true };
}

/// How each part runs in a forward pass, and what it computes.
///
/// The parts: `backbone`; `em_reduce` (`reduce_dim_em` and the pooling/LRN before it);
/// `em_head` (`pred_em`; only `grad` matters); `au_branch` (decoder, crop nets, `pred_au`);
/// `fusion`. A part with `grad: false` runs without a gradient graph (its inputs and parameters
/// are detached), like PyTorch's `no_grad`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardOptions {
    /// The ResNet.
    pub backbone: PartMode,
    /// Pooling, LRN and `reduce_dim_em` of the EM branch.
    pub em_reduce: PartMode,
    /// `pred_em`.
    pub em_head: PartMode,
    /// The AU branch.
    pub au_branch: PartMode,
    /// The fusion branch.
    pub fusion: PartMode,
    /// The outputs to compute.
    pub outputs: OutputSet,
}

impl ForwardOptions {
    /// Inference: every part in eval mode without gradient, every output.
    pub fn eval() -> Self {
        let e = PartMode::EVAL;
        ForwardOptions {
            backbone: e,
            em_reduce: e,
            em_head: e,
            au_branch: e,
            fusion: e,
            outputs: OutputSet::ALL,
        }
    }

    /// The reference's modes while training `stage` (section 4), quirks included:
    /// - stage 1: backbone and EM branch in train mode with gradients; only the EM outputs;
    /// - stage 2 (quirk): the frozen backbone stays in train mode (batch statistics, running
    ///   statistics updated); AU branch trained; only the AU outputs;
    /// - stage 3 (quirk): the backbone in eval mode, but the frozen EM reduce and AU branch stay in
    ///   train mode (batch statistics, and Crop_Net_2's dropout active); `pred_em` and the fusion
    ///   trained; every output.
    ///
    /// Use [`ForwardOptions::frozen_eval`] to put the frozen parts into eval mode instead.
    pub fn stage(stage: Stage) -> Self {
        let (t, f, e) = (PartMode::TRAIN, PartMode::FROZEN_TRAIN, PartMode::EVAL);
        match stage {
            Stage::Em => ForwardOptions {
                backbone: t,
                em_reduce: t,
                em_head: t,
                au_branch: e,
                fusion: e,
                outputs: OutputSet { em: true, au: false, fusion: false },
            },
            Stage::Au => ForwardOptions {
                backbone: f,
                em_reduce: e,
                em_head: e,
                au_branch: t,
                fusion: e,
                outputs: OutputSet { em: false, au: true, fusion: false },
            },
            Stage::Fuse => ForwardOptions {
                backbone: e,
                em_reduce: f,
                em_head: t,
                au_branch: f,
                fusion: t,
                outputs: OutputSet::ALL,
            },
        }
    }

    /// Every part without gradient switched to eval mode (BN running statistics, no dropout): the
    /// behaviour one would expect of frozen parts, instead of the reference's.
    pub fn frozen_eval(mut self) -> Self {
        for part in [
            &mut self.backbone,
            &mut self.em_reduce,
            &mut self.em_head,
            &mut self.au_branch,
            &mut self.fusion,
        ] {
            if !part.grad {
                *part = PartMode::EVAL;
            }
        }
        self
    }
}

/// The outputs of a forward pass; `None` where [`ForwardOptions::outputs`] did not ask for them.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// EM feature [B, em_dim].
    pub feature: Option<Tensor>,
    /// EM logits `pred1` [B, classes].
    pub pred_em: Option<Tensor>,
    /// Crop features [B, 34, au_feat].
    pub au_feat: Option<Tensor>,
    /// AU probabilities [B, 17].
    pub pred_au: Option<Tensor>,
    /// Fusion logits `pred2` [B, classes].
    pub pred2: Option<Tensor>,
    /// Attention over the 17 AUs [B, 17].
    pub au_prob: Option<Tensor>,
}

macro_rules! output_getters {
    ($($name:ident),*) => {
        impl Outputs {
            $(
                #[doc = concat!("`", stringify!($name), "`, or an error if it was not computed.")]
                pub fn $name(&self) -> Result<&Tensor> {
                    self.$name.as_ref().ok_or(ModelError::MissingOutput(stringify!($name)))
                }
            )*
        }
    };
}
output_getters!(feature, pred_em, au_feat, pred_au, pred2, au_prob);

/// The whole model. All its state lives in one [`VarMap`] whose keys are the reference's
/// state-dict keys (docs/FILES.md "Model state").
#[derive(Clone)]
pub struct AueModel {
    pub(crate) config: ModelConfig,
    pub(crate) varmap: VarMap,
    pub(crate) device: Device,
    pub(crate) dtype: DType,
    pub(crate) backbone: ResNet,
    pub(crate) em: EmBranch,
    pub(crate) pred_em: Linear,
    pub(crate) au: AuBranch,
    pub(crate) fusion: Fusion,
    pub(crate) knowledge: AuKnowledge,
}

impl AueModel {
    /// A model with all variables zero (fill them with `crate::init` or `crate::checkpoint`).
    pub fn new(config: &ModelConfig, device: &Device) -> Result<Self> {
        Self::with_varmap(&VarMap::new(), config, device)
    }

    /// Build the model on `varmap`: variables it already holds are used (their shapes and dtypes
    /// must match), missing ones are created zero-filled.
    pub fn with_varmap(varmap: &VarMap, config: &ModelConfig, device: &Device) -> Result<Self> {
        Self::with_dtype(varmap, config, device, DType::F32)
    }

    /// [`AueModel::with_varmap`] with parameters of another float dtype. The model and its
    /// checkpoints are f32; F64 serves precision checks (the parity tests' float64 gradients).
    pub fn with_dtype(
        varmap: &VarMap,
        config: &ModelConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        config.validate()?;
        if !dtype.is_float() {
            return Err(ModelError::Config(format!(
                "parameters must be a float dtype, got {dtype:?}"
            )));
        }
        let p = Params::new(varmap, device, dtype);
        Ok(AueModel {
            config: config.clone(),
            varmap: varmap.clone(),
            device: device.clone(),
            dtype,
            backbone: ResNet::new(&p.pp("backbone"), config)?,
            em: EmBranch::new(&p, config)?,
            pred_em: Linear::new(&p.pp("pred_em"), config.em_dim, config.num_classes)?,
            au: AuBranch::new(&p, config)?,
            fusion: Fusion::new(&p, config)?,
            knowledge: AuKnowledge::new(&p)?,
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// All parameters and buffers, keyed by the reference state-dict keys.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The device of every variable.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the parameters (and of the images `forward` takes).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The prior table, its masks and the EIAU pairs (for [`crate::loss::stage_loss`]).
    pub fn knowledge(&self) -> &AuKnowledge {
        &self.knowledge
    }

    /// Run the parts `opts.outputs` needs. In train-mode BatchNorm the running statistics are
    /// updated in place.
    ///
    /// # Shapes
    /// images f32 [B, 3, S, S] (the model's dtype; S = config.input_size, ImageNet-normalised), au_loc i64 [B, 17, 4]
    /// (needed for AU and fusion outputs) -> [`Outputs`]: feature [B, em_dim], pred_em [B, K],
    /// au_feat [B, 34, au_feat], pred_au [B, 17], pred2 [B, K], au_prob [B, 17]
    pub fn forward(
        &self,
        images: &Tensor,
        au_loc: Option<&Tensor>,
        opts: &ForwardOptions,
    ) -> Result<Outputs> {
        // On a thread of the pool: see `aue_model::in_pool`.
        crate::nn::in_pool(|| self.forward_here(images, au_loc, opts))
    }

    fn forward_here(
        &self,
        images: &Tensor,
        au_loc: Option<&Tensor>,
        opts: &ForwardOptions,
    ) -> Result<Outputs> {
        let s = self.config.input_size;
        let dims = images.dims();
        if images.dtype() != self.dtype || dims.len() != 4 || dims[1..] != [3, s, s] {
            return Err(ModelError::input(
                "images",
                format!(
                    "expected {:?} [B, 3, {s}, {s}], got {:?} {:?}",
                    self.dtype,
                    images.dtype(),
                    dims
                ),
            ));
        }
        let want = opts.outputs;
        let (need_em, need_au) = (want.em || want.fusion, want.au || want.fusion);
        let mut out = Outputs::default();
        if !need_em && !need_au {
            return Ok(out);
        }
        let centres = CropCentres::for_batch(need_au, au_loc, self.config.grid(), dims[0])?;
        let f = self.backbone.forward(images, opts.backbone)?;
        if need_em {
            let feature = self.em.forward(&f, opts.em_reduce)?;
            out.pred_em = Some(self.pred_em.forward(&opts.em_head.see(&feature), opts.em_head)?);
            out.feature = Some(feature);
        }
        if let Some(centres) = &centres {
            let (au_feat, pred_au) = self.au.forward(&f, centres, opts.au_branch)?;
            out.au_feat = Some(au_feat);
            out.pred_au = Some(pred_au);
        }
        if want.fusion {
            let (pred2, au_prob) =
                self.fusion.forward(out.feature()?, out.au_feat()?, opts.fusion)?;
            out.pred2 = Some(pred2);
            out.au_prob = Some(au_prob);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Preset;
    use crate::init::fill_parity;
    use crate::loss::stage_loss;

    /// The full resnet101 model's state equals the reference's 939 keys, dtypes and shapes.
    /// (Variables are zero-filled allocations the OS maps lazily: building it is cheap.)
    #[test]
    fn resnet101_state_equals_reference_keys() {
        let text = include_str!("../tests/fixtures/reference_keys.tsv");
        let mut expect = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let cols: Vec<&str> = line.split('\t').collect();
            let shape: Vec<usize> = if cols[2] == "scalar" {
                vec![]
            } else {
                cols[2].split('x').map(|d| d.parse().unwrap()).collect()
            };
            expect.insert(cols[0].to_string(), (cols[1].to_string(), shape));
        }
        assert_eq!(expect.len(), 939);
        let model = AueModel::new(&ModelConfig::preset(Preset::Resnet101), &Device::Cpu).unwrap();
        // The reference state dict: group variables (crop nets, fusion heads) expanded.
        let got: BTreeMap<String, (String, Vec<usize>)> =
            crate::state::state_entries(model.varmap())
                .iter()
                .map(|e| {
                    let dtype = match e.dtype() {
                        DType::F32 => "F32",
                        DType::I64 => "I64",
                        _ => "other",
                    };
                    (e.key.clone(), (dtype.to_string(), e.dims().to_vec()))
                })
                .collect();
        let missing: Vec<_> = expect.keys().filter(|k| !got.contains_key(*k)).take(5).collect();
        let extra: Vec<_> = got.keys().filter(|k| !expect.contains_key(*k)).take(5).collect();
        assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}");
        for (k, v) in &expect {
            assert_eq!(&got[k], v, "{k}");
        }
    }

    fn tiny() -> (AueModel, Tensor, Tensor, Tensor) {
        let cfg = ModelConfig::preset(Preset::Tiny).with_dropout(0.0).unwrap();
        let model = AueModel::new(&cfg, &Device::Cpu).unwrap();
        fill_parity(model.varmap()).unwrap();
        let b = 3;
        let images = Tensor::randn(0f32, 1., (b, 3, 64, 64), &Device::Cpu).unwrap();
        let loc: Vec<i64> = (0..b * 17 * 4).map(|i| 3 + (i as i64 * 5) % 11).collect();
        let au_loc = Tensor::from_vec(loc, (b, 17, 4), &Device::Cpu).unwrap();
        let labels = Tensor::new(&[0i64, 3, 6], &Device::Cpu).unwrap();
        (model, images, au_loc, labels)
    }

    #[test]
    fn eval_forward_gives_every_output_with_its_shape() {
        let (model, images, au_loc, _) = tiny();
        let out = model.forward(&images, Some(&au_loc), &ForwardOptions::eval()).unwrap();
        assert_eq!(out.feature().unwrap().dims(), [3, 64]);
        assert_eq!(out.pred_em().unwrap().dims(), [3, 7]);
        assert_eq!(out.au_feat().unwrap().dims(), [3, 34, 16]);
        assert_eq!(out.pred_au().unwrap().dims(), [3, 17]);
        assert_eq!(out.pred2().unwrap().dims(), [3, 7]);
        let prob = out.au_prob().unwrap();
        let sums = prob.sum(1).unwrap().to_vec1::<f32>().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
        // Stage 1 computes only the EM outputs and needs no AU locations.
        let s1 = model.forward(&images, None, &ForwardOptions::stage(Stage::Em)).unwrap();
        assert!(s1.pred_em.is_some() && s1.pred_au.is_none());
        assert!(s1.pred2().unwrap_err().to_string().contains("pred2"));
        let err = model.forward(&images, None, &ForwardOptions::eval()).unwrap_err().to_string();
        assert!(err.contains("au_loc"), "{err}");
        let wrong = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
        assert!(
            model
                .forward(&wrong, None, &ForwardOptions::eval())
                .unwrap_err()
                .to_string()
                .contains("images")
        );
    }

    fn bn_tracked(model: &AueModel, key: &str) -> i64 {
        model.varmap().data().lock().unwrap()[key].to_scalar::<i64>().unwrap()
    }

    /// Each stage's backward reaches exactly its trainable variables (less `backbone.fc`, which no
    /// branch uses), and the section-4 BatchNorm quirks hold.
    #[test]
    fn stage_gradients_reach_exactly_the_trainable_variables() {
        let (model, images, au_loc, labels) = tiny();
        for stage in Stage::ALL {
            fill_parity(model.varmap()).unwrap();
            let opts = ForwardOptions::stage(stage);
            let out = model.forward(&images, Some(&au_loc), &opts).unwrap();
            let loss = stage_loss(stage, &out, &labels, model.knowledge()).unwrap();
            let grads = loss.backward().unwrap();
            let data = model.varmap().data().lock().unwrap();
            for (key, var) in data.iter() {
                let has = grads.get(var.as_tensor()).is_some();
                let expect = is_trainable(key, stage) && !key.starts_with("backbone.fc.");
                assert_eq!(has, expect, "stage {stage}: gradient on `{key}`");
            }
            drop(data);
            // quirk: stage 2 updates the frozen backbone's BN statistics, stage 3 the frozen AU
            // branch's but not the backbone's.
            let (backbone, au) = (
                bn_tracked(&model, "backbone.bn1.num_batches_tracked"),
                bn_tracked(&model, "deconv_layer1.1.num_batches_tracked"),
            );
            let expect = match stage {
                Stage::Em => (1, 0),
                Stage::Au => (1, 1),
                Stage::Fuse => (0, 1),
            };
            assert_eq!((backbone, au), expect, "stage {stage}");
        }
        // frozen_eval: frozen parts use running statistics and update nothing.
        fill_parity(model.varmap()).unwrap();
        let opts = ForwardOptions::stage(Stage::Au).frozen_eval();
        model.forward(&images, Some(&au_loc), &opts).unwrap();
        assert_eq!(bn_tracked(&model, "backbone.bn1.num_batches_tracked"), 0);
        assert_eq!(bn_tracked(&model, "deconv_layer1.1.num_batches_tracked"), 1);
    }

    #[test]
    fn trainable_sets_follow_section_4() {
        assert!(is_trainable("backbone.layer1.0.conv1.weight", Stage::Em));
        assert!(!is_trainable("backbone.bn1.running_mean", Stage::Em));
        assert!(is_trainable("PriorKnowledgeTable", Stage::Au));
        assert!(!is_trainable("PriorKnowledgeTable_x", Stage::Au));
        assert!(is_trainable("pred_em.weight", Stage::Fuse));
        assert!(!is_trainable("pred_em_fuse_3.weight", Stage::Em));
        assert!(!is_trainable("reduce_dim_em.0.weight", Stage::Fuse));
        let (model, ..) = tiny();
        let vars = trainable_vars(model.varmap(), Stage::Au);
        assert!(vars.iter().all(|(k, v)| v.dtype() == DType::F32 && !is_bn_buffer(k)));
        // The 34 crop nets' weights and biases: one group variable each, 68 reference keys.
        let crop2: Vec<&str> = vars
            .iter()
            .filter(|(k, _)| k.starts_with("Crop_Net_2."))
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(crop2, ["Crop_Net_2.*.0.bias", "Crop_Net_2.*.0.weight"]);
        let members = crate::state::expand(vars.iter().cloned());
        assert_eq!(members.iter().filter(|e| e.key.starts_with("Crop_Net_2.")).count(), 68);
        assert_eq!("3".parse::<Stage>().unwrap(), Stage::Fuse);
        assert_eq!("AU".parse::<Stage>().unwrap(), Stage::Au);
    }
}
