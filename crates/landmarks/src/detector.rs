//! face-api's tiny face detector (`TinyFaceDetector`, a Tiny-YOLOv2 with depthwise separable
//! convolutions) on Candle, with face-api's box decoding and non-maximum suppression.
//!
//! The image is padded at the bottom/right to a square, resized to `input_size` (a multiple of 32;
//! face-api's default 416), normalised with the detector's mean, and mapped to a grid of
//! `input_size / 32` cells with 5 anchors each; a cell's anchor predicts (x, y, w, h, objectness).
//! Boxes whose sigmoid(objectness) exceeds the score threshold are kept after NMS (IoU 0.4).

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::error::{CandleContext, LandmarkError, Result};
use crate::geometry::FaceBox;
use crate::ops::{
    Activation, bias_act, conv2d_tf, ensure_f32, leaky, max_pool_same, pointwise_conv,
    separable_conv,
};
use crate::preprocess::{DETECTOR_MEAN_RGB, Padding, PixelRect, square_input};
use crate::weights::{EmbeddedNet, TINY_FACE_DETECTOR, Weights};

/// face-api `tinyFaceDetector/const.ts`: anchor (width, height) in grid cells.
const ANCHORS: [(f64, f64); 5] = [
    (1.603231, 2.094468),
    (6.041143, 7.080126),
    (2.882459, 3.518061),
    (4.266906, 5.178857),
    (9.041765, 10.66308),
];
/// face-api `tinyFaceDetector/const.ts`: NMS overlap threshold.
const IOU_THRESHOLD: f64 = 0.4;
/// Channels of conv1..conv5 (conv0 has 16).
const WIDTHS: [usize; 6] = [16, 32, 64, 128, 256, 512];

/// Detector options: which detector, and face-api's `TinyFaceDetectorOptions` /
/// `SsdMobilenetv1Options`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorOptions {
    /// Which detector runs (see [`DetectorKind`]; the default was chosen by measurement, README.md).
    pub kind: DetectorKind,
    /// The tiny detector's input side, a multiple of 32 (face-api default 416); the SSD detector's
    /// input is always 512.
    pub input_size: usize,
    /// Minimum score of a face of the SSD and tiny detectors (face-api's default 0.5 for both).
    /// MTCNN keeps facenet-pytorch's thresholds ([`crate::mtcnn::THRESHOLDS`]), BlazeFace
    /// MediaPipe's ([`crate::blazeface::MIN_SCORE`]).
    pub score_threshold: f32,
    /// Whether [`crate::Landmarker::detect_faces`] drops detections whose landmarks disagree with
    /// those of the mirrored crop (not faces: see [`crate::FLIP_MAX_DISAGREEMENT`]). On by default.
    pub flip_check: bool,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        Self {
            kind: DetectorKind::default(),
            input_size: 416,
            score_threshold: 0.5,
            flip_check: true,
        }
    }
}

/// The face detectors this crate ships, alone or combined (README.md, "Which detector").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DetectorKind {
    /// SSD MobileNet v1 on the whole image, plus four overlapping tiles when the image's longer
    /// side exceeds [`crate::detect::TILE_ABOVE`] px, so that smaller faces of large photos are
    /// seen at a higher resolution (`crate::detect`).
    Ssd,
    /// SSD MobileNet v1 on the whole image only (about 5 times faster than [`Self::Ssd`] on large
    /// photos; can miss faces under about a tenth of the longer side).
    SsdWhole,
    /// The tiny face detector (190 KB; about 5 times faster than one SSD pass; misses faces that
    /// fill most of the frame, turned faces and many grey ones).
    Tiny,
    /// MTCNN (facenet-pytorch's, [`crate::mtcnn`]) alone: finds faces partly covered by a hand
    /// that the SSD network scores low, misses faces that fill the frame.
    Mtcnn,
    /// MediaPipe's BlazeFace back-camera model ([`crate::blazeface`]) alone: one fast pass at
    /// 256 x 256, finds turned and grey faces the others miss, misses small faces of large
    /// photos and takes some non-faces (a cat, a cup) for faces.
    BlazeFace,
    /// [`Self::Ssd`] plus the faces MTCNN finds that it missed, each kept if the SSD network
    /// finds it again in a crop around it (`crate::detect`).
    SsdMtcnn,
    /// [`Self::Ssd`] plus the faces BlazeFace finds that it missed, each kept if the SSD network
    /// finds it again in a crop around it; every face BlazeFace finds gets its box, re-framed
    /// (`crate::detect`). The default: it finds every face the others find, at about
    /// [`Self::Ssd`]'s time (README.md, "Which detector").
    #[default]
    SsdBlazeFace,
    /// [`Self::SsdMtcnn`] plus BlazeFace's faces as in [`Self::SsdBlazeFace`] (found no face
    /// more than [`Self::SsdBlazeFace`] on the photos measured, at twice its time).
    SsdMtcnnBlazeFace,
}

