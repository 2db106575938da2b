//! Writes a synthetic set in the RAF-DB *basic* layout (docs/METHOD.md section 5, plus the AU
//! ground truth that only this set has), in parallel and byte-for-byte reproducibly.
//!
//! Layout under `out`:
//! - `basic/EmoLabel/list_patition_label.txt` ("train_00001.jpg 5", 1-based labels of section 1;
//!   quirk: RAF-DB's file name misspells "partition", and readers expect that name)
//! - `basic/Image/original/<name>` (JPEG)
//! - `basic/Annotation/boundingbox/<stem>.txt` ("x1 y1 x2 y2", image pixels)
//! - `basic/Annotation/Landmarks_68_FAN_bbox/<stem>.txt` (68 lines "x y", relative to the box's
//!   top-left corner)
//! - `basic/Annotation/AU_gt/<stem>.txt` (17 intensities in AU order, 0 = absent: the AUs of
//!   the generating expression, whatever label the label file writes)
//! - `basic/Annotation/true_label.txt` (the label file's lines with the generating expression
//!   instead of the written, possibly noisy, label)
//! - `README.md` describing the set.
//!
//! Every image is drawn from its own random stream keyed by (seed, split, index), so the bytes do
//! not depend on the thread count. The label file and README are written last, each to a temp file
//! that is fsynced and renamed: a set without its label file is visibly incomplete. Per-image files
//! are renamed into place too but not fsynced (20,000 fsyncs would dominate the run; a crash before
//! the label file lands leaves no usable set anyway).

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use aue_core::layout;
use aue_core::{AU_NAMES, EXPRESSIONS_BASIC, NUM_AUS, NUM_BASIC};
use const_format::concatcp;
use rayon::prelude::*;

use crate::difficulty::Difficulty;
use crate::error::{Result, SynthError};
use crate::expression::{ClassBalance, assign_expressions, noisy_label, sample_aus};
use crate::random::{Split, image_rng, split_rng, train_noise_rng};
use crate::render::{RenderedFace, render_face};

/// The RAF-DB label file, relative to the set's root.
pub const LABEL_FILE: &str = concatcp!(layout::RAF_BASIC, "/", layout::RAF_LABEL_LIST);
/// The folder of [`LABEL_FILE`].
pub const LABEL_DIR: &str = concatcp!(layout::RAF_BASIC, "/", layout::RAF_LABEL_DIR);
/// Image folder.
pub const IMAGE_DIR: &str = concatcp!(layout::RAF_BASIC, "/", layout::RAF_IMAGES_ORIGINAL);
/// Face boxes.
pub const BOX_DIR: &str = concatcp!(layout::RAF_BASIC, "/", layout::RAF_BOXES);
/// 68-point landmarks relative to the box.
pub const LANDMARK_DIR: &str = concatcp!(layout::RAF_BASIC, "/", layout::RAF_LANDMARKS);
/// Ground-truth AU intensities.
pub const AU_DIR: &str = concatcp!(layout::RAF_BASIC, "/", layout::RAF_AU_GT);
/// The generating expression of every image, in the label file's format (the true labels when
/// the label file holds noisy ones).
pub const TRUE_LABEL_FILE: &str = concatcp!(layout::RAF_BASIC, "/Annotation/true_label.txt");

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Root folder of the set (created if missing).
    pub out: PathBuf,
    /// Number of train images.
    pub train: usize,
    /// Number of test images.
    pub test: usize,
    /// Seed of every random stream.
    pub seed: u64,
    /// Image side in pixels.
    pub size: u32,
    /// All difficulty knobs.
    pub difficulty: Difficulty,
    /// How images are spread over the classes.
    pub balance: ClassBalance,
    /// Extra label noise on the training split only (`--label-noise`): with this probability a
    /// training image's written label becomes another class than its generating expression, drawn
    /// from a stream of its own. The AU ground truth and `TRUE_LABEL_FILE` keep the true
    /// expression; the test split is untouched.
    pub train_label_noise: f32,
    /// JPEG quality (1-100).
    pub jpeg_quality: u8,
    /// Worker threads; 0 = one per core.
    pub threads: usize,
    /// The command line that asked for this set (recorded in the README; may be empty).
    pub command_line: String,
}

impl SynthConfig {
    /// A config with the defaults of the command line (160 px, medium, quality 90).
    pub fn new(out: impl Into<PathBuf>, train: usize, test: usize, seed: u64) -> Self {
        SynthConfig {
            out: out.into(),
            train,
            test,
            seed,
            size: 160,
            difficulty: Difficulty::default(),
            balance: ClassBalance::default(),
            train_label_noise: 0.0,
            jpeg_quality: 90,
            threads: 0,
            command_line: String::new(),
        }
    }

