//! `aue-bench`: per-stage training-step and inference times of aue against the PyTorch reference
//! on the same machine, weights and inputs, interleaved, with peak memory (see the library docs).
//!
//! ```text
//! aue-bench [--preset resnet18] [--batch 8] [--size 224] [--threads 1,2] [--reps 5] [--warmup 1]
//!           [--modes stage1,stage2,stage3,eval,eval-unfused] [--python python3] [--no-torch]
//!           [--authors DIR] [--out FILE]
//!
//! `eval` times aue's fused inference model, with the unfused one (`eval-unfused`) as a third
//! worker beside it; with more than one `--threads` value a second table gives each
//! implementation's scaling.
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use aue_bench::candle_worker::Numerics;
use aue_bench::inputs::{self, Setup};
use aue_bench::report::{authors_table, markdown_table, scaling_table, steal_table};
use aue_bench::worker::{Step, Worker};
use aue_bench::{CpuTimes, Measurement, Mode, Row, candle_worker};
use aue_cli::DeviceSpec;
use aue_model::Preset;
use aue_train::Precision;
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
    /// What to time: stage1, stage2, stage3, eval (aue's fused inference, with the unfused one
    /// interleaved beside it), eval-unfused (alone).
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
    /// Float type of both implementations' parameters and steps: f32, or f64 (CPU only).
    #[arg(long, default_value = "f32")]
    dtype: Precision,
    /// The Python that has torch (runs tools/bench_worker.py).
    #[arg(long, default_value = "python3")]
    python: String,
    /// The tools/ folder of the repository (found from the current folder when not given).
    #[arg(long)]
    tools: Option<PathBuf>,
    /// Time aue alone (no Python needed).
    #[arg(long)]
    no_torch: bool,
    /// Also time the authors' released code (HCPLab-SYSU/AUE-CRL) found in this folder (a
    /// checkout with their model.py, loss.py and utils.py, imported unchanged by
    /// tools/bench_worker.py; needs their imports, e.g. pandas and torchvision). ResNet-101
    /// (`--preset resnet101`) in f32 only: their model class.
    #[arg(long, value_name = "DIR")]
    authors: Option<PathBuf>,
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
        #[arg(long, default_value = "f32")]
        dtype: Precision,
        /// Every dropout probability 0 (parity runs of stages 2 and 3).
        #[arg(long)]
        dev_no_dropout: bool,
        /// Learning rate of the training steps (SGD, momentum 0.9).
        #[arg(long, default_value_t = 0.01)]
        lr: f64,
    },
}

