//! `aue-predict`: expression, AU and attention predictions of an AUE-CRL checkpoint on photos
//! and videos (faces found by aue-landmarks, cropped as the reference's test mode, docs/METHOD.md
//! section 5; videos decoded by FFmpeg, faces tracked across frames).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, bail};
use aue_cli::DeviceSpec;
use aue_model::Preset;
use aue_predict::output::RowWriter;
use aue_predict::plot::Recorder;
use aue_predict::track::TrackerConfig;
use aue_predict::{
    Format, Predictor, PredictorConfig, Sampling, Status, VideoFrame, VideoOptions, collect_inputs,
    is_video, overlay,
};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

/// Predict expressions and action units of the faces in images and videos with an AUE-CRL
/// checkpoint.
///
/// Each face is detected (aue-landmarks' default: SSD MobileNet v1 plus MediaPipe's BlazeFace), given 68 landmarks, cropped as the
/// reference's test mode (the detected box enlarged by 7.5% of its width per side, resized to
/// the checkpoint's input side) and run in eval mode. One row per face: file, frame, timestamp,
/// face, box, detector score, status, the top expression and the class probabilities (softmax
/// of `pred2` for a stage-3 checkpoint, of `pred_em` for stage 1), the 17 AU probabilities
/// (AU01..AU26; stage 2 and 3 only: a stage-1 checkpoint's AU branch is untrained, so those
/// columns are empty; a stage-2 checkpoint gives AUs only) and the 17 fusion attention weights
/// (att_AU01..att_AU26, stage 3 only).
///
/// Videos (.mp4 .avi .mov .mkv .webm) are decoded with FFmpeg's `ffmpeg` and `ffprobe`
/// programs (install FFmpeg with the system package manager): one row per face per frame, with
/// the frame index (0-based), its timestamp in seconds (from the container's time base) and, as
/// `face`, a track id that follows the face from frame to frame. For images, frame and timestamp
/// are empty and face is the index in the image.
///
/// An image (or video frame) without a face gives a row with status `no_face`; an unreadable
/// image or video a row with status `error: <message>`, and the run goes on. Exit status: 0 when
/// at least one input could be read, 1 when none could (or on any setup error: checkpoint,
/// inputs, output file, FFmpeg missing).
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

    /// Image files, video files, or folders searched recursively for .jpg / .jpeg / .png and
    /// .mp4 / .avi / .mov / .mkv / .webm.
    #[arg(required = true, value_name = "INPUTS")]
    inputs: Vec<PathBuf>,

    /// Output file.
    #[arg(long, default_value = "predictions.csv")]
    out: PathBuf,

    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    format: Format,

    /// Write one PNG per input image with boxes, landmarks, the top expression and top 3 AUs;
    /// for a video, a folder <DIR>/<video name>/ with one PNG per frame run.
    #[arg(long, value_name = "DIR")]
    overlay_dir: Option<PathBuf>,

    /// Write one SVG per video face track: its expression and AU probabilities over time
    /// (<DIR>/<video name>_face<id>.svg).
    #[arg(long, value_name = "DIR")]
    plot_dir: Option<PathBuf>,

    /// Video: run every N-th frame (counted from the first frame at or after --start).
    #[arg(long, value_name = "N", default_value_t = 1)]
    every: u64,

    /// Video: first timestamp to run, in seconds (earlier frames are decoded and skipped;
    /// default: the first frame).
    #[arg(long, value_name = "SECONDS")]
    start: Option<f64>,

    /// Video: last timestamp to run, in seconds.
    #[arg(long, value_name = "SECONDS")]
    end: Option<f64>,

    /// Video: average each face's expression and AU probabilities over a centred window of
    /// this many seconds (a moving mean per track; 0: off).
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    smooth: f64,

    /// Device to run the model on: cpu, cuda (= cuda:0) or cuda:N (CUDA needs a build with
    /// `--features cuda`).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: DeviceSpec,

    /// Minimum SSD detector score of a face, in (0, 1) (BlazeFace keeps MediaPipe's, 0.5).
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
    plot_dir: Option<PathBuf>,
    video: VideoOptions,
}

