//! face-api's 68-point landmark regressors (`FaceLandmark68Net`, `FaceLandmark68TinyNet`) on Candle.
//!
//! Both read a 112 x 112 face crop (padded to a square, see `preprocess`) and regress 136 numbers,
//! the x, y of the 68 iBUG points (docs/METHOD.md section 5's layout) as fractions of the padded
//! square. The feature extractor is a stack of "dense blocks" of depthwise separable convolutions
//! whose outputs are summed (face-api `faceFeatureExtractor/denseBlock.ts`); the full net has four
//! blocks (32, 64, 128, 256 channels) and a 7 x 7 average pool, the tiny one three (32, 64, 128)
//! and a 14 x 14 pool; a fully connected layer gives the 136 outputs. Tensor names are face-api's.

use candle_core::{Device, Tensor};

use crate::error::{CandleContext, Result};
use crate::geometry::Landmarks68;
use crate::ops::{add, conv2d_tf, ensure_f32, separable_conv_same};
use crate::preprocess::{LANDMARK_INPUT, PixelRect};
use crate::weights::{FACE_LANDMARK_68, FACE_LANDMARK_68_TINY, Weights};

/// Which landmark net to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LandmarkNetKind {
    /// `face_landmark_68_model` (357 KB, four dense blocks): the default.
    #[default]
    Full,
    /// `face_landmark_68_tiny_model` (75 KB, three dense blocks).
    Tiny,
}

impl LandmarkNetKind {
    fn widths(self) -> &'static [usize] {
        match self {
            Self::Full => &[32, 64, 128, 256],
            Self::Tiny => &[32, 64, 128],
        }
    }

    fn convs_per_block(self) -> usize {
        match self {
            Self::Full => 4,
            Self::Tiny => 3,
        }
    }
}

struct SeparableConv {
    depthwise_filter: Tensor,
    pointwise_filter: Tensor,
    bias: Tensor,
}

impl SeparableConv {
    fn load(w: &mut Weights, prefix: &str, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(Self {
            depthwise_filter: w.take(&format!("{prefix}.depthwise_filter"), &[c_in, 1, 3, 3])?,
            pointwise_filter: w
                .take(&format!("{prefix}.pointwise_filter"), &[c_out, c_in, 1, 1])?,
            bias: w.take(&format!("{prefix}.bias"), &[c_out])?,
        })
    }

    fn forward(&self, x: &Tensor, stride: usize) -> Result<Tensor> {
        separable_conv_same(x, &self.depthwise_filter, &self.pointwise_filter, &self.bias, stride)
    }
}

enum FirstConv {
    /// dense0's first layer: a plain 3x3 convolution of the RGB input.
    Dense {
        filters: Tensor,
        bias: Tensor,
    },
    Separable(SeparableConv),
}

struct DenseBlock {
    conv0: FirstConv,
    rest: Vec<SeparableConv>,
}

impl DenseBlock {
    /// face-api `denseBlock4` / `denseBlock3`: every layer sees the sum of all earlier outputs.
    ///
    /// # Shapes
    /// `x`: [b, c_in, h, w] -> [b, c_out, h / 2, w / 2]
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out1 = match &self.conv0 {
            FirstConv::Dense { filters, bias } => conv2d_tf(x, filters, bias, 2, true)?,
            FirstConv::Separable(c) => c.forward(x, 2)?,
        }
        .relu()
        .op("dense block: relu")?; // [b, c_out, h/2, w/2]
        // outs[i] is out_{i+2}; the sum is built right to left as face-api nests its adds.
        let mut outs: Vec<Tensor> = Vec::with_capacity(self.rest.len());
        for (i, conv) in self.rest.iter().enumerate() {
            let input = if i == 0 { out1.clone() } else { sum_nested(&out1, &outs, true)? };
            outs.push(conv.forward(&input, 1)?);
        }
        sum_nested(&out1, &outs, true)
    }
}

/// `relu(out1 + (o2 + (o3 + (... + on))))`, face-api's order of additions.
fn sum_nested(out1: &Tensor, outs: &[Tensor], relu: bool) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for o in outs.iter().rev() {
        acc = Some(match acc {
            None => o.clone(),
            Some(a) => add(o, &a, false)?,
        });
    }
    match acc {
        None if relu => out1.relu().op("dense block: relu"),
        None => Ok(out1.clone()),
        Some(a) => add(out1, &a, relu),
    }
}

/// A face-api 68-point landmark net with its weights.
pub struct LandmarkNet {
    kind: LandmarkNetKind,
    blocks: Vec<DenseBlock>,
    fc_weights: Tensor,
    fc_bias: Tensor,
}

impl LandmarkNet {
    /// Loads the shipped weights of `kind`.
    pub fn new(kind: LandmarkNetKind, device: &Device) -> Result<Self> {
        let (file, bytes) = match kind {
            LandmarkNetKind::Full => ("face_landmark_68.safetensors", FACE_LANDMARK_68),
            LandmarkNetKind::Tiny => ("face_landmark_68_tiny.safetensors", FACE_LANDMARK_68_TINY),
        };
        Self::from_weights(kind, Weights::from_bytes(file, bytes, device)?)
    }

