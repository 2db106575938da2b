//! `aue-predict`'s library: runs a trained AUE-CRL checkpoint on photos.
//!
//! For each image: detect faces and 68 landmarks (aue-landmarks), crop and normalise each face
//! exactly as the reference's test mode (docs/METHOD.md section 5: the detected box enlarged by
//! half of 15% of its width per side, clipped, rounded half to even, resized to S x S, ImageNet
//! normalisation; AU locations from the landmarks on the G grid, section 8), run the model in
//! eval mode (section 3; the fused `aue_model::InferenceModel`) and turn its outputs into one
//! [`Row`] per face:
//! - stage 3: expression = softmax of `pred2`, AU probabilities = `pred_au`, attention = `au_prob`;
//! - stage 2: AU probabilities only (the expression head of a stage-2 file is stage 1's, and its
//!   backbone statistics moved during stage 2);
//! - stage 1: expression = softmax of `pred_em` (pred1); the AU branch is untrained, so no AUs.
//!
//! Videos ([`video`]) go through the same per-image path frame by frame (decoded by FFmpeg,
//! [`decode`]), with faces tracked across frames ([`track`]), optional smoothing over time
//! ([`smooth`]) and a plot per track ([`plot`]).

pub mod decode;
pub mod error;
pub mod font;
pub mod output;
pub mod plot;
pub mod smooth;
pub mod track;
pub mod video;

use std::path::{Path, PathBuf};

use aue_core::{Context, NUM_AUS};
use aue_data::preprocess::{self, AuGrid, Augment, ENLARGE_RAF};
use aue_landmarks::{FaceBox, Landmarker, LandmarkerConfig, Landmarks68};
use aue_model::{InferenceModel, OutputSet, Preset, Stage};
use candle_core::{Device, Tensor};
use image::RgbImage;

pub use aue_contract::CheckpointInfo;
pub use decode::{Sampling, VIDEO_EXTENSIONS, is_video};
pub use error::{PredictError, Result};
pub use output::{Format, Row, Status};
pub use video::{VideoFrame, VideoOptions, VideoSummary};

use crate::error::{candle_err, io_err};

/// Most faces the model runs in one forward pass.
pub const MAX_FACES_PER_PASS: usize = 32;

/// Image file extensions looked for inside folders (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Settings of a [`Predictor`].
#[derive(Debug, Clone)]
pub struct PredictorConfig {
    /// The model checkpoint (`.safetensors`).
    pub checkpoint: PathBuf,
    /// The preset, required when the checkpoint has no trainer metadata.
    pub preset: Option<Preset>,
    /// Minimum detector score of a face, in (0, 1).
    pub min_score: f32,
    /// Where the model runs.
    pub device: Device,
}

/// A detected face: its box and 68 landmarks, in image pixels.
pub type Face = (FaceBox, Landmarks68);

/// What one picture gave: its rows (one per face, or one `no_face` row) and every detected face.
pub type Faces = (Vec<Row>, Vec<Face>);

/// What one image gave: its rows, and (when it could be read) the picture and the faces found.
pub struct ImageResult {
    /// One row per face, or one `no_face` / `error` row.
    pub rows: Vec<Row>,
    /// The decoded image (for the overlay).
    pub image: Option<RgbImage>,
    /// Each face's box and landmarks, in row order.
    pub faces: Vec<(FaceBox, Landmarks68)>,
}

/// A loaded model with the face detector and landmark net.
pub struct Predictor {
    model: InferenceModel,
    info: CheckpointInfo,
    landmarker: Landmarker,
    grid: AuGrid,
}

impl Predictor {
    /// Reads the checkpoint's metadata, loads it strictly, and loads the landmarker.
    pub fn new(cfg: &PredictorConfig) -> Result<Self> {
        let info = CheckpointInfo::read(&cfg.checkpoint, cfg.preset)?;
        // Built once: BatchNorm folded, fused layers (aue_model::infer); the loaded training
        // model is dropped.
        let model = InferenceModel::new(&info.load_model(&cfg.device)?)
            .map_err(Context::op("build the inference model"))?;
        let mut lcfg = LandmarkerConfig::default();
        lcfg.detector.score_threshold = cfg.min_score;
        let landmarker = Landmarker::new(&lcfg).map_err(Context::op("load the face detector"))?;
        let grid = AuGrid::new(info.config.input_size as u32);
        tracing::info!(
            checkpoint = %cfg.checkpoint.display(),
            stage = info.stage().number(),
            preset = %info.meta.preset,
            input_size = info.config.input_size,
            "model loaded"
        );
        Ok(Predictor { model, info, landmarker, grid })
    }

