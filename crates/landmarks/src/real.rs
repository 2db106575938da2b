//! Detection and landmark accuracy on real photos with hand-checked face boxes
//! (`tests/fixtures/real/`, see its README.md): how many of the faces a person sees are found,
//! how many detections are not faces, the 68-point NME where iBUG annotations exist, and the time
//! per image.
//!
//! A folder holds images, and beside each image `<stem>.faces` (one "x1 y1 x2 y2" line per face a
//! person would see, in image pixels; an empty file for an image without faces) and optionally
//! `<stem>.pts` (iBUG 68 points, 1-based, of one of those faces). Only images with a `.faces`
//! file are read.
//!
//! A detection matches an expected face when each box holds the other's centre: detectors draw
//! their boxes differently (face-api's tiny detector includes the forehead and ears, the SSD box
//! is tighter), so a fixed IoU threshold would judge the convention rather than the detection.
//! Each expected face takes at most one detection (the best-scoring one); every other detection
//! is a false positive, duplicates included.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{LandmarkError, Result};
use crate::eval::{files_with_extension, image_beside, read_pts};
pub use crate::geometry::mutual_centres;
use crate::geometry::{FaceBox, Landmarks68, distance, inter_ocular};
use crate::{Landmarker, load_image};

/// One photo of the set.
#[derive(Debug, Clone, PartialEq)]
pub struct RealImage {
    pub image: PathBuf,
    /// The faces a person would see.
    pub faces: Vec<FaceBox>,
    /// The 68 annotated points of `faces[index]`, where a `.pts` file exists.
    pub truth: Option<(usize, Landmarks68)>,
}

/// Reads every image of `dir` that has a `<stem>.faces` file, sorted by name.
pub fn read_set(dir: &Path) -> Result<Vec<RealImage>> {
    let mut out = Vec::new();
    for faces_file in files_with_extension(dir, "faces")? {
        let image = image_beside(&faces_file).ok_or_else(|| {
            LandmarkError::Invalid(format!(
                "{}: no image with this stem (.jpg, .jpeg or .png)",
                faces_file.display()
            ))
        })?;
        let faces = read_faces(&faces_file)?;
        let pts = faces_file.with_extension("pts");
        let truth = if pts.is_file() {
            let points = read_pts(&pts)?;
            let extent = FaceBox::around(&points);
            let index = faces.iter().position(|f| mutual_centres(f, &extent)).ok_or_else(|| {
                LandmarkError::Invalid(format!(
                    "{}: its points lie in none of the boxes of {}",
                    pts.display(),
                    faces_file.display()
                ))
            })?;
            Some((index, points))
        } else {
            None
        };
        out.push(RealImage { image, faces, truth });
    }
    if out.is_empty() {
        return Err(LandmarkError::Invalid(format!(
            "no <stem>.faces files (with their images) in {}",
            dir.display()
        )));
    }
    Ok(out)
}

/// Reads a `.faces` file: one "x1 y1 x2 y2" line per face (blank lines and `#` comments skipped).
pub fn read_faces(path: &Path) -> Result<Vec<FaceBox>> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| LandmarkError::Read { path: path.to_path_buf(), source })?;
    let mut faces = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |message: String| LandmarkError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let v: Vec<f32> = line
            .split_whitespace()
            .map(|t| t.parse::<f32>().map_err(|e| err(format!("{t:?}: {e}"))))
            .collect::<Result<_>>()?;
        let [x1, y1, x2, y2] = v[..] else {
            return Err(err(format!("expected \"x1 y1 x2 y2\", got {line:?}")));
        };
        if !(x2 > x1 && y2 > y1) {
            return Err(err(format!("empty box {line:?}")));
        }
        faces.push(FaceBox::from_corners(x1, y1, x2, y2));
    }
    Ok(faces)
}

/// For each expected face, the index of the detection matched to it (best score first).
pub fn match_faces(expected: &[FaceBox], detected: &[FaceBox]) -> Vec<Option<usize>> {
    let mut order: Vec<usize> = (0..detected.len()).collect();
    order.sort_by(|&a, &b| detected[b].score.total_cmp(&detected[a].score));
    let mut matched = vec![None; expected.len()];
    for d in order {
        let c = detected[d].centre();
        // The free expected face nearest to the detection's centre, among those it matches.
        let best = (0..expected.len())
            .filter(|&e| matched[e].is_none() && mutual_centres(&expected[e], &detected[d]))
            .min_by(|&a, &b| {
                distance(expected[a].centre(), c).total_cmp(&distance(expected[b].centre(), c))
            });
        if let Some(e) = best {
            matched[e] = Some(d);
        }
    }
    matched
}

