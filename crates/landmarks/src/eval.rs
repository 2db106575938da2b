//! Accuracy of predicted landmarks against known ones: the normalised mean error (NME, by the
//! inter-ocular distance of the outer eye corners 36-45) and the error of the 34 AU centres on the
//! model's grid (docs/METHOD.md section 5), which is what AUE-CRL actually consumes.
//!
//! The AU-centre error follows section 5's test-time geometry: the box enlarged by half of
//! `factor` x its width on every side (factor 0.15 for RAF-DB, 0.20 for SFEW, integer pixels),
//! clipped to the image, the crop resized to S x S, the landmarks scaled to the G = S / 4 grid,
//! the 34 centres taken from the table, rounded half to even and clamped to [L/2, G - L/2].

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::dataset::{read_box, read_label_list, read_landmarks};
use crate::error::{LandmarkError, Result};
use crate::geometry::{FaceBox, Landmarks68, distance, inter_ocular};
use crate::{Landmarker, load_image};

/// One end of an AU: a landmark or the midpoint of two (0-based iBUG indices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Centre {
    Point(usize),
    Mid(usize, usize),
}

use Centre::{Mid, Point};

/// docs/METHOD.md section 5: the two centres of each AU, in the AU order of section 1.
pub const AU_CENTRES: [(Centre, Centre); 17] = [
    (Point(21), Point(22)),     // AU1
    (Point(18), Point(25)),     // AU2
    (Mid(21, 22), Mid(19, 24)), // AU4
    (Mid(37, 38), Mid(43, 44)), // AU5
    (Point(41), Point(46)),     // AU6
    (Point(38), Point(43)),     // AU7
    (Point(31), Point(35)),     // AU9
    (Point(50), Point(52)),     // AU10
    (Point(48), Point(54)),     // AU12
    (Point(48), Point(54)),     // AU15
    (Point(58), Point(56)),     // AU16
    (Point(51), Point(57)),     // AU17
    (Point(48), Point(54)),     // AU20
    (Point(60), Point(62)),     // AU23
    (Point(61), Point(64)),     // AU24
    (Point(62), Point(66)),     // AU25
    (Point(51), Point(57)),     // AU26
];

/// Maps image pixels to the model's grid for one image (section 5's test-time crop).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridFrame {
    pub left: f32,
    pub top: f32,
    pub scale_x: f32,
    pub scale_y: f32,
}

impl GridFrame {
    /// The frame of `face` in a `width` x `height` image for grid side `grid` (= S / 4).
    pub fn new(face: &FaceBox, width: u32, height: u32, factor: f32, grid: f32) -> Self {
        // Python: padding = int(factor * width); half = int(padding / 2).
        let half = ((factor * face.width()).trunc() / 2.0).trunc();
        let left = (face.x1 - half).max(0.0);
        let top = (face.y1 - half).max(0.0);
        let right = (face.x2 + half).min(width as f32);
        let bottom = (face.y2 + half).min(height as f32);
        // The crop is cut at the rounded box (PIL rounds half to even); points shift unrounded.
        let cw = (right.round_ties_even() - left.round_ties_even()).max(1.0);
        let ch = (bottom.round_ties_even() - top.round_ties_even()).max(1.0);
        Self { left, top, scale_x: grid / cw, scale_y: grid / ch }
    }

    pub fn to_grid(&self, p: [f32; 2]) -> [f32; 2] {
        [(p[0] - self.left) * self.scale_x, (p[1] - self.top) * self.scale_y]
    }
}

/// The 34 AU centres (2 per AU, AU order) on the grid, before rounding.
pub fn au_centres(points: &Landmarks68, frame: &GridFrame) -> [[f32; 2]; 34] {
    let g = |i: usize| frame.to_grid(points[i]);
    let at = |c: Centre| match c {
        Point(i) => g(i),
        Mid(a, b) => {
            let (p, q) = (g(a), g(b));
            [(p[0] + q[0]) / 2.0, (p[1] + q[1]) / 2.0]
        }
    };
    let mut out = [[0f32; 2]; 34];
    for (k, &(c1, c2)) in AU_CENTRES.iter().enumerate() {
        out[2 * k] = at(c1);
        out[2 * k + 1] = at(c2);
    }
    out
}

