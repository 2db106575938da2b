//! `aue-bench`: per-stage training-step and inference times of aue against the PyTorch reference
//! on the same machine, weights and inputs, interleaved, with peak memory (see the library docs).
//!
//! ```text
//! aue-bench [--preset resnet18] [--batch 8] [--size 224] [--threads 1,2] [--reps 5] [--warmup 1]
//!           [--modes stage1,stage2,stage3,eval] [--python python3] [--no-torch] [--out FILE]
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use aue_bench::inputs::{self, Setup};
use aue_bench::report::markdown_table;
use aue_bench::worker::{Step, Worker};
use aue_bench::{Measurement, Mode, Row, candle_worker};
use aue_cli::DeviceSpec;
use aue_model::Preset;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// Time aue's training steps and inference against the PyTorch reference.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    worker: Option<WorkerCommand>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Model preset: resnet18, resnet50, resnet101 or tiny.
    #[arg(long, default_value = "resnet18")]
    preset: Preset,
    /// Batch size.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Input side S (a multiple of 32).
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Thread counts to measure (each worker gets this many; one runs at a time).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// What to time: stage1, stage2, stage3, eval.
    #[arg(long, value_delimiter = ',', default_value = "stage1,stage2,stage3,eval")]
    modes: Vec<Mode>,
    /// Timed steps per implementation (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Untimed warm-up steps before them (the first steps fault in fresh memory: the optimizer's
    /// momentum buffers, the allocator's heap).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Device: cpu, cuda or cuda:N (both implementations use it).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// The Python that has torch (runs tools/bench_worker.py).
    #[arg(long, default_value = "python3")]
    python: String,
    /// The tools/ folder of the repository (found from the current folder when not given).
    #[arg(long)]
    tools: Option<PathBuf>,
    /// Time aue alone (no Python needed).
    #[arg(long)]
    no_torch: bool,
    /// Seed of the weights and the batch.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the report (Markdown) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the weights and inputs into this folder and keep them (default: a temp folder), e.g.
    /// to profile a worker alone: `aue-bench worker --mode stage2 ... < commands`.
    #[arg(long)]
    files: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum WorkerCommand {
    /// (Internal) the aue worker process the benchmark starts.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        mode: Mode,
        #[arg(long)]
        preset: Preset,
        #[arg(long)]
        batch: usize,
        #[arg(long)]
        size: usize,
        #[arg(long)]
        weights: PathBuf,
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long)]
        device: DeviceSpec,
    },
}

fn tools_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let mut dir = std::env::current_dir()?;
    loop {
        if dir.join("tools/bench_worker.py").is_file() {
            return Ok(dir.join("tools"));
        }
        if !dir.pop() {
            bail!(
                "tools/bench_worker.py not found above the current folder: pass --tools or --no-torch"
            );
        }
    }
}

