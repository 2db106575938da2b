//! Eval-mode inference with every BatchNorm folded into the layer before it and each layer's
//! bias, residual and activation fused into one pass (docs/PERFORMANCE.md, "Inference").
//!
//! [`InferenceModel::new`] builds it once from a loaded [`AueModel`]: the BatchNorms are folded
//! (`crate::fold`), the small weights laid out as the fused forward pass reads them (Linear
//! weights transposed; the crop nets, which have no BatchNorm, are the training model's own,
//! so the largest tensor, `Crop_Net_2`'s weights, is shared, not copied), and nothing records a
//! gradient. Its forward pass computes what [`AueModel::forward`] computes with
//! [`ForwardOptions::eval`] (docs/METHOD.md section 3), up to rounding: the tests hold every
//! output to a relative L2 error of 1e-5. On the CPU (f32) the layers run through
//! `aue_kernels::infer` (one parallel pass per layer's epilogue, parallel pooling, LRN and
//! softmax); on other devices the same maths runs as Candle ops.
//!
//! [`EvalForward`] is what evaluation and prediction take: either model.

use aue_core::NUM_AUS;
use aue_kernels::infer::{self as k, Act, Epilogue};
use aue_kernels::{ConvParams, ConvTransposeParams};
use candle_core::{DType, Device, Tensor};

use crate::branches::{AuBranch, ConvBnRelu, EmBranch, Fusion};
use crate::config::ModelConfig;
use crate::crops::{CropCentres, CropNets};
use crate::error::{ModelError, Result};
use crate::fold::{BnStats, fold};
use crate::loss::AuKnowledge;
use crate::model::{AueModel, ForwardOptions, OutputSet, Outputs};
use crate::nn::{BatchNorm, Conv2d, ConvTranspose2d, Linear, PartMode, lrn_quirk};
use crate::resnet::{Block, ConvBn, ResNet};

/// A model that computes the eval-mode outputs (every part in eval mode, no gradient).
pub trait EvalForward {
    /// The outputs `outputs` asks for.
    ///
    /// # Shapes
    /// as [`AueModel::forward`]
    fn eval_forward(
        &self,
        images: &Tensor,
        au_loc: Option<&Tensor>,
        outputs: OutputSet,
    ) -> Result<Outputs>;

    /// The prior table and its masks (the AU pseudo-targets of the loss).
    fn knowledge(&self) -> &AuKnowledge;

    /// Where the model's tensors live.
    fn device(&self) -> &Device;
}

impl EvalForward for AueModel {
    fn eval_forward(
        &self,
        images: &Tensor,
        au_loc: Option<&Tensor>,
        outputs: OutputSet,
    ) -> Result<Outputs> {
        self.forward(images, au_loc, &ForwardOptions { outputs, ..ForwardOptions::eval() })
    }

    fn knowledge(&self) -> &AuKnowledge {
        AueModel::knowledge(self)
    }

    fn device(&self) -> &Device {
        AueModel::device(self)
    }
}

fn kernel_err(e: aue_kernels::KernelError) -> ModelError {
    ModelError::Candle(candle_core::Error::from(e))
}

impl BatchNorm {
    /// The statistics eval mode normalises with.
    fn stats(&self) -> BnStats<'_> {
        BnStats {
            gamma: &self.weight,
            beta: &self.bias,
            mean: self.running_mean.as_tensor(),
            var: self.running_var.as_tensor(),
        }
    }
}

/// A convolution with its BatchNorm folded in: `act(conv(x, w) + b + residual)`.
#[derive(Debug, Clone)]
struct FusedConv {
    weight: Tensor,
    bias: Tensor,
    params: ConvParams,
}

impl FusedConv {
    fn new(conv: &Conv2d, bn: &BatchNorm, dtype: DType) -> Result<Self> {
        let f = fold(&conv.weight.detach(), conv.bias.as_ref(), bn.stats(), 0, dtype)?;
        let params = ConvParams { stride: conv.stride, padding: conv.padding, dilation: 1 };
        Ok(FusedConv { weight: f.weight.contiguous()?, bias: f.bias, params })
    }

    fn pair(cb: &ConvBn, dtype: DType) -> Result<Self> {
        Self::new(&cb.conv, &cb.bn, dtype)
    }

