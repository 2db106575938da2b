//! A training run does not depend on the thread count: every stage's steps on 1 and on 3 threads
//! give the same losses and the same parameters and BatchNorm statistics, bit for bit (dropout
//! seeded, as the trainer seeds it). The kernels split their work by fixed sizes, never by the
//! number of threads, and sum the pieces in a fixed order; this checks the whole step.

use std::collections::BTreeMap;

mod common;

use aue_contract::{DeviceBatch, SplitAccumulator, SplitName};
use aue_model::{AueModel, ModelConfig, Preset, Stage};
use aue_train::engine::Trainer;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

/// One batch of `b` images for `cfg`: fixed pseudo-random pixels, valid AU centres, labels of
/// several classes (the same on every call).
fn batch(cfg: &ModelConfig, b: usize) -> DeviceBatch {
    let dev = Device::Cpu;
    let s = cfg.input_size;
    let pixels: Vec<f32> =
        (0..b * 3 * s * s).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 4.0).collect();
    let images = Tensor::from_vec(pixels, (b, 3, s, s), &dev).unwrap();
    let (lo, hi) = cfg.centre_range();
    let span = (hi - lo + 1) as i64;
    let loc: Vec<i64> = (0..b * 17 * 4).map(|i| lo as i64 + (i as i64 * 7) % span).collect();
    let au_loc = Tensor::from_vec(loc, (b, 17, 4), &dev).unwrap();
    let labels: Vec<i64> = (0..b as i64).map(|i| i * 3 % 7).collect();
    let labels = Tensor::from_vec(labels, b, &dev).unwrap();
    DeviceBatch { images, au_loc, labels, au_gt: None }
}

/// Losses (as bits) of `steps` steps of `stage` from the seeded default initialisation, and
/// every state tensor after them (as bits), computed on a pool of `threads` threads.
fn run(
    cfg: &ModelConfig,
    b: usize,
    stage: Stage,
    steps: usize,
    threads: usize,
) -> (Vec<u32>, BTreeMap<String, Vec<u32>>) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let map = VarMap::new();
        let model = AueModel::with_varmap(&map, cfg, &Device::Cpu).unwrap();
        aue_model::init::init_default(&map, 3).unwrap();
        let batch = batch(cfg, b);
        aue_model::seed_dropout(5, 0);
        let def = common::def(stage);
        let mut trainer = Trainer::new(def, model, 0.9, false);
        let mut acc =
            SplitAccumulator::new(def.records(), SplitName::Train, 7, &Device::Cpu).unwrap();
        let losses = (0..steps)
            .map(|_| {
                let loss = trainer.train_step(&batch, 0.01, &mut acc).unwrap();
                loss.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap().to_bits()
            })
            .collect();
        let state = aue_model::state::state_tensors(&map)
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                let v = v.flatten_all().unwrap().to_dtype(DType::F32).unwrap();
                (k, v.to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect())
            })
            .collect();
        (losses, state)
    })
}

fn same_on_1_and_3_threads(cfg: &ModelConfig, b: usize, stages: &[Stage], steps: usize) {
    for &stage in stages {
        let (l1, s1) = run(cfg, b, stage, steps, 1);
        let (l3, s3) = run(cfg, b, stage, steps, 3);
        let n = stage.number();
        assert_eq!(l1, l3, "stage {n}: losses on 1 and 3 threads");
        assert_eq!(s1.len(), s3.len());
        let differ: Vec<&String> = s1.keys().filter(|k| s1[*k] != s3[*k]).collect();
        assert!(differ.is_empty(), "stage {n}: state tensors differ on 3 threads: {differ:?}");
    }
}

const STAGES: [Stage; 3] = [Stage::Em, Stage::Au, Stage::Fuse];

#[test]
fn tiny_steps_are_the_same_on_any_thread_count() {
    same_on_1_and_3_threads(&ModelConfig::preset(Preset::Tiny), 4, &STAGES, 2);
}

/// resnet18: stage 1 at 160 px and batch 8, where several of the backbone's weight gradients are
/// summed from 3 or 4 partial results (chunks or groups of images; a changed order of those sums
/// fails this test); stages 2 and 3 at 128 px and batch 4 (their crop nets and heads).
#[test]
fn resnet18_steps_are_the_same_on_any_thread_count() {
    let r18 = ModelConfig::preset(Preset::Resnet18);
    let stage1 = r18.clone().with_input_size(160).unwrap();
    same_on_1_and_3_threads(&stage1, 8, &[Stage::Em], 1);
    let heads = r18.with_input_size(128).unwrap();
    same_on_1_and_3_threads(&heads, 4, &[Stage::Au, Stage::Fuse], 1);
}
