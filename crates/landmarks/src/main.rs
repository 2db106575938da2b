//! `aue-landmarks`: writes the 68-point landmark files the aue loader reads (docs/METHOD.md
//! section 5), measures landmark accuracy against known points, and draws overlays.
//!
//! ```text
//! aue-landmarks --dataset rafdb|rafdb-compound|sfew --root DIR [--overwrite] [--box dataset|detect|matched]
//! aue-landmarks --images DIR --out DIR
//! aue-landmarks eval --root DIR [--split test] | --pts DIR   [--overlays DIR]
//! aue-landmarks eval --faces DIR [--all-detectors]
//! aue-landmarks overlay --out DIR IMAGE...
//! (every command: [--detector ssd+blazeface|ssd|ssd-whole|tiny|mtcnn|blazeface|ssd+mtcnn|
//! ssd+mtcnn+blazeface] [--device cpu|cuda|cuda:N]
//! [--net full|tiny])
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use aue_core::layout;
use aue_landmarks::dataset::{self, BoxSource, DatasetKind, RunOptions};
use aue_landmarks::device::{self, DeviceSpec};
use aue_landmarks::eval::{self, EvalOptions, Sample, Summary};
use aue_landmarks::{
    DetectorKind, DetectorOptions, LandmarkNetKind, Landmarker, LandmarkerConfig, load_image,
    overlay, real,
};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(
    name = "aue-landmarks",
    version,
    about = "68-point facial landmarks for aue datasets (face-api nets on Candle)"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    write: WriteArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure landmark accuracy against known landmarks and print a table.
    Eval(EvalArgs),
    /// Detect faces and draw boxes and landmarks on images (PNG files in --out).
    Overlay(OverlayArgs),
}

#[derive(Args, Debug, Clone)]
struct NetArgs {
    /// Landmark net.
    #[arg(long, value_enum, default_value_t = NetChoice::Full)]
    net: NetChoice,
    /// Face detector: ssd+blazeface (SSD MobileNet v1 with tiles on photos over 768 px, plus the
    /// faces MediaPipe's BlazeFace finds that it misses, such as a grey face turned 60 degrees or
    /// one half covered by a hand; BlazeFace's boxes for the landmarks), ssd (the SSD part
    /// alone), ssd-whole (one SSD pass, faster on large photos), tiny (fastest, misses large,
    /// turned and grey faces), mtcnn or blazeface (alone: miss faces filling the frame, resp.
    /// small faces of large photos), ssd+mtcnn or ssd+mtcnn+blazeface (MTCNN's faces added too;
    /// about twice the time, no face more on the photos measured).
    #[arg(long, default_value = DetectorKind::default().name(), value_parser = parse_detector)]
    detector: DetectorKind,
    /// Tiny detector input side (multiple of 32; the SSD detector always reads 512 x 512).
    #[arg(long, default_value_t = 416)]
    input_size: usize,
    /// Minimum detector score of a face (SSD and tiny detectors; MTCNN keeps its own thresholds,
    /// 0.6 / 0.7 / 0.7, and BlazeFace MediaPipe's, 0.5).
    #[arg(long, default_value_t = 0.5)]
    min_score: f32,
    /// Keep detections whose landmarks disagree with those of the mirrored crop (by default they
    /// are dropped as not faces: a cat's face, a cap badge).
    #[arg(long)]
    no_flip_check: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Where the nets run: cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: DeviceSpec,
}

fn parse_detector(s: &str) -> Result<DetectorKind, String> {
    s.parse().map_err(|e: aue_landmarks::LandmarkError| e.to_string())
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse()
}

fn parse_dataset(s: &str) -> Result<DatasetKind, String> {
    s.parse().map_err(|e: aue_data::DataError| e.to_string())
}

