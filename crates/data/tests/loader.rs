//! The batch loader: batch shapes (CONTRACT "Data"), docs/METHOD.md section 6's batching (shuffled,
//! last partial train batch dropped), and determinism of order and augmentation whatever the
//! thread count.

mod common;

use std::collections::HashSet;

use aue_data::{
    Augment, Batch, Dataset, DatasetKind, DatasetOptions, Loader, LoaderOptions, Split,
    sample_augment,
};
use common::*;

/// A 10-sample train split at S = 64.
fn dataset(dir: &std::path::Path) -> Dataset {
    let names: Vec<String> = (1..=10).map(|i| format!("train_{i:05}.jpg")).collect();
    let entries: Vec<(&str, usize)> =
        names.iter().enumerate().map(|(i, n)| (n.as_str(), i % 7 + 1)).collect();
    make_raf(dir, "basic", &entries);
    let options = DatasetOptions { input_size: 64, ..DatasetOptions::default() };
    Dataset::open(DatasetKind::Rafdb, dir, Split::Train, &options).unwrap()
}

/// Everything a batch holds, as plain vectors.
#[derive(Debug, PartialEq)]
struct Plain {
    images: Vec<f32>,
    au_loc: Vec<i64>,
    labels: Vec<i64>,
    names: Vec<String>,
}

fn plain(b: &Batch) -> Plain {
    Plain {
        images: b.images.flatten_all().unwrap().to_vec1().unwrap(),
        au_loc: b.au_loc.flatten_all().unwrap().to_vec1().unwrap(),
        labels: b.labels.to_vec1().unwrap(),
        names: b.names.clone(),
    }
}

fn epoch(loader: &Loader, e: usize) -> Vec<Plain> {
    loader.epoch(e).map(|b| plain(&b.unwrap())).collect()
}

#[test]
fn batches_have_the_contract_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path());
    let loader = Loader::new(&ds, LoaderOptions::train(4, 1)).unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();
    assert_eq!(batch.images.dims(), &[4, 3, 64, 64]);
    assert_eq!(batch.images.dtype(), candle_core::DType::F32);
    assert_eq!(batch.au_loc.dims(), &[4, 17, 4]);
    assert_eq!(batch.au_loc.dtype(), candle_core::DType::I64);
    assert_eq!(batch.labels.dims(), &[4]);
    assert_eq!(batch.labels.dtype(), candle_core::DType::I64);
    assert!(batch.au_gt.is_none());
    assert_eq!(batch.len(), 4);
    // AU centres stay inside [L/2, G - L/2] = [3, 13] at S = 64.
    let loc: Vec<i64> = batch.au_loc.flatten_all().unwrap().to_vec1().unwrap();
    assert!(loc.iter().all(|v| (3..=13).contains(v)), "{loc:?}");
    // Labels and names agree with the dataset.
    let labels: Vec<i64> = batch.labels.to_vec1().unwrap();
    for ((name, index), label) in batch.names.iter().zip(&batch.indices).zip(labels) {
        let s = &ds.samples()[*index];
        assert_eq!((&s.name, s.label as i64), (name, label));
    }
}

