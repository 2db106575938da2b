//! The aue (Candle) worker: the stage's real training step (aue-train's `Trainer`, metrics
//! accumulated on the device as in a run) or the eval-mode forward pass (the fused
//! `InferenceModel`, or the training model's eval forward), on the driver's files.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use aue_contract::format::{load, load_model, read_safetensors};
use aue_contract::{DeviceBatch, SplitAccumulator, SplitName};
use aue_model::{AueModel, EvalForward, InferenceModel, OutputSet, Stage};
use aue_train::StageDef;
use aue_train::engine::Trainer;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

use crate::Mode;
use crate::inputs::Setup;

/// What one step runs.
enum Work {
    Train { trainer: Box<Trainer<'static>>, lr: f64 },
    Eval { model: Box<dyn EvalForward> },
}

/// How a worker computes: the float type, (for parity runs of stages 2 and 3, as the stage
/// binaries' `--dev-no-dropout`) every dropout probability 0, and the training steps' learning rate.
#[derive(Debug, Clone, Copy)]
pub struct Numerics {
    /// Float type of the model and the images.
    pub dtype: DType,
    /// Every dropout probability 0.
    pub dev_no_dropout: bool,
    /// Learning rate of a training step (SGD with momentum 0.9).
    pub lr: f64,
}

/// Loads the model (in `numerics.dtype`) and the batch, prints `ready`, then serves `step` / `quit` from
/// `input`. A step's loss is printed in full (f64 digits), for parity runs
/// (`tools/trainer_parity_resnet101.py`).
pub fn serve(
    setup: &Setup,
    mode: Mode,
    weights: &Path,
    inputs: &Path,
    (device, numerics): (&Device, Numerics),
    input: impl BufRead,
    mut output: impl Write,
) -> anyhow::Result<()> {
    let baseline = crate::resident_bytes();
    let dtype = numerics.dtype;
    let config = setup.config()?;
    let config = if numerics.dev_no_dropout { config.with_dropout(0.0)? } else { config };
    let model = match dtype {
        // One copy of the weights in memory while loading.
        DType::F32 => load_model(weights, &config, device)?.0,
        // The f32 file widened into an f64 model (as an f64 stage run loads its checkpoint).
        _ => {
            let model = AueModel::with_dtype(&VarMap::new(), &config, device, dtype)?;
            load(model.varmap(), weights)?;
            model
        }
    };
    let (_, tensors) = read_safetensors(inputs, &Device::Cpu)?;
    let get = |name: &str| -> anyhow::Result<Tensor> {
        let t = tensors.get(name).with_context(|| format!("{}: no `{name}`", inputs.display()))?;
        Ok(t.to_device(device)?)
    };
    let batch = DeviceBatch {
        images: get("image")?,
        // On the host, as the trainer keeps it (see aue-train's DeviceBatch).
        au_loc: get("au_loc")?.to_device(&Device::Cpu)?,
        labels: get("label")?,
        au_gt: None,
    }
    .images_as(dtype)?;
    let classes = config.num_classes;
    let mut work = match mode.stage() {
        Some(stage) => {
            let trainer = Trainer::new(stage_def(stage), model, 0.9, false);
            Work::Train { trainer: Box::new(trainer), lr: numerics.lr }
        }
        // Built once, as aue-predict does; the training model is dropped.
        // (The fused inference model is f32; an f64 pass runs the training model in eval mode.)
        None if mode == Mode::Eval && dtype == DType::F32 => {
            let fused = InferenceModel::new(&model)?;
            drop(model);
            // The unfolded weights the loaded model held: not resident beside the fused ones.
            aue_cli::alloc::release_freed_memory();
            Work::Eval { model: Box::new(fused) }
        }
        None => Work::Eval { model: Box::<AueModel>::new(model) },
    };
    // The peak counts from here: the steps with the model resident, not the loading.
    crate::reset_peak();
    let build = match (cfg!(feature = "cuda"), cfg!(feature = "cudnn")) {
        (_, true) => " (cuda, cudnn)",
        (true, false) => " (cuda)",
        _ => "",
    };
    writeln!(output, "ready {baseline} candle-core={}{build}", candle_version())?;
    output.flush()?;
    for line in input.lines() {
        let line = line?;
        match line.trim() {
            "step" => {
                let started = Instant::now();
                let out = match &mut work {
                    Work::Train { trainer, lr } => {
                        let mut acc = SplitAccumulator::new(
                            trainer.def().records(),
                            SplitName::Train,
                            classes,
                            device,
                        )?;
                        trainer.train_step(&batch, *lr, &mut acc)?
                    }
                    Work::Eval { model } => {
                        let out = model.eval_forward(
                            &batch.images,
                            Some(&batch.au_loc),
                            OutputSet::ALL,
                        )?;
                        out.pred2()?.sum_all()?
                    }
                };
                // Reading the value waits for the device, as a training loop logging its loss does.
                let loss = out.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                writeln!(output, "t {:.6} {loss}", started.elapsed().as_secs_f64())?;
            }
            "quit" => {
                writeln!(output, "peak {}", crate::peak_resident_bytes())?;
                output.flush()?;
                return Ok(());
            }
            other => bail!("unknown command {other:?}"),
        }
        output.flush()?;
    }
    Ok(())
}

/// The stage crate that trains `stage`.
fn stage_def(stage: Stage) -> &'static dyn StageDef {
    match stage {
        Stage::Em => &aue_stage1::Em,
        Stage::Au => &aue_stage2::Au,
        Stage::Fuse => &aue_stage3::Fuse,
    }
}

/// The candle-core version of the workspace's lock file (see build.rs).
pub fn candle_version() -> &'static str {
    env!("AUE_CANDLE_VERSION")
}
