//! Image preparation exactly as face-api does it on a tensor input.
//!
//! face-api's `NetInput.toBatchTensor` pads the image (or face crop) with zeros to a square, then
//! resizes it with TensorFlow.js' bilinear kernel (`alignCorners = false`, `halfPixelCenters =
//! false`: source coordinate = destination index x input/output, no half-pixel shift), then
//! subtracts a per-channel mean and divides by 255. The detector pads at the bottom/right; the
//! landmark nets centre the crop (the odd pixel of padding goes after it, as JavaScript's
//! `Math.round` rounds halves up).
//!
//! The face crop is face-api's `extractFaceTensors`: the box clipped to the image, then x, y, width
//! and height each floored.

use image::RgbImage;

use crate::error::{LandmarkError, Result};
use crate::geometry::FaceBox;

/// Mean RGB the landmark nets subtract (face-api `FaceFeatureExtractor`).
pub const LANDMARK_MEAN_RGB: [f32; 3] = [122.782, 117.001, 104.298];
/// Mean RGB the tiny face detector subtracts (face-api `tinyFaceDetector/const.ts`).
pub const DETECTOR_MEAN_RGB: [f32; 3] = [117.001, 114.697, 97.404];
/// Side of the landmark nets' input.
pub const LANDMARK_INPUT: usize = 112;

/// Integer pixel rectangle inside an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelRect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// The crop face-api cuts for a face box: clipped at the image borders, then floored.
pub fn face_crop(face: &FaceBox, image_width: u32, image_height: u32) -> Result<PixelRect> {
    let (iw, ih) = (f64::from(image_width), f64::from(image_height));
    let (x1, y1, x2, y2) =
        (f64::from(face.x1), f64::from(face.y1), f64::from(face.x2), f64::from(face.y2));
    let empty = || LandmarkError::EmptyBox {
        x1: face.x1,
        y1: face.y1,
        x2: face.x2,
        y2: face.y2,
        width: image_width,
        height: image_height,
    };
    if ![x1, y1, x2, y2].iter().all(|v| v.is_finite()) {
        return Err(empty());
    }
    let (x, y) = (x1.max(0.0), y1.max(0.0));
    let width = (x2 - x).min(iw - x);
    let height = (y2 - y).min(ih - y);
    let (x, y, width, height) = (x.floor(), y.floor(), width.floor(), height.floor());
    if width < 1.0 || height < 1.0 || x >= iw || y >= ih {
        return Err(empty());
    }
    Ok(PixelRect { x: x as u32, y: y as u32, width: width as u32, height: height as u32 })
}

/// How a non-square region is padded to a square before resizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// All padding after the image (bottom or right): the detector.
    After,
    /// Padding split around the image, the odd pixel after it: the landmark nets.
    Centered,
}

/// How resized pixel values (0..255) become network inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalise {
    /// `(v - mean[channel]) / 255`: the tiny detector and the landmark nets.
    MeanOver255([f32; 3]),
    /// `v / 127.5 - 1`: the SSD MobileNet v1 detector.
    SignedUnit,
}

impl Normalise {
    #[inline]
    fn apply(self, v: f32, channel: usize) -> f32 {
        match self {
            Self::MeanOver255(mean) => (v - mean[channel]) / 255.0,
            Self::SignedUnit => v / 127.5 - 1.0,
        }
    }
}

/// Pads `rect` of `image` to a square with zeros, resizes it to `size` x `size` with TensorFlow.js'
/// bilinear rule, subtracts `mean` and divides by 255; returns CHW f32 values.
///
/// # Shapes
/// returns [3, size, size] flattened
pub fn square_input(
    image: &RgbImage,
    rect: PixelRect,
    size: usize,
    padding: Padding,
    mean: [f32; 3],
) -> Vec<f32> {
    square_input_with(image, rect, size, padding, Normalise::MeanOver255(mean))
}