    /// # Shapes
    /// x [B, C_in, H, W], residual [B, C_out, H', W'] -> [B, C_out, H', W']
    fn forward(&self, x: &Tensor, residual: Option<&Tensor>, act: Act) -> Result<Tensor> {
        let ep = Epilogue { bias: Some(&self.bias), residual, act };
        k::conv2d_bias_act(x, &self.weight, self.params, ep).map_err(kernel_err)
    }
}

/// The AU decoder's transposed convolution with its BatchNorm folded in, then ReLU.
#[derive(Debug, Clone)]
struct FusedDeconv {
    weight: Tensor,
    bias: Tensor,
    params: ConvTransposeParams,
}

impl FusedDeconv {
    fn new(layer: &ConvBnRelu<ConvTranspose2d>, dtype: DType) -> Result<Self> {
        let conv = &layer.conv;
        // The weight is [C_in, C_out, k, k]: the BN's channels are on axis 1.
        let f = fold(&conv.weight.detach(), None, layer.bn.stats(), 1, dtype)?;
        let params = ConvTransposeParams {
            stride: conv.stride,
            padding: conv.padding,
            output_padding: 0,
            dilation: 1,
        };
        Ok(FusedDeconv { weight: f.weight.contiguous()?, bias: f.bias, params })
    }

    /// # Shapes
    /// x [B, C_in, H, W] -> [B, C_out, 2H, 2W]
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = aue_kernels::conv_transpose2d(&x.detach(), &self.weight, self.params)
            .map_err(kernel_err)?;
        k::bias_act(&y, 1, Epilogue::bias(&self.bias, Act::Relu)).map_err(kernel_err)
    }
}

/// A Linear layer (optionally with a BatchNorm1d folded in), weight stored transposed.
#[derive(Debug, Clone)]
struct FusedLinear {
    /// [in, out]
    weight_t: Tensor,
    bias: Tensor,
}

impl FusedLinear {
    fn new(linear: &Linear, bn: Option<&BatchNorm>, dtype: DType) -> Result<Self> {
        let (w, b) = match bn {
            Some(bn) => {
                let f = fold(&linear.weight.detach(), Some(&linear.bias), bn.stats(), 0, dtype)?;
                (f.weight, f.bias)
            }
            None => (linear.weight.to_dtype(dtype)?, linear.bias.to_dtype(dtype)?),
        };
        // Detached: a copy made from a variable records the op, and would keep the original
        // weight alive through it.
        Ok(FusedLinear { weight_t: w.t()?.contiguous()?.detach(), bias: b.detach() })
    }

    /// # Shapes
    /// x [B, in] -> [B, out]
    fn forward(&self, x: &Tensor, act: Act) -> Result<Tensor> {
        let y = x.matmul(&self.weight_t)?;
        k::bias_act(&y, 1, Epilogue::bias(&self.bias, act)).map_err(kernel_err)
    }
}

/// A residual block: ReLU after each conv, the last one's epilogue adding the identity.
#[derive(Debug, Clone)]
struct FusedBlock {
    convs: Vec<FusedConv>,
    downsample: Option<FusedConv>,
}

impl FusedBlock {
    fn new(block: &Block, dtype: DType) -> Result<Self> {
        Ok(FusedBlock {
            convs: block
                .convs
                .iter()
                .map(|cb| FusedConv::pair(cb, dtype))
                .collect::<Result<_>>()?,
            downsample: block.downsample.as_ref().map(|d| FusedConv::pair(d, dtype)).transpose()?,
        })
    }

    /// # Shapes
    /// x [B, C_in, H, W] -> [B, C_out, H / stride, W / stride]
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let identity = match &self.downsample {
            Some(d) => d.forward(x, None, Act::Identity)?,
            None => x.clone(),
        };
        let (last, rest) = self
            .convs
            .split_last()
            .ok_or_else(|| ModelError::Config("a residual block without convolutions".into()))?;
        let mut y = x.clone();
        for conv in rest {
            y = conv.forward(&y, None, Act::Relu)?;
        }
        last.forward(&y, Some(&identity), Act::Relu)
    }
}

/// The fused ResNet.
#[derive(Debug, Clone)]
struct FusedResNet {
    stem: FusedConv,
    layers: [Vec<FusedBlock>; 4],
}