    /// Checks every value; the error names the bad one.
    pub fn validate(&self) -> Result<()> {
        if self.train + self.test == 0 {
            return Err(SynthError::Config("train + test must be at least 1".into()));
        }
        if !(32..=2048).contains(&self.size) {
            return Err(SynthError::Config(format!("size {} is not in [32, 2048]", self.size)));
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return Err(SynthError::Config(format!(
                "jpeg quality {} is not in [1, 100]",
                self.jpeg_quality
            )));
        }
        if !(0.0..=1.0).contains(&self.train_label_noise) {
            return Err(SynthError::Config(format!(
                "label noise {} is not in [0, 1]",
                self.train_label_noise
            )));
        }
        if self.threads > 1024 {
            return Err(SynthError::Config(format!("threads {} is above 1024", self.threads)));
        }
        self.difficulty.validate().map_err(SynthError::Config)
    }
}

/// Counts of one split.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SplitSummary {
    /// Images written.
    pub count: usize,
    /// Images per written label (index = label - 1).
    pub per_label: [usize; NUM_BASIC],
    /// Images per generating expression.
    pub per_expression: [usize; NUM_BASIC],
    /// Images whose written label differs from the generating expression.
    pub flipped: usize,
    /// Images in which each AU is present.
    pub au_present: [usize; NUM_AUS],
}

/// What `generate` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthSummary {
    pub train: SplitSummary,
    pub test: SplitSummary,
    /// Path of the label file.
    pub label_file: PathBuf,
    /// Path of the README.
    pub readme: PathBuf,
}

/// One written image, for the label file and the summary.
struct Record {
    name: String,
    expression: usize,
    label: usize,
    aus: [f32; NUM_AUS],
}

/// Generates the set described by `cfg` (see the module doc for the layout).
pub fn generate(cfg: &SynthConfig) -> Result<SynthSummary> {
    generate_with_progress(cfg, &|_| {})
}

/// [`generate`], calling `progress(k)` each time `k` more images are written (from worker
/// threads, in no particular order).
pub fn generate_with_progress(
    cfg: &SynthConfig,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<SynthSummary> {
    cfg.validate()?;
    let root = &cfg.out;
    for dir in [IMAGE_DIR, BOX_DIR, LANDMARK_DIR, AU_DIR, LABEL_DIR] {
        let path = root.join(dir);
        fs::create_dir_all(&path).map_err(|source| SynthError::CreateDir { path, source })?;
    }
    // A label file from an earlier run would describe a mix of old and new images if this run
    // stopped half-way: remove it first, write the new one last.
    let label_path = root.join(LABEL_FILE);
    match fs::remove_file(&label_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(SynthError::Remove { path: label_path, source: e });
        }
        _ => {}
    }
    let mut builder = rayon::ThreadPoolBuilder::new();
    if cfg.threads > 0 {
        builder = builder.num_threads(cfg.threads);
    }
    let pool = builder
        .build()
        .map_err(|source| SynthError::ThreadPool { threads: cfg.threads, source })?;
    tracing::info!(
        out = %root.display(), train = cfg.train, test = cfg.test, seed = cfg.seed,
        size = cfg.size, difficulty = %cfg.difficulty.level, threads = pool.current_num_threads(),
        "generating synthetic faces"
    );
    let train = pool.install(|| generate_split(cfg, Split::Train, cfg.train, progress))?;
    let test = pool.install(|| generate_split(cfg, Split::Test, cfg.test, progress))?;

    let mut labels = String::with_capacity(24 * (train.len() + test.len()));
    let mut true_labels = String::with_capacity(labels.capacity());
    for r in train.iter().chain(&test) {
        let _ = writeln!(labels, "{} {}", r.name, r.label + 1);
        let _ = writeln!(true_labels, "{} {}", r.name, r.expression + 1);
    }
    let summary = SynthSummary {
        train: summarise(&train),
        test: summarise(&test),
        label_file: label_path.clone(),
        readme: root.join("README.md"),
    };
    write_file(&summary.readme, readme(cfg, &summary).as_bytes(), true)?;
    write_file(&root.join(TRUE_LABEL_FILE), true_labels.as_bytes(), true)?;
    write_file(&label_path, labels.as_bytes(), true)?;
    tracing::info!(label_file = %label_path.display(), "synthetic set complete");
    Ok(summary)
}

/// The file name of image `index` (0-based) of a split of `n` images: "train_00001.jpg" style,
/// with more digits when `n` needs them.
pub fn image_name(split: Split, index: usize, n: usize) -> String {
    let digits = split.min_digits().max(n.to_string().len());
    format!("{}_{:0digits$}.jpg", split.prefix(), index + 1)
}

