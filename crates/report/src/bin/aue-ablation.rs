//! `aue-ablation`: trains the ablation grid of docs/ABLATION.md (stage 1 alone against stages
//! 1 -> 2 -> 3 on synthetic sets that vary one thing at a time, over several seeds) by running
//! `aue-synth`, `aue-stage1`, `aue-stage2` and `aue-stage3` (found beside this binary), then
//! writes the grid's report (`aue-report --ablation DIR` rewrites it from the run files).
//!
//! ```text
//! aue-ablation [--quick | --grid FILE] [--seeds 3,4,5] [--out checkpoints/ablation] [--dry-run]
//! ```
//! A rerun skips the steps whose done marker exists, so a killed grid continues where it
//! stopped; `--seeds` with new seeds adds runs beside the old ones (the report covers the seeds
//! of the last invocation).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use aue_report::ablation::{GridResults, write_ablation};
use aue_report::document;
use aue_report::grid::{GRID_FILE, GridConfig, GridPaths, Step, plan};
use clap::Parser;

/// Train the ablation grid (stage 1 alone against stages 1 -> 2 -> 3) and report it.
#[derive(Debug, Parser)]
#[command(name = "aue-ablation", version)]
struct Args {
    /// The smoke-run grid (crates/report/ablation/quick.toml): minutes, numbers meaningless.
    #[arg(long, conflicts_with = "grid")]
    quick: bool,
    /// A grid file [default: crates/report/ablation/default.toml, built in].
    #[arg(long, value_name = "FILE")]
    grid: Option<PathBuf>,
    /// Replace the grid's seeds (an independent rerun: `--seeds 3,4,5`).
    #[arg(long, value_delimiter = ',', value_name = "SEEDS")]
    seeds: Option<Vec<u64>>,
    /// Output folder: sets, runs, logs and the report.
    #[arg(long, value_name = "DIR", default_value = "checkpoints/ablation")]
    out: PathBuf,
    /// Print the commands and do nothing.
    #[arg(long)]
    dry_run: bool,
}

aue_cli::global_allocator!();

fn main() -> ExitCode {
    aue_cli::main("info", || run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut grid = match &args.grid {
        Some(path) => GridConfig::from_file(path)?,
        None => GridConfig::builtin(args.quick)?,
    };
    if let Some(seeds) = args.seeds {
        grid.seeds = seeds;
        grid.check().map_err(anyhow::Error::msg).context("--seeds")?;
    }
    let paths = GridPaths { root: args.out.clone() };
    let steps = plan(&grid, &paths);
    let bin_dir = std::env::current_exe()
        .context("locating this binary")?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if args.dry_run {
        for step in &steps {
            println!("{} {}", bin_dir.join(step.program.binary()).display(), step.args.join(" "));
        }
        return Ok(());
    }
    for step in &steps {
        let bin = bin_dir.join(step.program.binary());
        if !bin.is_file() {
            bail!(
                "{} is missing: build it first (cargo build --release -p aue-synth -p aue-stage1 \
                 -p aue-stage2 -p aue-stage3)",
                bin.display()
            );
        }
    }
    for dir in ["logs", "done"] {
        std::fs::create_dir_all(args.out.join(dir))
            .with_context(|| format!("creating {}", args.out.join(dir).display()))?;
    }
    let grid_file = args.out.join(GRID_FILE);
    std::fs::write(&grid_file, grid.to_toml())
        .with_context(|| format!("writing {}", grid_file.display()))?;
    let start = Instant::now();
    for (i, step) in steps.iter().enumerate() {
        let done = args.out.join("done").join(&step.id);
        if done.exists() {
            println!("[{}/{}] {}: done before", i + 1, steps.len(), step.id);
            continue;
        }
        let t = Instant::now();
        run_step(&bin_dir, step, &args.out.join("logs").join(format!("{}.log", step.id)))?;
        std::fs::write(&done, b"").with_context(|| format!("writing {}", done.display()))?;
        println!(
            "[{}/{}] {}: {:.0} s (total {:.1} min)",
            i + 1,
            steps.len(),
            step.id,
            t.elapsed().as_secs_f64(),
            start.elapsed().as_secs_f64() / 60.0
        );
    }
    let results = GridResults::load(&args.out)?;
    let report_dir = args.out.join("report");
    let doc = write_ablation(&results, &report_dir)?;
    print!("{}", document::to_text(&doc));
    println!("wrote {}", report_dir.join("ablation.md").display());
    Ok(())
}

/// Runs one step with its output in `log`; a failure names the step and the log.
fn run_step(bin_dir: &Path, step: &Step, log: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err_file = file.try_clone().with_context(|| format!("opening {}", log.display()))?;
    let status = Command::new(bin_dir.join(step.program.binary()))
        .args(&step.args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err_file)
        .status()
        .with_context(|| format!("starting {}", step.program.binary()))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("step {} failed ({status}); log {}:\n{}", step.id, log.display(), tail.join("\n"));
    }
    Ok(())
}
