//! Where the landmark files go for each dataset layout, and the resumable parallel run that writes
//! them (docs/METHOD.md section 5, "Dataset layouts the reference reads").
//!
//! - RAF-DB basic / compound: images `<sub>/Image/original/<name>` from
//!   `<sub>/EmoLabel/list_patition_label.txt`, boxes `<sub>/Annotation/boundingbox/<stem>.txt`
//!   ("x1 y1 x2 y2"), output `<sub>/Annotation/Landmarks_68_FAN_bbox/<stem>.txt`: 68 lines "x y"
//!   relative to the dataset box's top-left corner (the loader adds it back).
//! - SFEW 2.0: images `Train|Val/imgs/<Class>/<id>.jpg|png`, no boxes (the face is detected),
//!   output `Train|Val/Annotations/Landmarks_68_FAN/<Class>/<id>.txt` in image pixels.
//! - A plain folder of images: output `<out>/<stem>.txt` in image pixels.
//!
//! Files are written to a temporary file in the same folder, fsynced and renamed, so an interrupted
//! run leaves only whole files, and a rerun skips them (unless told to overwrite).

use aue_core::layout;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{LandmarkError, Result};
use crate::geometry::{FaceBox, Landmarks68};
use crate::preprocess::face_crop;
use crate::{Landmarker, load_image};

/// Name of the RAF-DB landmark folder the loader reads.
pub const RAFDB_LANDMARK_DIR: &str = layout::RAF_LANDMARKS_NAME;
/// Name of the SFEW landmark folder the loader reads.
pub const SFEW_LANDMARK_DIR: &str = layout::SFEW_LANDMARKS_NAME;
/// File listing the images where no face was found (one path per line), in the output root.
pub const NOT_FOUND_FILE: &str = "aue-landmarks-not-found.txt";
/// File listing the images that failed (unreadable image or box), "path\terror" per line.
pub const FAILED_FILE: &str = "aue-landmarks-failed.txt";

pub use aue_data::DatasetKind;

/// The RAF-DB subset folder of a kind (`None` for SFEW).
fn rafdb_subdir(kind: DatasetKind) -> Option<&'static str> {
    match kind {
        DatasetKind::Rafdb => Some(layout::RAF_BASIC),
        DatasetKind::RafdbCompound => Some(layout::RAF_COMPOUND),
        DatasetKind::Sfew => None,
    }
}

/// Which box the landmark net sees for an image that has a dataset box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BoxSource {
    /// The dataset's box as it is.
    #[default]
    Dataset,
    /// The detector's best face (not found if there is none).
    Detect,
    /// The detection that overlaps the dataset box most (IoU >= 0.3), else the dataset box.
    Matched,
}

/// Where one image's box comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum JobBox {
    /// A box file "x1 y1 x2 y2"; points are written relative to its top-left corner.
    File(PathBuf),
    /// Detect the face; points are written in image pixels.
    Detect,
}

/// One image to process.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub image: PathBuf,
    pub output: PathBuf,
    pub face: JobBox,
}

/// The jobs of a RAF-DB-layout dataset (`basic/` or `compound/` under `root`), in list order.
pub fn rafdb_jobs(root: &Path, kind: DatasetKind) -> Result<Vec<Job>> {
    let sub =
        rafdb_subdir(kind).ok_or_else(|| LandmarkError::Invalid("not a RAF-DB kind".into()))?;
    let base = root.join(sub);
    let list = base.join(layout::RAF_LABEL_LIST);
    let mut jobs = Vec::new();
    for name in read_label_list(&list)? {
        let stem = Path::new(&name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.clone());
        jobs.push(Job {
            image: base.join("Image").join("original").join(&name),
            output: rafdb_landmark_path(&base, &stem),
            face: JobBox::File(base.join(layout::RAF_BOXES).join(format!("{stem}.txt"))),
        });
    }
    Ok(jobs)
}

/// `<sub>/Annotation/Landmarks_68_FAN_bbox/<stem>.txt` for the RAF-DB folder `sub`.
pub fn rafdb_landmark_path(sub: &Path, stem: &str) -> PathBuf {
    sub.join("Annotation").join(RAFDB_LANDMARK_DIR).join(format!("{stem}.txt"))
}

