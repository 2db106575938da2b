//! The AUE-CRL eval-mode forward pass (docs/METHOD.md section 3, widths and input side of
//! section 8) written as an ONNX graph, walking the same structure as crates/model: the
//! torchvision ResNet of `resnet.rs`, the EM, AU and fusion branches of `branches.rs`, the 34 crop
//! nets of `crops.rs`, with the sizes of [`ModelConfig`] and the weights under the reference keys.
//!
//! Every BatchNorm is folded into the convolution or linear layer before it (`crate::fold`);
//! dropout is the identity (eval mode). The reference's quirks are kept and marked `quirk:`.
//!
//! Inputs: `image` f32 [N, 3, S, S] (ImageNet-normalised RGB), or with the preprocessing in the
//! graph u8 [N, S, S, 3] (RGB bytes, HWC); `au_loc` i64 [N, 17, 4] (two AU centres (x, y) per AU on
//! the G = S/4 grid, as the data pipeline makes them), only when the outputs need the AU branch.

use aue_core::NUM_AUS;
use aue_data::preprocess::{IMAGENET_MEAN, IMAGENET_STD};
use aue_model::crops::NUM_CROPS;
use aue_model::{AueModel, BlockKind, ModelConfig, Stage};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::error::{ExportError, Result};
use crate::fold::State;
use crate::onnx::{Attr, Dim, Elem, Graph, Value};

/// An output the graph can give, named as `aue-forward` names it (crates/model/src/bin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Output {
    /// The EM feature [N, em_dim].
    Feature,
    /// Expression logits of the EM branch, `pred1` [N, K].
    PredEm,
    /// Softmax of the stage's expression logits (`pred_em` in stage 1, `pred2` in stage 3) [N, K].
    ExpressionProb,
    /// The 34 crop features [N, 34, au_feat].
    AuFeat,
    /// AU probabilities [N, 17].
    PredAu,
    /// Expression logits of the fusion branch [N, K].
    Pred2,
    /// Fusion attention over the 17 AUs [N, 17].
    AuProb,
}

impl Output {
    /// Every output, in graph order.
    pub const ALL: [Output; 7] = [
        Output::Feature,
        Output::PredEm,
        Output::AuFeat,
        Output::PredAu,
        Output::Pred2,
        Output::AuProb,
        Output::ExpressionProb,
    ];

    /// The output's name in the graph.
    pub fn name(self) -> &'static str {
        match self {
            Output::Feature => "feature",
            Output::PredEm => "pred_em",
            Output::ExpressionProb => "expression_prob",
            Output::AuFeat => "au_feat",
            Output::PredAu => "pred_au",
            Output::Pred2 => "pred2",
            Output::AuProb => "au_prob",
        }
    }

    fn description(self, stage: Stage) -> &'static str {
        match self {
            Output::Feature => "EM feature (global average of reduce_dim_em)",
            Output::PredEm => "expression logits of the EM branch (pred1), label order",
            Output::ExpressionProb if stage == Stage::Em => {
                "expression probabilities: softmax of pred_em, label order"
            }
            Output::ExpressionProb => "expression probabilities: softmax of pred2, label order",
            Output::AuFeat => "the 34 AU crop features, crop k = 2i + c (AU i, centre c)",
            Output::PredAu => "AU probabilities (sigmoid), AU order",
            Output::Pred2 => "expression logits of the fusion branch, label order",
            Output::AuProb => "fusion attention over the 17 AUs (softmax), AU order",
        }
    }

    /// The outputs meaningful for a checkpoint of `stage` (in graph order), as aue-predict reads
    /// them: stage 1 the EM branch (its AU branch is untrained), stage 2 the AU probabilities (its
    /// expression head is stage 1's on moved backbone statistics), stage 3 everything the fusion
    /// gives.
    pub fn for_stage(stage: Stage) -> Vec<Output> {
        match stage {
            Stage::Em => vec![Output::PredEm, Output::ExpressionProb],
            Stage::Au => vec![Output::PredAu],
            Stage::Fuse => vec![
                Output::PredEm,
                Output::PredAu,
                Output::Pred2,
                Output::AuProb,
                Output::ExpressionProb,
            ],
        }
    }

    /// Every output the eval forward pass computes (plus the stage's expression probabilities).
    pub fn all_for_stage(stage: Stage) -> Vec<Output> {
        Output::ALL
            .into_iter()
            .filter(|o| *o != Output::ExpressionProb || stage != Stage::Au)
            .collect()
    }
}

/// What graph to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphSpec {
    /// The checkpoint's stage (picks the expression logits behind `expression_prob`).
    pub stage: Stage,
    /// The outputs, in any order (the graph lists them in [`Output::ALL`] order).
    pub outputs: Vec<Output>,
    /// Whether the graph takes RGB bytes [N, S, S, 3] and normalises them itself.
    pub preprocess: bool,
}

/// One dimension of a described tensor: a size or the batch symbol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ShapeDim {
    /// The batch symbol `N`.
    Symbol(String),
    /// A fixed size.
    Size(usize),
}

