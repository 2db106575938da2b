//! Reading the shipped face-api weights (safetensors written by `tools/landmarks/convert_faceapi.py`).
//!
//! Each tensor is stored as face-api's uint8 codes, already in Candle's axis order; its `scale` and
//! `min` are in the file's `__metadata__` as the manifest's decimal text. Dequantising computes
//! `code * scale + min` in f64 and rounds to f32, exactly as TensorFlow.js does when it loads the
//! manifest, so the float weights are bit-identical to the original implementation's.
//!
//! A few tensors are stored as plain f32 instead (the SSD detector's anchors, which face-api keeps
//! unquantised); they load as they are. Other converted nets store plain f32 (MTCNN) or f16
//! (BlazeFace, whose TFLite file holds f16), widened exactly to f32 at load time.
//!
//! Loading is strict: a missing tensor, a wrong shape or a tensor the network does not use is an
//! error naming the tensor.

use std::collections::{BTreeSet, HashMap};

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};

use crate::error::{CandleContext, LandmarkError, Result};

/// The face-api 68-point landmark net (`face_landmark_68_model`), converted.
pub const FACE_LANDMARK_68: &[u8] = include_bytes!("../weights/face_landmark_68.safetensors");
/// The face-api tiny 68-point landmark net (`face_landmark_68_tiny_model`), converted.
pub const FACE_LANDMARK_68_TINY: &[u8] =
    include_bytes!("../weights/face_landmark_68_tiny.safetensors");
/// The face-api tiny face detector (`tiny_face_detector_model`), converted.
pub const TINY_FACE_DETECTOR: &[u8] = include_bytes!("../weights/tiny_face_detector.safetensors");
/// The face-api SSD MobileNet v1 face detector (`ssd_mobilenetv1_model`), converted.
pub const SSD_MOBILENETV1: &[u8] = include_bytes!("../weights/ssd_mobilenetv1.safetensors");
/// facenet-pytorch's MTCNN face detector (PNet, RNet, ONet), converted by
/// `tools/landmarks/convert_mtcnn.py` (plain f32).
pub const MTCNN: &[u8] = include_bytes!("../weights/mtcnn.safetensors");
/// MediaPipe's BlazeFace back-camera face detector, converted by
/// `tools/landmarks/convert_blazeface.py` (the TFLite file's f16 values, unchanged).
pub const BLAZEFACE_BACK: &[u8] = include_bytes!("../weights/blazeface_back.safetensors");

/// A network whose converted weights ship inside the library.
pub trait EmbeddedNet: Sized {
    /// The shipped weights: file name (for errors) and bytes.
    const FILE: (&'static str, &'static [u8]);

    /// Builds the network from converted weights (strict: every tensor used, shapes checked).
    fn from_weights(w: Weights, device: &Device) -> Result<Self>;

    /// Loads the shipped weights.
    fn new(device: &Device) -> Result<Self> {
        let (file, bytes) = Self::FILE;
        Self::from_weights(Weights::from_bytes(file, bytes, device)?, device)
    }
}

/// Dequantised f32 tensors of one weights file, handed out once each by [`Weights::take`].
pub struct Weights {
    file: String,
    tensors: HashMap<String, Tensor>,
    metadata: HashMap<String, String>,
}

impl Weights {
    /// Parses a converted weights file held in memory; `file` names it in errors.
    pub fn from_bytes(file: &str, bytes: &[u8], device: &Device) -> Result<Self> {
        let err = |message: String| LandmarkError::Weights { file: file.to_string(), message };
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| err(format!("not safetensors: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| err(format!("unreadable header: {e}")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() == Dtype::F32 {
                let values: Vec<f32> = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let tensor =
                    Tensor::from_vec(values, view.shape(), device).op("weights: build tensor")?;
                tensors.insert(name, tensor);
                continue;
            }
            if view.dtype() == Dtype::F16 {
                // Every f16 value is exactly an f32 value.
                let tensor = Tensor::from_raw_buffer(view.data(), DType::F16, view.shape(), device)
                    .and_then(|t| t.to_dtype(DType::F32))
                    .op("weights: build tensor")?;
                tensors.insert(name, tensor);
                continue;
            }
            if view.dtype() != Dtype::U8 {
                return Err(err(format!(
                    "{name}: expected u8 codes, f16 or f32, found {:?}",
                    view.dtype()
                )));
            }
            let number = |key: &str| -> Result<f64> {
                let text = metadata
                    .get(&format!("{name}.{key}"))
                    .ok_or_else(|| err(format!("{name}: no `{name}.{key}` in the metadata")))?;
                text.parse::<f64>()
                    .map_err(|e| err(format!("{name}: `{name}.{key}` = {text:?}: {e}")))
            };
            let (scale, min) = (number("scale")?, number("min")?);
            let values: Vec<f32> =
                view.data().iter().map(|&q| (f64::from(q) * scale + min) as f32).collect();
            let tensor =
                Tensor::from_vec(values, view.shape(), device).op("weights: build tensor")?;
            tensors.insert(name, tensor);
        }
        Ok(Self { file: file.to_string(), tensors, metadata })
    }

    /// The file's metadata (source package, checksums, per-tensor quantisation).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Removes and returns tensor `name`, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let tensor = self.tensors.remove(name).ok_or_else(|| LandmarkError::Weights {
            file: self.file.clone(),
            message: format!("missing tensor {name}"),
        })?;
        if tensor.dims() != shape {
            return Err(LandmarkError::Weights {
                file: self.file.clone(),
                message: format!("{name}: expected shape {shape:?}, found {:?}", tensor.dims()),
            });
        }
        Ok(tensor)
    }

    /// Fails if any tensor was not taken: a file for another network must not load silently.
    pub fn finish(self) -> Result<()> {
        if self.tensors.is_empty() {
            return Ok(());
        }
        let extra: BTreeSet<_> = self.tensors.keys().cloned().collect();
        Err(LandmarkError::Weights {
            file: self.file,
            message: format!("unexpected tensors {extra:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_files_dequantise_with_their_metadata() {
        let mut w =
            Weights::from_bytes("tiny_face_detector", TINY_FACE_DETECTOR, &Device::Cpu).unwrap();
        assert_eq!(w.metadata()["source.package"], "@vladmandic/face-api@1.7.15");
        // conv0.bias: min -0.9211046672334858, scale 0.005263455241334205 (manifest text);
        // every value must be min + k * scale for an integer code k in 0..=255.
        let bias = w.take("conv0.bias", &[16]).unwrap().to_vec1::<f32>().unwrap();
        for v in bias {
            let k = (f64::from(v) + 0.9211046672334858) / 0.005263455241334205;
            assert!((k - k.round()).abs() < 1e-3 && (0.0..=255.0).contains(&k.round()), "{v}");
        }
    }

    #[test]
    fn wrong_shape_and_leftovers_are_errors_naming_the_tensor() {
        let mut w =
            Weights::from_bytes("tiny_face_detector", TINY_FACE_DETECTOR, &Device::Cpu).unwrap();
        let e = w.take("conv0.bias", &[17]).unwrap_err().to_string();
        assert!(e.contains("conv0.bias") && e.contains("[17]"), "{e}");
        let e = w.take("conv0.bias", &[16]).unwrap_err().to_string();
        assert!(e.contains("missing tensor conv0.bias"), "{e}");
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("conv8.filters"), "{e}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let e = Weights::from_bytes("junk", b"not a file", &Device::Cpu).err().unwrap();
        assert!(e.to_string().contains("junk"));
    }
}