impl FusedResNet {
    fn new(r: &ResNet, dtype: DType) -> Result<Self> {
        let layer = |blocks: &Vec<Block>| -> Result<Vec<FusedBlock>> {
            blocks.iter().map(|b| FusedBlock::new(b, dtype)).collect()
        };
        let [l1, l2, l3, l4] = &r.layers;
        Ok(FusedResNet {
            stem: FusedConv::pair(&r.stem, dtype)?,
            layers: [layer(l1)?, layer(l2)?, layer(l3)?, layer(l4)?],
        })
    }

    /// # Shapes
    /// x [B, 3, S, S] -> f1..f4 as `ResNet::forward`
    fn forward(&self, x: &Tensor) -> Result<[Tensor; 4]> {
        let x = self.stem.forward(x, None, Act::Relu)?; // [B, stem, S/2, S/2]
        let mut x = k::max_pool2d(&x, 3, 2, 1).map_err(kernel_err)?; // [B, stem, S/4, S/4]
        let mut out = Vec::with_capacity(4);
        for layer in &self.layers {
            for block in layer {
                x = block.forward(&x)?;
            }
            out.push(x.clone());
        }
        let [f1, f2, f3, f4]: [Tensor; 4] =
            out.try_into().map_err(|_| ModelError::Config("four stages".into()))?;
        Ok([f1, f2, f3, f4])
    }
}

/// The EM branch up to `feature`.
#[derive(Debug, Clone)]
struct FusedEm {
    reduce: FusedConv,
}

impl FusedEm {
    fn new(em: &EmBranch, dtype: DType) -> Result<Self> {
        let r = &em.reduce_dim_em;
        Ok(FusedEm { reduce: FusedConv::new(&r.conv, &r.bn, dtype)? })
    }

    /// # Shapes
    /// f1..f4 -> feature [B, em_dim]
    fn forward(&self, f: &[Tensor; 4]) -> Result<Tensor> {
        let pool = |t: &Tensor, s: usize| k::max_pool2d(t, s, s, 0).map_err(kernel_err);
        let x = Tensor::cat(&[pool(&f[0], 8)?, pool(&f[1], 4)?, pool(&f[2], 2)?, f[3].clone()], 1)?;
        // quirk: the reference's LRN (one parallel pass on the CPU: nothing here records a gradient).
        let x = self.reduce.forward(&lrn_quirk(&x)?, None, Act::Relu)?; // [B, em_dim, S/32, S/32]
        k::mean_planes(&x).map_err(kernel_err)
    }
}

/// The 34 crop nets for inference: the training model's own (no BatchNorm to fold), run in
/// eval mode without gradient, which goes a few crops at a time (`CropNets::forward`). A
/// transposed layout of their products (`W1^T x cols`, the crops' output already in
/// `Crop_Net_2`'s order) measured slower on the CPU and was removed (docs/PERFORMANCE.md).
#[derive(Debug, Clone)]
struct FusedCrops {
    /// Their tensors in the inference model's dtype (`Crop_Net_2`'s 1.3 GB weight shared with
    /// the loaded model, not copied, when the dtypes agree).
    nets: CropNets,
}

impl FusedCrops {
    fn new(nets: &CropNets, dtype: DType) -> Result<Self> {
        Ok(FusedCrops { nets: nets.to_dtype(dtype)? })
    }

    /// # Shapes
    /// m [B, C, G, G] -> au_feat [B, 34, F]
    fn forward(&self, m: &Tensor, centres: &CropCentres) -> Result<Tensor> {
        self.nets.forward(m, centres, PartMode::EVAL)
    }
}

/// The AU branch.
#[derive(Debug, Clone)]
struct FusedAu {
    deconv: [FusedDeconv; 3],
    reduce: [FusedConv; 3],
    crops: FusedCrops,
    pred_au: FusedLinear,
}

impl FusedAu {
    fn new(au: &AuBranch, dtype: DType) -> Result<Self> {
        let [d1, d2, d3] = &au.deconv;
        let [r1, r2, r3] = &au.reduce;
        let conv = |r: &ConvBnRelu<Conv2d>| FusedConv::new(&r.conv, &r.bn, dtype);
        Ok(FusedAu {
            deconv: [
                FusedDeconv::new(d1, dtype)?,
                FusedDeconv::new(d2, dtype)?,
                FusedDeconv::new(d3, dtype)?,
            ],
            reduce: [conv(r1)?, conv(r2)?, conv(r3)?],
            crops: FusedCrops::new(&au.crops, dtype)?,
            pred_au: FusedLinear::new(&au.pred_au, None, dtype)?,
        })
    }