    /// What the checkpoint holds.
    pub fn info(&self) -> &CheckpointInfo {
        &self.info
    }

    /// Whether rows carry expression probabilities (stages 1 and 3).
    pub fn has_expression(&self) -> bool {
        self.info.stage() != Stage::Au
    }

    /// Whether rows carry AU probabilities (stages 2 and 3).
    pub fn has_aus(&self) -> bool {
        self.info.stage() != Stage::Em
    }

    /// Whether rows carry attention weights (stage 3).
    pub fn has_attention(&self) -> bool {
        self.info.stage() == Stage::Fuse
    }

    /// Runs one image. Never fails: an unreadable image is an `error` row, an image without a
    /// face a `no_face` row.
    pub fn predict_image(&self, path: &Path) -> ImageResult {
        let file = path.display().to_string();
        let image = match preprocess::decode_rgb(path) {
            Ok(img) => img,
            Err(e) => {
                return ImageResult {
                    rows: vec![Row::status(&file, Status::Error(e.to_string()))],
                    image: None,
                    faces: vec![],
                };
            }
        };
        match self.predict_rgb(&file, &image) {
            Ok((rows, faces)) => ImageResult { rows, image: Some(image), faces },
            Err(e) => ImageResult {
                rows: vec![Row::status(&file, Status::Error(format!("{file}: {e}")))],
                image: Some(image),
                faces: vec![],
            },
        }
    }

    /// Detects, crops and runs every face of a decoded image.
    pub fn predict_rgb(&self, file: &str, image: &RgbImage) -> Result<Faces> {
        let mut out = self.predict_batch(&[(file, image)])?;
        Ok(out.pop().unwrap_or_default())
    }

    /// [`Self::predict_rgb`] for several images at once: one detector pass per image (over the
    /// images in parallel), then the landmark net once on all their faces and the model on them
    /// at most [`MAX_FACES_PER_PASS`] at a time. One result per image, in order.
    pub fn predict_batch(&self, images: &[(&str, &RgbImage)]) -> Result<Vec<Faces>> {
        let lm_err = |op: &str| Context::<aue_landmarks::LandmarkError>::op(op.to_string());
        let pictures: Vec<&RgbImage> = images.iter().map(|(_, img)| *img).collect();
        let boxes =
            self.landmarker.detect_faces_batch(&pictures).map_err(lm_err("detect faces"))?;
        let pairs: Vec<(&RgbImage, FaceBox)> = images
            .iter()
            .zip(&boxes)
            .flat_map(|((_, img), bs)| bs.iter().map(move |b| (*img, *b)))
            .collect();
        let mut points =
            self.landmarker.landmarks_batch(&pairs).map_err(lm_err("landmarks"))?.into_iter();
        let s = self.grid.size as usize;
        let n_faces = pairs.len();
        let mut pixels = Vec::with_capacity(n_faces * 3 * s * s);
        let mut locs: Vec<i64> = Vec::with_capacity(n_faces * NUM_AUS * 4);
        // Per image: its rows keyed by face index, its faces, and which crops it sent to the model.
        let mut per_image: Vec<KeyedFaces> = Vec::with_capacity(images.len());
        let mut ran: Vec<(usize, usize, FaceBox)> = Vec::new(); // (image, face index, box)
        for (i, ((file, image), bs)) in images.iter().zip(&boxes).enumerate() {
            let mut rows = Vec::new();
            let mut faces = Vec::with_capacity(bs.len());
            if bs.is_empty() {
                rows.push((0, Row::status(file, Status::NoFace)));
            }
            for (k, b) in bs.iter().enumerate() {
                let p = points.next().unwrap_or([[0.0; 2]; 68]);
                faces.push((*b, p));
                // Test mode of section 5: detected box, no offset, no flip.
                let face_box = b.to_f64();
                let mut lm = [[0.0f64; 2]; 68];
                for (o, q) in lm.iter_mut().zip(p.iter()) {
                    *o = [q[0].into(), q[1].into()];
                }
                match preprocess::prepare_rgb(
                    image,
                    &face_box,
                    &lm,
                    ENLARGE_RAF,
                    &Augment::NONE,
                    false,
                    &self.grid,
                ) {
                    Ok((bytes, plan)) => {
                        let start = pixels.len();
                        pixels.resize(start + 3 * s * s, 0.0);
                        preprocess::normalise_into(&bytes, &mut pixels[start..]);
                        locs.extend(plan.au_loc.iter().flatten());
                        ran.push((i, k, *b));
                    }
                    Err(msg) => {
                        let status = Status::Error(format!("{file}: face {k}: {msg}"));
                        let mut row = Row::status(file, status);
                        row.face = Some(k);
                        row.face_box = Some([b.x1, b.y1, b.x2, b.y2]);
                        row.score = Some(b.score);
                        rows.push((k, row));
                    }
                }
            }
            per_image.push((rows, faces));
        }
        if !ran.is_empty() {
            // At most MAX_FACES_PER_PASS faces per forward pass, so that a crowded batch of
            // frames cannot ask a large model for unbounded activation memory.
            let (px, lc) = (3 * s * s, NUM_AUS * 4);
            let mut preds = Vec::with_capacity(ran.len());
            for start in (0..ran.len()).step_by(MAX_FACES_PER_PASS) {
                let n = MAX_FACES_PER_PASS.min(ran.len() - start);
                let chunk_px = pixels[start * px..(start + n) * px].to_vec();
                let chunk_loc = locs[start * lc..(start + n) * lc].to_vec();
                preds.extend(self.forward(chunk_px, chunk_loc, n)?);
            }
            for ((i, k, b), pred) in ran.into_iter().zip(preds) {
                let mut row = Row::status(images[i].0, Status::Ok);
                row.face = Some(k);
                row.face_box = Some([b.x1, b.y1, b.x2, b.y2]);
                row.score = Some(b.score);
                if let Some(probs) = pred.probs {
                    let best = probs
                        .iter()
                        .enumerate()
                        .fold(0, |m, (i, &p)| if p > probs[m] { i } else { m });
                    row.expression = self.info.labels().get(best).cloned();
                    row.probs = Some(probs);
                }
                row.aus = pred.aus;
                row.attention = pred.attention;
                per_image[i].0.push((k, row));
            }
        }
        Ok(per_image
            .into_iter()
            .map(|(mut rows, faces)| {
                rows.sort_by_key(|(k, _)| *k);
                (rows.into_iter().map(|(_, r)| r).collect(), faces)
            })
            .collect())
    }

