//! Dev helper for `tools/check_onnx.py` (the onnxruntime check of aue-export):
//!
//! ```text
//! onnx_dev checkpoint --preset resnet18 --size 224 --stage 3 --seed 0 --out CKPT.safetensors
//! onnx_dev forward --checkpoint CKPT --inputs I.safetensors --out O.safetensors --reps 5
//! ```
//!
//! `checkpoint` writes a random model as a trainer checkpoint of `--stage` (its metadata keys): the
//! training-from-scratch init, BatchNorm affine parameters moved off 1 / 0 (the last BN of each
//! residual branch to a gain in [0.1, 0.3], as trained ResNets have), and every BN's running
//! statistics set to those of one forward pass on a random calibration batch, as
//! tools/check_forward.py does for the same reason: with the default statistics eval-mode
//! activations of a random ResNet-101 grow to ~1e6 and float32 rounding, not the implementation,
//! decides the last digits.
//!
//! `forward` runs aue's eval forward pass on `image` f32 [N,3,S,S] and `au_loc` i64 [N,17,4]
//! (1 untimed + `--reps` timed passes), writes `feature pred_em au_feat pred_au pred2 au_prob`,
//! and prints the pass times as one JSON line on stdout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use aue_contract::format::{read_safetensors, write_safetensors};
use aue_contract::meta::ModelMeta;
use aue_model::{AueModel, ForwardOptions, ModelConfig, OutputSet, PartMode, Preset, Stage};
use candle_core::{DType, Device, Tensor};
use clap::{Parser, Subcommand};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a random, calibrated checkpoint with trainer metadata.
    Checkpoint {
        #[arg(long)]
        preset: Preset,
        #[arg(long)]
        size: Option<usize>,
        #[arg(long, default_value_t = 3)]
        stage: u8,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Calibration batch size.
        #[arg(long, default_value_t = 8)]
        calibration: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Time aue's eval forward pass and write its outputs.
    Forward {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
}

/// Whether `key` is the last BatchNorm of a residual branch (bn2 of a basic block, bn3 of a
/// bottleneck).
fn is_branch_end(key: &str, last_bn: &str) -> bool {
    key.starts_with("backbone.layer") && key.contains(&format!(".{last_bn}."))
}

fn checkpoint(
    preset: Preset,
    size: Option<usize>,
    stage: u8,
    seed: u64,
    calibration: usize,
    out: &PathBuf,
) -> anyhow::Result<()> {
    let stage = Stage::from_number(stage).context("--stage must be 1, 2 or 3")?;
    let mut config = ModelConfig::preset(preset);
    if let Some(s) = size {
        config = config.with_input_size(s)?;
    }
    let model = AueModel::new(&config, &Device::Cpu)?;
    aue_model::init::init_default(model.varmap(), seed)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let last_bn = match config.block {
        aue_model::BlockKind::Basic => "bn2",
        aue_model::BlockKind::Bottleneck => "bn3",
    };
    // BN affine parameters (group variables included: one value per element).
    {
        let data = model.varmap().data().lock().unwrap_or_else(|e| e.into_inner());
        for (key, var) in data.iter() {
            let Some(prefix) = key.strip_suffix(".weight") else { continue };
            if !data.contains_key(&format!("{prefix}.running_mean")) {
                continue;
            }
            let n = var.elem_count();
            let (lo, hi) = if is_branch_end(key, last_bn) { (0.1, 0.3) } else { (0.8, 1.2) };
            let w: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
            var.set(&Tensor::from_vec(w, var.shape(), &Device::Cpu)?)?;
            let bias = &data[&format!("{prefix}.bias")];
            let b: Vec<f32> = (0..n).map(|_| rng.random_range(-0.1..0.1)).collect();
            bias.set(&Tensor::from_vec(b, bias.shape(), &Device::Cpu)?)?;
        }
    }
    // Calibration: one forward pass with every BN in train mode (no dropout) from the default
    // statistics (mean 0, var 1) leaves r = 0.1 * batch statistic (+ 0.9 for the variance).
    let (n, s) = (calibration, config.input_size);
    let (lo, hi) = config.centre_range();
    let image: Vec<f32> = (0..n * 3 * s * s).map(|_| rng.random_range(-2.0..2.0)).collect();
    let loc: Vec<i64> = (0..n * 17 * 4).map(|_| rng.random_range(lo as i64..=hi as i64)).collect();
    let image = Tensor::from_vec(image, (n, 3, s, s), &Device::Cpu)?;
    let au_loc = Tensor::from_vec(loc, (n, 17, 4), &Device::Cpu)?;
    let bn_train = PartMode { train_bn: true, dropout: false, grad: false };
    let opts = ForwardOptions {
        backbone: bn_train,
        em_reduce: bn_train,
        em_head: bn_train,
        au_branch: bn_train,
        fusion: bn_train,
        outputs: OutputSet::ALL,
    };
    model.forward(&image, Some(&au_loc), &opts)?;
    {
        let data = model.varmap().data().lock().unwrap_or_else(|e| e.into_inner());
        for (key, var) in data.iter() {
            if key.ends_with(".running_mean") {
                var.set(&(var.as_tensor() * 10.0)?)?;
            } else if key.ends_with(".running_var") {
                var.set(&((var.as_tensor() - 0.9)? * 10.0)?)?;
            } else if key.ends_with(".num_batches_tracked") {
                var.set(&var.as_tensor().zeros_like()?)?;
            }
        }
    }
    let meta = ModelMeta::untrained(stage, preset, &config);
    aue_contract::format::save(model.varmap(), out, &meta.to_map())?;
    Ok(())
}

fn forward(
    checkpoint: PathBuf,
    inputs: &PathBuf,
    out: &PathBuf,
    reps: usize,
) -> anyhow::Result<()> {
    let cfg = aue_export::ExportConfig {
        checkpoint,
        out: out.clone(),
        preset: None,
        preprocess: false,
        all_outputs: true,
        external_data: false,
    };
    let (_, model) = aue_export::load_checkpoint(&cfg)?;
    let (_, t) = read_safetensors(inputs, &Device::Cpu)?;
    let get = |k: &str| t.get(k).with_context(|| format!("{}: no `{k}`", inputs.display()));
    let (image, au_loc) = (get("image")?, get("au_loc")?);
    if image.dtype() != DType::F32 || au_loc.dtype() != DType::I64 {
        bail!("{}: image must be f32 and au_loc i64", inputs.display());
    }
    let mut times = Vec::new();
    let mut last = None;
    for i in 0..=reps {
        let started = Instant::now();
        let o = model.forward(image, Some(au_loc), &ForwardOptions::eval())?;
        if i > 0 {
            times.push(started.elapsed().as_secs_f64());
        }
        last = Some(o);
    }
    let o = last.context("no pass ran")?;
    let mut tensors = BTreeMap::new();
    for (k, v) in [
        ("feature", o.feature()?),
        ("pred_em", o.pred_em()?),
        ("au_feat", o.au_feat()?),
        ("pred_au", o.pred_au()?),
        ("pred2", o.pred2()?),
        ("au_prob", o.au_prob()?),
    ] {
        tensors.insert(k.to_string(), v.clone());
    }
    write_safetensors(out, &tensors, &BTreeMap::new())?;
    println!("{}", serde_json::json!({ "seconds": times }));
    Ok(())
}

aue_cli::global_allocator!();

fn main() -> anyhow::Result<()> {
    aue_cli::alloc::keep_freed_memory();
    match Cli::parse().command {
        Command::Checkpoint { preset, size, stage, seed, calibration, out } => {
            checkpoint(preset, size, stage, seed, calibration, &out)
        }
        Command::Forward { checkpoint, inputs, out, reps } => {
            forward(checkpoint, &inputs, &out, reps)
        }
    }
}
