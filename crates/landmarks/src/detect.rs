//! The face detector a [`crate::Landmarker`] runs, chosen by [`DetectorKind`].
//!
//! The SSD detector sees the image resized to 512 x 512 and its smallest anchors are a tenth of
//! that, so small faces of large photos are hard for it (measured: Einstein's tilted 85 px face in
//! a 1024 px archival photo was missed, a frontal 45 px face in the same photo found). For images
//! whose longer side exceeds [`TILE_ABOVE`], [`DetectorKind::Ssd`] also runs the network on four
//! overlapping tiles (each 60% of the width and height, so every face under a fifth of the side
//! lies wholly inside one tile) in the same forward pass, and merges what they find with the
//! whole-image faces. A tile keeps only faces that do not touch
//! one of its inner edges (those are cut faces, found whole by another tile or the whole image)
//! and that are small for the tile (larger faces are the whole-image pass's job). A face that only
//! a tile found is kept if the network finds it again in a crop around it ([`confirm`]): tiles
//! alone found things in texture that are not faces.
//!
//! The SSD box is tighter than the tiny detector's and reaches higher (hair, forehead), while the
//! landmark nets were made for the tiny detector's framing: with the raw SSD box their NME on the
//! annotated real faces was 0.058-0.138 against 0.047-0.112 with the tiny detector's box. So both
//! SSD modes return the box re-framed as the tiny detector would draw it: a square of
//! [`FRAME_SIDE`] x the SSD box's height, centred [`FRAME_DROP`] x that height lower. Both numbers
//! are means over the faces both detectors found in `tests/fixtures/real` that have no landmark
//! annotation (astronaut, biden, camera, grace_hopper, obama: side 0.86-1.19, drop 0.07-0.15), so
//! they were not fitted to the faces the NME is measured on.
//!
//! MTCNN's box is tighter still (brows to chin, about 0.76 as wide as high). Over the 18 faces that
//! both it and the SSD detector (re-framed) found in the photos of `tests/fixtures/real` without
//! annotation and in nine photos of another package's test folder (README.md), the
//! re-framed SSD box was 1.005 MTCNN box heights wide (median 0.981, range 0.83-1.21) and centred
//! 0.092 heights lower (median 0.080); MTCNN's boxes are re-framed the same way with
//! [`MTCNN_FRAME_SIDE`] and [`MTCNN_FRAME_DROP`]. [`DetectorKind::SsdMtcnn`] adds MTCNN's faces
//! that overlap no SSD face if the SSD network finds them again in a crop
//! [`MTCNN_CONFIRM_CROP`] times their side (README.md, "Which detector").
//!
//! BlazeFace ([`crate::blazeface`]) draws a square that reaches from the brows to below the
//! mouth. Over the 18 faces both it and the SSD detector found among the photos without
//! annotation (`tests/fixtures/real` and the nine photos of the other package), the re-framed
//! SSD box was 1.22 BlazeFace box heights wide (median 1.19, range 0.97-1.49: BlazeFace's box is
//! relatively smaller on smaller faces) and centred 0.016 heights lower (median 0.025); its boxes
//! are re-framed with [`BLAZEFACE_FRAME_SIDE`] and [`BLAZEFACE_FRAME_DROP`]. With that box the
//! landmark net did better than with the re-framed SSD box on 3 of the 4 annotated real faces
//! (NME lenna 0.0491 against 0.0502, takeo 0.0473 against 0.0494, the face turned 45 degrees
//! 0.0896 against 0.1136; Einstein's tilted 85 px face 0.0665 against 0.0584) and on the
//! synthetic test faces (0.0643 against 0.0720), so [`DetectorKind::SsdBlazeFace`] gives every
//! face BlazeFace also finds BlazeFace's box, and adds BlazeFace's other faces if the SSD network
//! finds them in a crop [`BLAZEFACE_CONFIRM_CROP`] times their side (README.md, "Which
//! detector").
//!
//! Both SSD modes also drop a face that lies mostly inside a better one: face-api's NMS (IoU 0.5)
//! keeps the upper half of a face that fills the frame as a second face (IoU 0.45, measured on
//! `tests/fixtures/real/grace_hopper_closeup.jpg`).