#[derive(Args, Debug)]
struct WriteArgs {
    /// Dataset layout under --root.
    #[arg(long, value_parser = parse_dataset, requires = "root", conflicts_with = "images")]
    dataset: Option<DatasetKind>,
    /// Dataset root folder (holding basic/ or compound/ for RAF-DB, Train/ and Val/ for SFEW).
    #[arg(long)]
    root: Option<PathBuf>,
    /// A folder of .jpg/.png images: writes <stem>.txt (image pixels) into --out.
    #[arg(long, requires = "out")]
    images: Option<PathBuf>,
    /// Output folder for --images.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rewrite landmark files that already exist (default: keep them and resume).
    #[arg(long)]
    overwrite: bool,
    /// Box the landmark net sees where the dataset has boxes (RAF-DB).
    #[arg(long = "box", value_enum, default_value_t = BoxChoice::Dataset)]
    box_source: BoxChoice,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// RAF-DB-layout dataset with known landmarks (e.g. the synthetic set).
    #[arg(long, conflicts_with_all = ["pts", "faces"])]
    root: Option<PathBuf>,
    /// Folder of real photos with hand-checked face boxes (<stem>.faces, optional <stem>.pts),
    /// such as tests/fixtures/real: faces found, false positives, NME of both landmark nets and
    /// time per image (set RAYON_NUM_THREADS=1 for one thread).
    #[arg(long, conflicts_with = "pts")]
    faces: Option<PathBuf>,
    /// With --faces: one row per detector (every --detector choice) instead of --detector's only.
    #[arg(long, requires = "faces")]
    all_detectors: bool,
    /// Folder of image + iBUG .pts pairs instead (boxes = the points' extent).
    #[arg(long)]
    pts: Option<PathBuf>,
    /// Split of --root: train, test or all.
    #[arg(long, default_value = "test")]
    split: String,
    /// Folder under basic/Annotation/ holding the true landmarks.
    #[arg(long, default_value = dataset::RAFDB_LANDMARK_DIR)]
    truth_dir: String,
    /// Instead of running the nets, score the landmark files in basic/Annotation/<NAME>/ (any
    /// landmark tool's output in the RAF-DB layout).
    #[arg(long, requires = "root")]
    pred_dir: Option<String>,
    /// Evaluate at most this many images.
    #[arg(long, default_value_t = usize::MAX)]
    limit: usize,
    /// Model input side S for the AU-centre error (grid G = S / 4).
    #[arg(long, default_value_t = 224)]
    input_side: u32,
    /// Also draw the first few predictions (and truth) as PNG files into this folder.
    #[arg(long)]
    overlays: Option<PathBuf>,
    /// How many overlays to draw.
    #[arg(long, default_value_t = 8)]
    overlay_count: usize,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Args, Debug)]