/// [`square_input`] with any [`Normalise`] rule.
///
/// # Shapes
/// returns [3, size, size] flattened
pub fn square_input_with(
    image: &RgbImage,
    rect: PixelRect,
    size: usize,
    padding: Padding,
    norm: Normalise,
) -> Vec<f32> {
    let (w, h) = (rect.width as usize, rect.height as usize);
    let side = w.max(h);
    let diff = side - w.min(h);
    let before = match padding {
        Padding::After => 0,
        // quirk (face-api padToSquare): Math.round(diff * 0.5) goes after, the rest before.
        Padding::Centered => diff - diff.div_ceil(2),
    };
    let (off_x, off_y) = if h > w { (before, 0) } else { (0, before) };
    let raw = image.as_raw();
    let stride = image.width() as usize * 3;
    // The padded square as a virtual image: zeros outside the region.
    let pixel = |px: usize, py: usize, ch: usize| -> f64 {
        if px < off_x || py < off_y || px - off_x >= w || py - off_y >= h {
            return 0.0;
        }
        let sx = rect.x as usize + px - off_x;
        let sy = rect.y as usize + py - off_y;
        f64::from(raw[sy * stride + sx * 3 + ch])
    };
    // tfjs ResizeBilinear, alignCorners = false, halfPixelCenters = false (computed in f64 there).
    let ratio = side as f64 / size as f64;
    let taps: Vec<(usize, usize, f64)> = (0..size)
        .map(|i| {
            let src = ratio * i as f64;
            let lo = src.floor().max(0.0);
            let hi = (src.ceil() as usize).min(side - 1);
            (lo as usize, hi, src - lo)
        })
        .collect();
    let plane = size * size;
    let mut out = vec![0f32; 3 * plane];
    for (oy, &(y0, y1, fy)) in taps.iter().enumerate() {
        for (ox, &(x0, x1, fx)) in taps.iter().enumerate() {
            for ch in 0..3 {
                let (tl, tr) = (pixel(x0, y0, ch), pixel(x1, y0, ch));
                let (bl, br) = (pixel(x0, y1, ch), pixel(x1, y1, ch));
                let top = tl + (tr - tl) * fx;
                let bottom = bl + (br - bl) * fx;
                let v = (top + (bottom - top) * fy) as f32;
                out[ch * plane + oy * size + ox] = norm.apply(v, ch);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_clips_then_floors_like_face_api() {
        let b = FaceBox { x1: -3.5, y1: 10.7, x2: 50.2, y2: 120.0, score: 1.0 };
        let r = face_crop(&b, 40, 100).unwrap();
        assert_eq!(r, PixelRect { x: 0, y: 10, width: 40, height: 89 });
        let outside = FaceBox { x1: 50.0, y1: 0.0, x2: 60.0, y2: 10.0, score: 1.0 };
        assert!(face_crop(&outside, 40, 100).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn centred_padding_and_identity_resize() {
        // A 2x1 (w x h) white region padded to 2x2: Math.round(0.5) = 1 row after, 0 before.
        let img = RgbImage::from_pixel(2, 1, image::Rgb([255, 255, 255]));
        let rect = PixelRect { x: 0, y: 0, width: 2, height: 1 };
        let v = square_input(&img, rect, 2, Padding::Centered, [0.0; 3]);
        assert_eq!(&v[0..4], &[1.0, 1.0, 0.0, 0.0]);
        let v = square_input(&img, rect, 2, Padding::After, [0.0; 3]);
        assert_eq!(&v[0..4], &[1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn bilinear_upsampling_uses_index_times_ratio() {
        // 2 pixels wide (0 and 255) to 4: sources 0, 0.5, 1, 1.5 (clamped to 1).
        let mut img = RgbImage::new(2, 2);
        for y in 0..2 {
            img.put_pixel(1, y, image::Rgb([255, 255, 255]));
        }
        let v = square_input(
            &img,
            PixelRect { x: 0, y: 0, width: 2, height: 2 },
            4,
            Padding::After,
            [0.0; 3],
        );
        let row: Vec<f32> = v[0..4].iter().map(|x| x * 255.0).collect();
        assert_eq!(row, vec![0.0, 127.5, 255.0, 255.0]);
    }
}
