//! `aue-conv-bench`: Candle's built-in convolutions against `aue_kernels` on ResNet-like layer
//! shapes, forward and backward, printed as a table of medians.
//!
//! Pin the thread count with `RAYON_NUM_THREADS=1` (Candle's CPU gemm and its rayon loops both
//! read it); the header prints the count in effect. Each repetition runs Candle then ours, or
//! ours then Candle, alternately, after warm-up runs, so that slow drifts of the machine hit both.
//! `--clock cpu` reports the process's CPU time instead of wall time: on a machine shared with
//! other jobs it is the steadier measure of the work done (at one thread).

use std::time::Instant;

use aue_kernels::grad::{Engine, WeightGradAlgo, conv2d_input_grad, conv2d_weight_grad};
use aue_kernels::{ConvParams, ConvTransposeParams, conv_transpose2d, conv2d, conv2d_grouped};
use candle_core::{Device, Tensor, Var};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(
    about = "Time Candle's conv2d / conv_transpose2d against aue-kernels (forward, backward)"
)]
struct Args {
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Untimed warm-up repetitions.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Batch size of every layer.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Also time the parts of the backward pass (input gradient, both weight-gradient methods).
    #[arg(long)]
    parts: bool,
    /// Only layers whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Clock::Wall)]
    clock: Clock,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Clock {
    /// Elapsed time.
    Wall,
    /// CPU time of the whole process (all threads).
    Cpu,
}

impl Clock {
    /// Current reading in milliseconds.
    fn now_ms(self) -> f64 {
        match self {
            Clock::Wall => {
                static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
                START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3
            }
            Clock::Cpu => {
                let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
                let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
                if rc != 0 {
                    return f64::NAN;
                }
                ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 * 1e-6
            }
        }
    }
}

/// The checked configuration.
#[derive(Debug)]
struct Config {
    reps: usize,
    warmup: usize,
    batch: usize,
    parts: bool,
    only: Option<String>,
    clock: Clock,
}

impl Config {
    fn from_args(a: Args) -> anyhow::Result<Self> {
        anyhow::ensure!(a.reps >= 1, "--reps must be >= 1");
        anyhow::ensure!(a.batch >= 1, "--batch must be >= 1");
        Ok(Self {
            reps: a.reps,
            warmup: a.warmup,
            batch: a.batch,
            parts: a.parts,
            only: a.only,
            clock: a.clock,
        })
    }
}

/// A layer to time.
#[derive(Debug, Clone, Copy)]
struct Layer {
    name: &'static str,
    c_in: usize,
    c_out: usize,
    hw: usize,
    k: usize,
    kind: Kind,
    /// Whether the input needs a gradient (not for the stem, whose input is the image).
    input_grad: bool,
    /// How many layers of this shape ResNet-18 has (0: not part of ResNet-18).
    count: usize,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Conv(ConvParams),
    Transpose(ConvTransposeParams),
    /// A grouped convolution with this many groups.
    Grouped(ConvParams, usize),
}

const fn conv(
    name: &'static str,
    (c_in, c_out, hw): (usize, usize, usize),
    k: usize,
    (stride, padding): (usize, usize),
    count: usize,
) -> Layer {
    let kind = Kind::Conv(ConvParams { stride, padding, dilation: 1 });
    Layer { name, c_in, c_out, hw, k, kind, input_grad: true, count }
}

/// Every convolution shape of ResNet-18 at 224 px (with its multiplicity), the AU decoder's
/// transposed convolution and the 34 `Crop_Net_1` convolutions run as one grouped convolution
/// (64 channels each on 24x24 crops).
const LAYERS: [Layer; 13] = [
    Layer { input_grad: false, ..conv("conv1 7x7 s2", (3, 64, 224), 7, (2, 3), 1) },
    conv("layer1 3x3", (64, 64, 56), 3, (1, 1), 4),
    conv("layer2.0.conv1 3x3 s2", (64, 128, 56), 3, (2, 1), 1),
    conv("layer2.0.downsample 1x1 s2", (64, 128, 56), 1, (2, 0), 1),
    conv("layer2 3x3", (128, 128, 28), 3, (1, 1), 3),
    conv("layer3.0.conv1 3x3 s2", (128, 256, 28), 3, (2, 1), 1),
    conv("layer3.0.downsample 1x1 s2", (128, 256, 28), 1, (2, 0), 1),
    conv("layer3 3x3", (256, 256, 14), 3, (1, 1), 3),
    conv("layer4.0.conv1 3x3 s2", (256, 512, 14), 3, (2, 1), 1),
    conv("layer4.0.downsample 1x1 s2", (256, 512, 14), 1, (2, 0), 1),
    conv("layer4 3x3", (512, 512, 7), 3, (1, 1), 3),
    Layer {
        name: "AU decoder deconv k4 s2",
        c_in: 512,
        c_out: 256,
        hw: 7,
        k: 4,
        kind: Kind::Transpose(ConvTransposeParams {
            stride: 2,
            padding: 1,
            output_padding: 0,
            dilation: 1,
        }),
        input_grad: true,
        count: 0,
    },
    Layer {
        name: "Crop_Net_1 x34 grouped 3x3",
        c_in: 34 * 64,
        c_out: 34 * 64,
        hw: 24,
        k: 3,
        kind: Kind::Grouped(ConvParams { stride: 1, padding: 1, dilation: 1 }, 34),
        input_grad: true,
        count: 0,
    },
];

aue_cli::global_allocator!();

fn main() -> std::process::ExitCode {
    aue_cli::main("warn", || run(&Config::from_args(Args::parse())?))
}

fn run(cfg: &Config) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let layers: Vec<Layer> = LAYERS
        .iter()
        .copied()
        .filter(|l| cfg.only.as_deref().is_none_or(|s| l.name.contains(s)))
        .collect();
    anyhow::ensure!(!layers.is_empty(), "no layer matches --only");
    println!(
        "# aue-conv-bench: f32, batch {}, {} threads (RAYON_NUM_THREADS), {:?} clock, median of {} after {} warm-up, ms",
        cfg.batch,
        candle_core::utils::get_num_threads(),
        cfg.clock,
        cfg.reps,
        cfg.warmup
    );
    let runs_per_layer = (cfg.reps + cfg.warmup) * if cfg.parts { 2 } else { 1 };
    let bar = ProgressBar::new((layers.len() * runs_per_layer) as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")?);
    let mut rows = Vec::new();
    for layer in &layers {
        bar.set_message(layer.name);
        rows.push(time_layer(cfg, layer, &dev, &bar)?);
    }
    bar.finish_and_clear();
    println!(
        "| layer | input | n | candle fwd | ours fwd | candle bwd | ours bwd | bwd speed-up | fwd+bwd speed-up | ours bwd/fwd |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let row = |name: &str, input: &str, n: String, t: &Times| {
        println!(
            "| {name} | {input} | {n} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1}x | {:.1}x | {:.2} |",
            t.candle_fwd,
            t.ours_fwd,
            t.candle_bwd,
            t.ours_bwd,
            t.candle_bwd / t.ours_bwd,
            (t.candle_fwd + t.candle_bwd) / (t.ours_fwd + t.ours_bwd),
            t.ours_bwd / t.ours_fwd,
        )
    };
    let mut total = Times { candle_fwd: 0., ours_fwd: 0., candle_bwd: 0., ours_bwd: 0. };
    for (l, t) in layers.iter().zip(&rows) {
        let input = format!(
            "[{},{},{},{}]{}",
            cfg.batch,
            l.c_in,
            l.hw,
            l.hw,
            if l.input_grad { "" } else { " (no input grad)" }
        );
        row(l.name, &input, l.count.to_string(), t);
        let n = l.count as f64;
        total.candle_fwd += n * t.candle_fwd;
        total.ours_fwd += n * t.ours_fwd;
        total.candle_bwd += n * t.candle_bwd;
        total.ours_bwd += n * t.ours_bwd;
    }
    // The total only when every ResNet-18 shape was timed.
    let resnet = LAYERS.iter().filter(|l| l.count > 0);
    if resnet.clone().all(|l| layers.iter().any(|m| m.name == l.name)) {
        row("**ResNet-18, all 20 convolutions**", "", "sum".into(), &total);
        debug_assert_eq!(resnet.map(|l| l.count).sum::<usize>(), 20);
    }
    if cfg.parts {
        println!();
        println!(
            "| layer | input grad: candle (conv_transpose2d) | ours, im2col | ours, candle conv2d | weight grad: Im2col | Unfold | Conv (candle's) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for layer in layers.iter().filter(|l| matches!(l.kind, Kind::Conv(_))) {
            bar.reset();
            let p = time_parts(cfg, layer, &dev, &bar)?;
            let cells: Vec<String> = p.iter().map(|v| format!("{v:.1}")).collect();
            println!("| {} | {} |", layer.name, cells.join(" | "));
        }
    }
    Ok(())
}

/// Medians in milliseconds.
struct Times {
    candle_fwd: f64,
    ours_fwd: f64,
    candle_bwd: f64,
    ours_bwd: f64,
}

/// Inputs of one layer: x (a Var when it needs a gradient), the weight Var and the upstream
/// gradient used as the loss weights.
fn inputs(cfg: &Config, l: &Layer, dev: &Device) -> anyhow::Result<(Tensor, Var, Tensor)> {
    let x = Tensor::randn(0f32, 1., (cfg.batch, l.c_in, l.hw, l.hw), dev)?;
    let x = if l.input_grad { Var::from_tensor(&x)?.as_tensor().clone() } else { x };
    let (w_dims, out_hw) = match l.kind {
        Kind::Conv(p) => ((l.c_out, l.c_in, l.k, l.k), p.output_size(l.hw, l.k)),
        Kind::Transpose(p) => ((l.c_in, l.c_out, l.k, l.k), p.output_size(l.hw, l.k)),
        Kind::Grouped(p, g) => ((l.c_out, l.c_in / g, l.k, l.k), p.output_size(l.hw, l.k)),
    };
    let out_hw = out_hw.ok_or_else(|| anyhow::anyhow!("{}: invalid layer", l.name))?;
    let w = Var::randn(0f32, 0.05, w_dims, dev)?;
    let r = Tensor::randn(0f32, 1., (cfg.batch, l.c_out, out_hw, out_hw), dev)?;
    Ok((x, w, r))
}

fn forward(l: &Layer, x: &Tensor, w: &Tensor, ours: bool) -> anyhow::Result<Tensor> {
    Ok(match (l.kind, ours) {
        (Kind::Conv(p), true) => conv2d(x, w, p)?,
        (Kind::Conv(p), false) => x.conv2d(w, p.padding, p.stride, p.dilation, 1)?,
        (Kind::Grouped(p, g), true) => conv2d_grouped(x, w, p, g)?,
        (Kind::Grouped(p, g), false) => x.conv2d(w, p.padding, p.stride, p.dilation, g)?,
        (Kind::Transpose(p), true) => conv_transpose2d(x, w, p)?,
        (Kind::Transpose(p), false) => {
            x.conv_transpose2d(w, p.padding, p.output_padding, p.stride, p.dilation)?
        }
    })
}

/// One forward and one backward; returns their times in ms.
fn step(
    clock: Clock,
    l: &Layer,
    x: &Tensor,
    w: &Var,
    r: &Tensor,
    ours: bool,
) -> anyhow::Result<(f64, f64)> {
    let t0 = clock.now_ms();
    let y = forward(l, x, w.as_tensor(), ours)?;
    let fwd = clock.now_ms() - t0;
    let loss = y.mul(r)?.sum_all()?;
    let t1 = clock.now_ms();
    let grads = loss.backward()?;
    let bwd = clock.now_ms() - t1;
    anyhow::ensure!(grads.get(w).is_some(), "{}: no weight gradient", l.name);
    Ok((fwd, bwd))
}

fn time_layer(cfg: &Config, l: &Layer, dev: &Device, bar: &ProgressBar) -> anyhow::Result<Times> {
    let (x, w, r) = inputs(cfg, l, dev)?;
    let (mut cf, mut cb, mut of, mut ob) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for rep in 0..cfg.warmup + cfg.reps {
        // Alternate which implementation runs first.
        let order = if rep % 2 == 0 { [false, true] } else { [true, false] };
        for ours in order {
            let (f, b) = step(cfg.clock, l, &x, &w, &r, ours)?;
            if rep >= cfg.warmup {
                let (fs, bs) = if ours { (&mut of, &mut ob) } else { (&mut cf, &mut cb) };
                fs.push(f);
                bs.push(b);
            }
        }
        bar.inc(1);
    }
    Ok(Times {
        candle_fwd: median(cf),
        ours_fwd: median(of),
        candle_bwd: median(cb),
        ours_bwd: median(ob),
    })
}

/// Medians of: Candle's input gradient (conv_transpose2d, as its backward calls it), ours with
/// each engine, and the three weight-gradient methods.
fn time_parts(
    cfg: &Config,
    l: &Layer,
    dev: &Device,
    bar: &ProgressBar,
) -> anyhow::Result<[f64; 6]> {
    let Kind::Conv(p) = l.kind else { anyhow::bail!("{}: not a convolution", l.name) };
    let (x, w, g) = inputs(cfg, l, dev)?;
    let (x, w) = (x.detach(), w.as_tensor().detach());
    let oh = g.dim(2)?;
    // Candle's backward: out_padding from the size lost to the floor.
    let out_size = (oh - 1) * p.stride + p.dilation * (l.k - 1) + 1 - 2 * p.padding;
    let out_padding = l.hw - out_size;
    let (hw, k) = ((l.hw, l.hw), (l.k, l.k));
    let mut samples: [Vec<f64>; 6] = Default::default();
    for rep in 0..cfg.warmup + cfg.reps {
        let mut order = [0usize, 1, 2, 3, 4, 5];
        if rep % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let t0 = cfg.clock.now_ms();
            let out = match i {
                0 => g.conv_transpose2d(&w, p.padding, out_padding, p.stride, p.dilation)?,
                1 => conv2d_input_grad(&g, &w, p, hw, Engine::Im2col)?,
                2 => conv2d_input_grad(&g, &w, p, hw, Engine::Candle)?,
                3 => conv2d_weight_grad(&x, &g, p, k, WeightGradAlgo::Im2col)?,
                4 => conv2d_weight_grad(&x, &g, p, k, WeightGradAlgo::Unfold)?,
                _ => conv2d_weight_grad(&x, &g, p, k, WeightGradAlgo::Conv)?,
            };
            let ms = cfg.clock.now_ms() - t0;
            drop(out);
            if rep >= cfg.warmup {
                samples[i].push(ms);
            }
        }
        bar.inc(1);
    }
    Ok(samples.map(median))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}
