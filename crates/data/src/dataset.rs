//! Opening RAF-DB (basic, compound) and SFEW 2.0 in the layouts of docs/METHOD.md section 5.
//!
//! All annotations are parsed when a dataset is opened (text, fast) and each image's header is
//! read for its size, so that a bad file is reported before training starts; the pixels are
//! decoded later, by the loader.
//!
//! Layouts under the root folder (docs/METHOD.md section 5, CONTRACT "Data"):
//! - RAF-DB basic: `basic/EmoLabel/list_patition_label.txt` ("train_00001.jpg 5"; the split is
//!   the name prefix), images `basic/Image/original/<name>` (or `aligned/<name>`, also found as
//!   `<stem>_aligned.<ext>`, the name RAF-DB ships them under), boxes
//!   `basic/Annotation/boundingbox/<stem>.txt` (or RAF-DB's own `<stem>_boundingbox.txt`),
//!   landmarks relative to the box's top-left
//!   `basic/Annotation/Landmarks_68_FAN_bbox/<stem>.txt`, and when the folder
//!   `basic/Annotation/AU_gt/` exists, ground-truth AUs `<stem>.txt`. Compound: the same under
//!   `compound/`. With `aligned`, the box and landmarks must be in the aligned image's pixels.
//! - SFEW 2.0: `Train|Val/imgs/<Class>/<id>.jpg|png`, landmarks in image pixels
//!   `Train|Val/Annotations/Landmarks_68_FAN/<Class>/<id>.txt`, the box is the landmarks'
//!   extent. The id lists (`<Class>/<id>` per line) are read from
//!   `list_experiment/id_train_list.txt` and `list_experiment/id_val_list.txt`, where the
//!   reference keeps them; when a list is absent, the ids are the image files found under
//!   `Train|Val/imgs/<Class>/`, sorted. Test = Val.
//!
//! Images without a landmark file, or whose file has fewer than 2 rows, are skipped as the
//! reference does (counted, and reported once with `tracing::warn`). Anything malformed is an
//! error naming the file (and line); with `skip_bad` the sample is skipped and counted instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aue_core::FaceBox;
use aue_core::layout;
use rayon::prelude::*;

use crate::annotations::{
    self, LabelEntry, LandmarkFile, SfewEntry, read_au_gt, read_box, read_landmarks,
};
use crate::error::{DataError, Result};
use crate::landmarks::Landmarks;
use crate::preprocess::{
    self, AuGrid, AuLoc, Augment, ENLARGE_RAF, ENLARGE_SFEW, Plan, normalise_into,
};

/// Which dataset a root folder holds: the one name of the three datasets, from the `--dataset`
/// flag through `config.json` to checkpoint metadata (`rafdb`, `rafdb-compound`, `sfew`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DatasetKind {
    /// RAF-DB basic expressions (7 classes). The synthetic set uses this layout too.
    Rafdb,
    /// RAF-DB compound expressions (11 classes).
    RafdbCompound,
    /// SFEW 2.0 (7 classes, folder names mapped to the basic order); the test split is `Val`.
    Sfew,
}

impl DatasetKind {
    /// Every dataset kind.
    pub const ALL: [DatasetKind; 3] =
        [DatasetKind::Rafdb, DatasetKind::RafdbCompound, DatasetKind::Sfew];

    /// Class names in label-index order (docs/METHOD.md section 1).
    pub fn class_names(self) -> &'static [&'static str] {
        match self {
            DatasetKind::Rafdb | DatasetKind::Sfew => &aue_core::EXPRESSIONS_BASIC,
            DatasetKind::RafdbCompound => &aue_core::EXPRESSIONS_COMPOUND,
        }
    }

    /// Number of classes (7 or 11).
    pub fn num_classes(self) -> usize {
        self.class_names().len()
    }

    /// The box enlargement factor (0.15 for RAF-DB, 0.20 for SFEW).
    pub fn enlarge_factor(self) -> f64 {
        match self {
            DatasetKind::Rafdb | DatasetKind::RafdbCompound => ENLARGE_RAF,
            DatasetKind::Sfew => ENLARGE_SFEW,
        }
    }

    /// Where the dataset is looked for when no root is given.
    pub fn default_root(self) -> PathBuf {
        match self {
            DatasetKind::Rafdb | DatasetKind::RafdbCompound => PathBuf::from("data/rafdb"),
            DatasetKind::Sfew => PathBuf::from("data/sfew"),
        }
    }
}

