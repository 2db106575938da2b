//! `aue-report`: prints the results of AUE-CRL runs beside the paper's (docs/METHOD.md sections 6
//! and 7) and writes them as `report.md`, `report.json` and SVG charts.
//! A thin shell: flags -> checked config -> `run`; the work is in the aue-report library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use aue_cli::DeviceSpec;
use aue_data::DatasetKind;
use aue_model::Stage;
use aue_report::ablation::{GridResults, blocks, write_ablation};
use aue_report::eval::{EvalOptions, evaluate_checkpoint};
use aue_report::output::write_report;
use aue_report::{
    Compare, Report, ReportOptions, StageRun, default_out_dir, document, expand_run_dirs,
};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

/// Report AUE-CRL runs: the paper's table with our rows, best (test-set selection) and last
/// epochs, per-class precision / recall / F1, the stage 1 vs stage 3 ablation, stage 2's AU
/// scores and the learned prior table. Reads only run files and checkpoint metadata.
#[derive(Debug, Parser)]
#[command(name = "aue-report", version)]
struct Args {
    /// A stage run folder (holding metrics.jsonl), or a folder holding stage1/stage2/stage3;
    /// repeat for several.
    #[arg(long = "run", value_name = "DIR", required_unless_present_any = ["checkpoints", "ablation"])]
    runs: Vec<PathBuf>,

    /// Report an ablation grid folder written by aue-ablation instead (docs/ABLATION.md):
    /// ablation.md, ablation.json and ablation-delta.svg go to --out [default: DIR/report].
    #[arg(long, value_name = "DIR", conflicts_with_all = ["runs", "checkpoints"])]
    ablation: Option<PathBuf>,

    /// Evaluate this stage checkpoint on the test split instead of reading metrics (loads the
    /// model); repeat for several. Its metadata gives the configuration and dataset.
    #[arg(long = "checkpoint", value_name = "FILE")]
    checkpoints: Vec<PathBuf>,

    /// With --checkpoint: the stage the checkpoints must come from (1, 2 or 3).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=3), requires = "checkpoints")]
    stage: Option<u8>,

    /// With --checkpoint: dataset root [default: the one in the checkpoint's configuration].
    #[arg(long, value_name = "DIR", requires = "checkpoints")]
    data_root: Option<PathBuf>,

    /// With --checkpoint: dataset kind [default: the checkpoint's]; its classes must be the
    /// checkpoint's.
    #[arg(long, value_parser = parse_dataset, requires = "checkpoints")]
    dataset: Option<DatasetKind>,

    /// With --checkpoint: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,

    /// With --checkpoint: test batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,

    /// With --checkpoint: image decoding threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,

    /// Output folder for report.md, report.json and the SVG charts [default: <first run's
    /// parent>/report; for a checkpoint, <its folder>/report].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// Published table to compare with: auto (from the runs' dataset; none for the synthetic
    /// set), rafdb, sfew or none.
    #[arg(long, default_value = "auto", value_parser = ["auto", "rafdb", "sfew", "none"])]
    compare: String,

    /// Print the report only; write no files.
    #[arg(long)]
    no_files: bool,
}

fn parse_dataset(s: &str) -> Result<DatasetKind, String> {
    s.parse().map_err(|e: aue_data::DataError| e.to_string())
}

/// Where the files go.
#[derive(Debug)]
enum Output {
    /// Print only (`--no-files`).
    Print,
    /// `<first run's parent>/report`.
    BesideRuns,
    /// `--out DIR`.
    Dir(PathBuf),
}

/// The checked configuration.
#[derive(Debug)]
struct Config {
    runs: Vec<PathBuf>,
    evaluations: Vec<EvalOptions>,
    out: Output,
    options: ReportOptions,
}

impl Config {
    fn resolve(args: Args) -> anyhow::Result<Self> {
        let compare: Compare = args.compare.parse().map_err(anyhow::Error::msg)?;
        let out = match (args.no_files, args.out) {
            (true, Some(_)) => anyhow::bail!("--no-files and --out contradict each other"),
            (true, None) => Output::Print,
            (false, None) => Output::BesideRuns,
            (false, Some(dir)) => Output::Dir(dir),
        };
        if args.batch_size == 0 {
            anyhow::bail!("--batch-size must be at least 1");
        }
        let expect_stage = args.stage.and_then(Stage::from_number);
        let evaluations = args
            .checkpoints
            .iter()
            .map(|checkpoint| EvalOptions {
                checkpoint: checkpoint.clone(),
                expect_stage,
                data_root: args.data_root.clone(),
                dataset: args.dataset,
                device: args.device,
                batch_size: args.batch_size,
                workers: args.workers,
            })
            .collect();
        Ok(Self { runs: args.runs, evaluations, out, options: ReportOptions { compare } })
    }
}

/// Evaluates one checkpoint with a progress bar.
fn evaluate(opts: &EvalOptions) -> anyhow::Result<StageRun> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} batches (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("evaluating {}", opts.checkpoint.display()));
    let result = evaluate_checkpoint(opts, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    result.with_context(|| format!("cannot evaluate {}", opts.checkpoint.display()))
}

fn run(cfg: &Config) -> anyhow::Result<()> {
    let dirs = expand_run_dirs(&cfg.runs).context("cannot build the report")?;
    let mut runs = dirs
        .iter()
        .map(|d| StageRun::load(d).context("cannot build the report"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for e in &cfg.evaluations {
        runs.push(evaluate(e)?);
    }
    let report = Report::build(&runs, &cfg.options).context("cannot build the report")?;
    print!("{}", document::to_text(&report.document(&Default::default())));
    let out = match &cfg.out {
        Output::Print => None,
        // `runs` is not empty: build_report fails without a run.
        // A checkpoint's "run" is the file itself: its report goes beside it.
        Output::BesideRuns => runs.first().map(|r| default_out_dir(&r.dir)),
        Output::Dir(dir) => Some(dir.clone()),
    };
    if let Some(out) = out {
        let files = write_report(&report, &out)
            .with_context(|| format!("cannot write the report into {}", out.display()))?;
        println!("Wrote {} files into {}:", files.len(), out.display());
        for f in files {
            println!("  {}", f.display());
        }
    }
    Ok(())
}

/// `--ablation DIR`: the grid's report, printed and (unless `--no-files`) written.
fn run_ablation(dir: &Path, out: Option<PathBuf>, no_files: bool) -> anyhow::Result<()> {
    let results = GridResults::load(dir)
        .with_context(|| format!("cannot read the ablation grid {}", dir.display()))?;
    if no_files {
        print!("{}", document::to_text(&blocks(&results, "ablation-delta.svg")));
        return Ok(());
    }
    let out = out.unwrap_or_else(|| dir.join("report"));
    let doc = write_ablation(&results, &out)
        .with_context(|| format!("cannot write the ablation report into {}", out.display()))?;
    print!("{}", document::to_text(&doc));
    println!("Wrote ablation.md, ablation.json and ablation-delta.svg into {}", out.display());
    Ok(())
}

aue_cli::global_allocator!();

fn main() -> ExitCode {
    aue_cli::main("warn", || {
        let mut args = Args::parse();
        if let Some(dir) = args.ablation.take() {
            return run_ablation(&dir, args.out, args.no_files);
        }
        run(&Config::resolve(args)?)
    })
}
