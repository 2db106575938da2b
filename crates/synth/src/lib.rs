//! Synthetic faces with FACS action units, written as a RAF-DB *basic* dataset (docs/METHOD.md
//! sections 1, 2 and 5) plus ground-truth AU intensities, so that the whole AUE-CRL pipeline can be
//! trained, tested and demonstrated without the licensed datasets.
//!
//! - [`generate`] writes a set: expression per image, AUs drawn from the expression-AU prior,
//!   a face rendered from 68 landmarks moved by those AUs, and the annotation files.
//! - [`render_face`] draws one face and returns the image, its landmarks, box and AUs (for tests
//!   and landmark-accuracy evaluations); [`sample_aus`] is the expression -> AU sampler.
//! - [`Difficulty`] holds every knob that makes the set easier or harder.

pub mod appearance;
pub mod dataset;
pub mod difficulty;
pub mod error;
pub mod expression;
pub mod geometry;
pub mod post;
pub mod random;
pub mod render;

pub use dataset::{
    AU_DIR, BOX_DIR, IMAGE_DIR, LABEL_FILE, LANDMARK_DIR, Sample, SplitSummary, SynthConfig,
    SynthSummary, TRUE_LABEL_FILE, draw_sample, generate, generate_with_progress, image_name,
    split_expressions,
};
pub use difficulty::{Difficulty, DifficultyLevel};
pub use error::{Result, SynthError};
pub use expression::{ClassBalance, sample_aus};
pub use random::{Split, image_rng, train_noise_rng};
pub use render::{FaceParams, RenderedFace, render, render_face};