/// Grid cell of a centre: round half to even, clamp to [half_crop, grid - half_crop].
pub fn au_cell(c: [f32; 2], grid: f32, half_crop: f32) -> [f32; 2] {
    let f = |v: f32| v.round_ties_even().clamp(half_crop, grid - half_crop);
    [f(c[0]), f(c[1])]
}

/// Half the AU crop side for a grid: L / 2 with L = 2 * round(G * 12 / 56) (Python round).
pub fn half_crop(grid: f32) -> f32 {
    (grid * 12.0 / 56.0).round_ties_even()
}

/// Errors of one prediction against the truth.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageError {
    /// Mean point distance / inter-ocular distance of the truth.
    pub nme: f32,
    /// Per centre (34): distance between true and predicted centres on the grid, unrounded.
    pub centre: [f32; 34],
    /// Per centre (34): Chebyshev distance between the true and predicted grid cells.
    pub cell: [f32; 34],
}

/// Compares `pred` with `truth` for a face whose section-5 crop is `frame`.
pub fn compare(
    truth: &Landmarks68,
    pred: &Landmarks68,
    frame: &GridFrame,
    grid: f32,
) -> ImageError {
    let iod = inter_ocular(truth).max(1e-6);
    let nme = truth.iter().zip(pred).map(|(t, p)| distance(*t, *p)).sum::<f32>() / 68.0 / iod;
    let (ct, cp) = (au_centres(truth, frame), au_centres(pred, frame));
    let hc = half_crop(grid);
    let mut centre = [0f32; 34];
    let mut cell = [0f32; 34];
    for k in 0..34 {
        centre[k] = distance(ct[k], cp[k]);
        let (a, b) = (au_cell(ct[k], grid, hc), au_cell(cp[k], grid, hc));
        cell[k] = (a[0] - b[0]).abs().max((a[1] - b[1]).abs());
    }
    ImageError { nme, centre, cell }
}

/// Summary of many [`ImageError`]s.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub label: String,
    /// Images compared.
    pub images: usize,
    /// Images where this variant had no prediction (no face found).
    pub missed: usize,
    pub nme_mean: f32,
    pub nme_median: f32,
    /// Fraction of images with NME > 0.10.
    pub failure_rate: f32,
    /// Mean grid distance of the 34 centres, in cells.
    pub centre_mean: f32,
    /// Fraction of centres landing in exactly the true cell.
    pub cell_exact: f32,
    /// Fraction of centres within one cell (Chebyshev) of the true one.
    pub cell_within1: f32,
    /// Per AU (17): mean grid distance of its two centres.
    pub per_au: [f32; 17],
}

/// Summarises the errors of one variant.
pub fn summarise(label: &str, errors: &[ImageError], missed: usize) -> Summary {
    let n = errors.len();
    let mut nmes: Vec<f32> = errors.iter().map(|e| e.nme).collect();
    nmes.sort_by(f32::total_cmp);
    let mean = |v: &mut dyn Iterator<Item = f32>, count: usize| {
        if count == 0 { f32::NAN } else { v.map(f64::from).sum::<f64>() as f32 / count as f32 }
    };
    let mut per_au = [0f32; 17];
    for (k, slot) in per_au.iter_mut().enumerate() {
        *slot =
            mean(&mut errors.iter().flat_map(|e| [e.centre[2 * k], e.centre[2 * k + 1]]), 2 * n);
    }
    Summary {
        label: label.to_string(),
        images: n,
        missed,
        nme_mean: mean(&mut nmes.iter().copied(), n),
        nme_median: if n == 0 { f32::NAN } else { nmes[n / 2] },
        failure_rate: mean(&mut nmes.iter().map(|&x| f32::from(u8::from(x > 0.10))), n),
        centre_mean: mean(&mut errors.iter().flat_map(|e| e.centre), 34 * n),
        cell_exact: mean(
            &mut errors.iter().flat_map(|e| e.cell.map(|c| f32::from(u8::from(c == 0.0)))),
            34 * n,
        ),
        cell_within1: mean(
            &mut errors.iter().flat_map(|e| e.cell.map(|c| f32::from(u8::from(c <= 1.0)))),
            34 * n,
        ),
        per_au,
    }
}

