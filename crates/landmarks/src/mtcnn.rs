//! The MTCNN face detector (Zhang, Zhang, Li, Qiao 2016: "Joint face detection and alignment
//! using multi-task cascaded convolutional networks") as facenet-pytorch 2.6.0 runs it
//! (`models/utils/detect_face.py`), on Candle.
//!
//! Three small networks in a cascade. PNet slides over an image pyramid (the image scaled by
//! 12 / [`MIN_FACE`], then by [`FACTOR`] again and again while the shorter side stays at least 12
//! pixels) and proposes 12 x 12 windows; RNet rescores 24 x 24 crops of the survivors and ONet
//! 48 x 48 crops; each stage moves the boxes by its regression output and non-maximum suppression
//! drops overlaps. Every resize is area averaging (PyTorch `interpolate(mode="area")`, adaptive
//! average pooling), pixels become `(v - 127.5) / 128`, and the box arithmetic (the floors, the
//! truncation to integer crops, the "+ 1" widths of the later stages, MATLAB's 1-based crop
//! corners) is facenet-pytorch's, so that the boxes are the same (`tests/parity.rs`).
//!
//! It finds faces the SSD detector scores low, such as a laughing face half covered by a hand,
//! and misses others (faces filling the frame); `crate::detect` uses it beside the SSD detector
//! ([`crate::DetectorKind::SsdMtcnn`]). README.md gives the measurements.

use candle_core::{D, Device, Tensor};
use image::RgbImage;

use crate::error::{CandleContext, Result};
use crate::geometry::FaceBox;
use crate::ops::{Activation, bias_act, bias_prelu, conv2d_tf};
use crate::weights::{EmbeddedNet, MTCNN, Weights};

/// Smallest face searched for, in pixels (facenet-pytorch's default `min_face_size`).
pub const MIN_FACE: f64 = 20.0;
/// Scale between pyramid levels (facenet-pytorch's default `factor`).
pub const FACTOR: f64 = 0.709;
/// Minimum face probability of PNet, RNet and ONet (facenet-pytorch's default `thresholds`).
pub const THRESHOLDS: [f32; 3] = [0.6, 0.7, 0.7];

/// Crops per RNet or ONet forward pass.
const CROP_BATCH: usize = 256;

/// A convolution without padding, stride 1, plus bias.
struct Conv {
    weight: Tensor,
    bias: Tensor,
}

impl Conv {
    fn load(w: &mut Weights, name: &str, c_in: usize, c_out: usize, k: usize) -> Result<Self> {
        Ok(Self {
            weight: w.take(&format!("{name}.weight"), &[c_out, c_in, k, k])?,
            bias: w.take(&format!("{name}.bias"), &[c_out])?,
        })
    }

    /// The convolution plus bias (the 1 x 1 output heads).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(&self.weight, 0, 1, 1, 1).op("mtcnn: conv")?;
        bias_act(&y, &self.bias, Activation::None)
    }

    /// The convolution, its bias and `prelu`, the bias and slopes in one pass.
    fn forward_prelu(&self, x: &Tensor, prelu: &PRelu) -> Result<Tensor> {
        if x.dim(1).op("mtcnn: conv")? == 3 && x.dim(0).op("mtcnn: conv")? == 1 {
            // A pyramid level (one RGB image): this crate's direct kernel, without Candle's
            // im2col buffer of 27 values per pixel. (For batches of small crops im2col is faster.)
            let y = conv2d_tf(x, &self.weight, &prelu.zeros, 1, false)?;
            return bias_prelu(&y, &self.bias, &prelu.slope);
        }
        let y = x.conv2d(&self.weight, 0, 1, 1, 1).op("mtcnn: conv")?;
        bias_prelu(&y, &self.bias, &prelu.slope)
    }
}

/// A fully connected layer.
struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn load(w: &mut Weights, name: &str, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(Self {
            weight: w.take(&format!("{name}.weight"), &[c_out, c_in])?.t().op("mtcnn: dense")?,
            bias: w.take(&format!("{name}.bias"), &[c_out])?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.weight).and_then(|y| y.broadcast_add(&self.bias)).op("mtcnn: dense")
    }

    /// The layer, its bias and `prelu`.
    fn forward_prelu(&self, x: &Tensor, prelu: &PRelu) -> Result<Tensor> {
        let y = x.matmul(&self.weight).op("mtcnn: dense")?;
        let (n, c) = y.dims2().op("mtcnn: dense")?;
        let y = bias_prelu(&y.reshape((n, c, 1, 1)).op("mtcnn: dense")?, &self.bias, &prelu.slope)?;
        y.reshape((n, c)).op("mtcnn: dense")
    }
}

