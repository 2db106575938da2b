//! Trainer parity (docs/STAGES.md "Trainer parity"): ten float64 training steps of each stage
//! through the real engine (`Trainer::train_step`, the step the stage binaries run, built from a
//! resolved `--dtype f64 --dev-no-dropout` configuration) follow the PyTorch reference's own
//! training loop step by step.
//!
//! The fixtures (`tools/make_trainer_fixtures.py`, from `tools/aue_reference.py`) hold two batches,
//! the reference's loss at every step, each trainable parameter's change over the run (in full,
//! or its norm and 64 samples), and every BatchNorm layer's running statistics after the last
//! step. Both sides start from the parity filler's weights; stages 2 and 3 load them as the
//! pipeline does, from an f32 checkpoint of the stage before. The learning rate drops tenfold
//! after step 5, inside the run. Everything is compared with a relative error <= 1e-9, and every
//! frozen parameter must stay bit-identical.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

mod common;

use aue_contract::format::{self, read_safetensors};
use aue_contract::{DeviceBatch, SplitAccumulator, SplitName};
use aue_model::state::{expand, state_entries};
use aue_model::{AueModel, ModelConfig, Preset, Stage, is_bn_buffer};
use aue_train::engine::{Trainer, trainable_vars};
use aue_train::schedule::StepSchedule;
use aue_train::{Precision, StageArgs};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

/// Relative error bound of every comparison (losses, parameter changes, running statistics).
const REL_TOL: f64 = 1e-9;
/// Bound on the L2 norm of a change the fixture lists as structurally zero.
const ZERO_ABS_TOL: f64 = 1e-12;
const SAMPLES: usize = 64;

/// Every state entry's values, by reference key (copied: the optimizer updates in place).
fn snapshot(map: &VarMap) -> BTreeMap<String, Vec<f64>> {
    state_entries(map)
        .into_iter()
        .map(|e| {
            let t = e.tensor().unwrap().flatten_all().unwrap().to_dtype(DType::F64).unwrap();
            (e.key.clone(), t.to_vec1::<f64>().unwrap())
        })
        .collect()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// ||got - want|| / ||want|| (0 when both are zero).
fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let diff: Vec<f64> = got.iter().zip(want).map(|(g, w)| g - w).collect();
    let (d, base) = (norm(&diff), norm(want));
    if base == 0.0 { if d == 0.0 { 0.0 } else { f64::INFINITY } } else { d / base }
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
}

/// The comparisons of one preset; the test fails at the end listing every one over its bound.
#[derive(Default)]
struct Comparisons {
    failures: Vec<String>,
    /// Worst relative error per group, with the name it was seen on.
    worst: BTreeMap<String, (f64, String)>,
    count: usize,
}

impl Comparisons {
    fn error(&mut self, group: &str, name: &str, e: f64, bound: f64) {
        self.count += 1;
        if e.is_nan() || e > bound {
            self.failures.push(format!("{name}: error {e:.3e} > {bound:.0e}"));
        }
        let w = self.worst.entry(group.to_string()).or_insert((0.0, String::new()));
        if e > w.0 || e.is_nan() {
            *w = (e, name.to_string());
        }
    }

    fn relative(&mut self, group: &str, name: &str, got: &[f64], want: &[f64]) {
        self.error(group, name, rel_l2(got, want), REL_TOL);
    }
}

/// The stage's flags as a parity run gives them: f64, dropout off, the fixture's schedule.
fn parity_args(meta: &BTreeMap<String, String>, data: &Path, parent: Option<&Path>) -> StageArgs {
    let num = |k: &str| -> f64 { meta[k].parse().unwrap() };
    StageArgs {
        data_root: Some(data.to_owned()),
        run_dir: Some(data.join("run")),
        preset: Some(meta["preset"].parse().unwrap()),
        input_size: Some(meta["input_size"].parse().unwrap()),
        lr: Some(num("lr")),
        lr_milestones: Some(vec![meta["lr_milestone_step"].parse().unwrap()]),
        lr_gamma: Some(num("lr_gamma")),
        momentum: Some(num("momentum")),
        dtype: Some(Precision::F64),
        dev_no_dropout: Some(true),
        resume_model: parent.map(Path::to_owned),
        ..StageArgs::default()
    }
}

/// The f32 checkpoint a stage with a parent starts from: the parity filler's weights.
fn parent_checkpoint(preset: Preset, input_size: usize, path: &Path) {
    let cfg = ModelConfig::preset(preset).with_input_size(input_size).unwrap();
    let map = VarMap::new();
    AueModel::with_varmap(&map, &cfg, &Device::Cpu).unwrap();
    aue_model::init::fill_parity(&map).unwrap();
    format::save(&map, path, &BTreeMap::new()).unwrap();
}