#[test]
fn train_batches_drop_the_last_partial_batch_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path());
    let train = Loader::new(&ds, LoaderOptions::train(3, 0)).unwrap();
    assert_eq!(train.batches_per_epoch(), 3);
    let batches = epoch(&train, 0);
    assert_eq!(batches.len(), 3);
    assert!(batches.iter().all(|b| b.names.len() == 3));
    // Shuffled, each sample at most once.
    let names: HashSet<&String> = batches.iter().flat_map(|b| &b.names).collect();
    assert_eq!(names.len(), 9);

    let keep =
        Loader::new(&ds, LoaderOptions { drop_last: false, ..LoaderOptions::train(3, 0) }).unwrap();
    assert_eq!(keep.batches_per_epoch(), 4);
    let batches = epoch(&keep, 0);
    assert_eq!(batches.iter().map(|b| b.names.len()).collect::<Vec<_>>(), vec![3, 3, 3, 1]);

    // Evaluation: list order, every sample, no augmentation.
    let eval = Loader::new(&ds, LoaderOptions::eval(4)).unwrap();
    let batches = eval.epoch(0).map(Result::unwrap).collect::<Vec<_>>();
    let indices: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(indices, (0..10).collect::<Vec<_>>());
    let first = ds.prepare(0, &Augment::NONE).unwrap();
    let images: Vec<f32> =
        batches[0].images.get(0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(images, first.image);

    // An epoch that would be empty is refused.
    let err = Loader::new(&ds, LoaderOptions::train(11, 0)).unwrap_err();
    assert!(err.to_string().contains("fewer than one batch"), "{err}");
    assert!(Loader::new(&ds, LoaderOptions::train(0, 0)).is_err());
}

#[test]
fn same_seed_same_batches_whatever_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path());
    let with = |threads: usize, prefetch: usize, seed: u64| {
        let options = LoaderOptions { threads, prefetch, ..LoaderOptions::train(4, seed) };
        Loader::new(&ds, options).unwrap()
    };
    let one = with(1, 1, 42);
    assert_eq!(one.threads(), 1);
    let reference: Vec<Vec<Plain>> = (0..2).map(|e| epoch(&one, e)).collect();
    for (threads, prefetch) in [(2, 2), (3, 1), (4, 3)] {
        let loader = with(threads, prefetch, 42);
        for (e, want) in reference.iter().enumerate() {
            assert!(epoch(&loader, e) == *want, "threads {threads}, epoch {e}");
        }
    }
    // The same loader gives the same epoch twice.
    assert!(epoch(&one, 1) == reference[1]);
    // Epochs differ from each other, and another seed differs.
    assert_ne!(reference[0], reference[1]);
    assert_ne!(epoch(&with(2, 2, 43), 0), reference[0]);
}

#[test]
fn augmentation_comes_from_the_sample_seed() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path());
    let loader = Loader::new(&ds, LoaderOptions::train(4, 5)).unwrap();
    let mut flips = 0;
    let mut shifted = 0;
    for e in 0..3 {
        for batch in loader.epoch(e) {
            let batch = batch.unwrap();
            for (row, &index) in batch.indices.iter().enumerate() {
                let augment = sample_augment(&ds, 5, e, index).unwrap();
                assert_eq!(loader.augment_for(e, index).unwrap(), augment);
                let want = ds.prepare(index, &augment).unwrap();
                let got: Vec<f32> =
                    batch.images.get(row).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(got, want.image, "epoch {e} sample {index}");
                let loc: Vec<i64> =
                    batch.au_loc.get(row).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(loc, want.au_loc.iter().flatten().copied().collect::<Vec<_>>());
                flips += augment.flip as usize;
                shifted += (augment.dx != 0 || augment.dy != 0) as usize;
                let half = ds.half_padding(index).unwrap();
                assert!(augment.dx.abs() <= half && augment.dy.abs() <= half);
            }
        }
    }
    // 24 draws: both flip outcomes and some offsets occur (half padding is 3 here).
    assert!(flips > 0 && flips < 24, "{flips}");
    assert!(shifted > 0);
}

#[test]
fn dropping_an_epoch_early_stops_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path());
    let options = LoaderOptions { prefetch: 1, ..LoaderOptions::train(2, 0) };
    let loader = Loader::new(&ds, options).unwrap();
    for e in 0..5 {
        let mut it = loader.epoch(e);
        assert_eq!(it.planned(), 5);
        assert!(it.next().unwrap().is_ok());
        // Dropped with batches still to come: the worker must stop and be joined.
    }
    // The loader still works afterwards.
    assert_eq!(loader.epoch(9).count(), 5);
}