/// One annotated face to evaluate on.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub image: PathBuf,
    /// The box the loader would use (dataset box; for SFEW-style data the truth's extent).
    pub face: FaceBox,
    pub truth: Landmarks68,
}

/// Samples of a RAF-DB-layout dataset (e.g. the synthetic set): image, box, true landmarks from
/// `basic/Annotation/<truth_dir>/<stem>.txt` (relative to the box). `split`: "train", "test" or
/// "all" (the name prefix); at most `limit` samples.
pub fn rafdb_samples(
    root: &Path,
    truth_dir: &str,
    split: &str,
    limit: usize,
) -> Result<Vec<Sample>> {
    let base = root.join("basic");
    let names = read_label_list(&base.join(aue_core::layout::RAF_LABEL_LIST))?;
    let mut out = Vec::new();
    for name in names.into_iter().filter(|n| split == "all" || n.starts_with(split)).take(limit) {
        let stem = Path::new(&name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let face = read_box(&base.join(aue_core::layout::RAF_BOXES).join(format!("{stem}.txt")))?;
        let rel =
            read_landmarks(&base.join("Annotation").join(truth_dir).join(format!("{stem}.txt")))?;
        let truth = rel.map(|[x, y]| [x + face.x1, y + face.y1]);
        out.push(Sample { image: base.join("Image").join("original").join(&name), face, truth });
    }
    if out.is_empty() {
        return Err(LandmarkError::Invalid(format!("no {split} samples in {}", base.display())));
    }
    Ok(out)
}

/// Samples from a folder of `<stem>.jpg|png` + `<stem>.pts` pairs (iBUG / 300-W annotation files,
/// whose coordinates are 1-based: 1 is subtracted). The box is the truth's extent.
pub fn pts_samples(dir: &Path, limit: usize) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for pts in files_with_extension(dir, "pts")?.into_iter().take(limit) {
        let Some(image) = image_beside(&pts) else {
            continue;
        };
        let truth = read_pts(&pts)?;
        out.push(Sample { image, face: FaceBox::around(&truth), truth });
    }
    if out.is_empty() {
        return Err(LandmarkError::Invalid(format!("no image + .pts pairs in {}", dir.display())));
    }
    Ok(out)
}

/// The files of `dir` whose extension is `ext`, sorted by name.
pub(crate) fn files_with_extension(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let rerr = |source| LandmarkError::Read { path: dir.to_path_buf(), source };
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).map_err(rerr)? {
        let p = e.map_err(rerr)?.path();
        if p.extension().is_some_and(|x| x == ext) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// The image (`.png`, `.jpg` or `.jpeg`) with the same stem as `path`, if there is one.
pub(crate) fn image_beside(path: &Path) -> Option<PathBuf> {
    ["png", "jpg", "jpeg"].iter().map(|x| path.with_extension(x)).find(|p| p.is_file())
}

/// Reads an iBUG `.pts` file with 68 points (1-based coordinates, returned 0-based).
pub fn read_pts(path: &Path) -> Result<Landmarks68> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| LandmarkError::Read { path: path.to_path_buf(), source })?;
    let err = |line: usize, message: String| LandmarkError::Parse {
        path: path.to_path_buf(),
        line,
        message,
    };
    let open =
        text.lines().position(|l| l.trim() == "{").ok_or_else(|| err(1, "no '{' line".into()))?;
    let mut pts = [[0f32; 2]; 68];
    let mut n = 0;
    for (i, line) in text.lines().enumerate().skip(open + 1) {
        let line = line.trim();
        if line == "}" {
            break;
        }
        let v: Vec<f32> = line
            .split_whitespace()
            .map(|t| t.parse::<f32>().map_err(|e| err(i + 1, format!("{t:?}: {e}"))))
            .collect::<Result<_>>()?;
        if v.len() != 2 || n == 68 {
            return Err(err(
                i + 1,
                format!("expected 68 lines \"x y\", got {line:?} as point {}", n + 1),
            ));
        }
        pts[n] = [v[0] - 1.0, v[1] - 1.0];
        n += 1;
    }
    if n != 68 {
        return Err(err(open + 1, format!("expected 68 points, found {n}")));
    }
    Ok(pts)
}

