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

pub mod dataset;
pub mod detect;
pub mod detector;
pub mod device;
pub mod error;
pub mod eval;
pub mod geometry;
pub mod landmark_net;
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
use crate::preprocess::{LANDMARK_INPUT, LANDMARK_MEAN_RGB, Padding, face_crop, square_input};

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
    pub fn detect_faces_batch(&self, images: &[&RgbImage]) -> Result<Vec<Vec<FaceBox>>> {
        images.par_iter().map(|img| self.detector.detect(img, &self.config.detector)).collect()
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
        let s = LANDMARK_INPUT;
        let mut data = Vec::with_capacity(faces.len() * 3 * s * s);
        let mut crops = Vec::with_capacity(faces.len());
        for (image, face) in faces {
            let crop = face_crop(face, image.width(), image.height())?;
            data.extend(square_input(image, crop, s, Padding::Centered, LANDMARK_MEAN_RGB));
            crops.push(crop);
        }
        let x =
            Tensor::from_vec(data, (faces.len(), 3, s, s), &self.device).op("landmark input")?;
        let y = self.net.forward(&x)?; // [n, 136]
        let rows = y.to_vec2::<f32>().op("landmark output")?;
        Ok(rows.iter().zip(crops).map(|(row, crop)| landmark_net::crop_points(row, crop)).collect())
    }

    /// The best-scoring face of `image` and its landmarks, or `None` when no face is found.
    pub fn detect_and_landmarks(&self, image: &RgbImage) -> Result<Option<(FaceBox, Landmarks68)>> {
        match self.detect_faces(image)?.first() {
            None => Ok(None),
            Some(face) => Ok(Some((*face, self.landmarks(image, face)?))),
        }
    }
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