    /// # Shapes
    /// f1..f4 -> au_feat [B, 34, au_feat], pred_au [B, 17]
    fn forward(&self, f: &[Tensor; 4], centres: &CropCentres) -> Result<(Tensor, Tensor)> {
        let mut x = f[3].clone();
        for (i, skip) in [&f[2], &f[1], &f[0]].into_iter().enumerate() {
            let up = self.deconv[i].forward(&x)?; // [B, C_{3-i}, 2h, 2w]
            x = self.reduce[i].forward(&Tensor::cat(&[skip, &up], 1)?, None, Act::Relu)?;
        }
        let m = lrn_quirk(&x)?; // [B, crop_channels, G, G]
        let au_feat = self.crops.forward(&m, centres)?; // [B, 34, F]
        let pred_au = self.pred_au.forward(&au_feat.flatten_from(1)?, Act::Sigmoid)?; // [B, 17]
        Ok((au_feat, pred_au))
    }
}

/// The fusion branch, its BatchNorms folded.
#[derive(Debug, Clone)]
struct FusedFusion {
    em: FusedLinear,
    /// The 17 heads' folded weights [17, Dim, 2F] and biases [17, Dim].
    au_w: Tensor,
    au_b: Tensor,
    attention: FusedLinear,
    pred: FusedLinear,
}

impl FusedFusion {
    fn new(fu: &Fusion, dtype: DType) -> Result<Self> {
        let stats = BnStats {
            gamma: &fu.au_bn_w,
            beta: &fu.au_bn_b,
            mean: fu.au_running_mean.as_tensor(),
            var: fu.au_running_var.as_tensor(),
        };
        let heads = fold(&fu.au_w.detach(), Some(&fu.au_b), stats, 1, dtype)?;
        Ok(FusedFusion {
            em: FusedLinear::new(&fu.em_fc, Some(&fu.em_bn), dtype)?,
            au_w: heads.weight.contiguous()?,
            au_b: heads.bias,
            attention: FusedLinear::new(&fu.attention, None, dtype)?,
            pred: FusedLinear::new(&fu.pred, None, dtype)?,
        })
    }

    /// # Shapes
    /// feature [B, em_dim], au_feat [B, 34, F] -> pred2 [B, classes], au_prob [B, 17]
    fn forward(&self, feature: &Tensor, au_feat: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, _, width) = au_feat.dims3()?;
        // quirk: viewed as [B, 2, 17, F] then transposed, so row i = [crop i, crop i + 17].
        let rows = au_feat.reshape((b, 2, NUM_AUS, width))?.transpose(1, 2)?.reshape((
            b,
            NUM_AUS,
            2 * width,
        ))?;
        let em = self.em.forward(feature, Act::Tanh)?; // [B, Dim]
        let rows_t = rows.permute((1, 2, 0))?.contiguous()?; // [17, 2F, B]
        // The 17 products split between threads (Candle's matmul splits each small one).
        let au = aue_kernels::batched_matmul(&self.au_w, &rows_t).map_err(kernel_err)?; // [17, Dim, B]
        let au = k::bias_act(&au, 1, Epilogue::bias(&self.au_b, Act::Tanh)).map_err(kernel_err)?;
        let au = au.transpose(1, 2)?; // [17, B, Dim]
        let att = au.broadcast_mul(&em.unsqueeze(0)?)?.reshape((NUM_AUS * b, ()))?;
        let logits = self.attention.forward(&att, Act::Relu)?; // [17 B, 1]
        let logits = logits.reshape((NUM_AUS, b))?.t()?.contiguous()?; // [B, 17]
        let au_prob = k::softmax_last(&logits).map_err(kernel_err)?;
        let result = au_prob.unsqueeze(1)?.matmul(&rows)?.squeeze(1)?; // [B, 2F]
        let pred2 = self.pred.forward(&Tensor::cat(&[feature, &result], 1)?, Act::Identity)?;
        Ok((pred2, au_prob))
    }
}