use candle_core::Device;
use image::RgbImage;

use crate::blazeface::{BlazeFace, Detection, MIN_SCORE as BLAZEFACE_MIN_SCORE};
use crate::detector::{DetectorKind, DetectorOptions, TinyFaceDetector};
use crate::error::Result;
use crate::geometry::{FaceBox, distance, mutual_centres, shifted, square};
use crate::mtcnn::Mtcnn;
use crate::ssd::SsdMobilenetV1;
use crate::weights::EmbeddedNet;

/// Longer image side (px) above which [`DetectorKind::Ssd`] adds the four tiles.
pub const TILE_ABOVE: u32 = 768;
/// Tile side as a fraction of the image's width and height.
const TILE_FRACTION: f32 = 0.6;
/// A tile's face must be smaller than this fraction of the tile's shorter side.
const TILE_MAX_FACE: f32 = 0.5;
/// Side of the crop that confirms a face only a tile found, in face sides (see [`confirm`]).
const CONFIRM_CROP: f32 = 3.0;
/// Side of the crop that confirms a face only MTCNN found, in MTCNN box sides. Chosen on two
/// cases: at 3 (the tiles' value) the SSD network scored a laughing face half covered by a hand
/// below 0.25 in its crop; at 2 it confirms it and still rejects the one false face MTCNN and
/// the flip check let through (grass texture upscaled 4 times).
const MTCNN_CONFIRM_CROP: f32 = 2.0;
/// Side of the crop that confirms a face only BlazeFace found, in BlazeFace box sides (about 1.6
/// re-framed SSD box sides). On the two faces only BlazeFace found in the photos measured, the
/// SSD network scored 0.80 and 0.53 at this crop (a grey face turned about 60 degrees, a laughing
/// face half covered by a hand), and 0.32 on the one non-face (a coffee cup; the flip check
/// drops it).
const BLAZEFACE_CONFIRM_CROP: f32 = 2.0;
/// Score the SSD network must give such a face again in that crop.
const CONFIRM_MIN_SCORE: f32 = 0.25;
/// Faces overlapping a better one by more than this IoU are dropped when merging.
const MERGE_IOU: f32 = 0.4;
/// ... or when this share of the smaller box lies inside the better one.
const MERGE_CONTAINED: f32 = 0.6;

/// Side of the re-framed SSD box, in SSD box heights (see the module doc).
pub const FRAME_SIDE: f32 = 1.04;
/// How far down the re-framed SSD box's centre moves, in SSD box heights.
pub const FRAME_DROP: f32 = 0.10;

/// Side of the re-framed MTCNN box, in MTCNN box heights (see the module doc).
pub const MTCNN_FRAME_SIDE: f32 = 1.00;
/// How far down the re-framed MTCNN box's centre moves, in MTCNN box heights.
pub const MTCNN_FRAME_DROP: f32 = 0.09;

/// [`yaw_offset`] above which a face BlazeFace found and the SSD network confirmed skips the flip
/// check. The check assumes the landmark net fits the face and its mirror image alike, which holds
/// up to about 45 degrees of yaw (at most 0.030 on the real faces measured, README.md) and fails
/// beyond: a grey photo of a soldier turned about 60-70 degrees and shouting, offset 1.37, gave
/// 0.23-0.27, above a cat's face (0.18). On the other faces measured the offset was 0-0.73 (0.73:
/// the grey profile in `camera.png`, which passes the check), on the one non-face BlazeFace and
/// the SSD crop both took for a face (a coffee cup) 0.63; 1.0 is about 70 degrees of yaw by the
/// offsets of the faces turned about 45 degrees (0.33-0.40).
pub const TURNED_YAW_OFFSET: f32 = 1.0;
/// IoU above which a re-framed BlazeFace box and a face already found are the same face, which
/// then gets BlazeFace's box. Two re-framed boxes of one face differ in side by at most a fifth
/// (the spread of BlazeFace's box, module doc), an IoU of about 0.65 when concentric; holding
/// each other's centre is not enough: on a grey close-up filling the frame BlazeFace's
/// back-camera model saw a face in the upper half of the face (0.58 of the SSD box's side).
const REFRAME_IOU: f32 = 0.5;
/// Side of the re-framed BlazeFace box, in BlazeFace box heights (see the module doc).
pub const BLAZEFACE_FRAME_SIDE: f32 = 1.22;
/// How far down the re-framed BlazeFace box's centre moves, in BlazeFace box heights.
pub const BLAZEFACE_FRAME_DROP: f32 = 0.02;