impl DetectorKind {
    /// Every detector, in the order `aue-landmarks eval --all-detectors` lists them.
    pub const ALL: [Self; 8] = [
        Self::Ssd,
        Self::SsdWhole,
        Self::Tiny,
        Self::Mtcnn,
        Self::BlazeFace,
        Self::SsdMtcnn,
        Self::SsdBlazeFace,
        Self::SsdMtcnnBlazeFace,
    ];

    /// The name used on command lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ssd => "ssd",
            Self::SsdWhole => "ssd-whole",
            Self::Tiny => "tiny",
            Self::Mtcnn => "mtcnn",
            Self::BlazeFace => "blazeface",
            Self::SsdMtcnn => "ssd+mtcnn",
            Self::SsdBlazeFace => "ssd+blazeface",
            Self::SsdMtcnnBlazeFace => "ssd+mtcnn+blazeface",
        }
    }
}

impl std::str::FromStr for DetectorKind {
    type Err = LandmarkError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
            LandmarkError::Invalid(format!("unknown detector {s:?} (use {})", names.join(", ")))
        })
    }
}

impl DetectorOptions {
    /// Checks the options as face-api does.
    pub fn check(&self) -> Result<()> {
        if self.input_size == 0 || !self.input_size.is_multiple_of(32) {
            return Err(LandmarkError::Invalid(format!(
                "detector input size must be a positive multiple of 32, got {}",
                self.input_size
            )));
        }
        if !(self.score_threshold > 0.0 && self.score_threshold < 1.0) {
            return Err(LandmarkError::Invalid(format!(
                "detector score threshold must be in (0, 1), got {}",
                self.score_threshold
            )));
        }
        Ok(())
    }
}

struct SeparableLayer {
    depthwise_filter: Tensor,
    pointwise_filter: Tensor,
    bias: Tensor,
}

/// The tiny face detector with its weights.
pub struct TinyFaceDetector {
    conv0_filters: Tensor,
    conv0_bias: Tensor,
    layers: Vec<SeparableLayer>,
    conv8_filters: Tensor,
    conv8_bias: Tensor,
    device: Device,
}

impl EmbeddedNet for TinyFaceDetector {
    const FILE: (&'static str, &'static [u8]) =
        ("tiny_face_detector.safetensors", TINY_FACE_DETECTOR);

    fn from_weights(mut w: Weights, device: &Device) -> Result<Self> {
        let conv0_filters = w.take("conv0.filters", &[WIDTHS[0], 3, 3, 3])?;
        let conv0_bias = w.take("conv0.bias", &[WIDTHS[0]])?;
        let mut layers = Vec::new();
        for i in 1..WIDTHS.len() {
            let (c_in, c_out) = (WIDTHS[i - 1], WIDTHS[i]);
            layers.push(SeparableLayer {
                depthwise_filter: w.take(&format!("conv{i}.depthwise_filter"), &[c_in, 1, 3, 3])?,
                pointwise_filter: w
                    .take(&format!("conv{i}.pointwise_filter"), &[c_out, c_in, 1, 1])?,
                bias: w.take(&format!("conv{i}.bias"), &[c_out])?,
            });
        }
        let conv8_filters = w.take("conv8.filters", &[25, 512, 1, 1])?;
        let conv8_bias = w.take("conv8.bias", &[25])?;
        w.finish()?;
        Ok(Self {
            conv0_filters,
            conv0_bias,
            layers,
            conv8_filters,
            conv8_bias,
            device: device.clone(),
        })
    }
}