/// The model for inference: built once from a loaded [`AueModel`] (see the module doc).
#[derive(Debug, Clone)]
pub struct InferenceModel {
    config: ModelConfig,
    device: Device,
    dtype: DType,
    knowledge: AuKnowledge,
    backbone: FusedResNet,
    em: FusedEm,
    pred_em: FusedLinear,
    au: FusedAu,
    fusion: FusedFusion,
}

impl InferenceModel {
    /// Folds and lays out `model`'s parameters (a copy: `model` can be dropped afterwards).
    pub fn new(model: &AueModel) -> Result<Self> {
        let dtype = model.dtype;
        let built = InferenceModel {
            config: model.config.clone(),
            device: model.device.clone(),
            dtype,
            knowledge: model.knowledge.clone(),
            backbone: FusedResNet::new(&model.backbone, dtype)?,
            em: FusedEm::new(&model.em, dtype)?,
            pred_em: FusedLinear::new(&model.pred_em, None, dtype)?,
            au: FusedAu::new(&model.au, dtype)?,
            fusion: FusedFusion::new(&model.fusion, dtype)?,
        };
        tracing::debug!(input_size = model.config.input_size, "inference model built");
        Ok(built)
    }

    /// The configuration of the model it was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Where its tensors live.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The prior table and its masks (for [`crate::loss::stage_loss`]).
    pub fn knowledge(&self) -> &AuKnowledge {
        &self.knowledge
    }

    /// The outputs `outputs` asks for, computed as [`AueModel::forward`] in eval mode.
    ///
    /// # Shapes
    /// as [`AueModel::forward`]
    pub fn forward(
        &self,
        images: &Tensor,
        au_loc: Option<&Tensor>,
        outputs: OutputSet,
    ) -> Result<Outputs> {
        // On a thread of the pool: see `aue_model::in_pool`.
        crate::nn::in_pool(|| self.forward_here(images, au_loc, outputs))
    }

    fn forward_here(
        &self,
        images: &Tensor,
        au_loc: Option<&Tensor>,
        outputs: OutputSet,
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
        let (need_em, need_au) = (outputs.em || outputs.fusion, outputs.au || outputs.fusion);
        let mut out = Outputs::default();
        if !need_em && !need_au {
            return Ok(out);
        }
        let centres = CropCentres::for_batch(need_au, au_loc, self.config.grid(), dims[0])?;
        let f = self.backbone.forward(&images.detach())?;
        if need_em {
            let feature = self.em.forward(&f)?;
            out.pred_em = Some(self.pred_em.forward(&feature, Act::Identity)?);
            out.feature = Some(feature);
        }
        if let Some(centres) = &centres {
            let (au_feat, pred_au) = self.au.forward(&f, centres)?;
            out.au_feat = Some(au_feat);
            out.pred_au = Some(pred_au);
        }
        if outputs.fusion {
            let (pred2, au_prob) = self.fusion.forward(out.feature()?, out.au_feat()?)?;
            out.pred2 = Some(pred2);
            out.au_prob = Some(au_prob);
        }
        Ok(out)
    }
}

impl EvalForward for InferenceModel {
    fn eval_forward(
        &self,
        images: &Tensor,
        au_loc: Option<&Tensor>,
        outputs: OutputSet,
    ) -> Result<Outputs> {
        self.forward(images, au_loc, outputs)
    }

    fn knowledge(&self) -> &AuKnowledge {
        InferenceModel::knowledge(self)
    }

