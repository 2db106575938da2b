//! `aue-loader-bench`: images per second of the batch loader (decode, crop, augment, resize,
//! normalise) on generated 400 x 400 JPEG faces, for several thread counts. Prints a table.
//!
//! The consumer does nothing with the batches, so the numbers are the loader's ceiling; in
//! training the consumer's own work competes for the same cores.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use aue_data::{Augment, Dataset, DatasetKind, DatasetOptions, Loader, LoaderOptions, Split};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(version, about = "Throughput of the aue-data loader on generated JPEG faces")]
struct Args {
    /// Number of generated images.
    #[arg(long, default_value_t = 512)]
    images: usize,
    /// Side of the generated square JPEGs, in pixels.
    #[arg(long, default_value_t = 400)]
    source_side: u32,
    /// JPEG quality of the generated images.
    #[arg(long, default_value_t = 90)]
    quality: u8,
    /// Network input side S.
    #[arg(long, default_value_t = 224)]
    size: u32,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Thread counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Epochs timed per configuration (after one warm-up epoch).
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Times each configuration is measured; the table shows the median and the best (the
    /// machine's other load only ever slows a run down).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Measure an existing RAF-DB-basic layout (train split) instead of generated images.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Keep the generated images here instead of a temporary folder.
    #[arg(long)]
    keep: Option<PathBuf>,
}

/// The checked configuration.
#[derive(Debug)]
struct Config {
    images: usize,
    source_side: u32,
    quality: u8,
    size: u32,
    batch: usize,
    threads: Vec<usize>,
    epochs: usize,
    repeats: usize,
    root: Option<PathBuf>,
    keep: Option<PathBuf>,
}

impl Config {
    fn from_args(a: Args) -> anyhow::Result<Config> {
        if a.images < a.batch || a.batch == 0 {
            bail!(
                "--images ({}) must be at least --batch ({}), which must be > 0",
                a.images,
                a.batch
            );
        }
        if a.source_side < 64 {
            bail!("--source-side must be at least 64");
        }
        if !(1..=100).contains(&a.quality) {
            bail!("--quality must be in 1..=100");
        }
        if a.threads.is_empty() || a.threads.contains(&0) {
            bail!("--threads must list counts > 0");
        }
        if a.epochs == 0 || a.repeats == 0 {
            bail!("--epochs and --repeats must be > 0");
        }
        if let Some(root) = &a.root
            && !root.is_dir()
        {
            bail!("--root {} is not a folder", root.display());
        }
        Ok(Config {
            images: a.images,
            source_side: a.source_side,
            quality: a.quality,
            size: a.size,
            batch: a.batch,
            threads: a.threads,
            epochs: a.epochs,
            repeats: a.repeats,
            root: a.root,
            keep: a.keep,
        })
    }
}

aue_cli::global_allocator!();

fn main() -> std::process::ExitCode {
    aue_cli::main("warn", || run(&Config::from_args(Args::parse())?))
}

fn run(cfg: &Config) -> anyhow::Result<()> {
    let temp;
    let root: &Path = match (&cfg.root, &cfg.keep) {
        (Some(root), _) => root,
        (None, Some(dir)) => {
            generate(dir, cfg)?;
            dir
        }
        (None, None) => {
            temp = tempfile::tempdir().context("creating a temporary folder")?;
            generate(temp.path(), cfg)?;
            temp.path()
        }
    };
    let options = DatasetOptions { input_size: cfg.size, ..DatasetOptions::default() };
    let dataset = Dataset::open(DatasetKind::Rafdb, root, Split::Train, &options)
        .with_context(|| format!("opening {}", root.display()))?;

    match &cfg.root {
        Some(r) => println!(
            "aue-loader-bench: {} images of {}, S = {}, batch {}, {} timed epoch(s), {} repeats",
            dataset.len(),
            r.display(),
            cfg.size,
            cfg.batch,
            cfg.epochs,
            cfg.repeats
        ),
        None => println!(
            "aue-loader-bench: {} JPEGs {s}x{s} (quality {}), S = {}, batch {}, {} timed \
             epoch(s), {} repeats",
            cfg.images,
            cfg.quality,
            cfg.size,
            cfg.batch,
            cfg.epochs,
            cfg.repeats,
            s = cfg.source_side
        ),
    }
    println!(
        "{:<6} {:>8} {:>8} {:>16} {:>14}",
        "mode", "threads", "images", "median images/s", "best images/s"
    );
    for &threads in &cfg.threads {
        for (mode, base) in [
            ("train", LoaderOptions::train(cfg.batch, 0)),
            ("eval", LoaderOptions::eval(cfg.batch)),
        ] {
            let loader = Loader::new(&dataset, LoaderOptions { threads, ..base })?;
            drain(&loader, 0)?; // warm-up: page cache, thread start, allocator
            let mut rates = Vec::with_capacity(cfg.repeats);
            let mut images = 0;
            for r in 0..cfg.repeats {
                let start = Instant::now();
                images = 0;
                for e in 1..=cfg.epochs {
                    images += drain(&loader, r * cfg.epochs + e)?;
                }
                rates.push(images as f64 / start.elapsed().as_secs_f64());
            }
            rates.sort_by(f64::total_cmp);
            let median = rates[rates.len() / 2];
            let best = rates[rates.len() - 1];
            println!("{mode:<6} {threads:>8} {images:>8} {median:>16.1} {best:>14.1}");
        }
    }

    // Where the time goes, one thread, one image at a time.
    let n = dataset.len().min(128);
    let start = Instant::now();
    for i in 0..n {
        aue_data::preprocess::decode_rgb(&dataset.samples()[i].image)?;
    }
    let decode = start.elapsed().as_secs_f64() / n as f64;
    let start = Instant::now();
    for i in 0..n {
        dataset.prepare(i, &Augment::NONE)?;
    }
    let full = start.elapsed().as_secs_f64() / n as f64;
    println!(
        "per image, 1 thread: decode {:.3} ms, decode + crop + resize + normalise {:.3} ms",
        decode * 1e3,
        full * 1e3
    );
    Ok(())
}

/// Runs one epoch, dropping the batches; returns the number of images.
fn drain(loader: &Loader, epoch: usize) -> anyhow::Result<usize> {
    let mut images = 0;
    for batch in loader.epoch(epoch) {
        images += batch?.len();
    }
    Ok(images)
}

/// Writes a RAF-DB basic layout of `cfg.images` JPEG faces under `root`.
fn generate(root: &Path, cfg: &Config) -> anyhow::Result<()> {
    let base = root.join("basic");
    for dir in ["Image/original", "Annotation/boundingbox", "Annotation/Landmarks_68_FAN_bbox"] {
        std::fs::create_dir_all(base.join(dir)).with_context(|| format!("creating {dir}"))?;
    }
    let bar = ProgressBar::new(cfg.images as u64).with_style(
        ProgressStyle::with_template("generating {bar:40} {pos}/{len} {elapsed}")
            .context("progress bar template")?,
    );
    let side = cfg.source_side;
    let mut list = String::new();
    for i in 0..cfg.images {
        let name = format!("train_{:05}", i + 1);
        list.push_str(&format!("{name}.jpg {}\n", i % 7 + 1));
        let img = face_image(side, i as u32);
        let path = base.join(format!("Image/original/{name}.jpg"));
        let file = std::fs::File::create(&path).with_context(|| format!("{}", path.display()))?;
        let mut writer = std::io::BufWriter::new(file);
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut writer, cfg.quality)
            .encode_image(&img)
            .with_context(|| format!("encoding {}", path.display()))?;
        // A face box around the middle, a little different per image.
        let s = f64::from(side);
        let jitter = f64::from(i as u32 % 9) - 4.0;
        let (x1, y1) = (0.25 * s + jitter, 0.22 * s - jitter);
        let (w, h) = (0.5 * s, 0.55 * s);
        std::fs::write(
            base.join(format!("Annotation/boundingbox/{name}.txt")),
            format!("{x1} {y1} {} {}\n", x1 + w, y1 + h),
        )?;
        let mut lm = String::new();
        for k in 0..68 {
            let (col, row) = (f64::from(k % 17), f64::from(k / 17));
            lm.push_str(&format!(
                "{} {}\n",
                0.1 * w + col / 16.0 * 0.8 * w,
                0.1 * h + row / 3.0 * 0.8 * h
            ));
        }
        std::fs::write(base.join(format!("Annotation/Landmarks_68_FAN_bbox/{name}.txt")), lm)?;
        bar.inc(1);
    }
    std::fs::create_dir_all(base.join("EmoLabel"))?;
    std::fs::write(base.join("EmoLabel/list_patition_label.txt"), list)?;
    bar.finish_and_clear();
    Ok(())
}

/// A photo-like test image: smooth shading, an oval "face", some texture.
fn face_image(side: u32, seed: u32) -> image::RgbImage {
    let c = side as f32 / 2.0;
    image::RgbImage::from_fn(side, side, |x, y| {
        let (fx, fy) = (x as f32 - c, y as f32 - c);
        let inside =
            (fx / (0.28 * side as f32)).powi(2) + (fy / (0.36 * side as f32)).powi(2) < 1.0;
        // Cheap hash noise, so the JPEG has realistic detail to code.
        let h = (x.wrapping_mul(73_856_093)
            ^ y.wrapping_mul(19_349_663)
            ^ seed.wrapping_mul(83_492_791))
            % 23;
        let n = h as f32 - 11.0;
        let (r, g, b) = if inside {
            (200.0 + 0.1 * fy + n, 160.0 + 0.08 * fx + n, 140.0 + n)
        } else {
            (60.0 + 0.3 * x as f32 * 255.0 / side as f32 + n, 90.0 + n, 120.0 + 0.2 * fy + n)
        };
        image::Rgb([
            r.clamp(0.0, 255.0) as u8,
            g.clamp(0.0, 255.0) as u8,
            b.clamp(0.0, 255.0) as u8,
        ])
    })
}