impl TinyFaceDetector {
    /// The raw grid output (face-api `runMobilenet`).
    ///
    /// # Shapes
    /// `x`: [b, 3, s, s] -> [b, 25, s / 32, s / 32] (channel = anchor * 5 + (x, y, w, h, score))
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ensure_f32(x, "detector input")?;
        // conv0 is 'valid': 416 -> 414, and the first pool brings it to 207.
        let mut h = leaky(&conv2d_tf(x, &self.conv0_filters, &self.conv0_bias, 1, false)?)?;
        h = max_pool_same(&h, 2)?; // [b, 16, s/2 - 1, ...]
        for (i, layer) in self.layers.iter().enumerate() {
            // face-api pads 1 on every side, then a 'valid' separable convolution.
            h = separable_conv(
                &h,
                &layer.depthwise_filter,
                &layer.pointwise_filter,
                &layer.bias,
                1,
                ((1, 1), (1, 1)),
                Activation::Leaky,
            )?;
            // Pools after conv1..conv4 halve the map; the one after conv5 keeps it.
            h = max_pool_same(&h, if i + 1 < self.layers.len() { 2 } else { 1 })?;
        }
        let y = pointwise_conv(&h, &self.conv8_filters)?; // [b, 25, cells, cells]
        bias_act(&y, &self.conv8_bias, Activation::None)
    }

    /// Detects faces in each image, best first, in image pixels.
    pub fn detect_batch(
        &self,
        images: &[&RgbImage],
        options: &DetectorOptions,
    ) -> Result<Vec<Vec<FaceBox>>> {
        options.check()?;
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let s = options.input_size;
        let mut data = Vec::with_capacity(images.len() * 3 * s * s);
        for img in images {
            if img.width() == 0 || img.height() == 0 {
                return Err(LandmarkError::Invalid("cannot detect faces in an empty image".into()));
            }
            let rect = PixelRect { x: 0, y: 0, width: img.width(), height: img.height() };
            data.extend(square_input(img, rect, s, Padding::After, DETECTOR_MEAN_RGB));
        }
        let x =
            Tensor::from_vec(data, (images.len(), 3, s, s), &self.device).op("detector input")?;
        let out = self.forward(&x)?; // [b, 25, cells, cells]
        let (_, _, cells, _) = out.dims4().op("detector output")?;
        let all =
            out.flatten_all().op("detector output")?.to_vec1::<f32>().op("detector output")?;
        let per = 25 * cells * cells;
        Ok(images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                decode(&all[i * per..(i + 1) * per], cells, img.width(), img.height(), options)
            })
            .collect())
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// face-api `TinyYolov2Base.extractBoxes` + `nonMaxSuppression` + `FaceDetection.forSize`.
fn decode(
    grid: &[f32],
    cells: usize,
    width: u32,
    height: u32,
    options: &DetectorOptions,
) -> Vec<FaceBox> {
    let input = options.input_size as f64;
    let (w, h) = (f64::from(width), f64::from(height));
    // The resized image inside the padded square, rounded as face-api's computeReshapedDimensions.
    let scale = input / w.max(h);
    let (rw, rh) = ((w * scale).round(), (h * scale).round());
    let (corr_x, corr_y) = (input / rw, input / rh);
    let at = |anchor: usize, k: usize, row: usize, col: usize| {
        f64::from(grid[((anchor * 5 + k) * cells + row) * cells + col])
    };
    let n = cells as f64;
    // Relative boxes (x, y, w, h as fractions of the image) and scores.
    let mut found: Vec<([f64; 4], f64)> = Vec::new();
    for row in 0..cells {
        for col in 0..cells {
            for (anchor, &(aw, ah)) in ANCHORS.iter().enumerate() {
                let score = sigmoid(at(anchor, 4, row, col));
                if score <= f64::from(options.score_threshold) {
                    continue;
                }
                let cx = ((col as f64 + sigmoid(at(anchor, 0, row, col))) / n) * corr_x;
                let cy = ((row as f64 + sigmoid(at(anchor, 1, row, col))) / n) * corr_y;
                let bw = ((at(anchor, 2, row, col).exp() * aw) / n) * corr_x;
                let bh = ((at(anchor, 3, row, col).exp() * ah) / n) * corr_y;
                found.push(([cx - bw / 2.0, cy - bh / 2.0, bw, bh], score));
            }
        }
    }
    // NMS as face-api: stable ascending sort, pop the last (best), drop overlaps > threshold.
    let mut order: Vec<usize> = (0..found.len()).collect();
    order.sort_by(|&a, &b| found[a].1.total_cmp(&found[b].1));
    let mut picked = Vec::new();
    while let Some(best) = order.pop() {
        picked.push(best);
        order.retain(|&i| iou_xywh(&found[best].0, &found[i].0) <= IOU_THRESHOLD);
    }
    picked
        .into_iter()
        .map(|i| {
            let ([x, y, bw, bh], score) = found[i];
            FaceBox {
                x1: (x * w) as f32,
                y1: (y * h) as f32,
                x2: ((x + bw) * w) as f32,
                y2: ((y + bh) * h) as f32,
                score: score as f32,
            }
        })
        .collect()
}