    fn device(&self) -> &Device {
        InferenceModel::device(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;
    use crate::init::fill_parity;

    /// ||a - b|| / ||b|| over all elements.
    fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        let (a, b) = (a.to_dtype(DType::F64).unwrap(), b.to_dtype(DType::F64).unwrap());
        let d = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let n = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        (d / n.max(f64::MIN_POSITIVE)).sqrt()
    }

    /// Random BatchNorm statistics (the parity fill leaves them at 0 and 1, which would hide a
    /// folding error), on top of the parity weights.
    fn perturb_bn_stats(model: &AueModel) {
        let data = model.varmap().data().lock().unwrap();
        for (key, var) in data.iter() {
            let shape = var.shape().clone();
            let t = if key.ends_with("running_var") {
                Tensor::rand(0.5f32, 2.0, shape, &Device::Cpu).unwrap()
            } else if key.ends_with("running_mean") {
                Tensor::randn(0f32, 0.2, shape, &Device::Cpu).unwrap()
            } else {
                continue;
            };
            var.set(&t).unwrap();
        }
    }

    /// Every output of the fused model against the training model's eval forward.
    fn check_preset(cfg: ModelConfig, batch: usize) {
        let model = AueModel::new(&cfg, &Device::Cpu).unwrap();
        fill_parity(model.varmap()).unwrap();
        perturb_bn_stats(&model);
        let fused = InferenceModel::new(&model).unwrap();
        let s = cfg.input_size;
        let images = Tensor::randn(0f32, 1., (batch, 3, s, s), &Device::Cpu).unwrap();
        let (lo, hi) = cfg.centre_range();
        let loc: Vec<i64> =
            (0..batch * 17 * 4).map(|i| (lo + (i * 7) % (hi - lo + 1)) as i64).collect();
        let au_loc = Tensor::from_vec(loc, (batch, 17, 4), &Device::Cpu).unwrap();
        let want = model.forward(&images, Some(&au_loc), &ForwardOptions::eval()).unwrap();
        let got = fused.forward(&images, Some(&au_loc), OutputSet::ALL).unwrap();
        for (name, a, b) in [
            ("feature", got.feature(), want.feature()),
            ("pred_em", got.pred_em(), want.pred_em()),
            ("au_feat", got.au_feat(), want.au_feat()),
            ("pred_au", got.pred_au(), want.pred_au()),
            ("pred2", got.pred2(), want.pred2()),
            ("au_prob", got.au_prob(), want.au_prob()),
        ] {
            let err = rel_l2(a.unwrap(), b.unwrap());
            assert!(err <= 1e-5, "{name}: relative L2 error {err:e}");
        }
        // The EM outputs alone need no AU locations, as in the training model.
        let em = OutputSet { em: true, au: false, fusion: false };
        let only = fused.forward(&images, None, em).unwrap();
        assert!(only.pred_em.is_some() && only.pred_au.is_none());
        assert!(fused.forward(&images, None, OutputSet::ALL).is_err());
    }

    /// No tensor of the fused model records an op or is a variable: one that did would keep the
    /// loaded model's tensors it was computed from alive through its graph (the folded layers
    /// were resident twice, about 90 MB for resnet18 and 550 MB for resnet101, until the BN
    /// statistics were detached before folding).
    #[test]
    fn fused_tensors_hold_no_graph() {
        let model = AueModel::new(&ModelConfig::preset(Preset::Tiny), &Device::Cpu).unwrap();
        fill_parity(model.varmap()).unwrap();
        let m = InferenceModel::new(&model).unwrap();
        let conv = |c: &FusedConv| [c.weight.clone(), c.bias.clone()];
        let linear = |l: &FusedLinear| [l.weight_t.clone(), l.bias.clone()];
        let mut all: Vec<Tensor> = conv(&m.backbone.stem).to_vec();
        for block in m.backbone.layers.iter().flatten() {
            block.convs.iter().chain(&block.downsample).for_each(|c| all.extend(conv(c)));
        }
        all.extend(conv(&m.em.reduce));
        all.extend(linear(&m.pred_em));
        for d in &m.au.deconv {
            all.extend([d.weight.clone(), d.bias.clone()]);
        }
        m.au.reduce.iter().for_each(|c| all.extend(conv(c)));
        all.extend(linear(&m.au.pred_au));
        let n = &m.au.crops.nets;
        all.extend([n.conv_w.clone(), n.conv_b.clone(), n.fc_w.clone(), n.fc_b.clone()]);
        let f = &m.fusion;
        all.extend([f.au_w.clone(), f.au_b.clone()]);
        [&f.em, &f.attention, &f.pred].into_iter().for_each(|l| all.extend(linear(l)));
        for (i, t) in all.iter().enumerate() {
            assert!(!t.track_op(), "fused tensor {i} {:?} records its graph", t.dims());
        }
    }

    #[test]
    fn fused_outputs_equal_the_eval_forward_tiny() {
        check_preset(ModelConfig::preset(Preset::Tiny), 3);
    }

    /// resnet18's widths and crop nets at a small input side (64 px: grid 16, crops 4 x 4).
    #[test]
    fn fused_outputs_equal_the_eval_forward_resnet18() {
        check_preset(ModelConfig::preset(Preset::Resnet18).with_input_size(64).unwrap(), 2);
    }
}
