//! The same seed gives byte-identical files whatever the thread count; another seed does not.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use aue_synth::{SynthConfig, generate};

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
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SynthConfig::new(dir.path(), 8, 3, seed);
    cfg.size = 64;
    cfg.threads = threads;
    generate(&cfg).unwrap();
    let snap = snapshot(dir.path());
    (dir, snap)
}

#[test]
fn same_seed_same_bytes_across_thread_counts() {
    let (_a, one) = run(42, 1);
    let (_b, two) = run(42, 2);
    // 11 images x 4 files + label file + README.
    assert_eq!(one.len(), 11 * 4 + 2);
    assert_eq!(one.keys().collect::<Vec<_>>(), two.keys().collect::<Vec<_>>());
    for (path, bytes) in &one {
        assert!(bytes == &two[path], "{path} differs between 1 and 2 threads");
    }
    let (_c, other) = run(43, 2);
    let image = "basic/Image/original/train_00001.jpg";
    assert_ne!(one[image], other[image], "another seed draws another face");
}