fn run_stage(
    stage: Stage,
    fx: &BTreeMap<String, Tensor>,
    meta: &BTreeMap<String, String>,
    cmp: &mut Comparisons,
) {
    let n = stage.number();
    let tmp = tempfile::tempdir().unwrap();
    let preset: Preset = meta["preset"].parse().unwrap();
    let input_size: usize = meta["input_size"].parse().unwrap();
    let parent = (stage != Stage::Em).then(|| tmp.path().join("parent.safetensors"));
    if let Some(p) = &parent {
        parent_checkpoint(preset, input_size, p);
    }
    let def = common::def(stage);
    let cfg = common::config(stage, parity_args(meta, tmp.path(), parent.as_deref()));
    let map = VarMap::new();
    let model =
        AueModel::with_dtype(&map, &cfg.model_config().unwrap(), &Device::Cpu, cfg.dtype.dtype())
            .unwrap();
    assert_eq!(model.dtype(), DType::F64);
    match &parent {
        // What a run with a parent does: the checkpoint, f32 on disk, widened into the model.
        Some(p) => {
            format::load(&map, p).unwrap();
        }
        None => aue_model::init::fill_parity(&map).unwrap(),
    }
    let before = snapshot(&map);
    let trainable: BTreeSet<String> =
        expand(trainable_vars(&model, def)).into_iter().map(|e| e.key).collect();
    let mut trainer = Trainer::new(def, model, cfg.momentum, cfg.frozen_eval);
    let schedule = StepSchedule {
        base_lr: cfg.lr,
        milestones: cfg.lr_milestones.clone(),
        gamma: cfg.lr_gamma,
    };
    let batches: usize = meta["batches"].parse().unwrap();
    let want_losses = values(&fx[&format!("s{n}.loss")]);
    let mut losses = Vec::new();
    for step in 0..want_losses.len() {
        let k = step % batches;
        let get = |what: &str| fx[&format!("batch{k}.{what}")].clone();
        let batch = DeviceBatch {
            images: get("image"),
            au_loc: get("au_loc"),
            labels: get("label"),
            au_gt: None,
        };
        let mut acc =
            SplitAccumulator::new(def.records(), SplitName::Train, 7, &Device::Cpu).unwrap();
        let loss = trainer.train_step(&batch, schedule.lr(step), &mut acc).unwrap();
        assert_eq!(loss.dtype(), DType::F64);
        losses.push(loss.to_scalar::<f64>().unwrap());
    }
    for (step, (got, want)) in losses.iter().zip(&want_losses).enumerate() {
        let e = (got - want).abs() / want.abs();
        cmp.error(&format!("s{n} losses"), &format!("s{n} step {} loss", step + 1), e, REL_TOL);
    }

    let after = snapshot(&map);
    let zeros: BTreeSet<&str> =
        meta.get("structural_zero_deltas").map(|s| s.split(',').collect()).unwrap_or_default();
    // The parameters the fixture has a change of: `s{n}.delta.K` or `s{n}.deltanorm.K`.
    let theirs: BTreeSet<String> = fx
        .keys()
        .filter_map(|k| {
            let (stage_tag, rest) = k.split_once('.')?;
            let (kind, key) = rest.split_once('.')?;
            let wanted = stage_tag == format!("s{n}") && matches!(kind, "delta" | "deltanorm");
            wanted.then(|| key.to_string())
        })
        .collect();
    assert_eq!(trainable, theirs, "stage {n}: trainable parameters differ from the fixture's");
    for (key, old) in &before {
        let new = &after[key];
        if trainable.contains(key) {
            let delta: Vec<f64> = new.iter().zip(old).map(|(a, b)| a - b).collect();
            let group = format!("s{n} parameter changes");
            let full = format!("s{n}.delta.{key}");
            if zeros.contains(full.as_str()) {
                cmp.error(
                    &format!("{group} (structural zeros, absolute)"),
                    key,
                    norm(&delta),
                    ZERO_ABS_TOL,
                );
            } else if let Some(want) = fx.get(&full) {
                cmp.relative(&group, key, &delta, &values(want));
            } else {
                let want_norm = values(&fx[&format!("s{n}.deltanorm.{key}")]);
                cmp.relative(&group, &format!("{key} (norm)"), &[norm(&delta)], &want_norm);
                let samples: Vec<f64> =
                    (0..SAMPLES).map(|j| delta[j * delta.len() / SAMPLES]).collect();
                let want = values(&fx[&format!("s{n}.deltasample.{key}")]);
                cmp.relative(&group, &format!("{key} (samples)"), &samples, &want);
            }
        } else if is_bn_buffer(key) {
            let want = values(&fx[&format!("s{n}.bn.{key}")]);
            if key.ends_with("num_batches_tracked") {
                assert_eq!(new, &want, "stage {n}: {key}");
            } else {
                cmp.relative(&format!("s{n} BatchNorm running statistics"), key, new, &want);
            }
        } else {
            // Frozen: not a single bit may move.
            assert!(
                new.iter().zip(old).all(|(a, b)| a.to_bits() == b.to_bits()),
                "stage {n}: frozen {key} changed"
            );
        }
    }
}

fn parity(file: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(file);
    let (meta, fx) = read_safetensors(&path, &Device::Cpu).unwrap();
    let mut cmp = Comparisons::default();
    for stage in Stage::ALL {
        run_stage(stage, &fx, &meta, &mut cmp);
    }
    let worst: Vec<String> =
        cmp.worst.iter().map(|(group, (e, name))| format!("  {group}: {e:.2e} ({name})")).collect();
    let preset = &meta["preset"];
    eprintln!("{preset}: {} comparisons, worst errors:\n{}", cmp.count, worst.join("\n"));
    assert!(cmp.failures.is_empty(), "{preset}: over the bound:\n{}", cmp.failures.join("\n"));
}

#[test]
fn ten_f64_steps_of_every_stage_follow_the_reference_tiny() {
    parity("trainer_tiny.safetensors");
}

#[test]
fn ten_f64_steps_of_every_stage_follow_the_reference_resnet18() {
    parity("trainer_resnet18.safetensors");
}
