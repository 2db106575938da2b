//! face-api's SSD MobileNet v1 face detector (`SsdMobilenetv1`) on Candle, with face-api's box
//! decoding and non-maximum suppression.
//!
//! The image is padded at the bottom/right to a square, resized to 512 x 512 and scaled to
//! [-1, 1]. A MobileNet v1 backbone (13 depthwise separable pairs with ReLU6, batch norm folded into
//! the depthwise filters at load time) feeds six SSD heads at strides 16, 32, 64, 128, 256 and 512
//! (grids 32, 16, 8, 4, 2, 1; 3 anchors per cell on the first, 6 on the others: 5118 anchors,
//! shipped in the weights as `Output.extra_dim`). Each anchor predicts a box offset and a face
//! score; boxes above the score threshold are kept after NMS (IoU 0.5, at most 100 faces).
//!
//! Names are the TensorFlow ones in face-api's manifest (`MobilenetV1.Conv2d_3_depthwise...`).
//! It was trained on WIDER FACE (face-api's documentation), so unlike the tiny detector it finds
//! faces filling the frame, turned faces and grey photos (measured in README.md).

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::error::{CandleContext, LandmarkError, Result};
use crate::geometry::FaceBox;
use crate::ops::{self, Activation, bias_act, ensure_f32, pointwise_conv};
use crate::preprocess::{Normalise, Padding, PixelRect, square_input_with};
use crate::weights::{EmbeddedNet, SSD_MOBILENETV1, Weights};

/// Network input side (face-api `SsdMobilenetv1.forwardInput`: the anchors are made for it).
pub const SSD_INPUT: usize = 512;
/// Anchors: 32 x 32 x 3 + 16 x 16 x 6 + 8 x 8 x 6 + 4 x 4 x 6 + 2 x 2 x 6 + 1 x 6.
const ANCHORS: usize = 5118;
/// face-api `mobileNetV1.ts`.
const BN_EPSILON: f64 = 0.0010000000474974513;
/// face-api `SsdMobilenetv1.locateFaces`.
const IOU_THRESHOLD: f64 = 0.5;
/// face-api `SsdMobilenetv1Options` default `maxResults`.
const MAX_RESULTS: usize = 100;
/// Output channels of MobilenetV1's Conv2d_0 .. Conv2d_13 pointwise layers.
const WIDTHS: [usize; 14] = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024];
/// Prediction/Conv2d_0 .. Conv2d_7: (kernel, output channels); odd layers have stride 2.
const EXTRA: [(usize, usize); 8] =
    [(1, 256), (3, 512), (1, 128), (3, 256), (1, 128), (3, 256), (1, 64), (3, 128)];

/// A convolution with its folded batch-norm offset and ReLU6 (face-api `pointwiseConvLayer`, which
/// despite its name is also the 3 x 3 first layer and the stride-2 extra layers).
struct PointwiseConv {
    filters: Tensor,
    convolution_bn_offset: Tensor,
    stride: usize,
}

impl PointwiseConv {
    fn load(
        w: &mut Weights,
        prefix: &str,
        k: usize,
        c_in: usize,
        c_out: usize,
        stride: usize,
    ) -> Result<Self> {
        Ok(Self {
            filters: w.take(&format!("{prefix}.weights"), &[c_out, c_in, k, k])?,
            convolution_bn_offset: w.take(&format!("{prefix}.convolution_bn_offset"), &[c_out])?,
            stride,
        })
    }

    /// # Shapes
    /// `x`: [b, c_in, h, w] -> [b, c_out, ceil(h / stride), ceil(w / stride)]
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, k, _) = self.filters.dims4().op("ssd conv: weight rank")?;
        let y = if k == 1 && self.stride == 1 {
            pointwise_conv(x, &self.filters)?
        } else {
            ops::conv2d_same(x, &self.filters, self.stride)?
        };
        bias_act(&y, &self.convolution_bn_offset, Activation::Relu6)
    }
}

