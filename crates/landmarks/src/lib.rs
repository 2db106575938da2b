//! 68-point facial landmarks (iBUG layout) for the aue datasets, computed on the CPU with Candle.
//!
//! AUE-CRL places its 17 action-unit crops at landmark-derived centres (docs/METHOD.md section 5),
//! and the reference reads landmark files made by the FAN detector, which RAF-DB and SFEW 2.0 do
//! not ship. This crate makes them: face-api's SSD MobileNet v1 face detector (or its tiny face
//! detector, [`DetectorKind`]) finds the faces where the dataset has no box, and face-api's
//! 68-point landmark net (all from the npm package `@vladmandic/face-api` 1.7.15, MIT; converted
//! once by `tools/landmarks/convert_faceapi.py`, embedded in the library) regresses the points.
//! See README.md for provenance and accuracy, on synthetic and on real photos.
//!
//! ```no_run
//! use aue_landmarks::{Landmarker, LandmarkerConfig, load_image};
//! let lm = Landmarker::new(&LandmarkerConfig::default())?;
//! let img = load_image("face.jpg".as_ref())?;
//! if let Some(face) = lm.detect_faces(&img)?.first() {
//!     let points = lm.landmarks(&img, face)?; // [[x, y]; 68] in image pixels
//!     println!("nose tip at {:?}", points[30]);
//! }
//! # Ok::<(), aue_landmarks::LandmarkError>(())
//! ```

pub mod blazeface;
pub mod dataset;
pub mod detect;
pub mod detector;
pub mod device;
pub mod error;
pub mod eval;
pub mod geometry;
pub mod landmark_net;
pub mod mtcnn;
pub mod ops;
pub mod overlay;
pub mod preprocess;
pub mod real;
pub mod ssd;
pub mod weights;

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;

pub use detect::FaceDetector;
pub use detector::{DetectorKind, DetectorOptions, TinyFaceDetector};
pub use error::{LandmarkError, Result};
pub use geometry::{FaceBox, Landmarks68};
pub use landmark_net::{LandmarkNet, LandmarkNetKind};
pub use weights::EmbeddedNet;

use crate::error::CandleContext;
use crate::geometry::distance;
use crate::preprocess::{
    LANDMARK_INPUT, LANDMARK_MEAN_RGB, Padding, PixelRect, face_crop, square_input,
};
use aue_data::landmarks::IBUG68_MIRROR;

/// Largest [`Landmarker::flip_disagreement`] of a detection kept as a face (a fraction of the
/// crop's side). Measured with the SSD detector (README.md, "Real photos"): at most 0.030 on the
/// 15 faces of `tests/fixtures/real` and the 23 of the occluded, grey and group probes (the grey
/// profile in `camera.png` is the highest), at most 0.040 on 267 synthetic cartoon faces; 0.078
/// for a cap badge, 0.10-0.18 for a cat's face, the only things it took for faces. 0.06 lies
/// between the two groups: 0.020 above the largest face value, 0.018 below the smallest other.
pub const FLIP_MAX_DISAGREEMENT: f32 = 0.06;

/// What the [`Landmarker`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LandmarkerConfig {
    pub net: LandmarkNetKind,
    pub detector: DetectorOptions,
}

/// Face detector plus landmark net, loaded once and shared across threads.
pub struct Landmarker {
    detector: FaceDetector,
    net: LandmarkNet,
    config: LandmarkerConfig,
    device: Device,
}

impl Landmarker {
    /// Loads the embedded weights of the configured nets, on the CPU.
    pub fn new(config: &LandmarkerConfig) -> Result<Self> {
        Self::on_device(config, &Device::Cpu)
    }