struct OverlayArgs {
    /// Output folder for <stem>.png overlays.
    #[arg(long)]
    out: PathBuf,
    /// Images to draw on.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum NetChoice {
    Full,
    Tiny,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum BoxChoice {
    Dataset,
    Detect,
    Matched,
}

/// Where the landmark files of a write run go.
#[derive(Debug)]
enum Target {
    Dataset { kind: DatasetKind, root: PathBuf },
    Folder { images: PathBuf, out: PathBuf },
}

/// The checked configuration of a write run.
#[derive(Debug)]
struct WriteConfig {
    target: Target,
    landmarker: LandmarkerConfig,
    device: DeviceSpec,
    run: RunOptions,
}

fn landmarker_config(a: &NetArgs) -> anyhow::Result<LandmarkerConfig> {
    let cfg = LandmarkerConfig {
        net: match a.net {
            NetChoice::Full => LandmarkNetKind::Full,
            NetChoice::Tiny => LandmarkNetKind::Tiny,
        },
        detector: DetectorOptions {
            kind: a.detector,
            input_size: a.input_size,
            score_threshold: a.min_score,
            flip_check: !a.no_flip_check,
        },
    };
    cfg.detector.check()?;
    if a.batch == 0 {
        bail!("--batch must be positive");
    }
    Ok(cfg)
}

fn write_config(a: &WriteArgs) -> anyhow::Result<WriteConfig> {
    let target = match (&a.dataset, &a.images) {
        (Some(d), None) => {
            let root = a.root.clone().context("--dataset needs --root")?;
            if !root.is_dir() {
                bail!("--root {} is not a folder", root.display());
            }
            Target::Dataset { kind: *d, root }
        }
        (None, Some(images)) => {
            if !images.is_dir() {
                bail!("--images {} is not a folder", images.display());
            }
            let out = a.out.clone().context("--images needs --out")?;
            Target::Folder { images: images.clone(), out }
        }
        _ => bail!(
            "give --dataset and --root, or --images and --out (or a subcommand: eval, overlay; see --help)"
        ),
    };
    Ok(WriteConfig {
        target,
        landmarker: landmarker_config(&a.net)?,
        device: a.net.device,
        run: RunOptions {
            overwrite: a.overwrite,
            batch: a.net.batch,
            box_source: match a.box_source {
                BoxChoice::Dataset => BoxSource::Dataset,
                BoxChoice::Detect => BoxSource::Detect,
                BoxChoice::Matched => BoxSource::Matched,
            },
        },
    })
}

fn progress_bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

fn run_write(cfg: &WriteConfig) -> anyhow::Result<()> {
    let (jobs, report_dir) = match &cfg.target {
        Target::Dataset { kind: DatasetKind::Sfew, root } => {
            (dataset::sfew_jobs(root)?, root.clone())
        }
        Target::Dataset { kind, root } => {
            let sub =
                if *kind == DatasetKind::Rafdb { layout::RAF_BASIC } else { layout::RAF_COMPOUND };
            (dataset::rafdb_jobs(root, *kind)?, root.join(sub))
        }
        Target::Folder { images, out } => (dataset::folder_jobs(images, out)?, out.clone()),
    };
    let lm = Landmarker::on_device(&cfg.landmarker, &device::open(cfg.device)?)?;
    let bar = progress_bar(jobs.len(), "landmarks");
    let start = Instant::now();
    let summary = dataset::run_jobs(&lm, &jobs, &cfg.run, &|n| bar.inc(n))?;
    bar.finish();
    let secs = start.elapsed().as_secs_f64();
    let (nf, failed) = dataset::write_reports(&report_dir, &summary)?;
    println!(
        "{} images: {} written, {} kept (already there), {} faces not found, {} failed; {:.1} s ({:.1} images/s written)",
        jobs.len(),
        summary.written,
        summary.kept,
        summary.not_found.len(),
        summary.failed.len(),
        secs,
        summary.written as f64 / secs.max(1e-9)
    );
    println!("not found: {}\nfailed:    {}", nf.display(), failed.display());
    for (p, e) in summary.failed.iter().take(5) {
        println!("  failed {}: {e}", p.display());
    }
    Ok(())
}

fn print_table(rows: &[Summary], title: &str) {
    println!("{title}");
    println!(
        "| {:<13} | {:>6} | {:>6} | {:>8} | {:>10} | {:>9} | {:>18} | {:>9} | {:>10} |",
        "landmarks",
        "images",
        "missed",
        "NME mean",
        "NME median",
        "NME>0.10",
        "AU centre err (cells)",
        "cell exact",
        "cell <=1"
    );
    println!(
        "|{}|",
        [
            "---------------",
            "--------",
            "--------",
            "----------",
            "------------",
            "-----------",
            "--------------------",
            "-----------",
            "------------"
        ]
        .join("|")
    );
    for r in rows {
        println!(
            "| {:<13} | {:>6} | {:>6} | {:>8.4} | {:>10.4} | {:>8.1}% | {:>18.3} | {:>8.1}% | {:>9.1}% |",
            r.label,
            r.images,
            r.missed,
            r.nme_mean,
            r.nme_median,
            100.0 * r.failure_rate,
            r.centre_mean,
            100.0 * r.cell_exact,
            100.0 * r.cell_within1
        );
    }
    println!("\nper-AU centre error (cells, mean of its two centres):");
    print!("| {:<13} |", "landmarks");
    for n in aue_core::AU_NAMES {
        print!(" {n:>4} |");
    }
    println!();
    for r in rows {
        print!("| {:<13} |", r.label);
        for v in r.per_au {
            print!(" {v:>4.2} |");
        }
        println!();
    }
}

/// The CPU's name (Linux), for timing tables.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn run_eval_faces(a: &EvalArgs, dir: &Path) -> anyhow::Result<()> {
    let base = landmarker_config(&a.net)?;
    let device = device::open(a.net.device)?;
    let set = real::read_set(dir)?;
    let kinds = if a.all_detectors { DetectorKind::ALL.to_vec() } else { vec![base.detector.kind] };
    let expected: usize = set.iter().map(|s| s.faces.len()).sum();
    let annotated = set.iter().filter(|s| s.truth.is_some()).count();
    let nets = [LandmarkNetKind::Full, LandmarkNetKind::Tiny];
    let mut rows = Vec::new();
    for kind in kinds {
        let cfg =
            |net| LandmarkerConfig { net, detector: DetectorOptions { kind, ..base.detector } };
        let lms = nets
            .iter()
            .map(|&n| Landmarker::on_device(&cfg(n), &device))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&Landmarker> = lms.iter().collect();
        let bar = progress_bar(set.len(), kind.name());
        let out = real::evaluate(&refs, &set, &|n| bar.inc(n))?;
        bar.finish_and_clear();
        rows.push((kind, out));
    }
    println!(
        "real photos in {}: {} images, {expected} faces ({annotated} with 68-point annotations); \
         detector min score {}; {} thread(s), device {}, {}",
        dir.display(),
        set.len(),
        base.detector.score_threshold,
        rayon::current_num_threads(),
        a.net.device,
        cpu_name()
    );
    println!(
        "\n| detector | faces expected | found | false positives | NME face_landmark_68 | NME face_landmark_68_tiny | ms / image | CPU ms / image |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let fmt_ms = |v: Option<f64>| v.map_or("-".to_string(), |t| format!("{t:.0}"));
    let mean_nme = |out: &[real::ImageOutcome], k: usize| {
        let v: Vec<f32> = out.iter().filter_map(|o| o.nme[k]).collect();
        if v.is_empty() {
            "-".to_string()
        } else {
            format!("{:.4} ({} of {annotated})", v.iter().sum::<f32>() / v.len() as f32, v.len())
        }
    };
    for (kind, out) in &rows {
        let found: usize = out.iter().map(|o| o.found).sum();
        let fp: usize = out.iter().map(|o| o.false_positives).sum();
        let ms = out.iter().map(|o| o.ms).sum::<f64>() / out.len() as f64;
        println!(
            "| {} | {expected} | {found} | {fp} | {} | {} | {ms:.0} | {} |",
            kind.name(),
            mean_nme(out, 0),
            mean_nme(out, 1),
            fmt_ms(out.iter().map(|o| o.cpu_ms).sum::<Option<f64>>().map(|t| t / out.len() as f64))
        );
    }
    let fmt_nme = |v: Option<f32>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
    for (kind, out) in &rows {
        println!("\nper image, detector {}:\n", kind.name());
        println!(
            "| image | faces | found | false positives | NME 68 | NME 68 tiny | ms | CPU ms |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for o in out {
            println!(
                "| {} | {} | {} | {} | {} | {} | {:.0} | {} |",
                o.image.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                o.expected,
                o.found,
                o.false_positives,
                fmt_nme(o.nme[0]),
                fmt_nme(o.nme[1]),
                o.ms,
                fmt_ms(o.cpu_ms)
            );
        }
    }
    Ok(())
}

fn run_eval(a: &EvalArgs) -> anyhow::Result<()> {
    if let Some(dir) = &a.faces {
        return run_eval_faces(a, dir);
    }
    let cfg = landmarker_config(&a.net)?;
    if a.input_side == 0 || !a.input_side.is_multiple_of(32) {
        bail!("--input-side must be a positive multiple of 32, got {}", a.input_side);
    }
    let (samples, factor, source): (Vec<Sample>, f32, String) = match (&a.root, &a.pts) {
        (Some(root), None) => {
            if !["train", "test", "all"].contains(&a.split.as_str()) {
                bail!("--split must be train, test or all, got {:?}", a.split);
            }
            (
                eval::rafdb_samples(root, &a.truth_dir, &a.split, a.limit)?,
                0.15,
                format!("{} ({})", root.display(), a.split),
            )
        }
        (None, Some(dir)) => (eval::pts_samples(dir, a.limit)?, 0.20, dir.display().to_string()),
        _ => bail!("eval needs --root DIR, --pts DIR or --faces DIR"),
    };
    let opts = EvalOptions { factor, input_side: a.input_side, batch: a.net.batch };
    if let Some(dir) = &a.pred_dir {
        let preds = eval::read_predictions(&samples, dir)?;
        let row = eval::evaluate_files(&samples, &preds, dir, &opts)?;
        print_table(
            &[row],
            &format!(
                "landmark files {dir} against {} on {source}, S = {}",
                a.truth_dir, a.input_side
            ),
        );
        return Ok(());
    }
    let lm = Landmarker::on_device(&cfg, &device::open(a.net.device)?)?;
    let bar = progress_bar(samples.len(), "eval");
    let start = Instant::now();
    let preds = eval::predict(&lm, &samples, a.net.batch, &|n| bar.inc(n))?;
    bar.finish();
    let secs = start.elapsed().as_secs_f64();
    let rows = eval::evaluate(&samples, &preds, &opts)?;
    print_table(
        &rows,
        &format!(
            "landmark accuracy on {source}: net {:?}, S = {} (grid {}), box factor {factor}",
            cfg.net,
            a.input_side,
            a.input_side / 4
        ),
    );
    println!(
        "\n{} images in {secs:.1} s: {:.1} images/s (decode + detect + 2 landmark passes, batch {})",
        samples.len(),
        samples.len() as f64 / secs.max(1e-9),
        a.net.batch
    );
    if let Some(dir) = &a.overlays {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (s, p) in samples.iter().zip(&preds).take(a.overlay_count) {
            let img = load_image(&s.image)?;
            let mut faces = vec![(s.face, p.with_box)];
            faces.extend(p.detected.iter().copied());
            let out = dir.join(format!("{}.png", stem(&s.image)));
            overlay::draw(&img, &faces, Some(&s.truth))
                .save(&out)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        println!("overlays in {}", dir.display());
    }
    Ok(())
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into())
}

fn run_overlay(a: &OverlayArgs) -> anyhow::Result<()> {
    let lm = Landmarker::on_device(&landmarker_config(&a.net)?, &device::open(a.net.device)?)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    for path in &a.images {
        let img = load_image(path)?;
        let start = Instant::now();
        let boxes = lm.detect_faces(&img)?;
        let pts = lm.landmarks_batch(&boxes.iter().map(|b| (&img, *b)).collect::<Vec<_>>())?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let faces: Vec<_> = boxes.into_iter().zip(pts).collect();
        let out = a.out.join(format!("{}.png", stem(path)));
        overlay::draw(&img, &faces, None)
            .save(&out)
            .with_context(|| format!("writing {}", out.display()))?;
        println!("{}: {} faces ({ms:.0} ms) -> {}", path.display(), faces.len(), out.display());
        for (b, _) in &faces {
            println!(
                "  box ({:.1}, {:.1}, {:.1}, {:.1}) score {:.3}",
                b.x1, b.y1, b.x2, b.y2, b.score
            );
        }
    }
    Ok(())
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Some(Command::Eval(a)) => run_eval(a),
        Some(Command::Overlay(a)) => run_overlay(a),
        None => run_write(&write_config(&cli.write)?),
    }
}

aue_cli::global_allocator!();

fn main() -> ExitCode {
    aue_cli::main("warn", || run(&Cli::parse()))
}