/// Image names (first field of each line) of a RAF-DB label list.
pub fn read_label_list(path: &Path) -> Result<Vec<String>> {
    let text = read_text(path)?;
    let mut names = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let Some(name) = fields.next() else { continue };
        if fields.next().is_none() {
            return Err(LandmarkError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                message: format!("expected \"<image> <label>\", got {line:?}"),
            });
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// The jobs of an SFEW 2.0 tree: every image under `Train/imgs/<Class>/` and `Val/imgs/<Class>/`.
pub fn sfew_jobs(root: &Path) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    for split in ["Train", "Val"] {
        let imgs = root.join(split).join("imgs");
        if !imgs.is_dir() {
            continue;
        }
        for class_dir in sorted_entries(&imgs)? {
            if !class_dir.is_dir() {
                continue;
            }
            let class =
                class_dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            for image in sorted_entries(&class_dir)? {
                let Some(stem) = image_stem(&image) else { continue };
                let output = root
                    .join(split)
                    .join("Annotations")
                    .join(SFEW_LANDMARK_DIR)
                    .join(&class)
                    .join(format!("{stem}.txt"));
                jobs.push(Job { image, output, face: JobBox::Detect });
            }
        }
    }
    if jobs.is_empty() {
        return Err(LandmarkError::Invalid(format!(
            "no images under {}/Train/imgs/<Class>/ or {}/Val/imgs/<Class>/",
            root.display(),
            root.display()
        )));
    }
    Ok(jobs)
}

/// The jobs for a folder of images (not recursive): `<out>/<stem>.txt` in image pixels.
pub fn folder_jobs(images: &Path, out: &Path) -> Result<Vec<Job>> {
    let jobs: Vec<Job> = sorted_entries(images)?
        .into_iter()
        .filter_map(|image| {
            let stem = image_stem(&image)?;
            Some(Job { output: out.join(format!("{stem}.txt")), image, face: JobBox::Detect })
        })
        .collect();
    if jobs.is_empty() {
        return Err(LandmarkError::Invalid(format!(
            "no .jpg/.jpeg/.png images in {}",
            images.display()
        )));
    }
    Ok(jobs)
}

fn image_stem(path: &Path) -> Option<String> {
    let ext = path.extension()?.to_string_lossy().to_ascii_lowercase();
    if !matches!(ext.as_str(), "jpg" | "jpeg" | "png") || !path.is_file() {
        return None;
    }
    Some(path.file_stem()?.to_string_lossy().into_owned())
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let read = |source| LandmarkError::Read { path: dir.to_path_buf(), source };
    let mut v = Vec::new();
    for entry in fs::read_dir(dir).map_err(read)? {
        v.push(entry.map_err(read)?.path());
    }
    v.sort();
    Ok(v)
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map_err(|source| LandmarkError::Read { path: path.to_path_buf(), source })
}

/// Reads a box file: one line "x1 y1 x2 y2" (floats, image pixels).
pub fn read_box(path: &Path) -> Result<FaceBox> {
    let text = read_text(path)?;
    let parse_err = |line: usize, message: String| LandmarkError::Parse {
        path: path.to_path_buf(),
        line,
        message,
    };
    let (i, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| !l.trim().is_empty())
        .ok_or_else(|| parse_err(1, "empty box file".into()))?;
    let v: Vec<f32> = line
        .split_whitespace()
        .map(|t| t.parse::<f32>().map_err(|e| parse_err(i + 1, format!("{t:?}: {e}"))))
        .collect::<Result<_>>()?;
    if v.len() != 4 || v.iter().any(|x| !x.is_finite()) {
        return Err(parse_err(i + 1, format!("expected \"x1 y1 x2 y2\", got {line:?}")));
    }
    if v[2] <= v[0] || v[3] <= v[1] {
        return Err(parse_err(i + 1, format!("box has no area: {line:?}")));
    }
    Ok(FaceBox::from_corners(v[0], v[1], v[2], v[3]))
}

/// Reads a landmark file: 68 lines "x y" (any further fields on a line are an error).
pub fn read_landmarks(path: &Path) -> Result<Landmarks68> {
    let text = read_text(path)?;
    let mut pts = [[0f32; 2]; 68];
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| LandmarkError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        if n == 68 {
            return Err(err("more than 68 points".into()));
        }
        let v: Vec<f32> = line
            .split_whitespace()
            .map(|t| t.parse::<f32>().map_err(|e| err(format!("{t:?}: {e}"))))
            .collect::<Result<_>>()?;
        if v.len() != 2 {
            return Err(err(format!("expected \"x y\", got {line:?}")));
        }
        pts[n] = [v[0], v[1]];
        n += 1;
    }
    if n != 68 {
        return Err(LandmarkError::Parse {
            path: path.to_path_buf(),
            line: text.lines().count(),
            message: format!("expected 68 points, found {n}"),
        });
    }
    Ok(pts)
}