    /// The model on a batch of normalised faces.
    ///
    /// # Shapes
    /// pixels: n * 3 * S * S values ([n, 3, S, S]); locs: n * 17 * 4 ([n, 17, 4] on the G grid)
    fn forward(&self, pixels: Vec<f32>, locs: Vec<i64>, n: usize) -> Result<Vec<FacePred>> {
        let s = self.grid.size as usize;
        let dev = self.model.device();
        let images =
            Tensor::from_vec(pixels, (n, 3, s, s), dev).map_err(candle_err("image batch"))?; // [n, 3, S, S]
        let au_loc =
            Tensor::from_vec(locs, (n, NUM_AUS, 4), dev).map_err(candle_err("AU locations"))?; // [n, 17, 4]
        let outputs = match self.info.stage() {
            Stage::Em => OutputSet { em: true, au: false, fusion: false },
            Stage::Au => OutputSet { em: false, au: true, fusion: false },
            Stage::Fuse => OutputSet::ALL,
        };
        let out =
            self.model.forward(&images, Some(&au_loc), outputs).map_err(Context::op("forward"))?;
        let rows = |t: &Option<Tensor>, what: &str| -> Result<Option<Vec<Vec<f32>>>> {
            t.as_ref().map(|t| t.to_vec2::<f32>().map_err(candle_err(what))).transpose()
        };
        let logits = match self.info.stage() {
            Stage::Em => rows(&out.pred_em, "pred_em")?,
            Stage::Au => None,
            Stage::Fuse => rows(&out.pred2, "pred2")?,
        };
        let aus = rows(&out.pred_au, "pred_au")?;
        let att = rows(&out.au_prob, "au_prob")?;
        let au17 = |v: &Vec<Vec<f32>>, i: usize| -> [f32; NUM_AUS] {
            let mut a = [0.0; NUM_AUS];
            a.copy_from_slice(&v[i][..NUM_AUS]);
            a
        };
        Ok((0..n)
            .map(|i| FacePred {
                probs: logits.as_ref().map(|l| softmax(&l[i])),
                aus: aus.as_ref().map(|a| au17(a, i)),
                attention: att.as_ref().map(|a| au17(a, i)),
            })
            .collect())
    }
}

/// [`Faces`] with each row keyed by its face index (for sorting).
type KeyedFaces = (Vec<(usize, Row)>, Vec<Face>);

/// One face's model outputs.
struct FacePred {
    probs: Option<Vec<f32>>,
    aus: Option<[f32; NUM_AUS]>,
    attention: Option<[f32; NUM_AUS]>,
}

/// Softmax of logits, computed in f64 after subtracting the maximum.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = logits.iter().map(|&x| f64::from(x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|v| (v / z) as f32).collect()
}