aue_core::named_enum!(DatasetKind, "dataset", DataError => DataError::Options, {
    Rafdb => "rafdb",
    RafdbCompound => "rafdb-compound",
    Sfew => "sfew",
});

/// Which part of a dataset to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training split.
    Train,
    /// The test split (SFEW: Val).
    Test,
}

impl Split {
    /// `"train"` or `"test"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to open a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetOptions {
    /// Input side S (a multiple of 32, at least 32); the AU grid is S / 4. Default 224.
    pub input_size: u32,
    /// RAF-DB: read `Image/aligned/` instead of `Image/original/`. Default false.
    pub aligned: bool,
    /// Skip (and count) malformed samples instead of failing. Default false.
    pub skip_bad: bool,
    /// When a training crop is mirrored, also swap left/right landmark indices (iBUG mirror),
    /// so that AU centres keep their side. Default false: the reference does not (quirk).
    pub swap_flip_landmarks: bool,
}

impl Default for DatasetOptions {
    fn default() -> Self {
        DatasetOptions {
            input_size: 224,
            aligned: false,
            skip_bad: false,
            swap_flip_landmarks: false,
        }
    }
}

impl DatasetOptions {
    pub(crate) fn check(&self) -> Result<()> {
        if self.input_size < 32 || !self.input_size.is_multiple_of(32) {
            return Err(DataError::Options(format!(
                "input_size {} must be a multiple of 32 (at least 32)",
                self.input_size
            )));
        }
        Ok(())
    }
}

/// One sample's annotations, parsed at open.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleInfo {
    /// RAF-DB: the image file name (`train_00001.jpg`); SFEW: `<Class>/<id>`.
    pub name: String,
    /// The image file.
    pub image: PathBuf,
    /// 0-based class index.
    pub label: usize,
    /// The face box in image pixels (SFEW: the landmarks' extent).
    pub face_box: FaceBox<f64>,
    /// The 68 landmarks in image pixels.
    pub landmarks: Landmarks,
    /// Ground-truth AU intensities, when the dataset has them.
    pub au_gt: Option<[f32; aue_core::NUM_AUS]>,
    /// Image width from its header.
    pub width: u32,
    /// Image height from its header.
    pub height: u32,
    /// The encoded image, for sources that hold images in memory (parquet); `None`: read
    /// `image` from disk.
    pub(crate) bytes: Option<ImageBytes>,
}

impl SampleInfo {
    /// A listed sample whose image, box and landmarks were found, with the image checked against
    /// the box and landmarks as `kind` will crop it, and its size recorded; no AU ground truth.
    fn checked(
        name: &str,
        label: usize,
        image: PathBuf,
        (face_box, landmarks): (FaceBox<f64>, Landmarks),
        kind: DatasetKind,
        grid: &AuGrid,
    ) -> Result<Self> {
        let (width, height) = check_image(&image, &face_box, &landmarks, kind, grid)?;
        let name = name.to_string();
        Ok(SampleInfo {
            name,
            image,
            label,
            face_box,
            landmarks,
            au_gt: None,
            width,
            height,
            bytes: None,
        })
    }
}

/// Encoded image bytes shared between clones of a dataset.
#[derive(Clone, PartialEq)]
pub(crate) struct ImageBytes(pub(crate) Arc<[u8]>);

impl std::fmt::Debug for ImageBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} encoded bytes>", self.0.len())
    }
}

/// What opening a dataset skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Entries listed for the split.
    pub listed: usize,
    /// Images skipped for a missing landmark file or one with fewer than 2 rows (the
    /// reference's rule), by name.
    pub no_landmarks: Vec<String>,
    /// Malformed samples skipped under `skip_bad`: the error of each.
    pub bad: Vec<String>,
}

/// An opened dataset split. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Dataset {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    kind: DatasetKind,
    split: Split,
    root: PathBuf,
    options: DatasetOptions,
    grid: AuGrid,
    samples: Vec<SampleInfo>,
    has_au_gt: bool,
    report: OpenReport,
}