/// An SSD box re-framed as the tiny detector draws faces (see the module doc).
pub fn tiny_framing(f: &FaceBox) -> FaceBox {
    framing(f, FRAME_SIDE, FRAME_DROP)
}

/// The square of `side` x `f`'s height centred `drop` x that height below `f`'s centre.
fn framing(f: &FaceBox, side: f32, drop: f32) -> FaceBox {
    let h = f.height();
    let [cx, cy] = f.centre();
    square([cx, cy + drop * h], side * h, f.score)
}

/// A loaded face detector.
pub enum FaceDetector {
    Tiny(TinyFaceDetector),
    Mtcnn(Mtcnn),
    BlazeFace(BlazeFace),
    /// The SSD network, alone or with MTCNN and BlazeFace adding the faces it missed.
    Ssd {
        ssd: Box<SsdMobilenetV1>,
        mtcnn: Option<Mtcnn>,
        blazeface: Option<BlazeFace>,
    },
}

impl FaceDetector {
    /// Loads the weights of `kind`'s networks.
    pub fn new(kind: DetectorKind, device: &Device) -> Result<Self> {
        let ssd = |mtcnn: bool, blazeface: bool| -> Result<Self> {
            Ok(Self::Ssd {
                ssd: Box::new(SsdMobilenetV1::new(device)?),
                mtcnn: if mtcnn { Some(Mtcnn::new(device)?) } else { None },
                blazeface: if blazeface { Some(BlazeFace::new(device)?) } else { None },
            })
        };
        match kind {
            DetectorKind::Ssd | DetectorKind::SsdWhole => ssd(false, false),
            DetectorKind::SsdMtcnn => ssd(true, false),
            DetectorKind::SsdBlazeFace => ssd(false, true),
            DetectorKind::SsdMtcnnBlazeFace => ssd(true, true),
            DetectorKind::Tiny => Ok(Self::Tiny(TinyFaceDetector::new(device)?)),
            DetectorKind::Mtcnn => Ok(Self::Mtcnn(Mtcnn::new(device)?)),
            DetectorKind::BlazeFace => Ok(Self::BlazeFace(BlazeFace::new(device)?)),
        }
    }

    /// Faces in `image`, best score first, in image pixels. For the SSD network `options.kind`
    /// says whether to add the tiles ([`DetectorKind::SsdWhole`] does not).
    pub fn detect(&self, image: &RgbImage, options: &DetectorOptions) -> Result<Vec<FaceBox>> {
        Ok(self.detect_found(image, options)?.into_iter().map(|f| f.face).collect())
    }