fn device_arg(d: DeviceSpec) -> String {
    match d {
        DeviceSpec::Cpu => "cpu".into(),
        DeviceSpec::Cuda(n) => format!("cuda:{n}"),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores available")
}

fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    if args.reps == 0 || args.batch == 0 || args.threads.contains(&0) {
        bail!("--reps, --batch and every --threads value must be > 0");
    }
    let setup = Setup { preset: args.preset, batch: args.batch, size: args.size, seed: args.seed };
    let tools = if args.no_torch { None } else { Some(tools_dir(args.tools.as_deref())?) };
    let temp = tempfile::tempdir().context("creating a temp folder")?;
    let dir = match &args.files {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => temp.path().to_path_buf(),
    };
    let files = inputs::write(&dir, &setup)?;
    let exe = std::env::current_exe().context("locating aue-bench")?;
    let steps = args.warmup + args.reps;
    let runs = args.threads.len() * args.modes.len();
    let bar = ProgressBar::new((runs * steps) as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} ({elapsed}, ETA {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    let mut versions = Vec::new();
    let gpu = match args.device {
        DeviceSpec::Cuda(n) => Some(n),
        DeviceSpec::Cpu => None,
    };
    for &threads in &args.threads {
        for &mode in &args.modes {
            bar.set_message(format!("{mode}, {threads} thread(s): starting"));
            let candle_cmd = || {
                let mut cmd = Command::new(&exe);
                cmd.env("RAYON_NUM_THREADS", threads.to_string()).args([
                    "worker",
                    "--mode",
                    mode.name(),
                    "--preset",
                    args.preset.name(),
                    "--batch",
                    &args.batch.to_string(),
                    "--size",
                    &args.size.to_string(),
                    "--device",
                    &device_arg(args.device),
                ]);
                cmd.arg("--weights").arg(&files.weights).arg("--inputs").arg(&files.inputs);
                cmd
            };
            let torch_cmd = |tools: &Path| {
                let mut cmd = Command::new(&args.python);
                for var in ["OMP_NUM_THREADS", "MKL_NUM_THREADS"] {
                    cmd.env(var, threads.to_string());
                }
                cmd.arg(tools.join("bench_worker.py")).args([
                    "--mode",
                    mode.name(),
                    "--preset",
                    args.preset.name(),
                    "--threads",
                    &threads.to_string(),
                    "--device",
                    &device_arg(args.device),
                ]);
                cmd.arg("--weights").arg(&files.weights).arg("--inputs").arg(&files.inputs);
                cmd
            };
            let (candle_m, torch_m) = match gpu {
                // On the CPU both workers live side by side and step in turn, so that the
                // machine's slow minutes hit both alike.
                None => {
                    let mut candle = Worker::start("aue", candle_cmd())?;
                    let mut torch = match &tools {
                        Some(t) => Some(Worker::start("PyTorch", torch_cmd(t))?),
                        None => None,
                    };
                    note_versions(&mut versions, &candle, torch.as_ref());
                    let (mut cs, mut ts) = (Vec::new(), Vec::new());
                    for i in 0..steps {
                        bar.set_message(format!("{mode}, {threads} thread(s)"));
                        // A B, B A, A B, ...: neither always runs right after the other.
                        let candle_first = i % 2 == 0 || torch.is_none();
                        for first in [candle_first, !candle_first] {
                            if first {
                                cs.push(candle.step()?);
                            } else if let Some(t) = torch.as_mut() {
                                ts.push(t.step()?);
                            }
                        }
                        bar.inc(1);
                    }
                    let c =
                        measurement(cs, candle.baseline_bytes, candle.quit()?, None, args.warmup);
                    let t = match torch {
                        Some(t) => {
                            let base = t.baseline_bytes;
                            Some(measurement(ts, base, t.quit()?, None, args.warmup))
                        }
                        None => None,
                    };
                    (c, t)
                }
                // On a GPU one after the other: the device memory each holds is then the card's
                // use above what it was before the worker started.
                Some(ordinal) => {
                    let run = |name: &str, cmd: Command, versions: &mut Vec<String>| {
                        let before = gpu_used_bytes(ordinal)?;
                        let mut w = Worker::start(name, cmd)?;
                        if !versions.contains(&w.info) {
                            versions.push(w.info.clone());
                        }
                        let (mut ss, mut peak) = (Vec::new(), 0u64);
                        for _ in 0..steps {
                            ss.push(w.step()?);
                            peak = peak.max(gpu_used_bytes(ordinal)?.saturating_sub(before));
                            bar.inc(1);
                        }
                        let base = w.baseline_bytes;
                        anyhow::Ok(measurement(ss, base, w.quit()?, Some(peak), args.warmup))
                    };
                    bar.set_message(format!("{mode}: aue"));
                    let c = run("aue", candle_cmd(), &mut versions)?;
                    let t = match &tools {
                        Some(tools) => {
                            bar.set_message(format!("{mode}: PyTorch"));
                            bar.set_position(bar.position().saturating_sub(steps as u64));
                            Some(run("PyTorch", torch_cmd(tools), &mut versions)?)
                        }
                        None => None,
                    };
                    (c, t)
                }
            };
            rows.push(Row { mode, threads, batch: args.batch, candle: candle_m, torch: torch_m });
        }
    }
    bar.finish_and_clear();
    let mut report = format!(
        "# aue-bench: preset {}, batch {}, {}x{} px, f32, {}; {} timed steps after {} warm-up, \
         {}\n\n{}; {}\n\n",
        args.preset.name(),
        args.batch,
        args.size,
        args.size,
        device_arg(args.device),
        args.reps,
        args.warmup,
        if gpu.is_some() { "one implementation after the other" } else { "interleaved" },
        match gpu {
            Some(n) => format!("{}; {}", gpu_name(n), machine()),
            None => machine(),
        },
        versions.join(", ")
    );
    report.push_str(&markdown_table(&rows));
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(report.as_bytes())?;
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn note_versions(versions: &mut Vec<String>, candle: &Worker, torch: Option<&Worker>) {
    for info in std::iter::once(&candle.info).chain(torch.map(|t| &t.info)) {
        if !versions.contains(info) {
            versions.push(info.clone());
        }
    }
}

/// A worker's steps as a measurement: the first `warmup` steps are not timed (their losses are
/// kept).
fn measurement(
    steps: Vec<Step>,
    baseline_bytes: u64,
    peak_bytes: u64,
    device_peak_bytes: Option<u64>,
    warmup: usize,
) -> Measurement {
    Measurement {
        times: steps.iter().skip(warmup).map(|s| s.seconds).collect(),
        losses: steps.iter().map(|s| s.loss).collect(),
        peak_bytes,
        baseline_bytes,
        device_peak_bytes,
    }
}

/// GPU `ordinal`'s name and driver (nvidia-smi), or a note that it could not be read.
fn gpu_name(ordinal: usize) -> String {
    Command::new("nvidia-smi")
        .args(["--query-gpu=name,driver_version", "--format=csv,noheader"])
        .arg(format!("--id={ordinal}"))
        .output()
        .ok()
        .map(|o| format!("GPU {ordinal}: {} (driver)", String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|| format!("GPU {ordinal} (nvidia-smi not found)"))
}

/// Memory in use on GPU `ordinal`, all processes (nvidia-smi).
fn gpu_used_bytes(ordinal: usize) -> anyhow::Result<u64> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits"])
        .arg(format!("--id={ordinal}"))
        .output()
        .context("running nvidia-smi (needed to measure GPU memory)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mib: u64 = text
        .trim()
        .parse()
        .with_context(|| format!("nvidia-smi printed {text:?} for memory.used"))?;
    Ok(mib * 1024 * 1024)
}

fn worker(cmd: &WorkerCommand) -> anyhow::Result<()> {
    let WorkerCommand::Worker { mode, preset, batch, size, weights, inputs, device } = cmd;
    let setup = Setup { preset: *preset, batch: *batch, size: *size, seed: 0 };
    let device = device.open()?;
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    candle_worker::serve(&setup, *mode, weights, inputs, &device, stdin, stdout)
}

fn main() -> ExitCode {
    aue_cli::main("warn", || {
        let cli = Cli::parse();
        match &cli.worker {
            Some(w) => worker(w),
            None => bench(&cli.bench),
        }
    })
}