/// A depthwise 3 x 3 convolution, batch norm and ReLU6 (face-api `depthwiseConvLayer`); the batch
/// norm's per-channel scale is folded into the filters and its shift into a bias at load time.
struct DepthwiseConv {
    filters: Tensor,
    bias: Tensor,
    stride: usize,
}

impl DepthwiseConv {
    fn load(
        w: &mut Weights,
        prefix: &str,
        c: usize,
        stride: usize,
        device: &Device,
    ) -> Result<Self> {
        let filters = w.take(&format!("{prefix}.depthwise_weights"), &[c, 1, 3, 3])?;
        let vec = |w: &mut Weights, name: &str| -> Result<Vec<f32>> {
            w.take(&format!("{prefix}.BatchNorm.{name}"), &[c])?
                .to_vec1::<f32>()
                .op("ssd: batch norm")
        };
        let gamma = vec(w, "gamma")?;
        let beta = vec(w, "beta")?;
        let mean = vec(w, "moving_mean")?;
        let var = vec(w, "moving_variance")?;
        // y = (conv - mean) * gamma / sqrt(var + eps) + beta = conv * a + (beta - mean * a).
        let a: Vec<f32> = gamma
            .iter()
            .zip(&var)
            .map(|(&g, &v)| (f64::from(g) / (f64::from(v) + BN_EPSILON).sqrt()) as f32)
            .collect();
        let bias: Vec<f32> = (0..c).map(|i| beta[i] - mean[i] * a[i]).collect();
        let scale = Tensor::from_vec(a, (c, 1, 1, 1), device).op("ssd: fold batch norm")?;
        Ok(Self {
            filters: filters.broadcast_mul(&scale).op("ssd: fold batch norm")?,
            bias: Tensor::from_vec(bias, c, device).op("ssd: fold batch norm")?,
            stride,
        })
    }

    /// # Shapes
    /// `x`: [b, c, h, w] -> [b, c, ceil(h / stride), ceil(w / stride)]
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4().op("ssd depthwise: input rank")?;
        let (_, top, bottom) = ops::same_padding(h, 3, self.stride);
        let (_, left, right) = ops::same_padding(w, 3, self.stride);
        let pads = ((top, bottom), (left, right));
        ops::depthwise_conv2d_bias_act(
            x,
            &self.filters,
            &self.bias,
            self.stride,
            pads,
            Activation::Relu6,
        )
    }
}

/// One SSD head: box offsets and class scores per anchor of each cell.
struct BoxPredictor {
    box_filters: Tensor,
    box_biases: Tensor,
    class_filters: Tensor,
    class_biases: Tensor,
}

impl BoxPredictor {
    fn load(w: &mut Weights, i: usize, c_in: usize, anchors: usize) -> Result<Self> {
        let p = format!("Prediction.BoxPredictor_{i}");
        Ok(Self {
            box_filters: w
                .take(&format!("{p}.BoxEncodingPredictor.weights"), &[anchors * 4, c_in, 1, 1])?,
            box_biases: w.take(&format!("{p}.BoxEncodingPredictor.biases"), &[anchors * 4])?,
            class_filters: w
                .take(&format!("{p}.ClassPredictor.weights"), &[anchors * 3, c_in, 1, 1])?,
            class_biases: w.take(&format!("{p}.ClassPredictor.biases"), &[anchors * 3])?,
        })
    }

    /// Box encodings and class logits in TensorFlow's anchor order (row, column, anchor).
    ///
    /// # Shapes
    /// `x`: [b, c, h, w] -> ([b, h * w * a, 4], [b, h * w * a, 3])
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, _, _, _) = x.dims4().op("ssd head: input rank")?;
        let head = |filters: &Tensor, biases: &Tensor, k: usize| -> Result<Tensor> {
            let y = bias_act(&pointwise_conv(x, filters)?, biases, Activation::None)?; // [b, a*k, h, w]
            // NHWC, then (cell, anchor) rows of k values, as TensorFlow's reshape reads them.
            y.permute((0, 2, 3, 1))
                .and_then(|t| t.contiguous())
                .and_then(|t| t.reshape((b, (), k)))
                .op("ssd head: reshape")
        };
        Ok((
            head(&self.box_filters, &self.box_biases, 4)?,
            head(&self.class_filters, &self.class_biases, 3)?,
        ))
    }
}