/// A graph input or output as `model.json` describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorDesc {
    /// Name in the graph.
    pub name: String,
    /// NumPy dtype name.
    pub dtype: String,
    /// Shape, `N` for the batch.
    pub shape: Vec<ShapeDim>,
    /// What it holds.
    pub description: String,
}

/// The graph, with its inputs and outputs described.
pub struct BuiltGraph {
    /// The graph.
    pub graph: Graph,
    /// Its inputs.
    pub inputs: Vec<TensorDesc>,
    /// Its outputs.
    pub outputs: Vec<TensorDesc>,
}

fn onnx_dims(dims: &[Dim]) -> Vec<ShapeDim> {
    dims.iter()
        .map(|d| match d {
            Dim::Batch => ShapeDim::Symbol(crate::onnx::BATCH.into()),
            Dim::Fixed(n) => ShapeDim::Size(*n),
        })
        .collect()
}

/// Build the eval-mode graph of `model` (f32) for `spec`.
pub fn build(model: &AueModel, spec: &GraphSpec) -> Result<BuiltGraph> {
    if model.dtype() != DType::F32 {
        return Err(ExportError::Invalid(format!(
            "the model's parameters are {:?}; the export writes f32 models",
            model.dtype()
        )));
    }
    if spec.outputs.is_empty() {
        return Err(ExportError::Invalid("no output asked for".into()));
    }
    if spec.stage == Stage::Au && spec.outputs.contains(&Output::ExpressionProb) {
        return Err(ExportError::Invalid(
            "a stage-2 checkpoint has no expression head of its own to give `expression_prob`"
                .into(),
        ));
    }
    let cfg = model.config().clone();
    let state = State::of(model);
    let mut b = Builder { g: Graph::default(), state: &state, cfg: &cfg };
    let mut outputs: Vec<Output> = spec.outputs.clone();
    outputs.sort_by_key(|o| Output::ALL.iter().position(|a| a == o));
    outputs.dedup();
    let wants = |o: Output| outputs.contains(&o);
    let expression_from_fusion = spec.stage != Stage::Em;
    let need_fusion = wants(Output::Pred2)
        || wants(Output::AuProb)
        || (wants(Output::ExpressionProb) && expression_from_fusion);
    let need_em = need_fusion
        || wants(Output::Feature)
        || wants(Output::PredEm)
        || wants(Output::ExpressionProb);
    let need_au = need_fusion || wants(Output::AuFeat) || wants(Output::PredAu);

    let s = cfg.input_size;
    let mut inputs = Vec::new();
    let image = if spec.preprocess {
        let dims = [Dim::Batch, Dim::Fixed(s), Dim::Fixed(s), Dim::Fixed(3)];
        let raw = b.g.input("image", Elem::U8, &dims)?;
        inputs.push(TensorDesc {
            name: "image".into(),
            dtype: Elem::U8.name().into(),
            shape: onnx_dims(&dims),
            description: format!(
                "RGB bytes, height x width x channel, the face crop resized to {s} x {s}; the \
                 graph normalises them as (v / 255 - mean) / std"
            ),
        });
        b.preprocess(&raw)?
    } else {
        let dims = [Dim::Batch, Dim::Fixed(3), Dim::Fixed(s), Dim::Fixed(s)];
        let image = b.g.input("image", Elem::F32, &dims)?;
        inputs.push(TensorDesc {
            name: "image".into(),
            dtype: Elem::F32.name().into(),
            shape: onnx_dims(&dims),
            description: format!(
                "RGB, channel x height x width, the face crop resized to {s} x {s} and \
                 normalised as (v / 255 - mean) / std per channel (see `normalisation`)"
            ),
        });
        image
    };
    let au_loc = if need_au {
        let dims = [Dim::Batch, Dim::Fixed(NUM_AUS), Dim::Fixed(4)];
        let loc = b.g.input("au_loc", Elem::I64, &dims)?;
        let (lo, hi) = cfg.centre_range();
        inputs.push(TensorDesc {
            name: "au_loc".into(),
            dtype: Elem::I64.name().into(),
            shape: onnx_dims(&dims),
            description: format!(
                "per AU (AU order) the two crop centres x1, y1, x2, y2 on the {g} x {g} grid \
                 (landmarks scaled by {g} / {s}, rounded half to even, clamped to [{lo}, {hi}]); \
                 values outside [0, {g}] are clamped into it",
                g = cfg.grid()
            ),
        });
        Some(loc)
    } else {
        None
    };

    let f = b.backbone(&image)?;
    let mut values: Vec<(Output, Value)> = Vec::new();
    let mut feature = None;
    let mut pred_em = None;
    if need_em {
        let (feat, pred) = b.em_branch(&f)?;
        feature = Some(feat);
        pred_em = Some(pred);
    }
    let mut au_feat = None;
    let mut pred_au = None;
    if let (true, Some(loc)) = (need_au, &au_loc) {
        let (feat, pred) = b.au_branch(&f, loc)?;
        au_feat = Some(feat);
        pred_au = Some(pred);
    }
    let (mut pred2, mut au_prob) = (None, None);
    if let (true, Some(feat), Some(au)) = (need_fusion, &feature, &au_feat) {
        let (p2, att) = b.fusion(feat, au)?;
        pred2 = Some(p2);
        au_prob = Some(att);
    }
    let expression_logits = if expression_from_fusion { &pred2 } else { &pred_em };
    let expression_prob = match (wants(Output::ExpressionProb), expression_logits) {
        (true, Some(logits)) => {
            Some(b.g.node("Softmax", "expression_softmax", &[logits], vec![Attr::Int("axis", 1)]))
        }
        _ => None,
    };
    for (o, v) in [
        (Output::Feature, feature),
        (Output::PredEm, pred_em),
        (Output::AuFeat, au_feat),
        (Output::PredAu, pred_au),
        (Output::Pred2, pred2),
        (Output::AuProb, au_prob),
        (Output::ExpressionProb, expression_prob),
    ] {
        if let (true, Some(v)) = (wants(o), v) {
            values.push((o, v));
        }
    }
    let mut described = Vec::new();
    for o in &outputs {
        let Some((_, v)) = values.iter().find(|(k, _)| k == o) else {
            return Err(ExportError::Invalid(format!("output `{}` was not built", o.name())));
        };
        let dims = match o {
            Output::Feature => vec![Dim::Batch, Dim::Fixed(cfg.em_dim)],
            Output::PredEm | Output::Pred2 | Output::ExpressionProb => {
                vec![Dim::Batch, Dim::Fixed(cfg.num_classes)]
            }
            Output::AuFeat => vec![Dim::Batch, Dim::Fixed(NUM_CROPS), Dim::Fixed(cfg.au_feat)],
            Output::PredAu | Output::AuProb => vec![Dim::Batch, Dim::Fixed(NUM_AUS)],
        };
        b.g.output(v, o.name(), Elem::F32, &dims)?;
        described.push(TensorDesc {
            name: o.name().into(),
            dtype: Elem::F32.name().into(),
            shape: onnx_dims(&dims),
            description: o.description(spec.stage).into(),
        });
    }
    Ok(BuiltGraph { graph: b.g, inputs, outputs: described })
}