impl Config {
    fn from_args(a: Args) -> anyhow::Result<Config> {
        if !(a.min_score > 0.0 && a.min_score < 1.0) {
            bail!("--min-score {} must be in (0, 1)", a.min_score);
        }
        if a.every == 0 {
            bail!("--every must be at least 1");
        }
        if let Some(start) = a.start
            && !start.is_finite()
        {
            bail!("--start {start} must be a time in seconds");
        }
        if let Some(end) = a.end
            && !(end.is_finite() && end >= a.start.unwrap_or(f64::NEG_INFINITY))
        {
            bail!("--end {end} must be a time in seconds, not before --start");
        }
        if !(a.smooth.is_finite() && a.smooth >= 0.0) {
            bail!("--smooth {} must be a window in seconds >= 0", a.smooth);
        }
        let device = a.device.open()?;
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
            plot_dir: a.plot_dir,
            video: VideoOptions {
                sampling: Sampling { every: a.every, start: a.start, end: a.end },
                smooth: a.smooth,
                tracker: TrackerConfig::default(),
            },
        })
    }
}

/// Counts over the whole run.
#[derive(Default)]
struct Totals {
    read: usize,
    faces: usize,
    errors: usize,
    frames: u64,
    first_error: Option<String>,
}

/// File names handed out in an output folder, so that two inputs with one stem do not collide.
#[derive(Default)]
struct Names(HashSet<String>);

impl Names {
    fn unique(&mut self, stem: &str, ext: &str) -> String {
        let mut name = format!("{stem}{ext}");
        let mut k = 1;
        while !self.0.insert(name.clone()) {
            name = format!("{stem}_{k}{ext}");
            k += 1;
        }
        name
    }
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

fn run(cfg: &Config) -> anyhow::Result<()> {
    let inputs = collect_inputs(&cfg.inputs)?;
    if inputs.is_empty() {
        bail!(
            "no image (.jpg/.jpeg/.png) or video (.mp4/.avi/.mov/.mkv/.webm) in {:?}",
            cfg.inputs
        );
    }
    if inputs.iter().any(|p| is_video(p)) {
        aue_predict::decode::check_programs()?;
    }
    let predictor = Predictor::new(&cfg.predictor)?;
    for dir in [&cfg.overlay_dir, &cfg.plot_dir].into_iter().flatten() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let labels = predictor.info().labels().to_vec();
    let mut writer = RowWriter::create(&cfg.out, cfg.format, &labels)?;
    let bar = ProgressBar::new(inputs.len() as u64).with_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} inputs [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut totals = Totals::default();
    let (mut overlay_names, mut plot_names) = (Names::default(), Names::default());
    let started = Instant::now();
    for path in &inputs {
        if is_video(path) {
            run_video(
                cfg,
                &predictor,
                path,
                &mut writer,
                &bar,
                &mut totals,
                &mut overlay_names,
                &mut plot_names,
            )?;
        } else {
            run_image(cfg, &predictor, path, &mut writer, &mut totals, &mut overlay_names)?;
        }
        bar.set_message(format!("{} faces", totals.faces));
        bar.inc(1);
    }
    bar.finish_and_clear();
    writer.finish()?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{} inputs ({} read, {} errors), {} faces -> {}",
        inputs.len(),
        totals.read,
        totals.errors,
        totals.faces,
        cfg.out.display()
    );
    if totals.frames > 0 {
        eprintln!(
            "{} video frames in {secs:.1} s in all: {:.2} frames/s",
            totals.frames,
            totals.frames as f64 / secs.max(1e-9)
        );
    }
    if totals.read == 0 {
        let why = totals.first_error.map(|e| format!(": {e}")).unwrap_or_default();
        bail!("none of the {} inputs could be read{why}", inputs.len());
    }
    Ok(())
}

fn run_image(
    cfg: &Config,
    predictor: &Predictor,
    path: &Path,
    writer: &mut RowWriter,
    totals: &mut Totals,
    names: &mut Names,
) -> anyhow::Result<()> {
    let result = predictor.predict_image(path);
    if result.image.is_some() {
        totals.read += 1;
    }
    for row in &result.rows {
        count(totals, &row.status);
        writer.write(row)?;
    }
    if let (Some(dir), Some(img)) = (&cfg.overlay_dir, &result.image) {
        let out = dir.join(names.unique(&stem(path), ".png"));
        save_png(&overlay(img, &result.faces, &result.rows), &out, true)?;
    }
    Ok(())
}

fn count(totals: &mut Totals, status: &Status) {
    match status {
        Status::Ok => totals.faces += 1,
        Status::Error(e) => {
            totals.errors += 1;
            totals.first_error.get_or_insert_with(|| e.clone());
        }
        Status::NoFace => {}
    }
}