    /// [`Self::detect`], saying for each face whether the flip check applies to it. BlazeFace
    /// keeps MediaPipe's score threshold ([`crate::blazeface::MIN_SCORE`]), as MTCNN keeps
    /// facenet-pytorch's; `options.score_threshold` is the SSD and tiny detectors'.
    pub fn detect_found(&self, image: &RgbImage, options: &DetectorOptions) -> Result<Vec<Found>> {
        options.check()?;
        let checked = |faces: Vec<FaceBox>| faces.into_iter().map(Found::checked).collect();
        match self {
            Self::Tiny(det) => {
                Ok(checked(det.detect_batch(&[image], options)?.pop().unwrap_or_default()))
            }
            Self::Mtcnn(det) => Ok(checked(merge(Vec::new(), mtcnn_faces(det, image)?))),
            Self::BlazeFace(det) => {
                let found = det.detect_batch(&[image], BLAZEFACE_MIN_SCORE)?;
                let faces = found.into_iter().next().unwrap_or_default();
                Ok(checked(merge(
                    Vec::new(),
                    faces.iter().map(|d| blazeface_framing(&d.face)).collect(),
                )))
            }
            Self::Ssd { ssd, mtcnn, blazeface } => {
                let mut found = ssd_faces(ssd, image, options)?;
                if let Some(mtcnn) = mtcnn {
                    // MTCNN's faces the SSD network did not find, kept if it finds them in a crop
                    // around them (see `confirm`): alone, MTCNN took grass upscaled 4 times for a
                    // face, and the flip check let it through.
                    let new: Vec<FaceBox> = mtcnn
                        .detect(image)?
                        .into_iter()
                        .filter(|f| !clashes(&found, &mtcnn_framing(f)))
                        .collect();
                    let keep = confirm(ssd, image, &new, MTCNN_CONFIRM_CROP)?;
                    let confirmed =
                        new.iter().zip(keep).filter(|(_, k)| *k).map(|(f, _)| mtcnn_framing(f));
                    found = merge(found, confirmed.collect());
                }
                let mut turned = Vec::new();
                if let Some(blazeface) = blazeface {
                    let detections = blazeface.detect_batch(&[image], BLAZEFACE_MIN_SCORE)?;
                    let detections = detections.into_iter().next().unwrap_or_default();
                    // A face BlazeFace found too gets BlazeFace's box, re-framed: with it the
                    // landmark net did better than with the SSD network's (module doc).
                    let mut reframed = vec![false; found.len()];
                    let mut new: Vec<Detection> = Vec::new();
                    for d in detections {
                        let framed = blazeface_framing(&d.face);
                        let same = (0..found.len())
                            .find(|&i| !reframed[i] && found[i].iou(&framed) > REFRAME_IOU);
                        if let Some(i) = same {
                            found[i] = FaceBox { score: found[i].score, ..framed };
                            reframed[i] = true;
                        } else if !clashes(&found, &framed) {
                            new.push(d);
                        }
                    }
                    // BlazeFace's faces the others did not find, kept if the SSD network finds
                    // them in a crop around them (alone, BlazeFace took a coffee cup for a face).
                    let boxes: Vec<FaceBox> = new.iter().map(|d| d.face).collect();
                    let keep = confirm(ssd, image, &boxes, BLAZEFACE_CONFIRM_CROP)?;
                    let mut extra = Vec::new();
                    for d in new.iter().zip(keep).filter(|(_, k)| *k).map(|(d, _)| d) {
                        let framed = blazeface_framing(&d.face);
                        if yaw_offset(d) > TURNED_YAW_OFFSET {
                            turned.push(framed);
                        }
                        extra.push(framed);
                    }
                    found = merge(found, extra);
                }
                Ok(found
                    .into_iter()
                    .map(|face| Found { face, flip_check: !turned.contains(&face) })
                    .collect())
            }
        }
    }
}

/// A detected face, and whether [`crate::Landmarker`]'s flip check applies to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Found {
    pub face: FaceBox,
    /// False for a face turned too far for the check to mean anything (see
    /// [`TURNED_YAW_OFFSET`]), which two detectors found instead.
    pub flip_check: bool,
}

impl Found {
    fn checked(face: FaceBox) -> Self {
        Self { face, flip_check: true }
    }
}

/// How far BlazeFace's nose-tip keypoint lies beside the midpoint of its two eye keypoints,
/// in eye distances: 0 on a frontal face, growing with the head's yaw.
pub fn yaw_offset(d: &Detection) -> f32 {
    let [right_eye, left_eye, nose] = [d.keypoints[0], d.keypoints[1], d.keypoints[2]];
    let eyes = distance(right_eye, left_eye).max(1e-6);
    (nose[0] - (right_eye[0] + left_eye[0]) / 2.0).abs() / eyes
}