/// Options of [`evaluate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalOptions {
    /// Box enlargement factor of section 5 (0.15 RAF-DB, 0.20 SFEW).
    pub factor: f32,
    /// Model input side S (grid G = S / 4).
    pub input_side: u32,
    pub batch: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { factor: 0.15, input_side: 224, batch: 16 }
    }
}

/// Per-sample predictions of one evaluation: with the sample's box and with the detector.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub with_box: Landmarks68,
    /// The detection matched to the sample (IoU >= 0.3 with its box) and its landmarks.
    pub detected: Option<(FaceBox, Landmarks68)>,
}

/// Runs the landmarker on every sample with its box and with its own detection.
pub fn predict(
    lm: &Landmarker,
    samples: &[Sample],
    batch: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Prediction>> {
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(batch.max(1)) {
        let images = chunk.par_iter().map(|s| load_image(&s.image)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&image::RgbImage> = images.iter().collect();
        let dets = lm.detect_faces_batch(&refs)?;
        let with_box = lm.landmarks_batch(
            &images.iter().zip(chunk).map(|(i, s)| (i, s.face)).collect::<Vec<_>>(),
        )?;
        let matched: Vec<Option<FaceBox>> = dets
            .iter()
            .zip(chunk)
            .map(|(d, s)| {
                d.iter()
                    .map(|f| (f.iou(&s.face), *f))
                    .filter(|(iou, _)| *iou >= 0.3)
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, f)| f)
            })
            .collect();
        let idx: Vec<usize> = (0..chunk.len()).filter(|&i| matched[i].is_some()).collect();
        let det_pts = lm.landmarks_batch(
            &idx.iter().filter_map(|&i| matched[i].map(|f| (&images[i], f))).collect::<Vec<_>>(),
        )?;
        let mut det_iter = idx.iter().zip(det_pts);
        let mut next = det_iter.next();
        for (i, pts) in with_box.into_iter().enumerate() {
            let detected = match next {
                Some((&j, p)) if j == i => {
                    next = det_iter.next();
                    matched[i].map(|f| (f, p))
                }
                _ => None,
            };
            out.push(Prediction { with_box: pts, detected });
        }
        progress(chunk.len() as u64);
    }
    Ok(out)
}

/// Image sizes are needed for the section-5 clipping; read them cheaply from the headers.
fn image_size(path: &Path) -> Result<(u32, u32)> {
    image::image_dimensions(path)
        .map_err(|source| LandmarkError::ImageRead { path: path.to_path_buf(), source })
}

/// Reads predictions made elsewhere: `basic/Annotation/<pred_dir>/<stem>.txt` beside each sample's
/// truth (RAF-DB layout, relative to the sample's box), e.g. files from another landmark tool.
pub fn read_predictions(samples: &[Sample], pred_dir: &str) -> Result<Vec<Landmarks68>> {
    samples
        .iter()
        .map(|s| {
            let stem =
                s.image.file_stem().map(|x| x.to_string_lossy().into_owned()).unwrap_or_default();
            // <root>/basic/Image/original/<name> -> <root>/basic/Annotation/<pred_dir>/<stem>.txt
            let base = s.image.parent().and_then(Path::parent).and_then(Path::parent).ok_or_else(
                || {
                    LandmarkError::Invalid(format!(
                        "{} is not in a RAF-DB layout",
                        s.image.display()
                    ))
                },
            )?;
            let rel = read_landmarks(
                &base.join("Annotation").join(pred_dir).join(format!("{stem}.txt")),
            )?;
            Ok(rel.map(|[x, y]| [x + s.face.x1, y + s.face.y1]))
        })
        .collect()
}