/// What one image gave.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageOutcome {
    pub image: PathBuf,
    pub expected: usize,
    pub found: usize,
    pub false_positives: usize,
    /// NME of the annotated face from its detection, per landmark net given (None: not found or
    /// no annotation).
    pub nme: Vec<Option<f32>>,
    /// Detection plus landmarks of every detected face with the first net, in milliseconds
    /// (image decoding excluded).
    pub ms: f64,
    /// The process's CPU time over the same span (all threads), in milliseconds; `None` where the
    /// platform has no process CPU clock. With one thread it is the single-core cost, whatever
    /// else runs on the machine.
    pub cpu_ms: Option<f64>,
}

/// CPU time of the whole process so far, in milliseconds (Unix).
#[cfg(unix)]
fn process_cpu_ms() -> Option<f64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (rc == 0).then_some(ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 * 1e-6)
}

#[cfg(not(unix))]
fn process_cpu_ms() -> Option<f64> {
    None
}

/// NME of `pred` against `truth`: mean point distance over the outer-eye-corner distance.
pub fn nme(truth: &Landmarks68, pred: &Landmarks68) -> f32 {
    let iod = inter_ocular(truth).max(1e-6);
    truth.iter().zip(pred).map(|(t, p)| distance(*t, *p)).sum::<f32>() / 68.0 / iod
}

/// Runs `landmarkers[0]`'s detector and net on every image (timed), and the nets of the others on
/// the same detections (for their NME only).
pub fn evaluate(
    landmarkers: &[&Landmarker],
    set: &[RealImage],
    progress: &dyn Fn(u64),
) -> Result<Vec<ImageOutcome>> {
    let Some(first) = landmarkers.first() else {
        return Err(LandmarkError::Invalid("evaluate needs at least one landmarker".into()));
    };
    let mut out = Vec::with_capacity(set.len());
    for item in set {
        let img = load_image(&item.image)?;
        let (start, cpu_start) = (Instant::now(), process_cpu_ms());
        let detected = first.detect_faces(&img)?;
        let first_points =
            first.landmarks_batch(&detected.iter().map(|f| (&img, *f)).collect::<Vec<_>>())?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let cpu_ms = cpu_start.zip(process_cpu_ms()).map(|(a, b)| b - a);
        let matched = match_faces(&item.faces, &detected);
        let found = matched.iter().filter(|m| m.is_some()).count();
        let mut nme_per_net = Vec::with_capacity(landmarkers.len());
        for (k, lm) in landmarkers.iter().enumerate() {
            let value = match item.truth {
                Some((index, ref truth)) => match matched[index] {
                    Some(d) => {
                        let pred = if k == 0 {
                            first_points[d]
                        } else {
                            lm.landmarks(&img, &detected[d])?
                        };
                        Some(nme(truth, &pred))
                    }
                    None => None,
                },
                None => None,
            };
            nme_per_net.push(value);
        }
        tracing::debug!(image = %item.image.display(), ?detected, "real-photo eval");
        out.push(ImageOutcome {
            image: item.image.clone(),
            expected: item.faces.len(),
            found,
            false_positives: detected.len() - found,
            nme: nme_per_net,
            ms,
            cpu_ms,
        });
        progress(1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::scored as b;

    #[test]
    fn matching_takes_one_detection_per_face_best_first() {
        let expected = [b(0.0, 0.0, 100.0, 100.0, 1.0), b(200.0, 0.0, 300.0, 100.0, 1.0)];
        let detected = [
            b(10.0, 10.0, 90.0, 110.0, 0.7),    // face 0
            b(-20.0, -20.0, 120.0, 120.0, 0.9), // face 0 too, a looser box, better score
            b(400.0, 0.0, 450.0, 50.0, 0.8),    // nothing there
            b(60.0, 0.0, 240.0, 100.0, 0.95),   // between the faces: holds neither centre
        ];
        assert_eq!(match_faces(&expected, &detected), vec![Some(1), None]);
    }

    #[test]
    fn faces_files_are_parsed_with_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.faces");
        std::fs::write(&p, "# face boxes\n1 2 30 40\n\n5 5 9 9 # small\n").unwrap();
        let f = read_faces(&p).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!((f[1].x1, f[1].y2), (5.0, 9.0));
        std::fs::write(&p, "1 2 30 40\n1 2 3\n").unwrap();
        let e = read_faces(&p).unwrap_err().to_string();
        assert!(e.contains("a.faces:2"), "{e}");
        std::fs::write(&p, "10 2 3 40\n").unwrap();
        assert!(read_faces(&p).unwrap_err().to_string().contains("empty box"));
        std::fs::write(&p, "").unwrap();
        assert!(read_faces(&p).unwrap().is_empty());
    }

    #[test]
    fn nme_is_relative_to_the_outer_eye_corners() {
        let mut t = [[0f32; 2]; 68];
        t[36] = [0.0, 0.0];
        t[45] = [50.0, 0.0];
        let p = t.map(|[x, y]| [x, y + 5.0]);
        assert!((nme(&t, &p) - 0.1).abs() < 1e-6);
    }
}
