//! The AUE-CRL training engine (docs/METHOD.md sections 4 and 6): it runs any stage that
//! implements [`StageDef`]; the three reference stages are the crates `aue-stage1`,
//! `aue-stage2` and `aue-stage3`.
//!
//! - [`stage`]: the [`StageDef`] trait, what differs between stages;
//! - [`config`]: flags and `--config` TOML resolved into a checked [`StageConfig`];
//! - [`optim`] and [`schedule`]: SGD with momentum (PyTorch semantics) and the step schedule;
//! - [`engine`]: the [`engine::Trainer`]: one training step and the evaluation pass;
//! - [`run()`]: a whole stage run, `--resume` and `--overwrite` included; [`cli`]: the command
//!   line of a stage binary.
//!
//! Files on disk (run folders, checkpoints, metric records) are the stage contract's,
//! `aue-contract`.

pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod optim;
pub mod run;
pub mod schedule;
pub mod stage;

pub use config::{Precision, SelectBy, StageArgs, StageConfig};
pub use error::{Result, TrainError};
pub use run::{RunSummary, run};
pub use stage::{LossInputs, Origin, StageDef};
