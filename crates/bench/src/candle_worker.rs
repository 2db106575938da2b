//! The aue (Candle) worker: the stage's real training step (aue-train's `Trainer`, metrics
//! accumulated on the device as in a run) or the eval-mode forward pass (the fused
//! `InferenceModel`, or the training model's eval forward), on the driver's files.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use aue_contract::format::{load_model, read_safetensors};
use aue_contract::{DeviceBatch, SplitAccumulator, SplitName};
use aue_model::{AueModel, EvalForward, InferenceModel, OutputSet, Stage};
use aue_train::StageDef;
use aue_train::engine::Trainer;
use candle_core::{Device, Tensor};

use crate::Mode;
use crate::inputs::Setup;

/// What one step runs.
enum Work {
    Train { trainer: Box<Trainer<'static>>, lr: f64 },
    Eval { model: Box<dyn EvalForward> },
}

/// Loads the model and the batch, prints `ready`, then serves `step` / `quit` from `input`.
pub fn serve(
    setup: &Setup,
    mode: Mode,
    weights: &Path,
    inputs: &Path,
    device: &Device,
    input: impl BufRead,
    mut output: impl Write,
) -> anyhow::Result<()> {
    let baseline = crate::resident_bytes();
    let config = setup.config()?;
    let (model, _) = load_model(weights, &config, device)?;
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
    };
    let classes = config.num_classes;
    let mut work = match mode.stage() {
        Some(stage) => {
            let trainer = Trainer::new(stage_def(stage), model, 0.9, false);
            Work::Train { trainer: Box::new(trainer), lr: 0.01 }
        }
        // Built once, as aue-predict does; the training model is dropped.
        None if mode == Mode::Eval => Work::Eval { model: Box::new(InferenceModel::new(&model)?) },
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
                let loss = out.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
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