#[allow(clippy::too_many_arguments)]
fn run_video(
    cfg: &Config,
    predictor: &Predictor,
    path: &Path,
    writer: &mut RowWriter,
    bar: &ProgressBar,
    totals: &mut Totals,
    overlay_names: &mut Names,
    plot_names: &mut Names,
) -> anyhow::Result<()> {
    let name = stem(path);
    let frames_dir = match &cfg.overlay_dir {
        Some(dir) => {
            let d = dir.join(overlay_names.unique(&name, ""));
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
            Some(d)
        }
        None => None,
    };
    let mut saver = frames_dir.as_ref().map(|_| OverlaySaver::new());
    let mut plots = Recorder::default();
    let file = path.display().to_string();
    let summary =
        predictor.predict_video(path, &cfg.video, |info, frame| -> anyhow::Result<()> {
            for row in &frame.rows {
                count(totals, &row.status);
                writer.write(row)?;
                plots.add(row);
            }
            let of = info.frames.map(|n| format!("/{n}")).unwrap_or_default();
            bar.set_message(format!("{file}: frame {}{of}", frame.index + 1));
            if let (Some(dir), Some(saver)) = (&frames_dir, &mut saver) {
                let out = dir.join(format!("frame_{:06}.png", frame.index));
                saver.save(frame, out)?;
            }
            Ok(())
        })?;
    if let Some(saver) = &mut saver {
        saver.finish()?;
    }
    totals.frames += summary.frames;
    if summary.frames > 0 {
        totals.read += 1;
    }
    if let Some(e) = &summary.error {
        let msg = e.to_string();
        bar.suspend(|| eprintln!("warning: {msg}"));
        let row = aue_predict::Row::status(&file, Status::Error(msg));
        count(totals, &row.status);
        writer.write(&row)?;
    }
    if let Some(dir) = &cfg.plot_dir {
        let stem = plot_names.unique(&name, "");
        plots.write(dir, &stem, &file, predictor.info().labels())?;
    }
    if summary.frames == 0 && summary.error.is_some() {
        return Ok(());
    }
    bar.suspend(|| {
        eprintln!(
            "{file}: {} frames run{} in {:.1} s ({:.2} frames/s); {} faces in {} track{}",
            summary.frames,
            summary.decoded.map(|d| format!(" (of {d} decoded)")).unwrap_or_default(),
            summary.elapsed.as_secs_f64(),
            summary.frames_per_second(),
            summary.faces,
            summary.tracks,
            if summary.tracks == 1 { "" } else { "s" }
        )
    });
    Ok(())
}

/// Draws and writes a video's overlay frames on a thread of its own, so that drawing and PNG
/// encoding overlap with the model instead of adding to each frame's time.
struct OverlaySaver {
    tx: Option<mpsc::SyncSender<(VideoFrame, PathBuf)>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl OverlaySaver {
    fn new() -> OverlaySaver {
        let (tx, rx) = mpsc::sync_channel::<(VideoFrame, PathBuf)>(4);
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            for (frame, path) in rx {
                // Frames are many and can be redone: atomic, but not fsynced one by one.
                save_png(&overlay(&frame.image, &frame.faces, &frame.rows), &path, false)?;
            }
            Ok(())
        });
        OverlaySaver { tx: Some(tx), thread: Some(thread) }
    }

    fn save(&mut self, frame: VideoFrame, path: PathBuf) -> anyhow::Result<()> {
        if let Some(tx) = &self.tx
            && tx.send((frame, path)).is_ok()
        {
            return Ok(());
        }
        // The thread has stopped, so it met an error: report it.
        self.finish()?;
        bail!("the overlay writer stopped")
    }

    /// Waits for the frames in flight; the first error of the thread, if any.
    fn finish(&mut self) -> anyhow::Result<()> {
        self.tx = None;
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow::anyhow!("the overlay writer panicked"))?,
            None => Ok(()),
        }
    }
}

/// Writes a PNG atomically (temp file in the same folder, rename), fsynced first if `sync`.
fn save_png(img: &image::RgbImage, path: &std::path::Path, sync: bool) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".aue-predict-")
        .suffix(".png")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    let mut w = std::io::BufWriter::new(tmp.as_file_mut());
    img.write_to(&mut w, image::ImageFormat::Png)
        .with_context(|| format!("cannot encode {}", path.display()))?;
    // A BufWriter dropped with bytes in it loses its write error: flush explicitly.
    std::io::Write::flush(&mut w).with_context(|| format!("cannot write {}", path.display()))?;
    drop(w);
    if sync {
        tmp.as_file().sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    }
    tmp.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

aue_cli::global_allocator!();

fn main() -> ExitCode {
    aue_cli::main("warn", || run(&Config::from_args(Args::parse())?))
}