/// The walk over the model's structure, adding nodes to `g`.
struct Builder<'a> {
    g: Graph,
    state: &'a State,
    cfg: &'a ModelConfig,
}

/// A square convolution's geometry (crates/model/src/nn.rs `ConvSpec`).
#[derive(Clone, Copy)]
struct Conv {
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Conv {
    /// Stride 1, "same" padding.
    fn same(c_in: usize, c_out: usize, kernel: usize) -> Self {
        Conv { c_in, c_out, kernel, stride: 1, padding: kernel / 2 }
    }

    fn stride(self, stride: usize) -> Self {
        Conv { stride, ..self }
    }

    fn attrs(self) -> Vec<Attr> {
        let (k, s, p) = (self.kernel as i64, self.stride as i64, self.padding as i64);
        vec![
            Attr::Ints("kernel_shape", vec![k, k]),
            Attr::Ints("strides", vec![s, s]),
            Attr::Ints("pads", vec![p, p, p, p]),
        ]
    }
}

fn cpu_f32(values: &[f32], dims: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_slice(values, dims, &Device::Cpu)?)
}

impl Builder<'_> {
    /// `{conv}` (no bias) followed by the BatchNorm `{bn}`, folded; ReLU if `relu`.
    fn conv_bn(&mut self, x: &Value, conv: &str, bn: &str, c: Conv, relu: bool) -> Result<Value> {
        let w =
            self.state.get(&format!("{conv}.weight"), &[c.c_out, c.c_in, c.kernel, c.kernel])?;
        let f = self.state.fold(&w, None, bn, &[c.c_out], 0)?;
        let w = self.g.weight(&format!("{conv}.weight"), &f.weight)?;
        let bias = self.g.weight(&format!("{conv}.bias"), &f.bias)?;
        let y = self.g.node("Conv", conv, &[x, &w, &bias], c.attrs());
        Ok(if relu { self.g.node("Relu", &format!("{conv}.relu"), &[&y], vec![]) } else { y })
    }

    /// `nn.Linear` at `prefix` (weight [out, in], bias [out]) as a Gemm.
    fn linear(&mut self, x: &Value, prefix: &str, c_in: usize, c_out: usize) -> Result<Value> {
        let w = self.state.get(&format!("{prefix}.weight"), &[c_out, c_in])?;
        let bias = self.state.get(&format!("{prefix}.bias"), &[c_out])?;
        let w = self.g.weight(&format!("{prefix}.weight"), &w)?;
        let bias = self.g.weight(&format!("{prefix}.bias"), &bias)?;
        Ok(self.g.node("Gemm", prefix, &[x, &w, &bias], vec![Attr::Int("transB", 1)]))
    }

    /// `Reshape` to `shape` (-1 for the batch).
    fn reshape(&mut self, x: &Value, hint: &str, shape: &[i64]) -> Result<Value> {
        let s = self.g.ints(&format!("{hint}.shape"), shape)?;
        Ok(self.g.node("Reshape", hint, &[x, &s], vec![]))
    }

    fn transpose(&mut self, x: &Value, hint: &str, perm: &[i64]) -> Value {
        self.g.node("Transpose", hint, &[x], vec![Attr::Ints("perm", perm.to_vec())])
    }

    /// RGB bytes [N, S, S, 3] -> [N, 3, S, S] normalised as crates/data's `normalise_into`:
    /// `(v / 255 - mean) / std` in f32, in that order.
    fn preprocess(&mut self, raw: &Value) -> Result<Value> {
        let x = self.g.node("Cast", "preprocess.cast", &[raw], vec![Attr::Int("to", 1)]);
        let x = self.transpose(&x, "preprocess.nchw", &[0, 3, 1, 2]);
        let scale = self.g.scalar_f32("preprocess.255", 255.0)?;
        let x = self.g.node("Div", "preprocess.scale", &[&x, &scale], vec![]);
        let mean = self.g.weight("preprocess.mean", &cpu_f32(&IMAGENET_MEAN, &[1, 3, 1, 1])?)?;
        let std = self.g.weight("preprocess.std", &cpu_f32(&IMAGENET_STD, &[1, 3, 1, 1])?)?;
        let x = self.g.node("Sub", "preprocess.centre", &[&x, &mean], vec![]);
        Ok(self.g.node("Div", "preprocess.normalise", &[&x, &std], vec![]))
    }

    /// crates/model/src/resnet.rs: stem, stem max pool, layer1..layer4.
    ///
    /// # Shapes
    /// image [N, 3, S, S] -> f1 [N, C1, S/4, S/4] .. f4 [N, C4, S/32, S/32]
    fn backbone(&mut self, image: &Value) -> Result<[Value; 4]> {
        let cfg = self.cfg;
        let stem = Conv { c_in: 3, c_out: cfg.stem, kernel: 7, stride: 2, padding: 3 };
        let x = self.conv_bn(image, "backbone.conv1", "backbone.bn1", stem, true)?;
        // 3x3 / stride 2 / padding 1: ONNX's MaxPool never picks its padding, like PyTorch's.
        let mut x = self.g.node(
            "MaxPool",
            "backbone.maxpool",
            &[&x],
            vec![
                Attr::Ints("kernel_shape", vec![3, 3]),
                Attr::Ints("strides", vec![2, 2]),
                Attr::Ints("pads", vec![1, 1, 1, 1]),
            ],
        );
        let mut in_ch = cfg.stem;
        let mut maps = Vec::with_capacity(4);
        for i in 0..4 {
            let stride = if i == 0 { 1 } else { 2 };
            for j in 0..cfg.layers[i] {
                let s = if j == 0 { stride } else { 1 };
                let prefix = format!("backbone.layer{}.{j}", i + 1);
                x = self.block(&x, &prefix, in_ch, cfg.planes[i], s)?;
                in_ch = cfg.planes[i] * cfg.block.expansion();
            }
            maps.push(x.clone());
        }
        let [f1, f2, f3, f4]: [Value; 4] = maps
            .try_into()
            .map_err(|_| ExportError::Invalid("the backbone has four stages".into()))?;
        Ok([f1, f2, f3, f4])
    }

    /// One residual block (basic or bottleneck, torchvision v1.5), as resnet.rs `Block`.
    fn block(
        &mut self,
        x: &Value,
        prefix: &str,
        in_ch: usize,
        planes: usize,
        stride: usize,
    ) -> Result<Value> {
        let kind = self.cfg.block;
        let out_ch = planes * kind.expansion();
        let convs = match kind {
            BlockKind::Basic => {
                vec![Conv::same(in_ch, planes, 3).stride(stride), Conv::same(planes, planes, 3)]
            }
            BlockKind::Bottleneck => vec![
                Conv::same(in_ch, planes, 1),
                Conv::same(planes, planes, 3).stride(stride),
                Conv::same(planes, out_ch, 1),
            ],
        };
        let identity = if stride != 1 || in_ch != out_ch {
            let spec = Conv::same(in_ch, out_ch, 1).stride(stride);
            let (conv, bn) = (format!("{prefix}.downsample.0"), format!("{prefix}.downsample.1"));
            self.conv_bn(x, &conv, &bn, spec, false)?
        } else {
            x.clone()
        };
        let mut y = x.clone();
        let last = convs.len() - 1;
        for (i, spec) in convs.into_iter().enumerate() {
            let (conv, bn) = (format!("{prefix}.conv{}", i + 1), format!("{prefix}.bn{}", i + 1));
            y = self.conv_bn(&y, &conv, &bn, spec, i < last)?;
        }
        let sum = self.g.node("Add", &format!("{prefix}.add"), &[&y, &identity], vec![]);
        Ok(self.g.node("Relu", &format!("{prefix}.relu"), &[&sum], vec![]))
    }

    /// quirk: the reference's LRN with its size-2 window summed, not averaged (docs/METHOD.md
    /// section 3, EM step 2; crates/model/src/nn.rs `lrn_quirk`):
    /// `y_c = x_c / (1 + 1e-4 (x_{c-1}^2 + x_c^2))^0.75` with `x_{-1} = 0`. ONNX's own LRN
    /// averages a window that reaches forward (c, c + 1), so it is written out.
    ///
    /// # Shapes
    /// x [N, C, H, W] -> [N, C, H, W]
    fn lrn_quirk(&mut self, x: &Value, hint: &str, channels: usize) -> Result<Value> {
        let sq = self.g.node("Mul", &format!("{hint}.square"), &[x, x], vec![]);
        let sum = if channels > 1 {
            // channel c of `prev` holds x_{c-1}^2 (zero for c = 0)
            let starts = self.g.ints(&format!("{hint}.starts"), &[0])?;
            let ends = self.g.ints(&format!("{hint}.ends"), &[channels as i64 - 1])?;
            let axes = self.g.ints(&format!("{hint}.axes"), &[1])?;
            let head = self.g.node(
                "Slice",
                &format!("{hint}.head"),
                &[&sq, &starts, &ends, &axes],
                vec![],
            );
            let pads = self.g.ints(&format!("{hint}.pads"), &[0, 1, 0, 0, 0, 0, 0, 0])?;
            let prev = self.g.node("Pad", &format!("{hint}.prev"), &[&head, &pads], vec![]);
            self.g.node("Add", &format!("{hint}.window"), &[&sq, &prev], vec![])
        } else {
            sq
        };
        let alpha = self.g.scalar_f32(&format!("{hint}.alpha"), 1e-4)?;
        let k = self.g.scalar_f32(&format!("{hint}.k"), 1.0)?;
        let beta = self.g.scalar_f32(&format!("{hint}.beta"), 0.75)?;
        let scaled = self.g.node("Mul", &format!("{hint}.scaled"), &[&sum, &alpha], vec![]);
        let base = self.g.node("Add", &format!("{hint}.base"), &[&scaled, &k], vec![]);
        let denom = self.g.node("Pow", &format!("{hint}.denom"), &[&base, &beta], vec![]);
        Ok(self.g.node("Div", hint, &[x, &denom], vec![]))
    }

    /// branches.rs `EmBranch` and `pred_em`.
    ///
    /// # Shapes
    /// f1..f4 -> feature [N, em_dim], pred_em [N, K]
    fn em_branch(&mut self, f: &[Value; 4]) -> Result<(Value, Value)> {
        let cfg = self.cfg;
        let mut pooled = Vec::with_capacity(4);
        // kernel = stride 8, 4, 2 bring S/4, S/8, S/16 down to S/32
        for (i, k) in [8i64, 4, 2].into_iter().enumerate() {
            pooled.push(self.g.node(
                "MaxPool",
                &format!("em.pool{}", i + 1),
                &[&f[i]],
                vec![Attr::Ints("kernel_shape", vec![k, k]), Attr::Ints("strides", vec![k, k])],
            ));
        }
        pooled.push(f[3].clone());
        let refs: Vec<&Value> = pooled.iter().collect();
        let x = self.g.node("Concat", "em.concat", &refs, vec![Attr::Int("axis", 1)]);
        let c_in: usize = cfg.widths().iter().sum();
        let x = self.lrn_quirk(&x, "LRN_em", c_in)?; // [N, C1 + C2 + C3 + C4, S/32, S/32]
        let spec = Conv::same(c_in, cfg.em_dim, 3);
        let x = self.conv_bn(&x, "reduce_dim_em.0", "reduce_dim_em.1", spec, true)?;
        let x = self.g.node("GlobalAveragePool", "em.avgpool", &[&x], vec![]);
        let feature = self.g.node("Flatten", "em.feature", &[&x], vec![Attr::Int("axis", 1)]);
        let pred_em = self.linear(&feature, "pred_em", cfg.em_dim, cfg.num_classes)?;
        Ok((feature, pred_em))
    }

    /// branches.rs `AuBranch`: the decoder, the AU map M, the crops and crop nets, `pred_au`.
    ///
    /// # Shapes
    /// f1..f4, au_loc i64 [N, 17, 4] -> au_feat [N, 34, au_feat], pred_au [N, 17]
    fn au_branch(&mut self, f: &[Value; 4], au_loc: &Value) -> Result<(Value, Value)> {
        let cfg = self.cfg;
        let [c1, c2, c3, c4] = cfg.widths();
        let steps = [(c4, c3, c3, &f[2]), (c3, c2, c2, &f[1]), (c2, c1, cfg.crop_channels, &f[0])];
        let mut x = f[3].clone();
        for (i, (c_in, c_up, c_out, skip)) in steps.into_iter().enumerate() {
            let n = i + 1;
            // ConvTranspose2d(c_in, c_up, 4, stride 2, padding 1) -> BN -> ReLU; the transposed
            // conv's weight is [in, out, 4, 4], so the BN folds along axis 1.
            let key = format!("deconv_layer{n}.0.weight");
            let w = self.state.get(&key, &[c_in, c_up, 4, 4])?;
            let folded = self.state.fold(&w, None, &format!("deconv_layer{n}.1"), &[c_up], 1)?;
            let w = self.g.weight(&key, &folded.weight)?;
            let bias = self.g.weight(&format!("deconv_layer{n}.0.bias"), &folded.bias)?;
            let up = self.g.node(
                "ConvTranspose",
                &format!("deconv_layer{n}"),
                &[&x, &w, &bias],
                vec![
                    Attr::Ints("kernel_shape", vec![4, 4]),
                    Attr::Ints("strides", vec![2, 2]),
                    Attr::Ints("pads", vec![1, 1, 1, 1]),
                ],
            );
            let up = self.g.node("Relu", &format!("deconv_layer{n}.relu"), &[&up], vec![]);
            let cat = self.g.node(
                "Concat",
                &format!("au.concat{n}"),
                &[skip, &up],
                vec![Attr::Int("axis", 1)],
            );
            let (conv, bn) = (format!("reduce_dim_{n}_au.0"), format!("reduce_dim_{n}_au.1"));
            x = self.conv_bn(&cat, &conv, &bn, Conv::same(2 * c_up, c_out, 3), true)?;
        }
        let m = self.lrn_quirk(&x, "LRN_au", cfg.crop_channels)?; // [N, c, G, G]
        let au_feat = self.crop_nets(&m, au_loc)?; // [N, 34, F]
        let flat =
            self.reshape(&au_feat, "pred_au.flatten", &[-1, (NUM_CROPS * cfg.au_feat) as i64])?;
        let logits = self.linear(&flat, "pred_au.0", NUM_CROPS * cfg.au_feat, NUM_AUS)?;
        let pred_au = self.g.node("Sigmoid", "pred_au", &[&logits], vec![]);
        Ok((au_feat, pred_au))
    }

    /// crops.rs: the 34 windows of M around the AU centres and the 34 crop nets.
    ///
    /// Crop k = 2i + c of sample n is `M[:, y-L/2 : y+L/2, x-L/2 : x+L/2]` with
    /// (x, y) = (au_loc[n, i, 2c], au_loc[n, i, 2c + 1]), zero outside the map (docs/METHOD.md
    /// section 3, AU step 5). In the graph: pad M by L/2, lay it out channels-last as rows
    /// [N * Gp * Gp, c], and gather the L * L rows of every window with indices computed from
    /// `au_loc`. Centres are first clamped to [0, G] (aue rejects others; there every window
    /// stays inside the padded map).
    /// Crop_Net_1 (34 separate 3x3 convs) is one grouped Conv (group 34); Crop_Net_2 (34
    /// separate Linear layers) is one batched MatMul.
    ///
    /// # Shapes
    /// m [N, c, G, G], au_loc i64 [N, 17, 4] -> au_feat [N, 34, F]
    fn crop_nets(&mut self, m: &Value, au_loc: &Value) -> Result<Value> {
        let cfg = self.cfg;
        let (c, g, l, feat) = (cfg.crop_channels, cfg.grid(), cfg.crop_side(), cfg.au_feat);
        let (h, gp) = (l / 2, g + l);
        let k = NUM_CROPS;
        // Rows of the padded channels-last map.
        let pads =
            self.g.ints("crops.pads", &[0, 0, h as i64, h as i64, 0, 0, h as i64, h as i64])?;
        let padded = self.g.node("Pad", "crops.padded", &[m, &pads], vec![]); // [N, c, Gp, Gp]
        let hwc = self.transpose(&padded, "crops.channels_last", &[0, 2, 3, 1]);
        let rows = self.reshape(&hwc, "crops.rows", &[-1, c as i64])?; // [N * Gp * Gp, c]

        // Window indices: row (n Gp + y + py) Gp + x + px for each crop and position (py, px).
        let zero = self.g.scalar_i64("crops.zero", 0)?;
        let grid = self.g.scalar_i64("crops.grid", g as i64)?;
        let loc = self.g.node("Max", "crops.loc_min", &[au_loc, &zero], vec![]);
        let loc = self.g.node("Min", "crops.loc", &[&loc, &grid], vec![]); // [N, 17, 4]
        let xy = self.reshape(&loc, "crops.centres", &[-1, k as i64, 2])?; // [N, 34, 2]
        let (ix, iy) = (self.g.scalar_i64("crops.x", 0)?, self.g.scalar_i64("crops.y", 1)?);
        let axis2 = vec![Attr::Int("axis", 2)];
        let x = self.g.node("Gather", "crops.cx", &[&xy, &ix], axis2.clone()); // [N, 34]
        let y = self.g.node("Gather", "crops.cy", &[&xy, &iy], axis2);
        // The sample index n, from au_loc's batch size.
        let shape = self.g.node("Shape", "crops.loc_shape", &[au_loc], vec![]);
        let batch = self.g.node("Gather", "crops.batch", &[&shape, &zero], vec![]);
        let one = self.g.scalar_i64("crops.one", 1)?;
        let n = self.g.node("Range", "crops.samples", &[&zero, &batch, &one], vec![]); // [N]
        let n = self.reshape(&n, "crops.samples_col", &[-1, 1])?; // [N, 1]
        let gp_v = self.g.scalar_i64("crops.side", gp as i64)?;
        let row = self.g.node("Mul", "crops.sample_rows", &[&n, &gp_v], vec![]);
        let row = self.g.node("Add", "crops.top_rows", &[&row, &y], vec![]); // n Gp + y
        let base = self.g.node("Mul", "crops.top_left", &[&row, &gp_v], vec![]);
        let base = self.g.node("Add", "crops.corner", &[&base, &x], vec![]); // [N, 34]
        let base = self.reshape(&base, "crops.corner_col", &[-1, k as i64, 1])?;
        let offsets: Vec<i64> =
            (0..l).flat_map(|py| (0..l).map(move |px| (py * gp + px) as i64)).collect();
        let offsets = self.g.ints("crops.window", &offsets)?; // [L * L]
        let idx = self.g.node("Add", "crops.indices", &[&base, &offsets], vec![]); // [N, 34, L*L]
        let crops =
            self.g.node("Gather", "crops.gather", &[&rows, &idx], vec![Attr::Int("axis", 0)]);
        // [N, 34, L*L, c] -> [N, 34, c, L*L] -> [N, 34 c, L, L]
        let crops = self.transpose(&crops, "crops.channels_first", &[0, 1, 3, 2]);
        let (li, ci, ki) = (l as i64, c as i64, k as i64);
        let crops = self.reshape(&crops, "crops.maps", &[-1, ki * ci, li, li])?;

        // Crop_Net_1: conv k has output channels k c .. (k + 1) c of a grouped conv.
        let w1 = self.state.get("Crop_Net_1.*.0.weight", &[k, c, c, 3, 3])?;
        let b1 = self.state.get("Crop_Net_1.*.0.bias", &[k, c])?;
        let w1 = self.g.weight("Crop_Net_1.0.weight", &w1.reshape((k * c, c, 3, 3))?)?;
        let b1 = self.g.weight("Crop_Net_1.0.bias", &b1.reshape(k * c)?)?;
        let mut attrs = Conv::same(c, c, 3).attrs();
        attrs.push(Attr::Int("group", ki));
        let h1 = self.g.node("Conv", "Crop_Net_1", &[&crops, &w1, &b1], attrs);
        let h1 = self.g.node("Relu", "Crop_Net_1.relu", &[&h1], vec![]); // [N, 34 c, L, L]
        // Each crop flattened channel-major, as PyTorch's flatten of [c, L, L].
        let d = c * l * l;
        let h1 = self.reshape(&h1, "Crop_Net_2.flatten", &[-1, ki, d as i64])?;
        let h1 = self.transpose(&h1, "Crop_Net_2.by_crop", &[1, 0, 2]); // [34, N, D]

        // Crop_Net_2: [34, N, D] x [34, D, F] + [34, 1, F] -> ReLU (its Dropout: identity).
        let w2 = self.state.get("Crop_Net_2.*.0.weight", &[k, feat, d])?;
        let b2 = self.state.get("Crop_Net_2.*.0.bias", &[k, feat])?;
        let w2 = w2.transpose(1, 2)?.contiguous()?;
        let w2 = self.g.weight("Crop_Net_2.0.weight_t", &w2)?;
        let b2 = self.g.weight("Crop_Net_2.0.bias", &b2.reshape((k, 1, feat))?)?;
        let h2 = self.g.node("MatMul", "Crop_Net_2", &[&h1, &w2], vec![]);
        let h2 = self.g.node("Add", "Crop_Net_2.bias_add", &[&h2, &b2], vec![]);
        let h2 = self.g.node("Relu", "Crop_Net_2.relu", &[&h2], vec![]); // [34, N, F]
        Ok(self.transpose(&h2, "au_feat", &[1, 0, 2])) // [N, 34, F]
    }

    /// branches.rs `Fusion` in eval mode.
    ///
    /// # Shapes
    /// feature [N, em_dim], au_feat [N, 34, F] -> pred2 [N, K], au_prob [N, 17]
    fn fusion(&mut self, feature: &Value, au_feat: &Value) -> Result<(Value, Value)> {
        let cfg = self.cfg;
        let (dim, width, a) = (cfg.fuse_dim, cfg.au_feat, NUM_AUS);
        let (ai, wi) = (a as i64, width as i64);
        // quirk: au_feat viewed as [N, 2, 17, F] then transposed, so row i = [crop i, crop i + 17]
        // (docs/METHOD.md section 3, fusion step 1).
        let rows = self.reshape(au_feat, "fusion.view", &[-1, 2, ai, wi])?;
        let rows = self.transpose(&rows, "fusion.swap", &[0, 2, 1, 3]);
        let rows = self.reshape(&rows, "AU_feature", &[-1, ai, 2 * wi])?; // [N, 17, 2F]

        // fc_em_fuse_3: Linear -> BatchNorm1d (folded) -> Tanh.
        let w = self.state.get("fc_em_fuse_3.1.weight", &[dim, cfg.em_dim])?;
        let bias = self.state.get("fc_em_fuse_3.1.bias", &[dim])?;
        let folded = self.state.fold(&w, Some(&bias), "fc_em_fuse_3.2", &[dim], 0)?;
        let w = self.g.weight("fc_em_fuse_3.1.weight", &folded.weight)?;
        let bias = self.g.weight("fc_em_fuse_3.1.bias", &folded.bias)?;
        let em = self.g.node(
            "Gemm",
            "fc_em_fuse_3",
            &[feature, &w, &bias],
            vec![Attr::Int("transB", 1)],
        );
        let em = self.g.node("Tanh", "em_dim", &[&em], vec![]); // [N, Dim]

        // The 17 fc_au_fuse_3 heads (Linear -> BatchNorm1d folded -> Tanh) as one batched MatMul.
        let w = self.state.get("fc_au_fuse_3.*.1.weight", &[a, dim, 2 * width])?;
        let bias = self.state.get("fc_au_fuse_3.*.1.bias", &[a, dim])?;
        let folded = self.state.fold(&w, Some(&bias), "fc_au_fuse_3.*.2", &[a, dim], 1)?;
        let w = self
            .g
            .weight("fc_au_fuse_3.1.weight_t", &folded.weight.transpose(1, 2)?.contiguous()?)?;
        let bias = self.g.weight("fc_au_fuse_3.1.bias", &folded.bias.reshape((a, 1, dim))?)?;
        let rows_t = self.transpose(&rows, "fc_au_fuse_3.by_au", &[1, 0, 2]); // [17, N, 2F]
        let au = self.g.node("MatMul", "fc_au_fuse_3", &[&rows_t, &w], vec![]);
        let au = self.g.node("Add", "fc_au_fuse_3.bias_add", &[&au, &bias], vec![]);
        let au = self.g.node("Tanh", "au_dim", &[&au], vec![]); // [17, N, Dim]

        // Attention logits relu(Linear(em_dim * au_dim_i)), softmax over the 17 AUs.
        let prod = self.g.node("Mul", "fusion.product", &[&au, &em], vec![]); // [17, N, Dim]
        let w = self.state.get("fc_attention_fuse_3.0.weight", &[1, dim])?;
        let bias = self.state.get("fc_attention_fuse_3.0.bias", &[1])?;
        let w = self.g.weight("fc_attention_fuse_3.0.weight_t", &w.t()?.contiguous()?)?;
        let bias = self.g.weight("fc_attention_fuse_3.0.bias", &bias)?;
        let logits = self.g.node("MatMul", "fc_attention_fuse_3", &[&prod, &w], vec![]);
        let logits = self.g.node("Add", "fc_attention_fuse_3.bias_add", &[&logits, &bias], vec![]);
        let logits = self.g.node("Relu", "fc_attention_fuse_3.relu", &[&logits], vec![]);
        let logits = self.reshape(&logits, "fusion.logits", &[ai, -1])?; // [17, N]
        let logits = self.transpose(&logits, "fusion.logits_t", &[1, 0]); // [N, 17]
        let au_prob =
            self.g.node("Softmax", "au_prob_softmax", &[&logits], vec![Attr::Int("axis", 1)]);

        // Result = sum_i au_prob_i AU_feature_i; pred2 = Linear([feature, Result]).
        let axes = self.g.ints("fusion.unsqueeze_axes", &[1])?;
        let weights = self.g.node("Unsqueeze", "fusion.weights", &[&au_prob, &axes], vec![]);
        let result = self.g.node("MatMul", "fusion.result", &[&weights, &rows], vec![]); // [N, 1, 2F]
        let result = self.reshape(&result, "Result", &[-1, 2 * wi])?;
        let cat =
            self.g.node("Concat", "fusion.concat", &[feature, &result], vec![Attr::Int("axis", 1)]);
        let pred2 = self.linear(&cat, "pred_em_fuse_3", cfg.em_dim + 2 * width, cfg.num_classes)?;
        Ok((pred2, au_prob))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aue_model::Preset;
    use tract_onnx::prelude::{
        Framework, InferenceModelExt, IntoRunnable, IntoTValue, Tensor as TractTensor, tvec,
    };

    /// The LRN written in ONNX ops equals crates/model's `lrn_quirk` (the summed window over
    /// channels c - 1 and c). At the parity weights' activation scale the LRN barely changes a
    /// value, so the model-level tests cannot tell it from a wrong window: inputs here are
    /// large, as in trained networks.
    #[test]
    fn lrn_graph_equals_the_models_lrn_quirk() {
        let cfg = ModelConfig::preset(Preset::Tiny);
        let model = AueModel::new(&cfg, &Device::Cpu).unwrap();
        let state = State::of(&model);
        let mut b = Builder { g: Graph::default(), state: &state, cfg: &cfg };
        let dims = [Dim::Batch, Dim::Fixed(5), Dim::Fixed(3), Dim::Fixed(2)];
        let x = b.g.input("x", Elem::F32, &dims).unwrap();
        let y = b.lrn_quirk(&x, "lrn", 5).unwrap();
        b.g.output(&y, "y", Elem::F32, &dims).unwrap();
        let bytes = prost::Message::encode_to_vec(&b.g.finish("lrn", "", &[]));
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();

        let x = (Tensor::randn(0f32, 1., (2, 5, 3, 2), &Device::Cpu).unwrap() * 40.).unwrap();
        let want = aue_model::nn::lrn_quirk(&x).unwrap().flatten_all().unwrap();
        let want = want.to_vec1::<f32>().unwrap();
        let values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let input = TractTensor::from_shape(&[2, 5, 3, 2], &values).unwrap();
        let out = plan.run(tvec![input.into_tvalue()]).unwrap();
        let got: Vec<f32> = out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect();
        let err = crate::check::relative_l2(&got, &want);
        assert!(err < 1e-6, "relative L2 {err:e}");
        // The LRN changes these values by far more than the tolerance.
        assert!(crate::check::relative_l2(&values, &want) > 1e-2);
    }
}