/// The SSD MobileNet v1 face detector with its weights.
pub struct SsdMobilenetV1 {
    conv_0: PointwiseConv,
    pairs: Vec<(DepthwiseConv, PointwiseConv)>,
    extra: Vec<PointwiseConv>,
    heads: Vec<BoxPredictor>,
    /// (ymin, xmin, ymax, xmax) of each anchor, relative to the 512 square.
    anchors: Vec<[f32; 4]>,
    device: Device,
}

impl EmbeddedNet for SsdMobilenetV1 {
    const FILE: (&'static str, &'static [u8]) = ("ssd_mobilenetv1.safetensors", SSD_MOBILENETV1);

    fn from_weights(mut w: Weights, device: &Device) -> Result<Self> {
        let conv_0 =
            PointwiseConv::load(&mut w, "MobilenetV1.Conv2d_0_pointwise", 3, 3, WIDTHS[0], 2)?;
        let mut pairs = Vec::new();
        for i in 1..WIDTHS.len() {
            // face-api `getStridesForLayerIdx`: the depthwise layers 2, 4, 6 and 12 halve the map.
            let stride = if [2, 4, 6, 12].contains(&i) { 2 } else { 1 };
            let (c_in, c_out) = (WIDTHS[i - 1], WIDTHS[i]);
            pairs.push((
                DepthwiseConv::load(
                    &mut w,
                    &format!("MobilenetV1.Conv2d_{i}_depthwise"),
                    c_in,
                    stride,
                    device,
                )?,
                PointwiseConv::load(
                    &mut w,
                    &format!("MobilenetV1.Conv2d_{i}_pointwise"),
                    1,
                    c_in,
                    c_out,
                    1,
                )?,
            ));
        }
        let mut extra = Vec::new();
        let mut c_in = WIDTHS[13];
        for (i, &(k, c_out)) in EXTRA.iter().enumerate() {
            let stride = if i % 2 == 1 { 2 } else { 1 };
            extra.push(PointwiseConv::load(
                &mut w,
                &format!("Prediction.Conv2d_{i}_pointwise"),
                k,
                c_in,
                c_out,
                stride,
            )?);
            c_in = c_out;
        }
        // Heads read conv11 (512), the backbone output (1024), then extra layers 1, 3, 5, 7.
        let head_inputs = [(512, 3), (1024, 6), (512, 6), (256, 6), (256, 6), (128, 6)];
        let heads = head_inputs
            .iter()
            .enumerate()
            .map(|(i, &(c, a))| BoxPredictor::load(&mut w, i, c, a))
            .collect::<Result<Vec<_>>>()?;
        let anchors = w
            .take("Output.extra_dim", &[1, ANCHORS, 4])?
            .squeeze(0)
            .and_then(|t| t.to_vec2::<f32>())
            .op("ssd: anchors")?
            .into_iter()
            .map(|r| [r[0], r[1], r[2], r[3]])
            .collect();
        w.finish()?;
        Ok(Self { conv_0, pairs, extra, heads, anchors, device: device.clone() })
    }
}

