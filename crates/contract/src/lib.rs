//! The AUE-CRL stage contract: what one stage hands to the next, and to the report and the
//! predictor, through files on disk (docs/FILES.md tells it whole).
//!
//! - [`layout`]: the run folder, the one place that names its files;
//! - [`format`]: the checkpoint file format (safetensors under the reference's state-dict keys,
//!   a `__metadata__` map), atomic save, strict and finite load, torchvision import;
//! - [`meta`]: the metadata keys, [`ModelMeta`], the optimizer state and the commit point;
//! - [`inspect`]: what model a checkpoint holds and whether a use may take it, every check in
//!   one place, before any tensor is loaded;
//! - [`records`] and [`metrics`]: the records of `metrics.jsonl`;
//! - [`eval`]: the one evaluation pass that makes those records;
//! - [`fsio`]: atomic writes and the fault-injection hook.
//!
//! It depends on the model and data crates and on nothing of the training engine, so the
//! report and the predictor read runs without it.

pub mod error;
pub mod eval;
pub mod format;
pub mod fsio;
pub mod inspect;
pub mod layout;
pub mod meta;
pub mod metrics;
pub mod records;

pub use error::{ContractError, Result};
pub use eval::{DeviceBatch, Prediction, RecordSpec, SplitAccumulator, evaluate};
pub use inspect::{CheckpointInfo, ParentRequirements};
pub use layout::StagePaths;
pub use meta::{BestEpoch, Commit, ModelMeta, OptimizerMeta};
pub use records::{RecordInfo, SplitName, SplitRecord};
