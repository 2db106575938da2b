//! `aue-report`: prints the results of AUE-CRL runs beside the paper's (REFERENCE.md sections 6
//! and 7) and writes them as `report.md`, `report.json` and SVG charts.
//! A thin shell: flags -> checked config -> `run`; the work is in the aue-report library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use aue_report::output::write_report;
use aue_report::{Compare, ReportOptions, build_report, default_out_dir, document};
use clap::Parser;

/// Report AUE-CRL runs: the paper's table with our rows, best (test-set selection) and last
/// epochs, per-class precision / recall / F1, the stage 1 vs stage 3 ablation, stage 2's AU
/// scores and the learned prior table. Reads only run files and checkpoint metadata.
#[derive(Debug, Parser)]
#[command(name = "aue-report", version)]
struct Args {
    /// A stage run folder (holding metrics.jsonl), or a folder holding stage1/stage2/stage3;
    /// repeat for several.
    #[arg(long = "run", value_name = "DIR", required = true)]
    runs: Vec<PathBuf>,

    /// Output folder for report.md, report.json and the SVG charts
    /// [default: <first run's parent>/report].
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
        Ok(Self { runs: args.runs, out, options: ReportOptions { compare } })
    }
}

fn run(cfg: &Config) -> anyhow::Result<()> {
    let (runs, report) =
        build_report(&cfg.runs, &cfg.options).context("cannot build the report")?;
    print!("{}", document::to_text(&report.document(&Default::default())));
    let out = match &cfg.out {
        Output::Print => None,
        // `runs` is not empty: build_report fails without a run.
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

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = Config::resolve(args).and_then(|cfg| run(&cfg));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