impl SsdMobilenetV1 {
    /// The raw outputs (face-api `mobileNetV1` + `predictionLayer`).
    ///
    /// # Shapes
    /// `x`: [b, 3, 512, 512] -> (box encodings [b, 5118, 4], class logits [b, 5118, 3])
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        ensure_f32(x, "ssd input")?;
        let mut h = self.conv_0.forward(x)?; // [b, 32, 256, 256]
        let mut conv11 = None;
        for (i, (dw, pw)) in self.pairs.iter().enumerate() {
            h = pw.forward(&dw.forward(&h)?)?;
            if i + 1 == 11 {
                conv11 = Some(h.clone()); // [b, 512, 32, 32]
            }
        }
        let conv11 = conv11.ok_or_else(|| LandmarkError::Invalid("ssd: no layer 11".into()))?;
        // h: [b, 1024, 16, 16]
        let mut feats = vec![conv11, h.clone()];
        let mut e = h;
        for (i, layer) in self.extra.iter().enumerate() {
            e = layer.forward(&e)?;
            if i % 2 == 1 {
                feats.push(e.clone()); // [b, 512, 8, 8], [b, 256, 4, 4], [b, 256, 2, 2], [b, 128, 1, 1]
            }
        }
        let mut boxes = Vec::new();
        let mut classes = Vec::new();
        for (head, f) in self.heads.iter().zip(&feats) {
            let (b, c) = head.forward(f)?;
            boxes.push(b);
            classes.push(c);
        }
        let boxes = Tensor::cat(&boxes, 1).op("ssd: concat boxes")?; // [b, 5118, 4]
        let classes = Tensor::cat(&classes, 1).op("ssd: concat classes")?; // [b, 5118, 3]
        Ok((boxes, classes))
    }

    /// Detects faces in each image, best first, in image pixels.
    pub fn detect_batch(&self, images: &[&RgbImage], min_score: f32) -> Result<Vec<Vec<FaceBox>>> {
        if !(min_score > 0.0 && min_score < 1.0) {
            return Err(LandmarkError::Invalid(format!(
                "detector score threshold must be in (0, 1), got {min_score}"
            )));
        }
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let s = SSD_INPUT;
        let mut data = Vec::with_capacity(images.len() * 3 * s * s);
        for img in images {
            if img.width() == 0 || img.height() == 0 {
                return Err(LandmarkError::Invalid("cannot detect faces in an empty image".into()));
            }
            let rect = PixelRect { x: 0, y: 0, width: img.width(), height: img.height() };
            data.extend(square_input_with(img, rect, s, Padding::After, Normalise::SignedUnit));
        }
        let x = Tensor::from_vec(data, (images.len(), 3, s, s), &self.device).op("ssd input")?;
        let (boxes, classes) = self.forward(&x)?;
        let boxes = boxes.to_vec3::<f32>().op("ssd output")?;
        let classes = classes.to_vec3::<f32>().op("ssd output")?;
        Ok(images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                decode(&self.anchors, &boxes[i], &classes[i], img.width(), img.height(), min_score)
            })
            .collect())
    }
}

/// face-api `outputLayer` + `nonMaxSuppression` + `locateFaces`, in f32 where face-api's tensors
/// are f32.
fn decode(
    anchors: &[[f32; 4]],
    enc: &[Vec<f32>],
    logits: &[Vec<f32>],
    width: u32,
    height: u32,
    min_score: f32,
) -> Vec<FaceBox> {
    // decodeBoxesLayer: anchors and boxes as (y, x) pairs; encodings scaled by 10, 10, 5, 5.
    let decoded: Vec<[f32; 4]> = anchors
        .iter()
        .zip(enc)
        .map(|(a, e)| {
            let (s0, s1) = (a[2] - a[0], a[3] - a[1]);
            let (c0, c1) = (a[0] + s0 / 2.0, a[1] + s1 / 2.0);
            let half0 = (e[2] / 5.0).exp() * s0 / 2.0;
            let mid0 = e[0] / 10.0 * s0 + c0;
            let half1 = (e[3] / 5.0).exp() * s1 / 2.0;
            let mid1 = e[1] / 10.0 * s1 + c1;
            [mid0 - half0, mid1 - half1, mid0 + half0, mid1 + half1]
        })
        .collect();
    let scores: Vec<f64> = logits.iter().map(|c| f64::from(sigmoid(c[1]))).collect();
    let picked = nms(&decoded, &scores, f64::from(min_score));
    // computeReshapedDimensions: the image inside the padded square.
    let (w, h) = (f64::from(width), f64::from(height));
    let input = SSD_INPUT as f64;
    let scale = input / w.max(h);
    let (pad_x, pad_y) = (input / (w * scale).round(), input / (h * scale).round());
    picked
        .into_iter()
        .map(|i| {
            let b = decoded[i];
            let top = f64::from(b[0]).max(0.0) * pad_y;
            let bottom = f64::from(b[2]).min(1.0) * pad_y;
            let left = f64::from(b[1]).max(0.0) * pad_x;
            let right = f64::from(b[3]).min(1.0) * pad_x;
            FaceBox {
                x1: (left * w) as f32,
                y1: (top * h) as f32,
                x2: ((left + (right - left)) * w) as f32,
                y2: ((top + (bottom - top)) * h) as f32,
                score: scores[i] as f32,
            }
        })
        .collect()
}