/// Which worker a measurement came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    Aue,
    Torch,
    /// aue's inference through the training model (beside `eval`).
    Unfused,
    /// The authors' released code (`--authors`).
    Authors,
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
    check_dtype(args.dtype, args.device)?;
    if let Some(dir) = &args.authors {
        if args.no_torch {
            bail!("--authors runs their Python code: it cannot go with --no-torch");
        }
        if args.preset != Preset::Resnet101 || args.dtype != Precision::F32 {
            bail!("--authors times their ResNet-101 in f32: use --preset resnet101 --dtype f32");
        }
        for file in ["model.py", "loss.py", "utils.py"] {
            if !dir.join(file).is_file() {
                bail!("--authors {}: no {file} there (a checkout of their code)", dir.display());
            }
        }
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
    // The hypervisor's share of the machine's time during each block's timed steps.
    let mut steal = Vec::new();
    let gpu = match args.device {
        DeviceSpec::Cuda(n) => Some(n),
        DeviceSpec::Cpu => None,
    };
    // The unfused inference runs beside the `eval` pair when both are asked for.
    let modes: Vec<Mode> = args
        .modes
        .iter()
        .copied()
        .filter(|&m| !(m == Mode::EvalUnfused && args.modes.contains(&Mode::Eval)))
        .collect();
    // Each step kind at every thread count before the next kind, so that the blocks a speed-up
    // compares run minutes apart, not the whole run apart (a shared VM's speed drifts).
    for &mode in &modes {
        for &threads in &args.threads {
            bar.set_message(format!("{mode}, {threads} thread(s): starting"));
            // The flags every worker takes besides its own.
            let device = device_arg(args.device);
            let with_common = |cmd: &mut Command| {
                cmd.args(["--preset", args.preset.name(), "--device", &device]);
                cmd.args(["--dtype", args.dtype.name()]);
                cmd.arg("--weights").arg(&files.weights).arg("--inputs").arg(&files.inputs);
            };
            let candle_cmd = |mode: Mode| {
                let mut cmd = Command::new(&exe);
                cmd.env("RAYON_NUM_THREADS", threads.to_string()).args([
                    "worker",
                    "--mode",
                    mode.name(),
                ]);
                cmd.args(["--batch", &args.batch.to_string(), "--size", &args.size.to_string()]);
                with_common(&mut cmd);
                cmd
            };
            let torch_cmd = |tools: &Path, authors: Option<&Path>| {
                let mut cmd = Command::new(&args.python);
                for var in ["OMP_NUM_THREADS", "MKL_NUM_THREADS"] {
                    cmd.env(var, threads.to_string());
                }
                cmd.arg(tools.join("bench_worker.py")).args(["--mode", mode.torch_name()]);
                cmd.args(["--threads", &threads.to_string()]);
                if let Some(dir) = authors {
                    cmd.arg("--authors").arg(dir);
                }
                with_common(&mut cmd);
                cmd
            };
            // The workers: aue, PyTorch (unless --no-torch), the authors' code (with
            // --authors), aue unfused (beside `eval`).
            let mut jobs = vec![(Impl::Aue, "aue", candle_cmd(mode))];
            if let Some(t) = &tools {
                jobs.push((Impl::Torch, "PyTorch", torch_cmd(t, None)));
                if let Some(dir) = args.authors.as_deref().filter(|_| mode != Mode::EvalUnfused) {
                    jobs.push((Impl::Authors, "authors' code", torch_cmd(t, Some(dir))));
                }
            }
            if mode == Mode::Eval {
                jobs.push((Impl::Unfused, "aue unfused", candle_cmd(Mode::EvalUnfused)));
            }
            let results: Vec<(Impl, Measurement)> = match gpu {
                // On the CPU the workers live side by side and step in turn, each step in
                // another order, so that the machine's slow minutes hit all alike.
                None => {
                    let mut workers = Vec::with_capacity(jobs.len());
                    for (role, name, cmd) in jobs {
                        workers.push((role, Worker::start(name, cmd)?));
                    }
                    for (_, w) in &workers {
                        if !versions.contains(&w.info) {
                            versions.push(w.info.clone());
                        }
                    }
                    let n = workers.len();
                    let mut times: Vec<Vec<Step>> = vec![Vec::new(); n];
                    let mut timed_from = None;
                    for i in 0..steps {
                        if i == args.warmup {
                            timed_from = CpuTimes::now();
                        }
                        bar.set_message(format!("{mode}, {threads} thread(s)"));
                        // A B C, B C A, C A B, ...: none always runs right after another.
                        for j in 0..n {
                            let w = (i + j) % n;
                            times[w].push(workers[w].1.step()?);
                        }
                        bar.inc(1);
                    }
                    if let Some(p) =
                        timed_from.zip(CpuTimes::now()).and_then(|(a, b)| a.steal_percent(&b))
                    {
                        steal.push((mode, threads, p));
                    }
                    let mut out = Vec::with_capacity(n);
                    for ((role, w), ts) in workers.into_iter().zip(times) {
                        let base = w.baseline_bytes;
                        out.push((role, measurement(ts, base, w.quit()?, None, args.warmup)));
                    }
                    out
                }
                // On a GPU one after the other: the device memory each holds is then the card's
                // use above what it was before the worker started.
                Some(ordinal) => {
                    let mut out = Vec::with_capacity(jobs.len());
                    for (k, (role, name, cmd)) in jobs.into_iter().enumerate() {
                        bar.set_message(format!("{mode}: {name}"));
                        if k > 0 {
                            bar.set_position(bar.position().saturating_sub(steps as u64));
                        }
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
                        let m = measurement(ss, base, w.quit()?, Some(peak), args.warmup);
                        out.push((role, m));
                    }
                    out
                }
            };
            let pick =
                |role: Impl| results.iter().find(|(r, _)| *r == role).map(|(_, m)| m.clone());
            let (torch, authors) = (pick(Impl::Torch), pick(Impl::Authors));
            if let Some(candle) = pick(Impl::Aue) {
                let (batch, torch) = (args.batch, torch.clone());
                rows.push(Row { mode, threads, batch, candle, torch, authors });
            }
            if let Some(candle) = pick(Impl::Unfused) {
                let mode = Mode::EvalUnfused;
                rows.push(Row { mode, threads, batch: args.batch, candle, torch, authors: None });
            }
        }
    }
    bar.finish_and_clear();
    let mut report = format!(
        "# aue-bench: preset {}, batch {}, {}x{} px, {}, {}; {} timed steps after {} warm-up, \
         {}\n\n{}; {}\n\n",
        args.preset.name(),
        args.batch,
        args.size,
        args.size,
        args.dtype,
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
    report.push_str(&authors_table(&rows));
    report.push_str(&scaling_table(&rows));
    report.push_str(&steal_table(&steal));
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(report.as_bytes())?;
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
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
    let WorkerCommand::Worker {
        mode,
        preset,
        batch,
        size,
        weights,
        inputs,
        device,
        dtype,
        dev_no_dropout,
        lr,
    } = cmd;
    check_dtype(*dtype, *device)?;
    let setup = Setup { preset: *preset, batch: *batch, size: *size, seed: 0 };
    let device = device.open()?;
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    let numerics = Numerics { dtype: dtype.dtype(), dev_no_dropout: *dev_no_dropout, lr: *lr };
    candle_worker::serve(&setup, *mode, weights, inputs, (&device, numerics), stdin, stdout)
}

/// f64 runs on the CPU only (as the stage binaries' `--dtype`).
fn check_dtype(dtype: Precision, device: DeviceSpec) -> anyhow::Result<()> {
    if dtype == Precision::F64 && device != DeviceSpec::Cpu {
        bail!("--dtype f64 runs on the CPU only, not on --device {}", device_arg(device));
    }
    Ok(())
}

aue_cli::global_allocator!();

fn main() -> ExitCode {
    aue_cli::main("warn", || {
        let cli = Cli::parse();
        match &cli.worker {
            Some(w) => worker(w),
            None => bench(&cli.bench),
        }
    })
}