    /// [`Self::new`] on any Candle device (see [`device::open`]).
    pub fn on_device(config: &LandmarkerConfig, device: &Device) -> Result<Self> {
        config.detector.check()?;
        Ok(Self {
            detector: FaceDetector::new(config.detector.kind, device)?,
            net: LandmarkNet::new(config.net, device)?,
            config: *config,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &LandmarkerConfig {
        &self.config
    }

    /// Faces in `image`, best score first, in image pixels.
    pub fn detect_faces(&self, image: &RgbImage) -> Result<Vec<FaceBox>> {
        Ok(self.detect_faces_batch(&[image])?.pop().unwrap_or_default())
    }

    /// [`Self::detect_faces`] for several images, in parallel.
    ///
    /// Each image is its own forward pass: a 416 x 416 detector batch of 16 holds about 180 MB
    /// per layer and runs at half the speed per image of single images (measured on 2 cores).
    /// With [`DetectorOptions::flip_check`] (the default) a detection is kept only if its
    /// [`Self::flip_disagreement`] is at most [`FLIP_MAX_DISAGREEMENT`], unless the detector
    /// exempts it (a strongly turned face two detectors found: [`detect::TURNED_YAW_OFFSET`]).
    pub fn detect_faces_batch(&self, images: &[&RgbImage]) -> Result<Vec<Vec<FaceBox>>> {
        images
            .par_iter()
            .map(|img| {
                let found = self.detector.detect_found(img, &self.config.detector)?;
                if !self.config.detector.flip_check {
                    return Ok(found.into_iter().map(|f| f.face).collect());
                }
                // A box with less than a pixel inside the image has no crop to check (nor
                // landmarks): not a usable face.
                let found: Vec<_> = found
                    .into_iter()
                    .filter(|f| face_crop(&f.face, img.width(), img.height()).is_ok())
                    .collect();
                let pairs: Vec<_> =
                    found.iter().filter(|f| f.flip_check).map(|f| (*img, f.face)).collect();
                let mut disagreement = self.flip_disagreement(&pairs)?.into_iter();
                let mut faces = Vec::with_capacity(found.len());
                for f in found {
                    // One value per checked face, in order; none for an exempt one.
                    let d = if f.flip_check { disagreement.next() } else { None };
                    if d.is_none_or(|d| d <= FLIP_MAX_DISAGREEMENT) {
                        faces.push(f.face);
                    } else {
                        tracing::debug!(face = ?f.face, disagreement = d, "not a face: flip check");
                    }
                }
                Ok(faces)
            })
            .collect()
    }

    /// The 68 points of the face in `face` (a detector box or a dataset box), in image pixels.
    pub fn landmarks(&self, image: &RgbImage, face: &FaceBox) -> Result<Landmarks68> {
        let mut out = self.landmarks_batch(&[(image, *face)])?;
        out.pop().ok_or_else(|| LandmarkError::Invalid("landmark net returned no row".into()))
    }

    /// [`Self::landmarks`] for several faces (of one or many images) in one forward pass.
    pub fn landmarks_batch(&self, faces: &[(&RgbImage, FaceBox)]) -> Result<Vec<Landmarks68>> {
        if faces.is_empty() {
            return Ok(Vec::new());
        }
        let (data, crops) = net_inputs(faces)?;
        let rows = self.net_rows(data, faces.len())?;
        Ok(rows.iter().zip(crops).map(|(row, crop)| landmark_net::crop_points(row, crop)).collect())
    }

    /// How far the landmark net's points for each face move when the crop is mirrored: the net
    /// runs on the crop and on its mirror image (one batch), the second set is mirrored back
    /// (x to 1 - x, left and right points swapped, [`IBUG68_MIRROR`]), and the mean distance of
    /// the 68 pairs is returned as a fraction of the crop's square side.
    ///
    /// On a face the two sets nearly agree; on something the detector took for a face (a cat's
    /// face, a cap badge) the net has no face to lock onto and the sets fall apart (README.md,
    /// "Real photos", gives the measured values).
    pub fn flip_disagreement(&self, faces: &[(&RgbImage, FaceBox)]) -> Result<Vec<f32>> {
        if faces.is_empty() {
            return Ok(Vec::new());
        }
        let (mut data, _) = net_inputs(faces)?;
        let s = LANDMARK_INPUT;
        let mirrored: Vec<f32> =
            data.chunks_exact(s).flat_map(|row| row.iter().rev().copied()).collect();
        data.extend(mirrored);
        let rows = self.net_rows(data, 2 * faces.len())?;
        let (plain, flipped) = rows.split_at(faces.len());
        Ok(plain
            .iter()
            .zip(flipped)
            .map(|(p, q)| {
                let sum: f32 = IBUG68_MIRROR
                    .iter()
                    .enumerate()
                    .map(|(i, &m)| {
                        distance([p[2 * i], p[2 * i + 1]], [1.0 - q[2 * m], q[2 * m + 1]])
                    })
                    .sum();
                sum / 68.0
            })
            .collect())
    }

    /// The landmark net's output rows for `n` inputs laid out by [`net_inputs`].
    fn net_rows(&self, data: Vec<f32>, n: usize) -> Result<Vec<Vec<f32>>> {
        let s = LANDMARK_INPUT;
        let x = Tensor::from_vec(data, (n, 3, s, s), &self.device).op("landmark input")?;
        let y = self.net.forward(&x)?; // [n, 136]
        y.to_vec2::<f32>().op("landmark output")
    }

    /// The best-scoring face of `image` and its landmarks, or `None` when no face is found.
    pub fn detect_and_landmarks(&self, image: &RgbImage) -> Result<Option<(FaceBox, Landmarks68)>> {
        match self.detect_faces(image)?.first() {
            None => Ok(None),
            Some(face) => Ok(Some((*face, self.landmarks(image, face)?))),
        }
    }
}

/// The landmark net's input for each face (face-api's crop, padded to a centred square, resized,
/// mean subtracted; [n, 3, 112, 112] in one vector) and the crops.
fn net_inputs(faces: &[(&RgbImage, FaceBox)]) -> Result<(Vec<f32>, Vec<PixelRect>)> {
    let s = LANDMARK_INPUT;
    let mut data = Vec::with_capacity(faces.len() * 3 * s * s);
    let mut crops = Vec::with_capacity(faces.len());
    for (image, face) in faces {
        let crop = face_crop(face, image.width(), image.height())?;
        data.extend(square_input(image, crop, s, Padding::Centered, LANDMARK_MEAN_RGB));
        crops.push(crop);
    }
    Ok((data, crops))
}

/// Reads an image file as 8-bit RGB; the error names the file.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let img = image::ImageReader::open(path)
        .map_err(|source| LandmarkError::Read { path: path.to_path_buf(), source })?
        .with_guessed_format()
        .map_err(|source| LandmarkError::Read { path: path.to_path_buf(), source })?
        .decode()
        .map_err(|source| LandmarkError::ImageRead { path: path.to_path_buf(), source })?;
    Ok(img.to_rgb8())
}
