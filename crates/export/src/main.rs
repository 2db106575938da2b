//! `aue-export`: a trained checkpoint as an ONNX graph (opset 17) plus `model.json`.
//!
//! ```text
//! aue-export --checkpoint CKPT.safetensors --out model.onnx [--with-preprocess] [--all-outputs] [--verify]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use aue_export::ExportConfig;
use aue_export::check::{self, Batch, TractModel};
use aue_model::Preset;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

/// Export an AUE-CRL checkpoint (stage 1, 2 or 3) to ONNX, with model.json beside it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The checkpoint (a stage's best.safetensors or last.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The ONNX file to write; <stem>.json is written beside it.
    #[arg(long)]
    out: PathBuf,
    /// Model preset (resnet101, resnet50, resnet18, tiny): only for a checkpoint without aue's
    /// metadata, which is then taken for a stage-3 checkpoint.
    #[arg(long)]
    preset: Option<String>,
    /// Put the normalisation into the graph: `image` is then uint8 [N, S, S, 3] RGB bytes.
    #[arg(long)]
    with_preprocess: bool,
    /// Give every output of the forward pass (feature, pred_em, au_feat, pred_au, pred2,
    /// au_prob), not only those the checkpoint's stage trained.
    #[arg(long)]
    all_outputs: bool,
    /// After writing, run the file in tract (a pure-Rust ONNX runtime) on random inputs and
    /// compare every output with aue's own forward pass; fail above relative L2 1e-4.
    #[arg(long)]
    verify: bool,
    /// Write the weights to <out>.data (ONNX external data) instead of into the ONNX file; done
    /// anyway when one file would pass protobuf's 2 GiB limit.
    #[arg(long)]
    external_data: bool,
    /// Batch size of the --verify run.
    #[arg(long, default_value_t = 2)]
    verify_batch: usize,
}

/// The largest relative L2 error --verify accepts.
const TOLERANCE: f64 = 1e-4;

fn config(args: &Args) -> anyhow::Result<ExportConfig> {
    if !args.checkpoint.is_file() {
        bail!("--checkpoint {}: no such file", args.checkpoint.display());
    }
    if args.verify && args.verify_batch == 0 {
        bail!("--verify-batch must be at least 1");
    }
    let preset = args.preset.as_deref().map(str::parse::<Preset>).transpose()?;
    Ok(ExportConfig {
        checkpoint: args.checkpoint.clone(),
        out: args.out.clone(),
        preset,
        preprocess: args.with_preprocess,
        all_outputs: args.all_outputs,
        external_data: args.external_data,
    })
}

fn run(args: &Args) -> anyhow::Result<()> {
    let cfg = config(args)?;
    let bar = ProgressBar::new(if args.verify { 5 } else { 4 }).with_style(
        ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar.set_message(format!("loading {}", cfg.checkpoint.display()));
    let (info, model) = aue_export::load_checkpoint(&cfg)?;
    bar.inc(1);
    bar.set_message(format!(
        "building the stage-{} {} graph",
        info.stage().number(),
        info.meta.preset
    ));
    let exported = aue_export::export(&model, &info, &cfg)?;
    bar.inc(1);
    bar.set_message("encoding");
    let (encoded, json) = exported.encode()?;
    bar.inc(1);
    bar.set_message(format!("writing {}", cfg.out.display()));
    aue_export::write(&cfg, &encoded, &json)
        .with_context(|| format!("writing {}", cfg.out.display()))?;
    bar.inc(1);
    let outputs: Vec<&str> = json.outputs.iter().map(|o| o.name.as_str()).collect();
    let weights = match &encoded.data {
        Some(data) => format!(
            ", weights in {} ({:.1} MB)",
            cfg.data_path().display(),
            data.len() as f64 / 1e6
        ),
        None => String::new(),
    };
    let summary = format!(
        "wrote {} ({:.1} MB{weights}, opset {}, stage {}, outputs {}) and {}",
        cfg.out.display(),
        encoded.onnx.len() as f64 / 1e6,
        aue_export::onnx::OPSET,
        info.stage().number(),
        outputs.join(", "),
        cfg.json_path().display()
    );
    drop(encoded);
    if !args.verify {
        bar.finish_and_clear();
        eprintln!("{summary}");
        return Ok(());
    }
    bar.set_message(format!("verifying in tract, batch {}", args.verify_batch));
    let spec = cfg.spec(&info);
    let started = Instant::now();
    let tract = TractModel::load_file(&cfg.out, &spec)?;
    let batch = Batch::random(args.verify_batch, info.config.input_size, info.config.grid(), 0);
    let got = tract.run(&batch)?;
    let tract_s = started.elapsed().as_secs_f64();
    let want = check::aue_outputs(&model, &spec, &batch)?;
    let diffs = check::compare(&got, &want)?;
    bar.finish_and_clear();
    eprintln!("{summary}");
    eprintln!("tract load + run: {tract_s:.1} s; relative L2 against aue's forward pass:");
    let mut worst = 0f64;
    for d in &diffs {
        eprintln!("  {:<16} {:.3e}", d.name, d.relative_l2);
        // (a NaN error is kept, where f64::max would drop it)
        if d.relative_l2.is_nan() || d.relative_l2 > worst {
            worst = d.relative_l2;
        }
    }
    if worst.is_nan() || worst > TOLERANCE {
        bail!(
            "the exported graph differs from aue's forward pass by {worst:.3e} (> {TOLERANCE:e})"
        );
    }
    Ok(())
}

aue_cli::global_allocator!();

fn main() -> ExitCode {
    aue_cli::main("warn", || run(&Args::parse()))
}