/// Writes `text` to `path` atomically (temp file in the same folder, fsync, rename).
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let werr = |source| LandmarkError::Write { path: path.to_path_buf(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(werr)?;
    let mut tmp =
        tempfile::Builder::new().prefix(".aue-landmarks-").tempfile_in(dir).map_err(werr)?;
    tmp.write_all(text.as_bytes()).map_err(werr)?;
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(path).map_err(|e| werr(e.error))?;
    Ok(())
}

/// 68 lines "x y", each point minus `origin`.
pub fn format_landmarks(points: &Landmarks68, origin: [f32; 2]) -> String {
    let mut s = String::with_capacity(68 * 20);
    for p in points {
        s.push_str(&format!("{:.3} {:.3}\n", p[0] - origin[0], p[1] - origin[1]));
    }
    s
}

/// Options of [`run_jobs`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunOptions {
    /// Rewrite files that already exist.
    pub overwrite: bool,
    /// Images per forward pass.
    pub batch: usize,
    /// Box used for images with a dataset box.
    pub box_source: BoxSource,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { overwrite: false, batch: 16, box_source: BoxSource::Dataset }
    }
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunSummary {
    pub written: usize,
    /// Files that existed and were kept.
    pub kept: usize,
    /// Images where the detector found no face.
    pub not_found: Vec<PathBuf>,
    /// Images that could not be processed, with the error.
    pub failed: Vec<(PathBuf, String)>,
}

enum Prepared {
    Ready { image: image::RgbImage, face: FaceBox, origin: [f32; 2] },
    NeedsDetection { image: image::RgbImage, dataset: Option<FaceBox> },
    Failed(String),
}

/// Runs `jobs` in batches, in parallel, calling `progress(n)` after each `n` images.
pub fn run_jobs(
    landmarker: &Landmarker,
    jobs: &[Job],
    options: &RunOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RunSummary> {
    if options.batch == 0 {
        return Err(LandmarkError::Invalid("batch size must be positive".into()));
    }
    let mut summary = RunSummary::default();
    let todo: Vec<&Job> = jobs
        .iter()
        .filter(|j| {
            let keep = !options.overwrite && j.output.is_file();
            if keep {
                summary.kept += 1;
            }
            !keep
        })
        .collect();
    progress(summary.kept as u64);
    for chunk in todo.chunks(options.batch) {
        let prepared: Vec<Prepared> =
            chunk.par_iter().map(|job| prepare(job, options.box_source)).collect();
        // Detection for the images that need it, as one batch.
        let detect_idx: Vec<usize> = prepared
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p, Prepared::NeedsDetection { .. }))
            .map(|(i, _)| i)
            .collect();
        let detect_imgs: Vec<&image::RgbImage> = detect_idx
            .iter()
            .filter_map(|&i| match &prepared[i] {
                Prepared::NeedsDetection { image, .. } => Some(image),
                _ => None,
            })
            .collect();
        let detections = landmarker.detect_faces_batch(&detect_imgs)?;
        let mut faces: Vec<Option<(FaceBox, [f32; 2])>> = vec![None; chunk.len()];
        for (i, p) in prepared.iter().enumerate() {
            match p {
                Prepared::Ready { face, origin, .. } => faces[i] = Some((*face, *origin)),
                Prepared::Failed(e) => summary.failed.push((chunk[i].image.clone(), e.clone())),
                Prepared::NeedsDetection { .. } => {}
            }
        }
        for (k, &i) in detect_idx.iter().enumerate() {
            let Prepared::NeedsDetection { dataset, .. } = &prepared[i] else { continue };
            let found = &detections[k];
            faces[i] = match dataset {
                None => found.first().map(|f| (*f, [0.0, 0.0])),
                Some(d) => {
                    let origin = [d.x1, d.y1];
                    match options.box_source {
                        BoxSource::Detect => found.first().map(|f| (*f, origin)),
                        _ => Some((matched(found, d), origin)),
                    }
                }
            };
            if faces[i].is_none() {
                summary.not_found.push(chunk[i].image.clone());
            }
        }
        // Landmarks for every image with a usable face box, as one batch.
        let mut batch_idx = Vec::new();
        let mut batch = Vec::new();
        for (i, p) in prepared.iter().enumerate() {
            let image = match p {
                Prepared::Ready { image, .. } | Prepared::NeedsDetection { image, .. } => image,
                Prepared::Failed(_) => continue,
            };
            let Some((face, _)) = faces[i] else { continue };
            // A box outside the image is this image's failure, not the batch's.
            if let Err(e) = face_crop(&face, image.width(), image.height()) {
                summary.failed.push((chunk[i].image.clone(), e.to_string()));
                continue;
            }
            batch_idx.push(i);
            batch.push((image, face));
        }
        let points = landmarker.landmarks_batch(&batch)?;
        let results: Vec<Result<()>> = batch_idx
            .par_iter()
            .zip(points.par_iter())
            .map(|(&i, pts)| {
                let origin = faces[i].map(|(_, o)| o).unwrap_or([0.0, 0.0]);
                write_atomic(&chunk[i].output, &format_landmarks(pts, origin))
            })
            .collect();
        for r in results {
            r?;
            summary.written += 1;
        }
        progress(chunk.len() as u64);
    }
    Ok(summary)
}

