//! `model.json`, written beside the ONNX file: what a program serving the model needs to know
//! (stage, label names, AU order, input size, normalisation, inputs and outputs), so that it never
//! has to read aue's code. The same JSON is stored in the ONNX file's metadata under `aue`.

use aue_contract::CheckpointInfo;
use aue_core::AU_NAMES;
use aue_data::preprocess::{ENLARGE_RAF, IMAGENET_MEAN, IMAGENET_STD};
use serde::Serialize;

use crate::graph::TensorDesc;

/// The `format` value of this version of `model.json`.
pub const FORMAT: &str = "aue-onnx/1";

/// How the image input is normalised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Normalisation {
    /// Whether the graph does it (`--with-preprocess`): it then takes RGB bytes.
    pub in_graph: bool,
    /// Channel order.
    pub channels: String,
    /// Layout of the `image` input.
    pub layout: String,
    /// Per channel, `(v / scale - mean) / std` for a byte `v`.
    pub scale: f32,
    /// ImageNet mean, RGB.
    pub mean: [f32; 3],
    /// ImageNet standard deviation, RGB.
    pub std: [f32; 3],
    /// The formula, in words.
    pub formula: String,
}

/// The contents of `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelJson {
    /// [`FORMAT`].
    pub format: String,
    /// The ONNX file's name (same folder).
    pub model: String,
    /// ONNX opset of the default domain.
    pub opset: i64,
    /// Training stage of the checkpoint (1 EM, 2 AU, 3 fusion).
    pub stage: u8,
    /// The stage's name (`em`, `au`, `fuse`).
    pub stage_name: String,
    /// Model preset.
    pub preset: String,
    /// The checkpoint's file name.
    pub checkpoint: String,
    /// sha256 (hex) of the checkpoint file.
    pub checkpoint_sha256: String,
    /// Class names in logit order.
    pub labels: Vec<String>,
    /// AU names in the order of `pred_au`, `au_prob` and `au_loc`'s rows.
    pub aus: Vec<String>,
    /// Input side S.
    pub input_size: usize,
    /// AU grid side G = S / 4 (the coordinates of `au_loc`).
    pub au_grid: usize,
    /// Crop side L on the grid.
    pub crop_side: usize,
    /// The range the data pipeline clamps AU centres to: [L/2, G - L/2].
    pub au_centre_range: [usize; 2],
    /// The image normalisation.
    pub normalisation: Normalisation,
    /// How the face is cropped before resizing, as in training.
    pub face_crop: String,
    /// The external weights file (ONNX external data, same folder), or `null` when the weights
    /// are inside the ONNX file.
    pub external_data: Option<String>,
    /// Graph inputs.
    pub inputs: Vec<TensorDesc>,
    /// Graph outputs.
    pub outputs: Vec<TensorDesc>,
}

impl ModelJson {
    /// The description of a model exported from a checkpoint described by `info`.
    pub fn new(
        info: &CheckpointInfo,
        onnx_file: &str,
        checkpoint: (&str, &str),
        preprocess: bool,
        inputs: Vec<TensorDesc>,
        outputs: Vec<TensorDesc>,
    ) -> Self {
        let cfg = &info.config;
        let (lo, hi) = cfg.centre_range();
        let layout = if preprocess { "NHWC, uint8" } else { "NCHW, float32 normalised" };
        ModelJson {
            format: FORMAT.into(),
            model: onnx_file.into(),
            opset: crate::onnx::OPSET,
            stage: info.stage().number(),
            stage_name: info.stage().name().into(),
            preset: info.meta.preset.name().into(),
            checkpoint: checkpoint.0.into(),
            checkpoint_sha256: checkpoint.1.into(),
            labels: info.labels().to_vec(),
            aus: AU_NAMES.iter().map(|s| s.to_string()).collect(),
            input_size: cfg.input_size,
            au_grid: cfg.grid(),
            crop_side: cfg.crop_side(),
            au_centre_range: [lo, hi],
            normalisation: Normalisation {
                in_graph: preprocess,
                channels: "RGB".into(),
                layout: layout.into(),
                scale: 255.0,
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
                formula: "x = (v / 255 - mean[c]) / std[c] in float32, v the byte of channel c"
                    .into(),
            },
            face_crop: format!(
                "the face box enlarged on every side by int(int({ENLARGE_RAF} * box width) / 2) \
                 pixels, clipped to the image, rounded half to even, resized to {s} x {s} \
                 (bilinear, aspect not kept); au_loc from the 68 landmarks of that crop \
                 (docs/METHOD.md section 5, aue-data's preprocess)",
                s = cfg.input_size
            ),
            external_data: None,
            inputs,
            outputs,
        }
    }
}
