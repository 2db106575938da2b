//! `aue-forward`: one eval-mode forward pass of the model on given weights and inputs, for
//! comparing with the PyTorch reference (`tools/check_forward.py`) and for smoke tests.
//!
//! ```text
//! aue-forward --weights W.safetensors --inputs I.safetensors --out O.safetensors [--preset resnet101] [--device cpu]
//! ```
//! I holds `image` f32 [B,3,S,S] (normalised), `au_loc` i64 [B,17,4], `label` i64 [B]. O receives
//! `pred_em`, `pred1`, `pred2` [B,K], `pred_au`, `au_prob`, `au_target` [B,17] and the 0-d stage
//! losses `loss_em`, `loss_au`, `loss_fuse` (docs/METHOD.md section 4) on those outputs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use aue_cli::DeviceSpec;
use aue_contract::format::{self as checkpoint, read_safetensors, tensor_infos, write_safetensors};
use aue_model::{ForwardOptions, ModelConfig, Preset, Stage, stage_loss};
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

/// Run the AUE-CRL model once in eval mode and write its outputs and losses.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Model weights (a checkpoint with the reference state-dict keys).
    #[arg(long)]
    weights: PathBuf,
    /// Inputs: `image` f32 [B,3,S,S], `au_loc` i64 [B,17,4], `label` i64 [B].
    #[arg(long)]
    inputs: PathBuf,
    /// Where to write the outputs (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Model preset: resnet101, resnet50, resnet18 or tiny.
    #[arg(long, default_value = "resnet101")]
    preset: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

/// The checked configuration.
#[derive(Debug)]
struct Config {
    weights: PathBuf,
    inputs: PathBuf,
    out: PathBuf,
    preset: Preset,
    device: Device,
}

impl Config {
    fn from_args(args: Args) -> anyhow::Result<Self> {
        for (flag, path) in [("--weights", &args.weights), ("--inputs", &args.inputs)] {
            if !path.is_file() {
                bail!("{flag} {}: no such file", path.display());
            }
        }
        let preset = args.preset.parse::<Preset>()?;
        let device = args.device.open()?;
        Ok(Config { weights: args.weights, inputs: args.inputs, out: args.out, preset, device })
    }
}

#[cfg(feature = "cuda")]
#[cfg(not(feature = "cuda"))]
fn cuda_device() -> anyhow::Result<Device> {
    bail!("--device cuda: this binary was built without cuda (cargo feature `cuda`)")
}

/// Fetch input `name` and check its dtype and shape (`None` = any size).
fn input<'a>(
    inputs: &'a BTreeMap<String, Tensor>,
    path: &std::path::Path,
    name: &str,
    dtype: DType,
    shape: &[Option<usize>],
) -> anyhow::Result<&'a Tensor> {
    let t =
        inputs.get(name).with_context(|| format!("{}: missing tensor `{name}`", path.display()))?;
    let ok = t.rank() == shape.len()
        && t.dims().iter().zip(shape).all(|(d, s)| s.is_none_or(|s| s == *d));
    if t.dtype() != dtype || !ok {
        let want: Vec<String> =
            shape.iter().map(|s| s.map_or("*".into(), |s| s.to_string())).collect();
        bail!(
            "{}: tensor `{name}` is {:?} {:?}, expected {dtype:?} [{}]",
            path.display(),
            t.dtype(),
            t.dims(),
            want.join(", ")
        );
    }
    Ok(t)
}

fn run(cfg: &Config) -> anyhow::Result<()> {
    let bar = ProgressBar::new(4).with_style(
        ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message("reading inputs");
    let (_, inputs) = read_safetensors(&cfg.inputs, &Device::Cpu)?;
    let path = cfg.inputs.as_path();
    let image = input(&inputs, path, "image", DType::F32, &[None, Some(3), None, None])?;
    let (b, s) = (image.dim(0)?, image.dim(2)?);
    if image.dim(3)? != s {
        bail!("{}: tensor `image` is not square: {:?}", path.display(), image.dims());
    }
    let au_loc = input(&inputs, path, "au_loc", DType::I64, &[Some(b), Some(17), Some(4)])?;
    let label = input(&inputs, path, "label", DType::I64, &[Some(b)])?;

    // The class count is the weights' (7 basic, 11 compound).
    let infos = tensor_infos(&cfg.weights)?;
    let classes = match infos.get("pred_em.bias") {
        Some((_, shape)) if shape.len() == 1 => shape[0],
        _ => bail!("{}: missing tensor `pred_em.bias` (or not 1-d)", cfg.weights.display()),
    };
    let config = ModelConfig::preset(cfg.preset).with_input_size(s)?.with_num_classes(classes)?;
    bar.inc(1);
    bar.set_message(format!("loading {} weights", cfg.preset));
    let started = Instant::now();
    let (model, _) = checkpoint::load_model(&cfg.weights, &config, &cfg.device)?;
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "weights loaded");
    bar.inc(1);

    bar.set_message(format!("forward pass, {b} images at {s}x{s}"));
    let (image, au_loc, label) = (
        image.to_device(&cfg.device)?,
        au_loc.to_device(&cfg.device)?,
        label.to_device(&cfg.device)?,
    );
    let started = Instant::now();
    let out = model.forward(&image, Some(&au_loc), &ForwardOptions::eval())?;
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "forward pass");
    let k = model.knowledge();
    let mut tensors = BTreeMap::new();
    tensors.insert("pred_em".to_string(), out.pred_em()?.clone());
    tensors.insert("pred1".to_string(), out.pred_em()?.clone());
    tensors.insert("pred2".to_string(), out.pred2()?.clone());
    tensors.insert("pred_au".to_string(), out.pred_au()?.clone());
    tensors.insert("au_prob".to_string(), out.au_prob()?.clone());
    tensors.insert("au_target".to_string(), k.au_target(&label)?);
    for (stage, name) in
        [(Stage::Em, "loss_em"), (Stage::Au, "loss_au"), (Stage::Fuse, "loss_fuse")]
    {
        tensors.insert(name.to_string(), stage_loss(stage, &out, &label, k)?);
    }
    bar.inc(1);

    bar.set_message("writing outputs");
    let metadata = BTreeMap::from([
        ("preset".to_string(), cfg.preset.to_string()),
        ("input_size".to_string(), s.to_string()),
        ("weights".to_string(), cfg.weights.display().to_string()),
        ("mode".to_string(), "eval".to_string()),
    ]);
    write_safetensors(&cfg.out, &tensors, &metadata)?;
    bar.inc(1);
    bar.finish_with_message(format!("wrote {}", cfg.out.display()));
    Ok(())
}

aue_cli::global_allocator!();

fn main() -> ExitCode {
    aue_cli::main("warn", || run(&Config::from_args(Args::parse())?))
}
