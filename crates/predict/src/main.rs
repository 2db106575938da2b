//! `aue-predict`: expression, AU and attention predictions of an AUE-CRL checkpoint on photos
//! (faces found by aue-landmarks, cropped as the reference's test mode, REFERENCE.md section 5).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use aue_cli::DeviceSpec;
use aue_model::Preset;
use aue_predict::output::RowWriter;
use aue_predict::{Format, Predictor, PredictorConfig, Status, collect_images, overlay};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

/// Predict expressions and action units of the faces in images with an AUE-CRL checkpoint.
///
/// Each face is detected (face-api tiny face detector), given 68 landmarks, cropped as the
/// reference's test mode (the detected box enlarged by 7.5% of its width per side, resized to
/// the checkpoint's input side) and run in eval mode. One row per face: file, face index, box,
/// detector score, status, the top expression and the class probabilities (softmax of `pred2`
/// for a stage-3 checkpoint, of `pred_em` for stage 1), the 17 AU probabilities (AU01..AU26;
/// stage 2 and 3 only: a stage-1 checkpoint's AU branch is untrained, so those columns are
/// empty; a stage-2 checkpoint gives AUs only) and the 17 fusion attention weights
/// (att_AU01..att_AU26, stage 3 only).
///
/// An image without a face gives a row with status `no_face`; an unreadable image a row with
/// status `error: <message>`, and the run goes on. Exit status: 0 when at least one image could
/// be read, 1 when none could (or on any setup error: checkpoint, inputs, output file).
#[derive(Debug, Parser)]
#[command(name = "aue-predict", version, verbatim_doc_comment)]
struct Args {
    /// Model checkpoint written by aue-stage3 (or aue-stage1 / aue-stage2).
    #[arg(long, value_name = "CKPT.safetensors")]
    checkpoint: PathBuf,

    /// Model preset; required only for a checkpoint without aue metadata, and checked against
    /// the metadata otherwise.
    #[arg(long, value_name = "P")]
    preset: Option<Preset>,

    /// Image files, or folders searched recursively for .jpg / .jpeg / .png.
    #[arg(required = true, value_name = "IMAGES_OR_FOLDERS")]
    inputs: Vec<PathBuf>,

    /// Output file.
    #[arg(long, default_value = "predictions.csv")]
    out: PathBuf,

    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    format: Format,

    /// Write one PNG per input image with boxes, landmarks, the top expression and top 3 AUs.
    #[arg(long, value_name = "DIR")]
    overlay_dir: Option<PathBuf>,

    /// cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,

    /// Minimum detector score of a face, in (0, 1).
    #[arg(long, default_value_t = 0.5)]
    min_score: f32,
}

/// The checked settings of a run.
struct Config {
    predictor: PredictorConfig,
    inputs: Vec<PathBuf>,
    out: PathBuf,
    format: Format,
    overlay_dir: Option<PathBuf>,
}

impl Config {
    fn from_args(a: Args) -> anyhow::Result<Config> {
        let device = a.device.open()?;
        if !(a.min_score > 0.0 && a.min_score < 1.0) {
            bail!("--min-score {} must be in (0, 1)", a.min_score);
        }
        Ok(Config {
            predictor: PredictorConfig {
                checkpoint: a.checkpoint,
                preset: a.preset,
                min_score: a.min_score,
                device,
            },
            inputs: a.inputs,
            out: a.out,
            format: a.format,
            overlay_dir: a.overlay_dir,
        })
    }
}

fn run(cfg: &Config) -> anyhow::Result<()> {
    let images = collect_images(&cfg.inputs)?;
    if images.is_empty() {
        bail!("no .jpg/.jpeg/.png image in {:?}", cfg.inputs);
    }
    let predictor = Predictor::new(&cfg.predictor)?;
    if let Some(dir) = &cfg.overlay_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut writer = RowWriter::create(&cfg.out, cfg.format, predictor.info().labels())?;
    let bar = ProgressBar::new(images.len() as u64).with_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} images [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut read, mut faces, mut errors) = (0usize, 0usize, 0usize);
    let mut used_names = HashSet::new();
    for path in &images {
        let result = predictor.predict_image(path);
        if result.image.is_some() {
            read += 1;
        }
        for row in &result.rows {
            match row.status {
                Status::Ok => faces += 1,
                Status::Error(_) => errors += 1,
                Status::NoFace => {}
            }
            writer.write(row)?;
        }
        if let (Some(dir), Some(img)) = (&cfg.overlay_dir, &result.image) {
            let stem =
                path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let mut name = format!("{stem}.png");
            let mut k = 1;
            while !used_names.insert(name.clone()) {
                name = format!("{stem}_{k}.png");
                k += 1;
            }
            let out = dir.join(name);
            let drawn = overlay(img, &result.faces, &result.rows);
            save_png(&drawn, &out)?;
        }
        bar.set_message(format!("{faces} faces"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    writer.finish()?;
    eprintln!(
        "{} images ({read} read, {errors} errors), {faces} faces -> {}",
        images.len(),
        cfg.out.display()
    );
    if read == 0 {
        bail!("none of the {} images could be read", images.len());
    }
    Ok(())
}

/// Writes a PNG atomically (temp file in the same folder, fsync, rename).
fn save_png(img: &image::RgbImage, path: &std::path::Path) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".aue-predict-")
        .suffix(".png")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    img.write_to(&mut std::io::BufWriter::new(tmp.as_file_mut()), image::ImageFormat::Png)
        .with_context(|| format!("cannot encode {}", path.display()))?;
    tmp.as_file().sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    tmp.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn main() -> ExitCode {
    aue_cli::main("warn", || run(&Config::from_args(Args::parse())?))
}