fn generate_split(
    cfg: &SynthConfig,
    split: Split,
    n: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Record>> {
    let expressions = split_expressions(cfg, split);
    debug_assert_eq!(expressions.len(), n);
    expressions
        .par_iter()
        .enumerate()
        .map(|(index, &expression)| {
            let record = generate_one(cfg, split, index, n, expression)?;
            progress(1);
            Ok(record)
        })
        .collect()
}

/// One drawn image: the written label (0-based) and the rendered face with its ground truth.
#[derive(Debug, Clone)]
pub struct Sample {
    pub label: usize,
    pub face: RenderedFace,
}

/// The expression of every image of `split` (0-based label indices, image order), as `generate`
/// assigns them.
pub fn split_expressions(cfg: &SynthConfig, split: Split) -> Vec<usize> {
    let n = match split {
        Split::Train => cfg.train,
        Split::Test => cfg.test,
    };
    assign_expressions(n, cfg.balance, &mut split_rng(cfg.seed, split))
}

/// Draws image `index` of `split` showing `expression` exactly as `generate` does (same random
/// stream), without writing anything: lets tests and evaluations recompute the ground truth.
pub fn draw_sample(
    cfg: &SynthConfig,
    split: Split,
    index: usize,
    expression: usize,
) -> Result<Sample> {
    let d = &cfg.difficulty;
    let mut rng = image_rng(cfg.seed, split, index as u64);
    // Fixed draw order: AUs, label noise, then the face (identity, pose, scene, pixel noise).
    let aus = sample_aus(expression, d, &mut rng);
    let mut label = noisy_label(expression, d.label_noise, &mut rng);
    let face = render_face(cfg.size, aus, d, &mut rng)?;
    if split == Split::Train && cfg.train_label_noise > 0.0 {
        let extra = noisy_label(
            expression,
            cfg.train_label_noise,
            &mut train_noise_rng(cfg.seed, index as u64),
        );
        if extra != expression {
            label = extra;
        }
    }
    Ok(Sample { label, face })
}

/// Draws, renders and writes one image with its three annotation files.
fn generate_one(
    cfg: &SynthConfig,
    split: Split,
    index: usize,
    n: usize,
    expression: usize,
) -> Result<Record> {
    let Sample { label, face } = draw_sample(cfg, split, index, expression)?;

    let name = image_name(split, index, n);
    let stem = name.trim_end_matches(".jpg");
    let mut jpeg = Vec::with_capacity(16 * 1024);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, cfg.jpeg_quality)
        .encode_image(&face.image)
        .map_err(|source| SynthError::Encode { name: name.clone(), source })?;
    let root = &cfg.out;
    write_file(&root.join(IMAGE_DIR).join(&name), &jpeg, false)?;

    let [x1, y1, x2, y2] = face.bbox;
    let text = format!("{x1:.2} {y1:.2} {x2:.2} {y2:.2}\n");
    write_file(&root.join(BOX_DIR).join(format!("{stem}.txt")), text.as_bytes(), false)?;

    // Relative to the box's top-left corner as written (rounded to 2 decimals), so a reader adding
    // the box back gets the rendered positions to within 0.005 px.
    let (bx, by) = (round2(x1), round2(y1));
    let mut text = String::with_capacity(68 * 16);
    for [x, y] in face.landmarks {
        let _ = writeln!(text, "{:.3} {:.3}", x - bx, y - by);
    }
    write_file(&root.join(LANDMARK_DIR).join(format!("{stem}.txt")), text.as_bytes(), false)?;

    let text = face.aus.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(" ") + "\n";
    write_file(&root.join(AU_DIR).join(format!("{stem}.txt")), text.as_bytes(), false)?;
    Ok(Record { name, expression, label, aus: face.aus })
}

fn round2(v: f32) -> f32 {
    (v * 100.0).round() / 100.0
}

/// Writes `bytes` to a temp file beside `path` and renames it into place (fsynced if `sync`).
fn write_file(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let err = |source| SynthError::Write { path: path.to_path_buf(), source };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let mut f = fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    if sync {
        f.sync_all().map_err(err)?;
    }
    drop(f);
    fs::rename(&tmp, path).map_err(err)
}

fn summarise(records: &[Record]) -> SplitSummary {
    let mut s = SplitSummary { count: records.len(), ..SplitSummary::default() };
    for r in records {
        s.per_label[r.label] += 1;
        s.per_expression[r.expression] += 1;
        s.flipped += usize::from(r.label != r.expression);
        for (k, &v) in r.aus.iter().enumerate() {
            s.au_present[k] += usize::from(v > 0.0);
        }
    }
    s
}

