//! The same seed gives byte-identical files whatever the thread count; another seed does not;
//! `--label-noise` changes the training labels and nothing else.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use aue_synth::{Difficulty, DifficultyLevel, LABEL_FILE, SynthConfig, TRUE_LABEL_FILE, generate};

/// Every file under `root`, by relative path.
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn run(seed: u64, threads: usize) -> (tempfile::TempDir, BTreeMap<String, Vec<u8>>) {
    run_with(seed, threads, |_| {})
}

/// Generates 8 train + 3 test images of 64 px after `edit` has changed the config.
fn run_with(
    seed: u64,
    threads: usize,
    edit: impl FnOnce(&mut SynthConfig),
) -> (tempfile::TempDir, BTreeMap<String, Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SynthConfig::new(dir.path(), 8, 3, seed);
    cfg.size = 64;
    cfg.threads = threads;
    edit(&mut cfg);
    generate(&cfg).unwrap();
    let snap = snapshot(dir.path());
    (dir, snap)
}

#[test]
fn same_seed_same_bytes_across_thread_counts() {
    let (_a, one) = run(42, 1);
    let (_b, two) = run(42, 2);
    // 11 images x 4 files + label file + true-label file + README.
    assert_eq!(one.len(), 11 * 4 + 3);
    assert_eq!(one.keys().collect::<Vec<_>>(), two.keys().collect::<Vec<_>>());
    for (path, bytes) in &one {
        assert!(bytes == &two[path], "{path} differs between 1 and 2 threads");
    }
    let (_c, other) = run(43, 2);
    let image = "basic/Image/original/train_00001.jpg";
    assert_ne!(one[image], other[image], "another seed draws another face");
}

/// The label lines of a snapshot's file `name`, as (image, label) pairs.
fn labels(snap: &BTreeMap<String, Vec<u8>>, name: &str) -> Vec<(String, String)> {
    let text = String::from_utf8(snap[name].clone()).unwrap();
    text.lines()
        .map(|l| {
            let (image, label) = l.split_once(' ').unwrap();
            (image.to_string(), label.to_string())
        })
        .collect()
}

#[test]
fn label_noise_flips_training_labels_only_and_keeps_the_truth() {
    // The easy preset has no label noise of its own, so every difference is the option's.
    let easy = |cfg: &mut SynthConfig| cfg.difficulty = Difficulty::preset(DifficultyLevel::Easy);
    let (_a, clean) = run_with(5, 2, easy);
    let (_b, noisy) = run_with(5, 2, |cfg| {
        easy(cfg);
        cfg.train_label_noise = 0.75;
    });
    // Images, boxes, landmarks and AU ground truth are the same bytes: the noise has its own
    // random stream and the AU files hold the generating expression's AUs.
    for (path, bytes) in &clean {
        if path != LABEL_FILE && !path.ends_with("README.md") {
            assert!(bytes == &noisy[path], "{path} changed with label noise");
        }
    }
    let truth = labels(&clean, LABEL_FILE);
    assert_eq!(labels(&clean, TRUE_LABEL_FILE), truth);
    assert_eq!(labels(&noisy, TRUE_LABEL_FILE), truth, "the true labels are kept");
    let written = labels(&noisy, LABEL_FILE);
    let mut flipped = 0;
    for ((image, label), (true_image, true_label)) in written.iter().zip(&truth) {
        assert_eq!(image, true_image);
        if image.starts_with("test_") {
            assert_eq!(label, true_label, "{image}: test labels keep the truth");
        } else if label != true_label {
            flipped += 1;
        }
    }
    // 8 training images at p = 0.75: P(at most 2 flips) is about 0.4%, fixed by the seed.
    assert!(flipped >= 3, "only {flipped} of 8 training labels flipped at p = 0.75");
}