/// Parametric ReLU with one slope per channel (applied by the layer before it).
struct PRelu {
    slope: Tensor,
    /// A zero bias of the same length, for convolutions whose kernel adds one.
    zeros: Tensor,
}

impl PRelu {
    fn load(w: &mut Weights, name: &str, c: usize) -> Result<Self> {
        let slope = w.take(&format!("{name}.weight"), &[c])?;
        let zeros = slope.zeros_like().op("mtcnn: prelu")?;
        Ok(Self { slope, zeros })
    }
}

/// PyTorch's `MaxPool2d(k, s, ceil_mode=True)`: windows that start inside the map and run past
/// its end are kept (the missing cells padded with -inf).
fn max_pool_ceil(x: &Tensor, k: usize, s: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4().op("mtcnn: pool input")?;
    let need = |n: usize| (n.saturating_sub(k).div_ceil(s)) * s + k;
    let x = crate::ops::pad_hw(x, (0, need(h) - h), (0, need(w) - w), f32::NEG_INFINITY)?;
    x.max_pool2d_with_stride(k, s).op("mtcnn: pool")
}

/// The probability of the face class from two-class logits along the last dimension (the
/// second entry of their softmax, written as in PyTorch: `exp(l1 - max) / sum exp(l - max)`).
fn face_probability(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1).op("mtcnn: softmax")?;
    let e = logits.broadcast_sub(&max).and_then(|d| d.exp()).op("mtcnn: softmax")?;
    let sum = e.sum_keepdim(D::Minus1).op("mtcnn: softmax")?;
    e.narrow(D::Minus1, 1, 1)
        .and_then(|p| p.broadcast_div(&sum))
        .and_then(|p| p.squeeze(D::Minus1))
        .op("mtcnn: softmax")
}

/// PyTorch's `permute(0, 3, 2, 1)` then flatten: the order the dense layers were trained on.
fn flatten_whc(x: &Tensor) -> Result<Tensor> {
    x.permute((0, 3, 2, 1)).and_then(|y| y.flatten_from(1)).op("mtcnn: flatten")
}

struct PNet {
    convs: [Conv; 3],
    prelus: [PRelu; 3],
    score: Conv,
    regress: Conv,
}

impl PNet {
    /// `[1, 3, h, w]` -> (face probability `[h', w']`, box regression `[4, h', w']`).
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut x = self.convs[0].forward_prelu(x, &self.prelus[0])?;
        x = max_pool_ceil(&x, 2, 2)?;
        x = self.convs[1].forward_prelu(&x, &self.prelus[1])?;
        x = self.convs[2].forward_prelu(&x, &self.prelus[2])?;
        let logits = self.score.forward(&x)?.permute((0, 2, 3, 1)).op("mtcnn: pnet")?;
        let prob = face_probability(&logits)?.squeeze(0).op("mtcnn: pnet")?;
        let reg = self.regress.forward(&x)?.squeeze(0).op("mtcnn: pnet")?;
        Ok((prob, reg))
    }
}

struct RNet {
    convs: [Conv; 3],
    prelus: [PRelu; 4],
    dense: Dense,
    score: Dense,
    regress: Dense,
}

impl RNet {
    /// `[n, 3, 24, 24]` -> (face probability `[n]`, box regression `[n, 4]`).
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut x = self.convs[0].forward_prelu(x, &self.prelus[0])?;
        x = max_pool_ceil(&x, 3, 2)?;
        x = self.convs[1].forward_prelu(&x, &self.prelus[1])?;
        x = max_pool_ceil(&x, 3, 2)?;
        x = self.convs[2].forward_prelu(&x, &self.prelus[2])?;
        x = self.dense.forward_prelu(&flatten_whc(&x)?, &self.prelus[3])?;
        Ok((face_probability(&self.score.forward(&x)?)?, self.regress.forward(&x)?))
    }
}

struct ONet {
    convs: [Conv; 4],
    prelus: [PRelu; 5],
    dense: Dense,
    score: Dense,
    regress: Dense,
}