/// Summary of predictions read from files (see [`read_predictions`]).
pub fn evaluate_files(
    samples: &[Sample],
    preds: &[Landmarks68],
    label: &str,
    options: &EvalOptions,
) -> Result<Summary> {
    let grid = options.input_side as f32 / 4.0;
    let mut errors = Vec::new();
    for (s, p) in samples.iter().zip(preds) {
        let (w, h) = image_size(&s.image)?;
        let frame = GridFrame::new(&s.face, w, h, options.factor, grid);
        errors.push(compare(&s.truth, p, &frame, grid));
    }
    Ok(summarise(label, &errors, 0))
}

/// Summaries for the sample-box and detector variants.
pub fn evaluate(
    samples: &[Sample],
    preds: &[Prediction],
    options: &EvalOptions,
) -> Result<Vec<Summary>> {
    let grid = options.input_side as f32 / 4.0;
    let mut with_box = Vec::new();
    let mut detected = Vec::new();
    for (s, p) in samples.iter().zip(preds) {
        let (w, h) = image_size(&s.image)?;
        let frame = GridFrame::new(&s.face, w, h, options.factor, grid);
        with_box.push(compare(&s.truth, &p.with_box, &frame, grid));
        if let Some((_, pts)) = &p.detected {
            detected.push(compare(&s.truth, pts, &frame, grid));
        }
    }
    let missed = samples.len() - detected.len();
    Ok(vec![summarise("dataset box", &with_box, 0), summarise("detector box", &detected, missed)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face_points() -> Landmarks68 {
        let mut p = [[0f32; 2]; 68];
        for (i, q) in p.iter_mut().enumerate() {
            *q = [100.0 + (i % 10) as f32 * 10.0, 100.0 + (i / 10) as f32 * 12.0];
        }
        p[36] = [110.0, 140.0];
        p[45] = [190.0, 140.0];
        p
    }

    #[test]
    fn identical_points_have_zero_error() {
        let t = face_points();
        let frame =
            GridFrame::new(&FaceBox::from_corners(90.0, 90.0, 210.0, 190.0), 300, 300, 0.15, 56.0);
        let e = compare(&t, &t, &frame, 56.0);
        assert_eq!(e.nme, 0.0);
        assert!(e.centre.iter().chain(&e.cell).all(|&v| v == 0.0));
    }

    #[test]
    fn nme_is_mean_error_over_inter_ocular_distance() {
        let t = face_points();
        let p = t.map(|[x, y]| [x + 8.0, y]); // IOD 80 -> NME 0.1
        let frame =
            GridFrame::new(&FaceBox::from_corners(90.0, 90.0, 210.0, 190.0), 300, 300, 0.15, 56.0);
        let e = compare(&t, &p, &frame, 56.0);
        assert!((e.nme - 0.1).abs() < 1e-6);
        // Box 120 wide: half padding int(int(18) / 2) = 9, crop 138 px -> 56 cells.
        assert!((e.centre[0] - 8.0 * 56.0 / 138.0).abs() < 1e-4, "{}", e.centre[0]);
    }

    #[test]
    fn cells_round_half_even_and_clamp() {
        assert_eq!(au_cell([12.5, 13.5], 56.0, 12.0), [12.0, 14.0]);
        assert_eq!(au_cell([3.0, 50.0], 56.0, 12.0), [12.0, 44.0]);
        assert_eq!(half_crop(56.0), 12.0);
        assert_eq!(half_crop(16.0), 3.0);
    }

    #[test]
    fn pts_files_are_one_based() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.pts");
        let mut s = String::from("version: 1\nn_points:  68\n{\n");
        for i in 0..68 {
            s.push_str(&format!("{} {}\n", i + 1, 2 * i + 1));
        }
        s.push_str("}\n");
        std::fs::write(&p, &s).unwrap();
        let pts = read_pts(&p).unwrap();
        assert_eq!(pts[5], [5.0, 10.0]);
        std::fs::write(&p, "{\n1 2\n}\n").unwrap();
        assert!(read_pts(&p).unwrap_err().to_string().contains("found 1"));
    }
}
