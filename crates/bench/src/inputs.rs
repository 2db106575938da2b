//! The weights and the batch both workers load: a model initialised as for training from scratch
//! (aue-model's `init_default`, PyTorch's initialisers) and one random batch, as safetensors files
//! with the reference's tensor names (the PyTorch worker loads them with `strict=True`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use aue_contract::format::{save, write_safetensors};
use aue_core::NUM_AUS;
use aue_model::{AueModel, ModelConfig, Preset};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a benchmark run measures on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// Model preset.
    pub preset: Preset,
    /// Batch size.
    pub batch: usize,
    /// Input side S.
    pub size: usize,
    /// Seed of the weights and the batch.
    pub seed: u64,
}

impl Setup {
    /// The model configuration (7 basic classes).
    pub fn config(&self) -> anyhow::Result<ModelConfig> {
        Ok(ModelConfig::preset(self.preset).with_input_size(self.size)?)
    }
}

/// The two files of a run.
#[derive(Debug, Clone)]
pub struct Files {
    /// Model weights (reference keys).
    pub weights: PathBuf,
    /// `image` f32 [B,3,S,S], `au_loc` i64 [B,17,4], `label` i64 [B].
    pub inputs: PathBuf,
}

/// Writes the weights and one batch into `dir`.
pub fn write(dir: &Path, setup: &Setup) -> anyhow::Result<Files> {
    let config = setup.config()?;
    let model = AueModel::new(&config, &Device::Cpu)?;
    aue_model::init::init_default(model.varmap(), setup.seed)?;
    let files =
        Files { weights: dir.join("weights.safetensors"), inputs: dir.join("inputs.safetensors") };
    save(model.varmap(), &files.weights, &BTreeMap::new())
        .with_context(|| format!("writing {}", files.weights.display()))?;
    drop(model);

    let (b, s) = (setup.batch, setup.size);
    let mut rng = ChaCha8Rng::seed_from_u64(setup.seed ^ 0x00be_0c4b);
    // Pixels in about the range of ImageNet-normalised photos.
    let pixels: Vec<f32> = (0..b * 3 * s * s).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    // AU centres anywhere the loader's clamping allows: [L/2, G - L/2] on the grid.
    let (grid, half) = (config.grid() as i64, (config.crop_side() / 2) as i64);
    let loc: Vec<i64> =
        (0..b * NUM_AUS * 4).map(|_| rng.random_range(half..=grid - half)).collect();
    let labels: Vec<i64> = (0..b).map(|_| rng.random_range(0..config.num_classes as i64)).collect();
    let dev = Device::Cpu;
    let tensors = BTreeMap::from([
        ("image".to_string(), Tensor::from_vec(pixels, (b, 3, s, s), &dev)?),
        ("au_loc".to_string(), Tensor::from_vec(loc, (b, NUM_AUS, 4), &dev)?),
        ("label".to_string(), Tensor::from_vec(labels, b, &dev)?),
    ]);
    write_safetensors(&files.inputs, &tensors, &BTreeMap::new())
        .with_context(|| format!("writing {}", files.inputs.display()))?;
    Ok(files)
}
