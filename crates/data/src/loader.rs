//! The batch loader: images are decoded, cropped, augmented and normalised on a rayon pool by
//! a background thread while the consumer works on the previous batch, through a bounded queue
//! (so memory stays flat over an epoch).
//!
//! Determinism: the epoch's order is a shuffle seeded by `(seed, epoch)`, and each sample's
//! augmentation comes from its own generator seeded by `(seed, epoch, sample index)`. Nothing
//! depends on which thread loads which sample, so the same seed gives the same batches, bit
//! for bit, whatever the thread count.
//!
//! Train batches follow docs/METHOD.md section 6: shuffled, the last partial batch dropped
//! (`drop_last`, an option keeps it). The reference also shuffles its test loader; that changes
//! nothing in the metric, so [`LoaderOptions::eval`] does not.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use crossbeam_channel::{Receiver, bounded};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::preprocess::{AuLoc, Augment};

/// How to batch a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderOptions {
    /// Samples per batch (> 0).
    pub batch_size: usize,
    /// Shuffle the order each epoch.
    pub shuffle: bool,
    /// Drop the last batch when it is partial.
    pub drop_last: bool,
    /// Seed of the shuffles and augmentation draws.
    pub seed: u64,
    /// Worker threads decoding images; 0 = one per available core.
    pub threads: usize,
    /// Finished batches that may wait in the queue (>= 1).
    pub prefetch: usize,
    /// Apply the training augmentation (random offset and flip).
    pub train_augment: bool,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions::eval(64)
    }
}

impl LoaderOptions {
    /// The reference's training loader: shuffled, last partial batch dropped, augmented.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        LoaderOptions {
            batch_size,
            shuffle: true,
            drop_last: true,
            seed,
            threads: 0,
            prefetch: 2,
            train_augment: true,
        }
    }

    /// An evaluation loader: list order, every sample, no augmentation.
    pub fn eval(batch_size: usize) -> Self {
        LoaderOptions {
            batch_size,
            shuffle: false,
            drop_last: false,
            seed: 0,
            threads: 0,
            prefetch: 2,
            train_augment: false,
        }
    }
}

/// One batch of CPU tensors (CONTRACT "Data").
#[derive(Debug, Clone)]
pub struct Batch {
    /// f32 `[B, 3, S, S]`, ImageNet-normalised.
    pub images: Tensor,
    /// i64 `[B, 17, 4]`: per AU `x1 y1 x2 y2` on the G grid.
    pub au_loc: Tensor,
    /// i64 `[B]`: 0-based class indices.
    pub labels: Tensor,
    /// f32 `[B, 17]`: ground-truth AU intensities, when the dataset has them.
    pub au_gt: Option<Tensor>,
    /// Sample names (`train_00001.jpg`, `Happy/<id>`).
    pub names: Vec<String>,
    /// Dataset indices of the samples.
    pub indices: Vec<usize>,
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the batch is empty (the loader never yields one).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Generator streams, so that shuffles and augmentations never share a key.
const STREAM_SHUFFLE: u64 = 0x7368_7566_666c_6501;
const STREAM_AUGMENT: u64 = 0x6175_676d_656e_7402;

/// The generator of one `(seed, epoch, index, stream)`: ChaCha8 keyed by the four words, so
/// distinct tuples get independent streams.
fn generator(seed: u64, epoch: usize, index: u64, stream: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(epoch as u64).to_le_bytes());
    key[16..24].copy_from_slice(&index.to_le_bytes());
    key[24..].copy_from_slice(&stream.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// The training augmentation of sample `index` in `epoch` under `seed`.
pub fn sample_augment(dataset: &Dataset, seed: u64, epoch: usize, index: usize) -> Result<Augment> {
    let half = dataset.half_padding(index)?;
    Ok(Augment::draw(&mut generator(seed, epoch, index as u64, STREAM_AUGMENT), half))
}

/// Loader state shared with the background threads.
#[derive(Debug, Default)]
struct Shared {
    /// Samples dropped from batches under `skip_bad`, all epochs together.
    skipped: AtomicUsize,
    /// Samples already warned about (each is reported once).
    warned: Mutex<HashSet<usize>>,
}

/// Batches a dataset; see the module doc.
pub struct Loader {
    dataset: Dataset,
    options: LoaderOptions,
    pool: Arc<rayon::ThreadPool>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("dataset", &self.dataset.kind())
            .field("split", &self.dataset.split())
            .field("options", &self.options)
            .finish()
    }
}

impl Loader {
    /// A loader over `dataset` (shared, not copied).
    pub fn new(dataset: &Dataset, options: LoaderOptions) -> Result<Loader> {
        if options.batch_size == 0 {
            return Err(DataError::Options("batch_size must be > 0".into()));
        }
        if options.prefetch == 0 {
            return Err(DataError::Options("prefetch must be >= 1".into()));
        }
        let full = dataset.len() / options.batch_size;
        if options.drop_last && full == 0 {
            return Err(DataError::Options(format!(
                "the {} split has {} samples, fewer than one batch of {} with drop_last: \
                 an epoch would be empty",
                dataset.split(),
                dataset.len(),
                options.batch_size
            )));
        }
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("aue-data-{i}"))
            .build()
            .map_err(|e| {
                DataError::Options(format!("cannot start {threads} loader threads: {e}"))
            })?;
        Ok(Loader {
            dataset: dataset.clone(),
            options,
            pool: Arc::new(pool),
            shared: Arc::new(Shared::default()),
        })
    }

