//! `aue-synth`: writes a synthetic RAF-DB-basic-layout face set with ground-truth AUs.
//!
//! ```text
//! aue-synth --out data/synth --train 5000 --test 1000 --seed 0 [--size 160]
//!           [--difficulty easy|medium|hard] [--balance rafdb-sqrt|uniform] [--label-noise P]
//!           [--threads N]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use aue_core::EXPRESSIONS_BASIC;
use aue_synth::{ClassBalance, Difficulty, DifficultyLevel, SynthConfig, generate_with_progress};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

/// Generate synthetic faces with action units in the RAF-DB basic layout.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Root folder of the set (gets `basic/...` and `README.md`).
    #[arg(long)]
    out: PathBuf,
    /// Number of train images.
    #[arg(long)]
    train: usize,
    /// Number of test images.
    #[arg(long)]
    test: usize,
    /// Seed: the same seed gives byte-identical files whatever the thread count.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 160)]
    size: u32,
    /// How hard the set is: easy, medium or hard.
    #[arg(long, default_value_t = DifficultyLevel::Medium)]
    difficulty: DifficultyLevel,
    /// Class shares: rafdb-sqrt (RAF-DB's imbalance, softened) or uniform.
    #[arg(long, default_value = "rafdb-sqrt")]
    balance: ClassBalance,
    /// Extra label noise on the training split: each training label becomes another class with
    /// probability P (the AU files and basic/Annotation/true_label.txt keep the true expression;
    /// the test split keeps its labels).
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    label_noise: f32,
    /// JPEG quality, 1-100.
    #[arg(long, default_value_t = 90)]
    quality: u8,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

aue_cli::global_allocator!();

fn main() -> ExitCode {
    aue_cli::main("warn", || {
        let args = Args::parse();
        let cfg = SynthConfig {
            out: args.out,
            train: args.train,
            test: args.test,
            seed: args.seed,
            size: args.size,
            difficulty: Difficulty::preset(args.difficulty),
            balance: args.balance,
            train_label_noise: args.label_noise,
            jpeg_quality: args.quality,
            threads: args.threads,
            command_line: std::env::args().collect::<Vec<_>>().join(" "),
        };
        run(&cfg)
    })
}

fn run(cfg: &SynthConfig) -> anyhow::Result<()> {
    cfg.validate().context("checking the arguments")?;
    let bar = ProgressBar::new((cfg.train + cfg.test) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = std::time::Instant::now();
    let summary = generate_with_progress(cfg, &|k| bar.inc(k))
        .with_context(|| format!("generating the synthetic set in {}", cfg.out.display()))?;
    bar.finish_and_clear();
    println!(
        "wrote {} train + {} test images ({} px, {}) to {} in {:.1} s",
        summary.train.count,
        summary.test.count,
        cfg.size,
        cfg.difficulty.level,
        cfg.out.display(),
        start.elapsed().as_secs_f64()
    );
    for (c, name) in EXPRESSIONS_BASIC.iter().enumerate() {
        println!(
            "  {:<10} train {:>6}  test {:>6}",
            name, summary.train.per_label[c], summary.test.per_label[c]
        );
    }
    println!("labels: {}", summary.label_file.display());
    Ok(())
}
