//! The shared AUE-CRL training engine (REFERENCE.md sections 4 and 6), used by the three thin
//! stage binaries `aue-stage1`, `aue-stage2` and `aue-stage3`.
//!
//! - [`config`]: flags and `--config` TOML resolved into a checked [`StageConfig`];
//! - [`paths`]: the run-folder layout, the one place that names files;
//! - [`optim`] and [`schedule`]: SGD with momentum (PyTorch semantics) and the step schedule;
//! - [`engine`]: one training step / evaluation pass of a stage and the per-epoch records;
//! - [`metrics`]: per-class and mean class accuracy, confusion matrix, AU precision/recall/F1;
//! - [`checkpoints`]: checkpoint metadata, the checks on a starting checkpoint, optimizer state;
//! - [`run()`]: a whole stage run with `--resume`; [`logging`]: terminal + `train.log`.

pub mod checkpoints;
pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod fsio;
pub mod logging;
pub mod metrics;
pub mod optim;
pub mod paths;
pub mod run;
pub mod schedule;

pub use aue_model::{Preset, Stage, alloc};
pub use config::{Dataset, DeviceSpec, StageArgs, StageConfig};
pub use error::{Result, TrainError};
pub use run::{RunSummary, run};