/// The image files named by `inputs`: files as given, folders walked recursively for
/// [`IMAGE_EXTENSIONS`], each folder's files in name order.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    collect(inputs, &IMAGE_EXTENSIONS)
}

/// The image and video files named by `inputs`: files as given, folders walked recursively for
/// [`IMAGE_EXTENSIONS`] and [`VIDEO_EXTENSIONS`], each folder's files in name order. A file is
/// run as a video when [`is_video`] says so, else as an image.
pub fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let exts: Vec<&str> = IMAGE_EXTENSIONS.iter().chain(VIDEO_EXTENSIONS.iter()).copied().collect();
    collect(inputs, &exts)
}

fn collect(inputs: &[PathBuf], exts: &[&str]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    // Real (canonical) folders and files already taken: a symbolic-link loop, or two links to
    // one folder, are walked once, and each real file gives one input.
    let mut seen = std::collections::HashSet::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(io_err("cannot read", input))?;
        if meta.is_dir() {
            walk(input, exts, &mut seen, &mut out)?;
        } else if seen.insert(std::fs::canonicalize(input).unwrap_or_else(|_| input.clone())) {
            out.push(input.clone());
        }
    }
    Ok(out)
}

fn walk(
    dir: &Path,
    exts: &[&str],
    seen: &mut std::collections::HashSet<PathBuf>,
    out: &mut Vec<PathBuf>,
) -> Result<()> {
    let real = std::fs::canonicalize(dir).map_err(io_err("cannot resolve", dir))?;
    if !seen.insert(real) {
        tracing::debug!(folder = %dir.display(), "already walked (a link to a folder seen before)");
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err("cannot list", dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(io_err("cannot list", dir))?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, exts, seen, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.contains(&e.to_ascii_lowercase().as_str()))
            && seen.insert(std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone()))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Draws the faces, their landmarks, the top expression and the top 3 AUs on a copy of `image`
/// (for a video frame, with the face's track id first).
pub fn overlay(image: &RgbImage, faces: &[(FaceBox, Landmarks68)], rows: &[Row]) -> RgbImage {
    let mut img = aue_landmarks::overlay::draw(image, faces, None);
    let scale = (image.width().max(image.height()) / 250).max(1);
    for row in rows {
        let Some([x1, y1, _, y2]) = row.face_box else { continue };
        let mut lines = Vec::new();
        let track = match (row.frame, row.face) {
            (Some(_), Some(id)) => format!("#{id} "),
            _ => String::new(),
        };
        if let (Some(name), Some(p)) = (&row.expression, &row.probs) {
            let top = p.iter().copied().fold(0.0f32, f32::max);
            lines.push(format!("{track}{name} {top:.2}"));
        } else if !track.is_empty() {
            lines.push(track.trim_end().to_string());
        }
        if let Some(aus) = &row.aus {
            let mut idx: Vec<usize> = (0..NUM_AUS).collect();
            idx.sort_by(|&a, &b| aus[b].total_cmp(&aus[a]));
            let names: Vec<&str> = idx.iter().take(3).map(|&i| aue_core::AU_NAMES[i]).collect();
            lines.push(names.join(" "));
        }
        let (_, h) = font::text_size("X", scale);
        // Above the box when there is room, else below it.
        let total = h * lines.len() as u32;
        let top =
            if y1 as i64 >= i64::from(total) { y1 as i64 - i64::from(total) } else { y2 as i64 };
        for (i, line) in lines.iter().enumerate() {
            let white = image::Rgb([255, 255, 255]);
            let black = image::Rgb([0, 0, 0]);
            font::draw_text(
                &mut img,
                x1 as i64,
                top + i as i64 * i64::from(h),
                line,
                scale,
                white,
                black,
            );
        }
    }
    img
}

#[cfg(test)]
mod tests {
    #[test]
    fn folder_walks_visit_each_real_folder_and_file_once() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        std::fs::create_dir_all(a.join("b")).unwrap();
        std::fs::write(a.join("one.jpg"), b"x").unwrap();
        std::fs::write(a.join("b/two.png"), b"x").unwrap();
        // Two loops (a link to the folder itself and one to its parent) and a second link to a file.
        std::os::unix::fs::symlink(&a, a.join("b/loop")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), a.join("up")).unwrap();
        std::os::unix::fs::symlink(a.join("one.jpg"), a.join("again.jpg")).unwrap();
        let found = collect_images(&[a.clone(), a.join("one.jpg")]).unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
    }

    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let p = softmax(&[1.0, 3.0, -2.0, 50.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[3] > 0.99 && p[1] > p[0] && p[0] > p[2]);
        // Large logits do not overflow.
        assert_eq!(softmax(&[1000.0, 1000.0]), [0.5, 0.5]);
    }
}