/// A BlazeFace box re-framed as the tiny detector draws faces (see the module doc).
pub fn blazeface_framing(f: &FaceBox) -> FaceBox {
    framing(f, BLAZEFACE_FRAME_SIDE, BLAZEFACE_FRAME_DROP)
}

/// MTCNN's faces, re-framed for the landmark net.
fn mtcnn_faces(det: &Mtcnn, image: &RgbImage) -> Result<Vec<FaceBox>> {
    Ok(det.detect(image)?.iter().map(mtcnn_framing).collect())
}

/// An MTCNN box re-framed as the tiny detector draws faces (see the module doc).
pub fn mtcnn_framing(f: &FaceBox) -> FaceBox {
    framing(f, MTCNN_FRAME_SIDE, MTCNN_FRAME_DROP)
}

/// The SSD network's faces (with the tiles where `options.kind` asks for them), re-framed.
fn ssd_faces(
    det: &SsdMobilenetV1,
    image: &RgbImage,
    options: &DetectorOptions,
) -> Result<Vec<FaceBox>> {
    let tiled =
        options.kind != DetectorKind::SsdWhole && image.width().max(image.height()) > TILE_ABOVE;
    if !tiled {
        let faces = det.detect_batch(&[image], options.score_threshold)?;
        let faces = merge(Vec::new(), faces.into_iter().next().unwrap_or_default());
        return Ok(faces.iter().map(tiny_framing).collect());
    }
    let tiles = tiles(image.width(), image.height());
    let crops: Vec<RgbImage> = tiles
        .iter()
        .map(|t| image::imageops::crop_imm(image, t.x, t.y, t.width, t.height).to_image())
        .collect();
    let mut inputs: Vec<&RgbImage> = vec![image];
    inputs.extend(crops.iter());
    let mut found = det.detect_batch(&inputs, options.score_threshold)?.into_iter();
    let whole = merge(Vec::new(), found.next().unwrap_or_default());
    let mut extra = Vec::new();
    for (tile, faces) in tiles.iter().zip(found) {
        extra.extend(
            faces
                .into_iter()
                .filter(|f| tile.keeps(f, image.width(), image.height()))
                .map(|f| tile.in_image(f)),
        );
    }
    // The faces only the tiles found, each once.
    let new: Vec<FaceBox> =
        merge(whole.clone(), extra).into_iter().filter(|f| !whole.contains(f)).collect();
    let keep = confirm(det, image, &new, CONFIRM_CROP)?;
    let confirmed = new.into_iter().zip(keep).filter_map(|(f, k)| k.then_some(f)).collect();
    Ok(merge(whole, confirmed).iter().map(tiny_framing).collect())
}

/// Whether the SSD network finds each face again in a square crop `crop` times its side, centred
/// on it (one batch), with a score of at least [`CONFIRM_MIN_SCORE`].
///
/// Four more passes over parts of the image give four more chances to see a face in texture: on a
/// 2223 x 1500 photo of a motorcycle in a garage (scikit-image's `motorcycle_left.png` upscaled 3x)
/// the tiles found three "faces" (scores 0.53-0.71: a mirror, the headlight, a bicycle's lamp).
/// Seen again with their surroundings they scored 0.00-0.06, while the faces only tiles found
/// scored 0.48 and 0.70 (Einstein, tilted, in `tests/fixtures/real/einstein.jpg`) and 0.96 (a
/// 180 px face in a 3000 px group photo).
fn confirm(
    det: &SsdMobilenetV1,
    image: &RgbImage,
    faces: &[FaceBox],
    crop: f32,
) -> Result<Vec<bool>> {
    if faces.is_empty() {
        return Ok(Vec::new());
    }
    let (w, h) = (image.width() as f32, image.height() as f32);
    let mut crops = Vec::with_capacity(faces.len());
    let mut corners = Vec::with_capacity(faces.len());
    for f in faces {
        let half = crop * f.width().max(f.height()) / 2.0;
        let [cx, cy] = f.centre();
        let (x0, y0) = ((cx - half).clamp(0.0, w - 1.0), (cy - half).clamp(0.0, h - 1.0));
        let (x1, y1) = ((cx + half).clamp(x0 + 1.0, w), (cy + half).clamp(y0 + 1.0, h));
        let (x0, y0) = (x0 as u32, y0 as u32);
        let (cw, ch) =
            ((x1 as u32).saturating_sub(x0).max(1), (y1 as u32).saturating_sub(y0).max(1));
        crops.push(image::imageops::crop_imm(image, x0, y0, cw, ch).to_image());
        corners.push((x0 as f32, y0 as f32));
    }
    let refs: Vec<&RgbImage> = crops.iter().collect();
    let again = det.detect_batch(&refs, CONFIRM_MIN_SCORE)?;
    Ok(faces
        .iter()
        .zip(again.iter().zip(&corners))
        .map(|(f, (seen, &(dx, dy)))| seen.iter().any(|g| mutual_centres(&shifted(g, dx, dy), f)))
        .collect())
}