fn readme(cfg: &SynthConfig, s: &SynthSummary) -> String {
    let d = &cfg.difficulty;
    let mut t = String::new();
    let _ = writeln!(t, "# Synthetic faces with action units (aue-synth)\n");
    let _ = writeln!(
        t,
        "A synthetic facial expression set in the RAF-DB *basic* layout, with ground-truth action \
         units. Not real faces: every image is drawn by `aue-synth` from 68 iBUG landmarks."
    );
    let _ = writeln!(t, "\n## How it was made\n");
    let _ = writeln!(
        t,
        "For each image an expression is chosen (class shares: `{}`), its AUs are drawn from the \
         AUE-CRL expression-AU prior (Strong entries active with p = {}, Weak with p = {}, others \
         with p = {}, Neutral faces with p = {} per AU; intensities uniform in [{}, {}]), and with \
         probability {} the written label is replaced by another class (label noise; training \
         images besides with probability {}). A random \
         identity (face shape, feature sizes and spacing, skin tone, hair, eyes, lips, clothes) \
         shows those AUs: each AU moves the landmarks it moves in FACS and adds its appearance \
         cues (wrinkles, folds, bulges). The face gets an in-plane rotation, scale and shift, a \
         cluttered background, lighting, blur, pixel noise and JPEG compression (quality {}).",
        cfg.balance.name(),
        d.p_strong,
        d.p_weak,
        d.p_absent,
        d.p_neutral,
        d.intensity_min,
        d.intensity_max,
        d.label_noise,
        cfg.train_label_noise,
        cfg.jpeg_quality
    );
    let _ = writeln!(t, "\n- Command: `{}`", cfg.command_line);
    let _ = writeln!(t, "- Seed: {}", cfg.seed);
    let _ = writeln!(t, "- Image size: {0} x {0} px", cfg.size);
    let knobs: Vec<String> = d.knobs().iter().map(|(k, v)| format!("{k} = {v}")).collect();
    let _ = writeln!(t, "- Difficulty: {} ({})", d.level, knobs.join(", "));
    let shares = cfg.balance.shares().map(|v| format!("{:.1}%", 100.0 * v));
    let _ =
        writeln!(t, "- Class shares ({}), label order: {}", cfg.balance.name(), shares.join(", "));
    let _ = writeln!(t, "- Generator: aue-synth {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(t, "\n## Counts\n");
    let _ = writeln!(t, "| label | expression | train | test |");
    let _ = writeln!(t, "|---|---|---|---|");
    for (c, name) in EXPRESSIONS_BASIC.iter().enumerate() {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} |",
            c + 1,
            name,
            s.train.per_label[c],
            s.test.per_label[c]
        );
    }
    let _ = writeln!(t, "| | total | {} | {} |", s.train.count, s.test.count);
    let _ = writeln!(
        t,
        "\nLabels differing from the generating expression: {} train, {} test.",
        s.train.flipped, s.test.flipped
    );
    let _ = writeln!(t, "\n## Files\n");
    let _ = writeln!(
        t,
        "- `{LABEL_FILE}`: one line per image, `<name> <label>`, label 1..7 in the order \
         Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral; train images first."
    );
    let _ = writeln!(
        t,
        "- `{TRUE_LABEL_FILE}`: the same lines with the generating expression, the true label \
         (it differs from the label file where label noise flipped the label)."
    );
    let _ = writeln!(t, "- `{IMAGE_DIR}/<name>`: the JPEG images.");
    let _ = writeln!(t, "- `{BOX_DIR}/<stem>.txt`: face box `x1 y1 x2 y2` in image pixels.");
    let _ = writeln!(
        t,
        "- `{LANDMARK_DIR}/<stem>.txt`: 68 lines `x y`, iBUG-68 order, relative to the box's \
         top-left corner (the true drawn positions)."
    );
    let _ = writeln!(
        t,
        "- `{AU_DIR}/<stem>.txt`: one line of 17 intensities in [0, 1], 0 = absent, in the order \
         {}; the AUs of the generating expression, never of a flipped label.",
        AU_NAMES.join(" ")
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rafdb_widths() {
        assert_eq!(image_name(Split::Train, 0, 10), "train_00001.jpg");
        assert_eq!(image_name(Split::Test, 41, 100), "test_0042.jpg");
        assert_eq!(image_name(Split::Train, 123_455, 123_456), "train_123456.jpg");
        assert_eq!(image_name(Split::Test, 0, 12_345), "test_00001.jpg");
    }

    #[test]
    fn config_checks() {
        let mut cfg = SynthConfig::new("/tmp/x", 1, 0, 0);
        assert!(cfg.validate().is_ok());
        cfg.size = 8;
        assert!(cfg.validate().unwrap_err().to_string().contains("size 8"));
        let cfg = SynthConfig::new("/tmp/x", 0, 0, 0);
        assert!(cfg.validate().is_err());
    }
}