/// The detection overlapping `dataset` most if its IoU is at least 0.3, else `dataset` itself.
pub fn matched(found: &[FaceBox], dataset: &FaceBox) -> FaceBox {
    found
        .iter()
        .map(|f| (f.iou(dataset), f))
        .filter(|(iou, _)| *iou >= 0.3)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, f)| *f)
        .unwrap_or(*dataset)
}

fn prepare(job: &Job, source: BoxSource) -> Prepared {
    let image = match load_image(&job.image) {
        Ok(i) => i,
        Err(e) => return Prepared::Failed(e.to_string()),
    };
    match &job.face {
        JobBox::Detect => Prepared::NeedsDetection { image, dataset: None },
        JobBox::File(path) => match read_box(path) {
            Err(e) => Prepared::Failed(e.to_string()),
            Ok(face) if source == BoxSource::Dataset => {
                Prepared::Ready { image, face, origin: [face.x1, face.y1] }
            }
            Ok(face) => Prepared::NeedsDetection { image, dataset: Some(face) },
        },
    }
}

/// Writes the not-found and failed lists into `dir` (always, so a rerun replaces stale lists).
pub fn write_reports(dir: &Path, summary: &RunSummary) -> Result<(PathBuf, PathBuf)> {
    let nf = dir.join(NOT_FOUND_FILE);
    let text: String = summary.not_found.iter().map(|p| format!("{}\n", p.display())).collect();
    write_atomic(&nf, &text)?;
    let failed = dir.join(FAILED_FILE);
    let text: String =
        summary.failed.iter().map(|(p, e)| format!("{}\t{e}\n", p.display())).collect();
    write_atomic(&failed, &text)?;
    Ok((nf, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_files_parse_and_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.txt");
        fs::write(&p, "10.5 20 110 140.25\n").unwrap();
        assert_eq!(read_box(&p).unwrap(), FaceBox::from_corners(10.5, 20.0, 110.0, 140.25));
        fs::write(&p, "\n10 20 x 40\n").unwrap();
        let e = read_box(&p).unwrap_err().to_string();
        assert!(e.contains("b.txt:2") && e.contains("\"x\""), "{e}");
        fs::write(&p, "10 20 5 40\n").unwrap();
        assert!(read_box(&p).unwrap_err().to_string().contains("no area"));
    }

    #[test]
    fn landmark_files_round_trip_and_reject_short_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/l.txt");
        let mut pts = [[0f32; 2]; 68];
        for (i, q) in pts.iter_mut().enumerate() {
            *q = [i as f32 + 0.25, 2.0 * i as f32];
        }
        write_atomic(&p, &format_landmarks(&pts, [0.25, 1.0])).unwrap();
        let back = read_landmarks(&p).unwrap();
        assert_eq!(back[3], [3.0, 5.0]);
        fs::write(&p, "1 2\n3 4\n").unwrap();
        let e = read_landmarks(&p).unwrap_err().to_string();
        assert!(e.contains("found 2"), "{e}");
    }

    #[test]
    fn rafdb_jobs_follow_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("basic/EmoLabel/list_patition_label.txt");
        fs::create_dir_all(list.parent().unwrap()).unwrap();
        fs::write(&list, "train_00001.jpg 5\ntest_0001.jpg 1\n").unwrap();
        let jobs = rafdb_jobs(dir.path(), DatasetKind::Rafdb).unwrap();
        assert_eq!(jobs.len(), 2);
        assert!(jobs[0].image.ends_with("basic/Image/original/train_00001.jpg"));
        assert!(jobs[0].output.ends_with("basic/Annotation/Landmarks_68_FAN_bbox/train_00001.txt"));
        assert_eq!(
            jobs[1].face,
            JobBox::File(dir.path().join("basic/Annotation/boundingbox/test_0001.txt"))
        );
        fs::write(&list, "train_00001.jpg\n").unwrap();
        let e = rafdb_jobs(dir.path(), DatasetKind::Rafdb).unwrap_err().to_string();
        assert!(e.contains("list_patition_label.txt:1"), "{e}");
    }

    #[test]
    fn matched_falls_back_to_the_dataset_box() {
        let d = FaceBox::from_corners(0.0, 0.0, 10.0, 10.0);
        let near = FaceBox { score: 0.6, ..FaceBox::from_corners(1.0, 1.0, 11.0, 11.0) };
        let far = FaceBox { score: 0.9, ..FaceBox::from_corners(50.0, 50.0, 60.0, 60.0) };
        assert_eq!(matched(&[far, near], &d), near);
        assert_eq!(matched(&[far], &d), d);
    }
}