/// A tile of the image, in image pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tile {
    x: u32,
    y: u32,
    width: u32,
    height: u32,
}

impl Tile {
    /// Whether a face found in this tile (tile pixels) is kept: not cut by an inner edge, small.
    fn keeps(&self, f: &FaceBox, image_width: u32, image_height: u32) -> bool {
        let (w, h) = (self.width as f32, self.height as f32);
        let margin = 0.01 * w.min(h);
        let cut_left = self.x > 0 && f.x1 <= margin;
        let cut_top = self.y > 0 && f.y1 <= margin;
        let cut_right = self.x + self.width < image_width && f.x2 >= w - margin;
        let cut_bottom = self.y + self.height < image_height && f.y2 >= h - margin;
        let small = f.width().max(f.height()) < TILE_MAX_FACE * w.min(h);
        small && !(cut_left || cut_top || cut_right || cut_bottom)
    }

    fn in_image(&self, f: FaceBox) -> FaceBox {
        shifted(&f, self.x as f32, self.y as f32)
    }
}

/// The four corner tiles, each [`TILE_FRACTION`] of the width and height.
fn tiles(width: u32, height: u32) -> [Tile; 4] {
    let tw = ((width as f32 * TILE_FRACTION).round() as u32).clamp(1, width);
    let th = ((height as f32 * TILE_FRACTION).round() as u32).clamp(1, height);
    let (x2, y2) = (width - tw, height - th);
    [(0, 0), (x2, 0), (0, y2), (x2, y2)].map(|(x, y)| Tile { x, y, width: tw, height: th })
}

/// Adds the tiles' faces to the whole image's: best score first, each only if it does not overlap
/// a face already kept (IoU above [`MERGE_IOU`], or one of the two mostly inside the other). The
/// whole-image faces come first, so a tile's view of part of a large face never replaces it.
fn merge(whole: Vec<FaceBox>, mut extra: Vec<FaceBox>) -> Vec<FaceBox> {
    extra.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept = whole;
    for f in extra {
        if !clashes(&kept, &f) {
            kept.push(f);
        }
    }
    // Best first, as every detector returns its faces.
    kept.sort_by(|a, b| b.score.total_cmp(&a.score));
    kept
}

