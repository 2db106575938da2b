//! Dataset readers, preprocessing and the batch loader of aue (docs/METHOD.md sections 1 and 5).
//!
//! - [`Dataset::open`] reads RAF-DB basic / compound or SFEW 2.0 (the synthetic set is a
//!   RAF-DB-basic layout with ground-truth AUs), parsing every annotation up front.
//! - [`preprocess`] holds the reference's crop, augmentation, resize and AU-location rules.
//! - With the cargo feature `parquet`, `Dataset::open_parquet` reads a FER set stored as a
//!   parquet file (schema in `src/parquet_source.rs`).
//! - [`Loader`] turns a dataset into batches of CPU tensors (CONTRACT "Data"), decoding on a
//!   rayon pool ahead of the consumer, deterministic per seed.
//!
//! ```no_run
//! use aue_data::{Dataset, DatasetKind, DatasetOptions, Loader, LoaderOptions, Split};
//! # fn main() -> aue_data::Result<()> {
//! let train = Dataset::open(DatasetKind::Rafdb, "data/RAF", Split::Train, &DatasetOptions::default())?;
//! let loader = Loader::new(&train, LoaderOptions::train(64, 0))?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?;
//!     // batch.images: f32 [64, 3, 224, 224], batch.au_loc: i64 [64, 17, 4], batch.labels: i64 [64]
//! }
//! # Ok(())
//! # }
//! ```

mod annotations;
mod dataset;
mod error;
pub mod landmarks;
mod loader;
#[cfg(feature = "parquet")]
mod parquet_source;
pub mod preprocess;

pub use aue_core::FaceBox;
pub use dataset::{Dataset, DatasetKind, DatasetOptions, OpenReport, Prepared, SampleInfo, Split};
pub use error::{DataError, Result};
pub use loader::{Batch, EpochIter, Loader, LoaderOptions, sample_augment};
/// The parquet reader [`Dataset::from_parquet_readers`] takes (feature `parquet`).
#[cfg(feature = "parquet")]
pub use parquet::file::reader::SerializedFileReader;
pub use preprocess::{AuGrid, AuLoc, Augment, Plan};