impl ONet {
    /// `[n, 3, 48, 48]` -> (face probability `[n]`, box regression `[n, 4]`).
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut x = self.convs[0].forward_prelu(x, &self.prelus[0])?;
        x = max_pool_ceil(&x, 3, 2)?;
        x = self.convs[1].forward_prelu(&x, &self.prelus[1])?;
        x = max_pool_ceil(&x, 3, 2)?;
        x = self.convs[2].forward_prelu(&x, &self.prelus[2])?;
        x = max_pool_ceil(&x, 2, 2)?;
        x = self.convs[3].forward_prelu(&x, &self.prelus[3])?;
        x = self.dense.forward_prelu(&flatten_whc(&x)?, &self.prelus[4])?;
        Ok((face_probability(&self.score.forward(&x)?)?, self.regress.forward(&x)?))
    }
}

/// The three MTCNN stages, loaded once.
pub struct Mtcnn {
    pnet: PNet,
    rnet: RNet,
    onet: ONet,
    device: Device,
}

impl EmbeddedNet for Mtcnn {
    const FILE: (&'static str, &'static [u8]) = ("mtcnn.safetensors", MTCNN);

    fn from_weights(mut weights: Weights, device: &Device) -> Result<Self> {
        let w = &mut weights;
        let pnet = PNet {
            convs: [
                Conv::load(w, "pnet.conv1", 3, 10, 3)?,
                Conv::load(w, "pnet.conv2", 10, 16, 3)?,
                Conv::load(w, "pnet.conv3", 16, 32, 3)?,
            ],
            prelus: [
                PRelu::load(w, "pnet.prelu1", 10)?,
                PRelu::load(w, "pnet.prelu2", 16)?,
                PRelu::load(w, "pnet.prelu3", 32)?,
            ],
            score: Conv::load(w, "pnet.conv4_1", 32, 2, 1)?,
            regress: Conv::load(w, "pnet.conv4_2", 32, 4, 1)?,
        };
        let rnet = RNet {
            convs: [
                Conv::load(w, "rnet.conv1", 3, 28, 3)?,
                Conv::load(w, "rnet.conv2", 28, 48, 3)?,
                Conv::load(w, "rnet.conv3", 48, 64, 2)?,
            ],
            prelus: [
                PRelu::load(w, "rnet.prelu1", 28)?,
                PRelu::load(w, "rnet.prelu2", 48)?,
                PRelu::load(w, "rnet.prelu3", 64)?,
                PRelu::load(w, "rnet.prelu4", 128)?,
            ],
            dense: Dense::load(w, "rnet.dense4", 576, 128)?,
            score: Dense::load(w, "rnet.dense5_1", 128, 2)?,
            regress: Dense::load(w, "rnet.dense5_2", 128, 4)?,
        };
        let onet = ONet {
            convs: [
                Conv::load(w, "onet.conv1", 3, 32, 3)?,
                Conv::load(w, "onet.conv2", 32, 64, 3)?,
                Conv::load(w, "onet.conv3", 64, 64, 3)?,
                Conv::load(w, "onet.conv4", 64, 128, 2)?,
            ],
            prelus: [
                PRelu::load(w, "onet.prelu1", 32)?,
                PRelu::load(w, "onet.prelu2", 64)?,
                PRelu::load(w, "onet.prelu3", 64)?,
                PRelu::load(w, "onet.prelu4", 128)?,
                PRelu::load(w, "onet.prelu5", 256)?,
            ],
            dense: Dense::load(w, "onet.dense5", 1152, 256)?,
            score: Dense::load(w, "onet.dense6_1", 256, 2)?,
            regress: Dense::load(w, "onet.dense6_2", 256, 4)?,
        };
        // The five facial points ONet also regresses are not used.
        w.take("onet.dense6_3.weight", &[10, 256])?;
        w.take("onet.dense6_3.bias", &[10])?;
        weights.finish()?;
        Ok(Self { pnet, rnet, onet, device: device.clone() })
    }
}

/// A candidate box with facenet-pytorch's float32 corners and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Candidate {
    b: [f32; 4],
    score: f32,
    reg: [f32; 4],
}

/// How [`nms`] measures overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overlap {
    /// torchvision `nms`: intersection over union, areas `(x2 - x1) (y2 - y1)`.
    Union,
    /// facenet-pytorch `nms_numpy(..., 'Min')`: intersection over the smaller area, both with
    /// MATLAB's `+ 1` widths.
    MinPlusOne,
}