/// Whether `f` overlaps one of `kept` by more than [`MERGE_IOU`], or one of the two lies mostly
/// ([`MERGE_CONTAINED`]) inside the other.
fn clashes(kept: &[FaceBox], f: &FaceBox) -> bool {
    kept.iter().any(|k| {
        let inter = k.intersection(f);
        let smaller = k.area().min(f.area()).max(1e-6);
        k.iou(f) > MERGE_IOU || inter / smaller > MERGE_CONTAINED
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::scored as b;

    #[test]
    fn confirm_keeps_a_real_face_and_drops_a_box_on_a_wall() {
        let det = SsdMobilenetV1::new(&Device::Cpu).unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/real/takeo.png");
        let mut img = crate::load_image(path.as_ref()).unwrap();
        // takeo.faces: the face at (32, 86)-(126, 172); the top-left corner holds only backdrop.
        let face = b(31.0, 58.0, 128.0, 164.0, 0.9);
        let wall = b(2.0, 2.0, 22.0, 22.0, 0.9);
        assert_eq!(confirm(&det, &img, &[face, wall], CONFIRM_CROP).unwrap(), [true, false]);
        // The same face painted over is not confirmed.
        for p in img.pixels_mut() {
            *p = image::Rgb([90, 90, 90]);
        }
        assert_eq!(confirm(&det, &img, &[face], CONFIRM_CROP).unwrap(), [false]);
    }

    #[test]
    fn yaw_offset_is_the_nose_shift_in_eye_distances() {
        let face = b(0.0, 0.0, 10.0, 10.0, 0.9);
        let at = |nose_x: f32| Detection {
            face,
            keypoints: [[3.0, 4.0], [7.0, 4.0], [nose_x, 6.0], [5.0, 8.0], [0.0, 5.0], [10.0, 5.0]],
        };
        assert_eq!(yaw_offset(&at(5.0)), 0.0);
        assert_eq!(yaw_offset(&at(7.0)), 0.5);
        assert_eq!(yaw_offset(&at(1.0)), 1.0);
        assert!(yaw_offset(&at(0.0)) > TURNED_YAW_OFFSET);
    }

    #[test]
    fn framing_is_a_lower_square_of_the_box_height() {
        let f = tiny_framing(&b(100.0, 100.0, 180.0, 200.0, 0.9));
        assert!((f.width() - 104.0).abs() < 1e-4 && (f.height() - 104.0).abs() < 1e-4);
        assert_eq!(f.centre(), [140.0, 160.0]);
        assert_eq!(f.score, 0.9);
    }

    #[test]
    fn tiles_cover_the_image_with_overlap() {
        let t = tiles(1000, 500);
        assert_eq!(t[0], Tile { x: 0, y: 0, width: 600, height: 300 });
        assert_eq!(t[3], Tile { x: 400, y: 200, width: 600, height: 300 });
        // Any face up to 200 x 100 px lies wholly inside one of them: the overlap is 20%.
        assert_eq!(t[0].x + t[0].width - t[1].x, 200);
    }

    #[test]
    fn tiles_drop_cut_and_large_faces() {
        let t = tiles(1000, 1000)[3]; // x, y = 400, size 600
        assert!(t.keeps(&b(100.0, 100.0, 200.0, 220.0, 0.9), 1000, 1000));
        // Touches the tile's left edge, which is inside the image: a cut face.
        assert!(!t.keeps(&b(0.0, 100.0, 80.0, 200.0, 0.9), 1000, 1000));
        // Touches the right edge, which is the image's own edge: kept.
        assert!(t.keeps(&b(550.0, 100.0, 600.0, 160.0, 0.9), 1000, 1000));
        // Larger than half the tile: left to the whole-image pass.
        assert!(!t.keeps(&b(100.0, 100.0, 450.0, 450.0, 0.9), 1000, 1000));
    }

    #[test]
    fn merge_adds_only_faces_the_whole_image_missed() {
        let whole = vec![b(0.0, 0.0, 100.0, 100.0, 0.8)];
        let extra = vec![
            b(5.0, 5.0, 105.0, 105.0, 0.9), // IoU 0.82 with the whole-image face: dropped
            b(20.0, 20.0, 60.0, 60.0, 0.95), // part of it, inside it: dropped
            b(300.0, 0.0, 400.0, 100.0, 0.6), // a face the whole image missed: added
            b(310.0, 0.0, 410.0, 100.0, 0.5), // the same face from another tile: dropped
        ];
        let scores: Vec<f32> = merge(whole, extra).iter().map(|f| f.score).collect();
        assert_eq!(scores, vec![0.8, 0.6]);
        // A tile's face that scores above the whole image's comes first.
        let whole = vec![b(0.0, 0.0, 100.0, 100.0, 0.6)];
        let extra = vec![b(300.0, 0.0, 400.0, 100.0, 0.9)];
        let scores: Vec<f32> = merge(whole, extra).iter().map(|f| f.score).collect();
        assert_eq!(scores, vec![0.9, 0.6]);
    }
}