    /// The dataset.
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// The options.
    pub fn options(&self) -> &LoaderOptions {
        &self.options
    }

    /// Worker threads in the pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.options.batch_size);
        if self.options.drop_last { n / b } else { n.div_ceil(b) }
    }

    /// Samples dropped from batches so far (undecodable images under `skip_bad`).
    pub fn skipped(&self) -> usize {
        self.shared.skipped.load(Ordering::Relaxed)
    }

    /// The sample order of `epoch` (dataset indices), before batching.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.options.shuffle {
            order.shuffle(&mut generator(self.options.seed, epoch, u64::MAX, STREAM_SHUFFLE));
        }
        order
    }

    /// The dataset indices of each batch of `epoch`.
    pub fn batch_indices(&self, epoch: usize) -> Vec<Vec<usize>> {
        let b = self.options.batch_size;
        let order = self.order(epoch);
        let mut batches: Vec<Vec<usize>> = order.chunks(b).map(<[usize]>::to_vec).collect();
        if self.options.drop_last && batches.last().is_some_and(|last| last.len() < b) {
            batches.pop();
        }
        batches
    }

    /// The augmentation sample `index` gets in `epoch` (none without `train_augment`).
    pub fn augment_for(&self, epoch: usize, index: usize) -> Result<Augment> {
        if self.options.train_augment {
            sample_augment(&self.dataset, self.options.seed, epoch, index)
        } else {
            Ok(Augment::NONE)
        }
    }

    /// Loads one batch of the given dataset indices on the calling thread's view of the pool
    /// (the epoch iterator calls this from its background thread).
    pub fn load_batch(&self, epoch: usize, indices: &[usize]) -> Result<Option<Batch>> {
        let job = BatchJob { dataset: &self.dataset, options: &self.options, shared: &self.shared };
        self.pool.install(|| job.run(epoch, indices))
    }

    /// The batches of `epoch`, loaded ahead on background threads. An error ends the epoch
    /// (it is yielded once, then the iterator stops). Dropping the iterator stops the work.
    pub fn epoch(&self, epoch: usize) -> EpochIter {
        let batches = self.batch_indices(epoch);
        let total = batches.len();
        let (tx, rx) = bounded(self.options.prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            dataset: self.dataset.clone(),
            options: self.options.clone(),
            shared: Arc::clone(&self.shared),
            pool: Arc::clone(&self.pool),
            stop: Arc::clone(&stop),
        };
        let spawned = std::thread::Builder::new().name(format!("aue-loader-epoch-{epoch}")).spawn(
            move || {
                for indices in batches {
                    if worker.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let job = BatchJob {
                        dataset: &worker.dataset,
                        options: &worker.options,
                        shared: &worker.shared,
                    };
                    match worker.pool.install(|| job.run(epoch, &indices)) {
                        Ok(None) => continue,
                        Ok(Some(batch)) => {
                            if tx.send(Ok(batch)).is_err() {
                                return; // the consumer is gone
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
            },
        );
        match spawned {
            Ok(handle) => EpochIter {
                epoch,
                total,
                rx: Some(rx),
                handle: Some(handle),
                stop,
                pending: None,
                done: false,
            },
            Err(e) => EpochIter {
                epoch,
                total,
                rx: None,
                handle: None,
                stop,
                pending: Some(DataError::Worker {
                    epoch,
                    message: format!("cannot start the loader thread: {e}"),
                }),
                done: false,
            },
        }
    }
}

/// What the background thread owns.
struct Worker {
    dataset: Dataset,
    options: LoaderOptions,
    shared: Arc<Shared>,
    pool: Arc<rayon::ThreadPool>,
    stop: Arc<AtomicBool>,
}

/// One batch's work, run inside the pool.
struct BatchJob<'a> {
    dataset: &'a Dataset,
    options: &'a LoaderOptions,
    shared: &'a Shared,
}

impl BatchJob<'_> {
    /// Loads the samples in parallel, each into its own slice of the batch buffer. `None` when
    /// every sample was skipped.
    fn run(&self, epoch: usize, indices: &[usize]) -> Result<Option<Batch>> {
        let size = self.dataset.input_size() as usize;
        let per = 3 * size * size;
        let mut images = vec![0.0f32; indices.len() * per];
        let outcomes: Vec<Result<AuLoc>> = images
            .par_chunks_mut(per)
            .zip(indices.par_iter())
            .map(|(out, &index)| {
                let augment = if self.options.train_augment {
                    sample_augment(self.dataset, self.options.seed, epoch, index)?
                } else {
                    Augment::NONE
                };
                self.dataset.prepare_into(index, &augment, out)
            })
            .collect();

        let skip_bad = self.dataset.options().skip_bad;
        let mut kept = Vec::with_capacity(indices.len());
        for (slot, (outcome, &index)) in outcomes.into_iter().zip(indices).enumerate() {
            match outcome {
                Ok(au_loc) => kept.push((slot, index, au_loc)),
                Err(e) if skip_bad => self.skip(index, &e),
                Err(e) => return Err(e),
            }
        }
        if kept.is_empty() {
            return Ok(None);
        }
        if kept.len() < indices.len() {
            // Close the gaps left by skipped samples (rare: undecodable images).
            for (to, &(from, _, _)) in kept.iter().enumerate() {
                if to != from {
                    images.copy_within(from * per..(from + 1) * per, to * per);
                }
            }
            images.truncate(kept.len() * per);
        }

        let n = kept.len();
        let samples = self.dataset.samples();
        let mut au_loc: Vec<i64> = Vec::with_capacity(n * aue_core::NUM_AUS * 4);
        let mut labels = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut kept_indices = Vec::with_capacity(n);
        let mut au_gt = self.dataset.has_au_gt().then(|| Vec::with_capacity(n * aue_core::NUM_AUS));
        for (_, index, loc) in &kept {
            let s = &samples[*index];
            au_loc.extend(loc.iter().flatten());
            labels.push(s.label as i64);
            names.push(s.name.clone());
            kept_indices.push(*index);
            if let Some(gt) = au_gt.as_mut() {
                // has_au_gt means every sample has its AU file (checked at open).
                gt.extend(s.au_gt.unwrap_or([0.0; aue_core::NUM_AUS]));
            }
        }
        let cpu = Device::Cpu;
        Ok(Some(Batch {
            images: Tensor::from_vec(images, (n, 3, size, size), &cpu)?, // [b, 3, s, s]
            au_loc: Tensor::from_vec(au_loc, (n, aue_core::NUM_AUS, 4), &cpu)?, // [b, 17, 4]
            labels: Tensor::from_vec(labels, n, &cpu)?,                  // [b]
            au_gt: au_gt.map(|v| Tensor::from_vec(v, (n, aue_core::NUM_AUS), &cpu)).transpose()?,
            names,
            indices: kept_indices,
        }))
    }

    fn skip(&self, index: usize, error: &DataError) {
        self.shared.skipped.fetch_add(1, Ordering::Relaxed);
        let first_time = match self.shared.warned.lock() {
            Ok(mut warned) => warned.insert(index),
            Err(poisoned) => poisoned.into_inner().insert(index),
        };
        if first_time {
            tracing::warn!(%error, "skipping an unloadable sample (skip_bad)");
        }
    }
}

/// The batches of one epoch; see [`Loader::epoch`].
pub struct EpochIter {
    epoch: usize,
    total: usize,
    rx: Option<Receiver<Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    pending: Option<DataError>,
    done: bool,
}

impl EpochIter {
    /// The epoch being loaded.
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// Batches planned for this epoch (fewer come only if `skip_bad` empties a whole batch).
    pub fn planned(&self) -> usize {
        self.total
    }

    /// Waits for the background thread; an error if it panicked.
    fn finish(&mut self) -> Option<DataError> {
        let handle = self.handle.take()?;
        match handle.join() {
            Ok(()) => None,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".to_string());
                Some(DataError::Worker { epoch: self.epoch, message })
            }
        }
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.done {
            return None;
        }
        if let Some(e) = self.pending.take() {
            self.done = true;
            return Some(Err(e));
        }
        let received = self.rx.as_ref().map(Receiver::recv);
        match received {
            Some(Ok(Ok(batch))) => Some(Ok(batch)),
            Some(Ok(Err(e))) => {
                self.done = true;
                Some(Err(e))
            }
            // The worker finished (or died): the channel is closed and empty.
            Some(Err(_)) | None => {
                self.done = true;
                self.finish().map(Err)
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done { (0, Some(0)) } else { (0, Some(self.total + 1)) }
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver makes a blocked `send` fail, so the worker exits promptly.
        self.rx = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