/// Indices of the kept candidates, best score first: a candidate is dropped when it overlaps an
/// already kept one by more than `threshold`.
fn nms(c: &[Candidate], threshold: f32, overlap: Overlap) -> Vec<usize> {
    let mut order: Vec<usize> = (0..c.len()).collect();
    order.sort_by(|&a, &b| c[b].score.total_cmp(&c[a].score));
    let one = if overlap == Overlap::MinPlusOne { 1.0 } else { 0.0 };
    let area = |b: &[f32; 4]| (b[2] - b[0] + one) * (b[3] - b[1] + one);
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        let bi = &c[i].b;
        let clash = keep.iter().any(|&k| {
            let bk = &c[k].b;
            let w = (bi[2].min(bk[2]) - bi[0].max(bk[0]) + one).max(0.0);
            let h = (bi[3].min(bk[3]) - bi[1].max(bk[1]) + one).max(0.0);
            let inter = w * h;
            let o = match overlap {
                Overlap::Union => inter / (area(bi) + area(bk) - inter),
                Overlap::MinPlusOne => inter / area(bi).min(area(bk)),
            };
            o > threshold
        });
        if !clash {
            keep.push(i);
        }
    }
    keep
}

/// facenet-pytorch `rerec`: the square of side max(w, h) with the same centre.
fn square_up(b: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    let l = w.max(h);
    let x1 = b[0] + w * 0.5 - l * 0.5;
    let y1 = b[1] + h * 0.5 - l * 0.5;
    [x1, y1, x1 + l, y1 + l]
}

/// facenet-pytorch `bbreg`: corners moved by the regression times the `+ 1` width and height.
fn regress(b: [f32; 4], reg: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0] + 1.0, b[3] - b[1] + 1.0);
    [b[0] + reg[0] * w, b[1] + reg[1] * h, b[2] + reg[2] * w, b[3] + reg[3] * h]
}

/// facenet-pytorch `pad`: the box's pixels as a 0-based `(x, y, width, height)` crop of the
/// image (corners truncated to integers, 1-based, clipped), or `None` when nothing is inside.
fn crop_of(b: [f32; 4], width: u32, height: u32) -> Option<(usize, usize, usize, usize)> {
    let t = |v: f32| v.trunc() as i64;
    let (x, y) = (t(b[0]).max(1), t(b[1]).max(1));
    let (ex, ey) = (t(b[2]).min(i64::from(width)), t(b[3]).min(i64::from(height)));
    (ex > x - 1 && ey > y - 1)
        .then(|| ((x - 1) as usize, (y - 1) as usize, (ex - x + 1) as usize, (ey - y + 1) as usize))
}

/// `(x, y, w, h)` of `image` resized to `oh` x `ow` by area averaging (PyTorch adaptive average
/// pooling: output cell `i` averages input cells `floor(i n / o)` to `ceil((i + 1) n / o)`),
/// as MTCNN's input `(v - 127.5) / 128`; appended to `out` as CHW.
fn area_input(
    image: &RgbImage,
    (x, y, w, h): (usize, usize, usize, usize),
    (oh, ow): (usize, usize),
    out: &mut Vec<f32>,
) {
    let ranges = |n: usize, o: usize| -> Vec<(usize, usize)> {
        (0..o).map(|i| (i * n / o, ((i + 1) * n).div_ceil(o))).collect()
    };
    let (rows, cols) = (ranges(h, oh), ranges(w, ow));
    let raw = image.as_raw();
    let stride = image.width() as usize * 3;
    // Column sums per input row first (separable; the sums of 8-bit values are exact in f32).
    let mut col_sums = vec![0f32; 3 * h * ow];
    for r in 0..h {
        let line = &raw[(y + r) * stride..];
        for (j, &(c0, c1)) in cols.iter().enumerate() {
            for ch in 0..3 {
                let s: f32 = (c0..c1).map(|c| f32::from(line[(x + c) * 3 + ch])).sum();
                col_sums[(ch * h + r) * ow + j] = s;
            }
        }
    }
    let start = out.len();
    out.resize(start + 3 * oh * ow, 0.0);
    for ch in 0..3 {
        for (i, &(r0, r1)) in rows.iter().enumerate() {
            for (j, &(c0, c1)) in cols.iter().enumerate() {
                let s: f32 = (r0..r1).map(|r| col_sums[(ch * h + r) * ow + j]).sum();
                let v = s / ((r1 - r0) * (c1 - c0)) as f32;
                out[start + (ch * oh + i) * ow + j] = (v - 127.5) * 0.0078125;
            }
        }
    }
}