    /// Builds the net from converted weights (strict: every tensor used, shapes checked).
    pub fn from_weights(kind: LandmarkNetKind, mut w: Weights) -> Result<Self> {
        let mut blocks = Vec::new();
        let mut c_in = 3;
        for (i, &c) in kind.widths().iter().enumerate() {
            let conv0 = if i == 0 {
                FirstConv::Dense {
                    filters: w.take("dense0.conv0.filters", &[c, 3, 3, 3])?,
                    bias: w.take("dense0.conv0.bias", &[c])?,
                }
            } else {
                FirstConv::Separable(SeparableConv::load(
                    &mut w,
                    &format!("dense{i}.conv0"),
                    c_in,
                    c,
                )?)
            };
            let rest = (1..kind.convs_per_block())
                .map(|j| SeparableConv::load(&mut w, &format!("dense{i}.conv{j}"), c, c))
                .collect::<Result<Vec<_>>>()?;
            blocks.push(DenseBlock { conv0, rest });
            c_in = c;
        }
        let fc_weights = w.take("fc.weights", &[136, c_in])?;
        let fc_bias = w.take("fc.bias", &[136])?;
        w.finish()?;
        Ok(Self { kind, blocks, fc_weights, fc_bias })
    }

    pub fn kind(&self) -> LandmarkNetKind {
        self.kind
    }

    /// The raw regression: 68 (x, y) pairs as fractions of the padded square crop.
    ///
    /// # Shapes
    /// `x`: [b, 3, 112, 112] (from `preprocess::square_input`) -> [b, 136]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ensure_f32(x, "landmark net input")?;
        let mut h = x.clone();
        for block in &self.blocks {
            h = block.forward(&h)?; // [b, c, 112 / 2^k, 112 / 2^k]
        }
        // avgPool with a window the size of the last map and 'valid' padding: a global mean.
        let feat = h.mean_keepdim(3).op("avg pool")?.mean_keepdim(2).op("avg pool")?; // [b, c, 1, 1]
        let feat = feat.flatten_from(1).op("flatten")?; // [b, c]
        let y = feat.matmul(&self.fc_weights.t().op("fc: transpose")?).op("fc: matmul")?; // [b, 136]
        y.broadcast_add(&self.fc_bias).op("fc: bias")
    }
}

/// Maps one row of the net's output to image pixels for the crop it was computed on.
///
/// face-api `FaceLandmark68NetBase.postProcess`: undo the centred padding assuming |w - h| / 2 on
/// each side, divide by the crop's scaled size, then scale to the crop's pixels. face-api then
/// shifts by its detection box's unfloored corner; we shift by the crop's own corner, which is where
/// the points were measured.
pub fn crop_points(out: &[f32], crop: PixelRect) -> Landmarks68 {
    let size = LANDMARK_INPUT as f32;
    let (w, h) = (crop.width as f32, crop.height as f32);
    let scale = size / w.max(h);
    let (sw, sh) = (w * scale, h * scale);
    let pad_x = if sw < sh { (sh - sw).abs() / 2.0 } else { 0.0 };
    let pad_y = if sh < sw { (sw - sh).abs() / 2.0 } else { 0.0 };
    let mut pts = [[0f32; 2]; 68];
    for (i, p) in pts.iter_mut().enumerate() {
        let rx = (out[2 * i] * size - pad_x) / sw;
        let ry = (out[2 * i + 1] * size - pad_y) / sh;
        *p = [rx * w + crop.x as f32, ry * h + crop.y as f32];
    }
    pts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_nets_load_strictly_and_run() {
        for kind in [LandmarkNetKind::Full, LandmarkNetKind::Tiny] {
            let net = LandmarkNet::new(kind, &Device::Cpu).unwrap();
            let x = Tensor::zeros((2, 3, 112, 112), candle_core::DType::F32, &Device::Cpu).unwrap();
            let y = net.forward(&x).unwrap();
            assert_eq!(y.dims(), &[2, 136]);
        }
    }

    #[test]
    fn full_weights_do_not_load_as_tiny() {
        let w = Weights::from_bytes("full", FACE_LANDMARK_68, &Device::Cpu).unwrap();
        let e = LandmarkNet::from_weights(LandmarkNetKind::Tiny, w).err().unwrap().to_string();
        assert!(e.contains("fc.weights") || e.contains("unexpected"), "{e}");
    }

    #[test]
    fn crop_points_undo_centred_padding() {
        // A 50 x 100 crop: the 112 square holds it 56 wide with 28 padding left and right, so
        // output (0.25, 0.0) is the crop's left edge, (0.75, 1.0) its bottom-right corner.
        let crop = PixelRect { x: 10, y: 20, width: 50, height: 100 };
        let mut out = vec![0f32; 136];
        out[0] = 0.25;
        out[2] = 0.75;
        out[3] = 1.0;
        let p = crop_points(&out, crop);
        assert!((p[0][0] - 10.0).abs() < 1e-4 && (p[0][1] - 20.0).abs() < 1e-4);
        assert!((p[1][0] - 60.0).abs() < 1e-4 && (p[1][1] - 120.0).abs() < 1e-4);
    }
}
