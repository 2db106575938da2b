//! torchvision's ResNet (v1.5: the bottleneck's stride sits on its 3x3 conv) with torchvision's
//! module names, returning the four stage maps f1..f4 (docs/METHOD.md section 3, "Backbone").
//!
//! Candle's own ResNet (candle-transformers) is inference-only; this one trains: its BatchNorm has
//! a train mode and its stem max pool has an exact backward (see `crate::nn`).

use candle_core::Tensor;

use crate::config::{BlockKind, ModelConfig};
use crate::error::Result;
use crate::nn::{BatchNorm, Conv2d, ConvSpec, Linear, Params, PartMode, max_pool_3x3_s2_p1};

/// A conv followed by its BatchNorm (torchvision's `conv{i}`/`bn{i}` pairs and `downsample`).
#[derive(Debug, Clone)]
pub(crate) struct ConvBn {
    pub(crate) conv: Conv2d,
    pub(crate) bn: BatchNorm,
}

impl ConvBn {
    fn new(conv: &Params, bn: &Params, spec: ConvSpec) -> Result<Self> {
        Ok(ConvBn { conv: Conv2d::new(conv, spec)?, bn: BatchNorm::new(bn, spec.out_channels)? })
    }

    fn forward(&self, x: &Tensor, mode: PartMode) -> Result<Tensor> {
        self.bn.forward(&self.conv.forward(x, mode)?, mode)
    }

    /// `relu(self.forward(x, mode))` (one op after the convolution in train mode on the CPU).
    fn forward_relu(&self, x: &Tensor, mode: PartMode) -> Result<Tensor> {
        self.bn.forward_relu(&self.conv.forward(x, mode)?, mode)
    }

    /// `relu(self.forward(x, mode) + residual)` (one op after the convolution in train mode on
    /// the CPU).
    fn forward_add_relu(&self, x: &Tensor, residual: &Tensor, mode: PartMode) -> Result<Tensor> {
        self.bn.forward_add_relu(&self.conv.forward(x, mode)?, residual, mode)
    }
}

/// One residual block: `convs` in order (ReLU between them), plus the optional `downsample`.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) convs: Vec<ConvBn>,
    pub(crate) downsample: Option<ConvBn>,
}

impl Block {
    fn new(
        p: &Params,
        kind: BlockKind,
        in_ch: usize,
        planes: usize,
        stride: usize,
    ) -> Result<Self> {
        let out_ch = planes * kind.expansion();
        let pair =
            |i: usize, spec| ConvBn::new(&p.pp(format!("conv{i}")), &p.pp(format!("bn{i}")), spec);
        let convs = match kind {
            BlockKind::Basic => vec![
                pair(1, ConvSpec::same(in_ch, planes, 3).stride(stride))?,
                pair(2, ConvSpec::same(planes, planes, 3))?,
            ],
            BlockKind::Bottleneck => vec![
                pair(1, ConvSpec::same(in_ch, planes, 1))?,
                pair(2, ConvSpec::same(planes, planes, 3).stride(stride))?,
                pair(3, ConvSpec::same(planes, out_ch, 1))?,
            ],
        };
        let downsample = if stride != 1 || in_ch != out_ch {
            let d = p.pp("downsample");
            Some(ConvBn::new(&d.pp(0), &d.pp(1), ConvSpec::same(in_ch, out_ch, 1).stride(stride))?)
        } else {
            None
        };
        Ok(Block { convs, downsample })
    }

    /// # Shapes
    /// x [B, C_in, H, W] -> [B, C_out, H / stride, W / stride]
    fn forward(&self, x: &Tensor, mode: PartMode) -> Result<Tensor> {
        let identity = match &self.downsample {
            Some(d) => d.forward(x, mode)?,
            None => x.clone(),
        };
        let Some((last, inner)) = self.convs.split_last() else {
            return Err(
                candle_core::Error::Msg("a residual block without convolutions".into()).into()
            );
        };
        let mut y = x.clone();
        for cb in inner {
            y = cb.forward_relu(&y, mode)?;
        }
        last.forward_add_relu(&y, &identity, mode)
    }
}

/// The backbone: `conv1`, `bn1`, stem max pool, `layer1`..`layer4`, and `fc`.
#[derive(Debug, Clone)]
pub(crate) struct ResNet {
    pub(crate) stem: ConvBn,
    pub(crate) layers: [Vec<Block>; 4],
}

impl ResNet {
    pub(crate) fn new(p: &Params, cfg: &ModelConfig) -> Result<Self> {
        let stem = ConvBn::new(
            &p.pp("conv1"),
            &p.pp("bn1"),
            ConvSpec::same(3, cfg.stem, 7).stride(2).padding(3),
        )?;
        let mut in_ch = cfg.stem;
        let mut make_layer = |i: usize| -> Result<Vec<Block>> {
            let lp = p.pp(format!("layer{}", i + 1));
            let stride = if i == 0 { 1 } else { 2 };
            let mut blocks = Vec::with_capacity(cfg.layers[i]);
            for j in 0..cfg.layers[i] {
                let s = if j == 0 { stride } else { 1 };
                blocks.push(Block::new(&lp.pp(j), cfg.block, in_ch, cfg.planes[i], s)?);
                in_ch = cfg.planes[i] * cfg.block.expansion();
            }
            Ok(blocks)
        };
        let layers = [make_layer(0)?, make_layer(1)?, make_layer(2)?, make_layer(3)?];
        // The reference replaces torchvision's fc by Linear(C4, num_classes) that no branch uses:
        // it lives in the state (checkpoints interchange) but not in the forward pass.
        Linear::new(&p.pp("fc"), cfg.widths()[3], cfg.num_classes)?;
        Ok(ResNet { stem, layers })
    }

    /// # Shapes
    /// x [B, 3, S, S] -> f1 [B, C1, S/4, S/4], f2 [B, C2, S/8, S/8], f3 [B, C3, S/16, S/16],
    /// f4 [B, C4, S/32, S/32]
    pub(crate) fn forward(&self, x: &Tensor, mode: PartMode) -> Result<[Tensor; 4]> {
        let x = self.stem.forward_relu(&mode.see(x), mode)?; // [B, stem, S/2, S/2]
        let mut x = max_pool_3x3_s2_p1(&x)?; // [B, stem, S/4, S/4]
        let mut stage = |layer: &[Block]| -> Result<Tensor> {
            for block in layer {
                x = block.forward(&x, mode)?;
            }
            Ok(x.clone())
        };
        let [l1, l2, l3, l4] = &self.layers;
        Ok([stage(l1)?, stage(l2)?, stage(l3)?, stage(l4)?])
    }
}