impl Mtcnn {
    /// Faces in `image`, best score first, in image pixels (facenet-pytorch's boxes: tight around
    /// brows, eyes, nose and mouth; `crate::detect` re-frames them for the landmark net).
    pub fn detect(&self, image: &RgbImage) -> Result<Vec<FaceBox>> {
        let mut c = self.propose(image)?;
        c = self.refine(image, c, 24, THRESHOLDS[1])?;
        let keep = nms(&c, 0.7, Overlap::Union);
        c = keep
            .into_iter()
            .map(|i| Candidate { b: square_up(regress(c[i].b, c[i].reg)), ..c[i] })
            .collect();
        c = self.refine(image, c, 48, THRESHOLDS[2])?;
        let c: Vec<Candidate> =
            c.into_iter().map(|k| Candidate { b: regress(k.b, k.reg), ..k }).collect();
        let keep = nms(&c, 0.7, Overlap::MinPlusOne);
        Ok(keep
            .into_iter()
            .map(|i| {
                let [x1, y1, x2, y2] = c[i].b;
                FaceBox { x1, y1, x2, y2, score: c[i].score }
            })
            .collect())
    }

    /// PNet over the pyramid: per level the windows above [`THRESHOLDS`]`[0]`, suppressed at IoU
    /// 0.5, then all levels at 0.7, moved by the regression and squared.
    fn propose(&self, image: &RgbImage) -> Result<Vec<Candidate>> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let mut scales = Vec::new();
        let mut scale = 12.0 / MIN_FACE;
        let mut min_side = w.min(h) as f64 * scale;
        while min_side >= 12.0 {
            scales.push(scale);
            scale *= FACTOR;
            min_side *= FACTOR;
        }
        let mut all = Vec::new();
        for scale in scales {
            let (lh, lw) = ((h as f64 * scale + 1.0) as usize, (w as f64 * scale + 1.0) as usize);
            let mut data = Vec::with_capacity(3 * lh * lw);
            area_input(image, (0, 0, w, h), (lh, lw), &mut data);
            let x = Tensor::from_vec(data, (1, 3, lh, lw), &self.device).op("mtcnn: pnet input")?;
            let (prob, reg) = self.pnet.forward(&x)?;
            let prob = prob.to_vec2::<f32>().op("mtcnn: pnet output")?;
            let reg = reg.to_vec3::<f32>().op("mtcnn: pnet output")?;
            let s = scale as f32;
            let level: Vec<Candidate> = prob
                .iter()
                .enumerate()
                .flat_map(|(r, row)| row.iter().enumerate().map(move |(col, &p)| (r, col, p)))
                .filter(|&(_, _, p)| p >= THRESHOLDS[0])
                .map(|(r, col, p)| {
                    let (bx, by) = (col as f32, r as f32);
                    let q1 = [((2.0 * bx + 1.0) / s).floor(), ((2.0 * by + 1.0) / s).floor()];
                    let q2 = [((2.0 * bx + 12.0) / s).floor(), ((2.0 * by + 12.0) / s).floor()];
                    Candidate {
                        b: [q1[0], q1[1], q2[0], q2[1]],
                        score: p,
                        reg: [reg[0][r][col], reg[1][r][col], reg[2][r][col], reg[3][r][col]],
                    }
                })
                .collect();
            all.extend(nms(&level, 0.5, Overlap::Union).into_iter().map(|i| level[i]));
        }
        Ok(nms(&all, 0.7, Overlap::Union)
            .into_iter()
            .map(|i| {
                let (b, r) = (all[i].b, all[i].reg);
                let (rw, rh) = (b[2] - b[0], b[3] - b[1]);
                let moved =
                    [b[0] + r[0] * rw, b[1] + r[1] * rh, b[2] + r[2] * rw, b[3] + r[3] * rh];
                Candidate { b: square_up(moved), ..all[i] }
            })
            .collect())
    }

    /// RNet (`size` 24) or ONet (48) on each candidate's crop: the candidates whose face
    /// probability exceeds `threshold`, with that probability as their score and the net's
    /// regression (not yet applied).
    fn refine(
        &self,
        image: &RgbImage,
        c: Vec<Candidate>,
        size: usize,
        threshold: f32,
    ) -> Result<Vec<Candidate>> {
        let crops: Vec<(Candidate, (usize, usize, usize, usize))> = c
            .into_iter()
            .filter_map(|k| crop_of(k.b, image.width(), image.height()).map(|r| (k, r)))
            .collect();
        if crops.is_empty() {
            return Ok(Vec::new());
        }
        // In batches of CROP_BATCH, so that the layers' buffers stay small (a photo can give
        // thousands of PNet candidates).
        let (mut prob, mut reg) =
            (Vec::with_capacity(crops.len()), Vec::with_capacity(crops.len()));
        for chunk in crops.chunks(CROP_BATCH) {
            let mut data = Vec::with_capacity(chunk.len() * 3 * size * size);
            for (_, rect) in chunk {
                area_input(image, *rect, (size, size), &mut data);
            }
            let x = Tensor::from_vec(data, (chunk.len(), 3, size, size), &self.device)
                .op("mtcnn: crops")?;
            let (p, r) = if size == 24 { self.rnet.forward(&x)? } else { self.onet.forward(&x)? };
            prob.extend(p.to_vec1::<f32>().op("mtcnn: output")?);
            reg.extend(r.to_vec2::<f32>().op("mtcnn: output")?);
        }
        Ok(crops
            .into_iter()
            .zip(prob.into_iter().zip(reg))
            .filter(|(_, (p, _))| *p > threshold)
            .map(|((k, _), (p, r))| Candidate { b: k.b, score: p, reg: [r[0], r[1], r[2], r[3]] })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(b: [f32; 4], score: f32) -> Candidate {
        Candidate { b, score, reg: [0.0; 4] }
    }

    #[test]
    fn nms_keeps_the_best_of_each_overlapping_group() {
        let c = [
            cand([0.0, 0.0, 10.0, 10.0], 0.8),
            cand([1.0, 0.0, 11.0, 10.0], 0.9), // IoU 9/11 with the first
            cand([20.0, 20.0, 30.0, 30.0], 0.7),
        ];
        assert_eq!(nms(&c, 0.5, Overlap::Union), vec![1, 2]);
        assert_eq!(nms(&c, 0.9, Overlap::Union), vec![1, 0, 2]);
        // A small box inside a large one: IoU 0.01, but all of the smaller one.
        let c = [cand([0.0, 0.0, 99.0, 99.0], 0.9), cand([10.0, 10.0, 19.0, 19.0], 0.8)];
        assert_eq!(nms(&c, 0.7, Overlap::Union), vec![0, 1]);
        assert_eq!(nms(&c, 0.7, Overlap::MinPlusOne), vec![0]);
    }

    #[test]
    fn boxes_are_squared_regressed_and_cropped_like_facenet_pytorch() {
        assert_eq!(square_up([10.0, 20.0, 30.0, 60.0]), [0.0, 20.0, 40.0, 60.0]);
        // `+ 1` widths: 21 x 41.
        assert_eq!(
            regress([10.0, 20.0, 30.0, 60.0], [0.1, 0.0, -0.1, 0.5]),
            [12.1, 20.0, 27.9, 80.5]
        );
        // 1-based corners: x from 10.7 -> 10 -> column 9; clipped at the image's right edge.
        assert_eq!(crop_of([10.7, -5.0, 200.0, 30.2], 100, 50), Some((9, 0, 91, 30)));
        assert_eq!(crop_of([150.0, 10.0, 200.0, 30.0], 100, 50), None);
    }

    #[test]
    fn area_resize_averages_whole_and_partial_windows() {
        // One row of 3 pixels (0, 128, 255) to 2: windows [0, 2) and [1, 3).
        let mut img = RgbImage::new(3, 1);
        for (x, v) in [0u8, 128, 255].into_iter().enumerate() {
            img.put_pixel(x as u32, 0, image::Rgb([v, v, v]));
        }
        let mut out = Vec::new();
        area_input(&img, (0, 0, 3, 1), (1, 2), &mut out);
        let px: Vec<f32> = out[..2].iter().map(|v| v / 0.0078125 + 127.5).collect();
        assert_eq!(px, vec![64.0, 191.5]);
    }

    #[test]
    fn ceil_mode_pooling_keeps_the_last_partial_window() {
        let x = Tensor::arange(0f32, 5.0, &Device::Cpu).unwrap().reshape((1, 1, 1, 5)).unwrap();
        let x = x.broadcast_as((1, 1, 3, 5)).unwrap().contiguous().unwrap();
        let y = max_pool_ceil(&x, 2, 2).unwrap();
        assert_eq!(y.dims4().unwrap(), (1, 1, 2, 3));
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![1., 3., 4., 1., 3., 4.]
        );
    }
}
