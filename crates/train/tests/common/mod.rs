//! Helpers of the run tests: a tiny synthetic RAF-DB-layout set and a tiny-preset stage config.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aue_model::{Preset, Stage};
use aue_train::{RunSummary, StageArgs, StageConfig, StageDef};
use candle_core::Device;

/// Writes a synthetic set of `train` / `test` images at 64 px under `dir/synth`.
pub fn synth(dir: &Path, train: usize, test: usize) -> PathBuf {
    let root = dir.join("synth");
    let mut cfg = aue_synth::SynthConfig::new(&root, train, test, 11);
    cfg.size = 64;
    cfg.threads = 1;
    aue_synth::generate(&cfg).expect("generate the synthetic set");
    root
}

/// Flags of a tiny, short run: batch 8, at most `steps` steps per epoch, one loader thread.
pub fn args(data: &Path, run: &Path, epochs: usize, steps: usize) -> StageArgs {
    StageArgs {
        data_root: Some(data.to_owned()),
        run_dir: Some(run.to_owned()),
        preset: Some(Preset::Tiny),
        epochs: Some(epochs),
        max_steps: Some(steps),
        train_batch_size: Some(8),
        test_batch_size: Some(8),
        workers: Some(1),
        ..StageArgs::default()
    }
}

/// The stage crate that trains `stage`.
pub fn def(stage: Stage) -> &'static dyn StageDef {
    match stage {
        Stage::Em => &aue_stage1::Em,
        Stage::Au => &aue_stage2::Au,
        Stage::Fuse => &aue_stage3::Fuse,
    }
}

/// Resolves `args` for `stage`, panicking with the error chain.
pub fn config(stage: Stage, args: StageArgs) -> StageConfig {
    StageConfig::resolve(def(stage), args).unwrap_or_else(|e| panic!("{}", chain(&e)))
}

/// Runs `cfg` with its stage's crate.
pub fn run(cfg: &StageConfig) -> aue_train::Result<RunSummary> {
    aue_train::run(def(cfg.stage), cfg)
}

/// The error and its sources.
pub fn chain(e: &dyn std::error::Error) -> String {
    aue_contract::error::error_chain(e)
}

/// Every tensor of a safetensors file, as f64 values.
pub fn tensors(path: &Path) -> BTreeMap<String, Vec<f64>> {
    let (_, tensors) = aue_contract::format::read_safetensors(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    tensors
        .into_iter()
        .map(|(k, t)| {
            let v = t.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap();
            (k, v.to_vec1::<f64>().unwrap())
        })
        .collect()
}

/// The `__metadata__` of a checkpoint.
pub fn metadata(path: &Path) -> BTreeMap<String, String> {
    aue_contract::format::read_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines of `metrics.jsonl` as JSON values.
pub fn metrics(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
