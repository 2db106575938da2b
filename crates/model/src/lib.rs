//! The AUE-CRL model (Pu et al., arXiv 2012.14587) on Candle: torchvision-compatible ResNet
//! backbones, the expression, AU and fusion branches, the prior knowledge table and the losses,
//! initialisers, and checkpoint I/O with the reference's state-dict keys.
//!
//! docs/METHOD.md sections 2-4 and 8 are what this crate implements; docs/FILES.md fixes its
//! interfaces. Start with [`AueModel`], [`ForwardOptions`] and [`loss::stage_loss`]; for
//! inference, [`InferenceModel`] (BatchNorm folded, fused layers) built from a loaded model.

mod branches;
pub mod config;
pub mod crops;
pub mod error;
pub mod fold;
pub mod infer;
pub mod init;
pub mod loss;
pub mod model;
pub mod nn;
mod resnet;
pub mod state;

pub use config::{BlockKind, ModelConfig, Preset};
pub use error::{ModelError, Result, TensorMismatch};
pub use infer::{EvalForward, InferenceModel};
pub use loss::{AuKnowledge, reference_eiau_weight, stage_loss, stage_loss_weighted};
pub use model::{
    AueModel, ForwardOptions, OutputSet, Outputs, Stage, is_bn_buffer, is_trainable,
    trainable_prefixes, trainable_vars,
};
pub use nn::{PartMode, in_pool, seed_dropout};