fn iou_xywh(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let iw = ((a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0])).max(0.0);
    let ih = ((a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    inter / (a[2] * a[3] + b[2] * b[3] - inter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_input_over_32() {
        let det = TinyFaceDetector::new(&Device::Cpu).unwrap();
        for s in [416, 224] {
            let x = Tensor::zeros((1, 3, s, s), candle_core::DType::F32, &Device::Cpu).unwrap();
            assert_eq!(det.forward(&x).unwrap().dims(), &[1, 25, s / 32, s / 32]);
        }
    }

    #[test]
    fn options_are_checked() {
        let ok = DetectorOptions::default();
        assert!(DetectorOptions { input_size: 100, ..ok }.check().is_err());
        assert!(DetectorOptions { score_threshold: 1.5, ..ok }.check().is_err());
        assert!(ok.check().is_ok());
    }

    #[test]
    fn detector_names_round_trip() {
        for k in [DetectorKind::Ssd, DetectorKind::SsdWhole, DetectorKind::Tiny] {
            assert_eq!(k.name().parse::<DetectorKind>().unwrap(), k);
        }
        let e = "yolo".parse::<DetectorKind>().unwrap_err().to_string();
        assert!(e.contains("yolo") && e.contains("ssd-whole"), "{e}");
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        // Two anchors of one cell fire with nearly the same box; a far cell fires too.
        let cells = 2;
        let mut grid = vec![-20f32; 25 * cells * cells];
        let mut set = |anchor: usize, k: usize, row: usize, col: usize, v: f32| {
            grid[((anchor * 5 + k) * cells + row) * cells + col] = v;
        };
        for (anchor, score) in [(2, 3.0), (3, 2.0)] {
            for k in 0..4 {
                set(anchor, k, 0, 0, 0.0);
            }
            set(anchor, 4, 0, 0, score);
        }
        for k in 0..4 {
            set(0, k, 1, 1, 0.0);
        }
        set(0, 4, 1, 1, 1.0);
        let opts = DetectorOptions { input_size: 64, ..DetectorOptions::default() };
        let faces = decode(&grid, cells, 64, 64, &opts);
        assert_eq!(faces.len(), 2, "{faces:?}");
        assert!((faces[0].score - sigmoid(3.0) as f32).abs() < 1e-6);
        assert!((faces[1].score - sigmoid(1.0) as f32).abs() < 1e-6);
    }
}