fn sigmoid(x: f32) -> f32 {
    (1.0 / (1.0 + (-f64::from(x)).exp())) as f32
}

/// face-api's SSD `nonMaxSuppression`: candidates above the threshold, best first; a candidate is
/// dropped when it overlaps an already selected box by more than the IoU threshold.
fn nms(boxes: &[[f32; 4]], scores: &[f64], min_score: f64) -> Vec<usize> {
    let mut cands: Vec<usize> = (0..boxes.len()).filter(|&i| scores[i] > min_score).collect();
    // JavaScript's sort is stable: equal scores keep their anchor order.
    cands.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut selected: Vec<usize> = Vec::new();
    for c in cands {
        if selected.len() >= MAX_RESULTS.min(boxes.len()) {
            break;
        }
        if selected.iter().all(|&s| iou_yx(&boxes[c], &boxes[s]) <= IOU_THRESHOLD) {
            selected.push(c);
        }
    }
    selected
}

/// face-api's SSD `IOU` on (ymin, xmin, ymax, xmax) boxes whose corners may come in either order.
fn iou_yx(a: &[f32; 4], b: &[f32; 4]) -> f64 {
    let f = |b: &[f32; 4]| {
        let v = b.map(f64::from);
        (v[0].min(v[2]), v[1].min(v[3]), v[0].max(v[2]), v[1].max(v[3]))
    };
    let (ay0, ax0, ay1, ax1) = f(a);
    let (by0, bx0, by1, bx1) = f(b);
    let area_a = (ay1 - ay0) * (ax1 - ax0);
    let area_b = (by1 - by0) * (bx1 - bx0);
    if area_a <= 0.0 || area_b <= 0.0 {
        return 0.0;
    }
    let ih = (ay1.min(by1) - ay0.max(by0)).max(0.0);
    let iw = (ax1.min(bx1) - ax0.max(bx0)).max(0.0);
    let inter = ih * iw;
    inter / (area_a + area_b - inter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_strictly_and_has_5118_anchors() {
        let det = SsdMobilenetV1::new(&Device::Cpu).unwrap();
        assert_eq!(det.anchors.len(), ANCHORS);
        assert!(det.anchors.iter().all(|a| a[2] > a[0] && a[3] > a[1]));
    }

    #[test]
    fn outputs_one_row_per_anchor() {
        let det = SsdMobilenetV1::new(&Device::Cpu).unwrap();
        let x = Tensor::zeros((1, 3, SSD_INPUT, SSD_INPUT), candle_core::DType::F32, &Device::Cpu)
            .unwrap();
        let (b, c) = det.forward(&x).unwrap();
        assert_eq!(b.dims(), &[1, ANCHORS, 4]);
        assert_eq!(c.dims(), &[1, ANCHORS, 3]);
    }

    #[test]
    fn nms_drops_overlaps_above_half_and_keeps_the_rest() {
        let boxes = [
            [0.0, 0.0, 1.0, 1.0],
            [0.0, 0.0, 1.0, 0.9], // IoU 0.9 with the first: dropped
            [0.0, 0.0, 1.0, 0.4], // IoU 0.4: kept
            [2.0, 2.0, 3.0, 3.0], // below the score threshold
        ];
        let scores = [0.9, 0.95, 0.8, 0.3];
        assert_eq!(nms(&boxes, &scores, 0.5), vec![1, 2]);
    }
}