/// One prepared sample: the normalised image and its targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// `[3, S, S]` row-major, ImageNet-normalised.
    pub image: Vec<f32>,
    /// AU locations on the G grid.
    pub au_loc: AuLoc,
    /// 0-based class index.
    pub label: usize,
    /// Ground-truth AU intensities, when the dataset has them.
    pub au_gt: Option<[f32; aue_core::NUM_AUS]>,
}

/// The outcome of reading one listed entry.
pub(crate) enum Entry {
    Sample(Box<SampleInfo>),
    NoLandmarks(String),
}

impl Dataset {
    /// Opens the `split` of the dataset of `kind` under `root`.
    pub fn open(
        kind: DatasetKind,
        root: impl AsRef<Path>,
        split: Split,
        options: &DatasetOptions,
    ) -> Result<Dataset> {
        options.check()?;
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(DataError::missing(&root, "dataset root folder"));
        }
        let (results, listed, has_au_gt) = match kind {
            DatasetKind::Rafdb | DatasetKind::RafdbCompound => {
                open_raf(kind, &root, split, options)?
            }
            DatasetKind::Sfew => open_sfew(&root, split, options)?,
        };
        Dataset::finish(kind, split, root, options, (results, listed, has_au_gt))
    }

    /// Turns the per-entry outcomes of a source into a dataset: skips (and reports) images
    /// without landmarks, fails on the first malformed entry in list order or skips it under
    /// `skip_bad`.
    pub(crate) fn finish(
        kind: DatasetKind,
        split: Split,
        root: PathBuf,
        options: &DatasetOptions,
        (results, listed, has_au_gt): Opened,
    ) -> Result<Dataset> {
        let mut report = OpenReport { listed, ..OpenReport::default() };
        let mut samples = Vec::with_capacity(results.len());
        for result in results {
            match result {
                Ok(Entry::Sample(s)) => samples.push(*s),
                Ok(Entry::NoLandmarks(name)) => report.no_landmarks.push(name),
                Err(e) if options.skip_bad => report.bad.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        let warn_skipped = |names: &[String], why: &str| {
            if !names.is_empty() {
                let first: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
                tracing::warn!(dataset = %kind, split = %split, count = names.len(), first = ?first, "{why}");
            }
        };
        warn_skipped(
            &report.no_landmarks,
            "skipped images without a landmark file or with fewer than 2 landmark rows (as the \
             reference does)",
        );
        warn_skipped(&report.bad, "skipped malformed samples (skip_bad)");
        if samples.is_empty() {
            return Err(DataError::Dataset {
                root,
                message: format!(
                    "no usable {split} sample ({} listed, {} without landmarks, {} malformed)",
                    report.listed,
                    report.no_landmarks.len(),
                    report.bad.len()
                ),
            });
        }
        tracing::info!(
            dataset = %kind,
            split = %split,
            samples = samples.len(),
            has_au_gt,
            "opened dataset"
        );
        Ok(Dataset {
            inner: Arc::new(Inner {
                kind,
                split,
                root,
                grid: AuGrid::new(options.input_size),
                options: options.clone(),
                samples,
                has_au_gt,
                report,
            }),
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.inner.samples.len()
    }

    /// Whether there is no sample (never true for an opened dataset).
    pub fn is_empty(&self) -> bool {
        self.inner.samples.is_empty()
    }

    /// The dataset kind.
    pub fn kind(&self) -> DatasetKind {
        self.inner.kind
    }

    /// The split.
    pub fn split(&self) -> Split {
        self.inner.split
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The options it was opened with.
    pub fn options(&self) -> &DatasetOptions {
        &self.inner.options
    }

    /// Input side S.
    pub fn input_size(&self) -> u32 {
        self.inner.options.input_size
    }

    /// The AU grid of S.
    pub fn grid(&self) -> AuGrid {
        self.inner.grid
    }

    /// All samples, in list order.
    pub fn samples(&self) -> &[SampleInfo] {
        &self.inner.samples
    }

    /// Sample `index` (`None` past the end).
    pub fn sample(&self, index: usize) -> Option<&SampleInfo> {
        self.inner.samples.get(index)
    }

    /// Class names in label-index order.
    pub fn class_names(&self) -> &'static [&'static str] {
        self.inner.kind.class_names()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.inner.kind.num_classes()
    }

    /// Number of samples of each class, in label-index order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for s in &self.inner.samples {
            counts[s.label] += 1;
        }
        counts
    }

    /// Whether every sample carries ground-truth AUs (the `AU_gt` folder exists).
    pub fn has_au_gt(&self) -> bool {
        self.inner.has_au_gt
    }

    /// What opening skipped.
    pub fn report(&self) -> &OpenReport {
        &self.inner.report
    }

    fn get(&self, index: usize) -> Result<&SampleInfo> {
        self.inner.samples.get(index).ok_or_else(|| DataError::Dataset {
            root: self.inner.root.clone(),
            message: format!("sample index {index} out of range (len {})", self.len()),
        })
    }

    /// The half padding of sample `index`'s box (the range of its random offsets).
    pub fn half_padding(&self, index: usize) -> Result<i64> {
        let s = self.get(index)?;
        Ok(preprocess::half_padding(&s.face_box, self.inner.kind.enlarge_factor()))
    }

    /// The crop plan of sample `index` under `augment`, without decoding the image (it uses the
    /// image size read at open).
    pub fn plan(&self, index: usize, augment: &Augment) -> Result<Plan> {
        let s = self.get(index)?;
        preprocess::plan(
            &s.face_box,
            &s.landmarks,
            self.inner.kind.enlarge_factor(),
            augment,
            self.inner.options.swap_flip_landmarks,
            (s.width, s.height),
            &self.inner.grid,
        )
        .map_err(|m| DataError::invalid(&s.image, m))
    }

    /// Sample `index` cropped, augmented and resized: `S x S x 3` bytes (the values `ToTensor`
    /// divides by 255) and the plan.
    pub fn prepare_u8(&self, index: usize, augment: &Augment) -> Result<(Vec<u8>, Plan)> {
        let s = self.get(index)?;
        let img = preprocess::decode_expected(
            &s.image,
            s.bytes.as_ref().map(|b| &*b.0),
            (s.width, s.height),
        )?;
        preprocess::prepare_rgb(
            &img,
            &s.face_box,
            &s.landmarks,
            self.inner.kind.enlarge_factor(),
            augment,
            self.inner.options.swap_flip_landmarks,
            &self.inner.grid,
        )
        .map_err(|m| DataError::invalid(&s.image, m))
    }

    /// Writes sample `index`'s normalised `[3, S, S]` image into `out` and returns its AU
    /// locations.
    pub fn prepare_into(&self, index: usize, augment: &Augment, out: &mut [f32]) -> Result<AuLoc> {
        let size = self.input_size() as usize;
        if out.len() != 3 * size * size {
            return Err(DataError::Options(format!(
                "output buffer holds {} values, need 3 x {size} x {size}",
                out.len()
            )));
        }
        let (bytes, plan) = self.prepare_u8(index, augment)?;
        normalise_into(&bytes, out);
        Ok(plan.au_loc)
    }

    /// Sample `index` prepared under `augment` (allocates; the loader writes in place instead).
    pub fn prepare(&self, index: usize, augment: &Augment) -> Result<Prepared> {
        let size = self.input_size() as usize;
        let mut image = vec![0.0; 3 * size * size];
        let au_loc = self.prepare_into(index, augment, &mut image)?;
        let s = self.get(index)?;
        Ok(Prepared { image, au_loc, label: s.label, au_gt: s.au_gt })
    }
}

/// Checks that the test-mode crop of `face_box` in a `w x h` image is not empty: a box outside
/// its image is an error here, before training starts.
pub(crate) fn check_box(
    image: &Path,
    (w, h): (u32, u32),
    face_box: &FaceBox<f64>,
    landmarks: &Landmarks,
    kind: DatasetKind,
    grid: &AuGrid,
) -> Result<()> {
    let overlap_x = face_box.x2.min(f64::from(w)) - face_box.x1.max(0.0);
    let overlap_y = face_box.y2.min(f64::from(h)) - face_box.y1.max(0.0);
    if overlap_x < 1.0 || overlap_y < 1.0 {
        return Err(DataError::invalid(
            image,
            format!(
                "face box ({}, {}, {}, {}) lies outside the {w}x{h} image",
                face_box.x1, face_box.y1, face_box.x2, face_box.y2
            ),
        ));
    }
    preprocess::plan(
        face_box,
        landmarks,
        kind.enlarge_factor(),
        &Augment::NONE,
        false,
        (w, h),
        grid,
    )
    .map_err(|m| DataError::invalid(image, m))?;
    Ok(())
}

/// [`check_box`] after reading the image size from its header.
fn check_image(
    image: &Path,
    face_box: &FaceBox<f64>,
    landmarks: &Landmarks,
    kind: DatasetKind,
    grid: &AuGrid,
) -> Result<(u32, u32)> {
    let dims = preprocess::image_dimensions(image)?;
    check_box(image, dims, face_box, landmarks, kind, grid)?;
    Ok(dims)
}

/// Per-entry outcomes, entries listed, whether AU ground truth exists.
pub(crate) type Opened = (Vec<Result<Entry>>, usize, bool);

fn open_raf(
    kind: DatasetKind,
    root: &Path,
    split: Split,
    options: &DatasetOptions,
) -> Result<Opened> {
    let sub = root.join(if kind == DatasetKind::Rafdb {
        layout::RAF_BASIC
    } else {
        layout::RAF_COMPOUND
    });
    let list = sub.join(layout::RAF_LABEL_LIST);
    if !list.is_file() {
        return Err(DataError::missing(&list, format!("{kind} label list")));
    }
    let entries = annotations::read_label_list(&list, split.as_str(), kind.num_classes())?;
    let listed = entries.len();
    if listed == 0 {
        return Err(DataError::Dataset {
            root: list.clone(),
            message: format!("lists no {split} image (names start with `{split}_`)"),
        });
    }
    let au_dir = sub.join(layout::RAF_AU_GT);
    let has_au_gt = au_dir.is_dir();
    let dirs = RafDirs {
        images: sub.join(if options.aligned {
            layout::RAF_IMAGES_ALIGNED
        } else {
            layout::RAF_IMAGES_ORIGINAL
        }),
        boxes: sub.join(layout::RAF_BOXES),
        landmarks: sub.join(layout::RAF_LANDMARKS),
        au_gt: has_au_gt.then_some(au_dir),
        aligned: options.aligned,
    };
    let grid = AuGrid::new(options.input_size);
    let results = entries
        .into_par_iter()
        .map(|entry| entry.and_then(|e| read_raf_entry(kind, &dirs, &e, &grid)))
        .collect();
    Ok((results, listed, has_au_gt))
}

struct RafDirs {
    images: PathBuf,
    boxes: PathBuf,
    landmarks: PathBuf,
    au_gt: Option<PathBuf>,
    aligned: bool,
}

fn read_raf_entry(
    kind: DatasetKind,
    dirs: &RafDirs,
    entry: &LabelEntry,
    grid: &AuGrid,
) -> Result<Entry> {
    let stem = annotations::stem(&entry.name);
    let lm_path = dirs.landmarks.join(format!("{stem}.txt"));
    if !lm_path.is_file() {
        return Ok(Entry::NoLandmarks(entry.name.clone()));
    }
    let mut landmarks = match read_landmarks(&lm_path)? {
        LandmarkFile::Points(p) => *p,
        LandmarkFile::TooFew(_) => return Ok(Entry::NoLandmarks(entry.name.clone())),
    };
    let mut box_path = dirs.boxes.join(format!("{stem}.txt"));
    if !box_path.is_file() {
        // RAF-DB ships its boxes as `<stem>_boundingbox.txt`; accept that name too.
        let official = dirs.boxes.join(format!("{stem}_boundingbox.txt"));
        if official.is_file() {
            box_path = official;
        }
    }
    if !box_path.is_file() {
        return Err(DataError::missing(&box_path, format!("face box file for {}", entry.name)));
    }
    let face_box = read_box(&box_path)?;
    // RAF-DB landmarks are relative to the box's top-left corner.
    for p in landmarks.iter_mut() {
        p[0] += face_box.x1;
        p[1] += face_box.y1;
    }
    let au_gt = match &dirs.au_gt {
        Some(dir) => {
            let path = dir.join(format!("{stem}.txt"));
            if !path.is_file() {
                return Err(DataError::missing(&path, format!("AU file for {}", entry.name)));
            }
            Some(read_au_gt(&path)?)
        }
        None => None,
    };
    let mut image = dirs.images.join(&entry.name);
    if dirs.aligned && !image.is_file() {
        let ext = entry.name.rsplit_once('.').map(|(_, e)| e).unwrap_or("jpg");
        let alt = dirs.images.join(format!("{stem}_aligned.{ext}"));
        if alt.is_file() {
            image = alt;
        }
    }
    if !image.is_file() {
        return Err(DataError::missing(&image, format!("image of {}", entry.name)));
    }
    let info =
        SampleInfo::checked(&entry.name, entry.label, image, (face_box, landmarks), kind, grid)?;
    Ok(Entry::Sample(Box::new(SampleInfo { au_gt, ..info })))
}

fn open_sfew(root: &Path, split: Split, options: &DatasetOptions) -> Result<Opened> {
    let (folder, list_name) = match split {
        Split::Train => (layout::SFEW_SPLITS[0], "id_train_list.txt"),
        Split::Test => (layout::SFEW_SPLITS[1], "id_val_list.txt"),
    };
    let base = root.join(folder);
    let list = root.join(layout::SFEW_LIST_DIR).join(list_name);
    let entries = if list.is_file() {
        annotations::read_sfew_list(&list)?
    } else {
        list_sfew_images(&base.join(layout::SFEW_IMAGES))?
    };
    let listed = entries.len();
    if listed == 0 {
        let source = if list.is_file() { list.clone() } else { base.join(layout::SFEW_IMAGES) };
        return Err(DataError::Dataset {
            root: source,
            message: format!("lists no {split} image"),
        });
    }
    let grid = AuGrid::new(options.input_size);
    let results = entries
        .into_par_iter()
        .map(|entry| entry.and_then(|e| read_sfew_entry(&base, &e, &grid)))
        .collect();
    Ok((results, listed, false))
}

/// The `<Class>/<id>` names of the images under `imgs/<Class>/`, sorted, for an SFEW folder
/// that comes without id lists.
fn list_sfew_images(imgs: &Path) -> Result<Vec<Result<SfewEntry>>> {
    if !imgs.is_dir() {
        return Err(DataError::missing(imgs, "SFEW image folder (and no id list)"));
    }
    let mut names = Vec::new();
    for (class, _) in aue_core::SFEW_FOLDERS {
        let dir = imgs.join(class);
        if !dir.is_dir() {
            continue;
        }
        let read = std::fs::read_dir(&dir).map_err(|e| DataError::io(&dir, "list folder", e))?;
        for item in read {
            let item = item.map_err(|e| DataError::io(&dir, "list folder", e))?;
            let file_name = item.file_name();
            let Some(file_name) = file_name.to_str() else { continue };
            if let Some((id, ext)) = file_name.rsplit_once('.')
                && matches!(ext, "jpg" | "png")
            {
                names.push(format!("{class}/{id}"));
            }
        }
    }
    names.sort();
    names.dedup();
    Ok(names.iter().map(|n| annotations::parse_sfew_name(imgs, 0, n)).collect())
}

fn read_sfew_entry(base: &Path, entry: &SfewEntry, grid: &AuGrid) -> Result<Entry> {
    let lm_path =
        base.join(layout::SFEW_LANDMARKS).join(&entry.class).join(format!("{}.txt", entry.id));
    if !lm_path.is_file() {
        return Ok(Entry::NoLandmarks(entry.name.clone()));
    }
    let landmarks = match read_landmarks(&lm_path)? {
        LandmarkFile::Points(p) => *p,
        LandmarkFile::TooFew(_) => return Ok(Entry::NoLandmarks(entry.name.clone())),
    };
    let dir = base.join(layout::SFEW_IMAGES).join(&entry.class);
    let jpg = dir.join(format!("{}.jpg", entry.id));
    let image = if jpg.is_file() { jpg } else { dir.join(format!("{}.png", entry.id)) };
    if !image.is_file() {
        return Err(DataError::missing(&image, format!("image of {} (.jpg or .png)", entry.name)));
    }
    let face_box = FaceBox::extent(&landmarks);
    if face_box.x2 <= face_box.x1 || face_box.y2 <= face_box.y1 {
        return Err(DataError::invalid(&lm_path, "landmarks span an empty box"));
    }
    let located = (face_box, landmarks);
    let info =
        SampleInfo::checked(&entry.name, entry.label, image, located, DatasetKind::Sfew, grid)?;
    Ok(Entry::Sample(Box::new(info)))
}
