//! What the top-level tests share: the real binaries, built once by cargo itself for the
//! profile the tests run in (so `cargo test -p aue-tests` alone works), a tiny synthetic set,
//! and small helpers to run a binary and read what it left on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The folder of the workspace's binaries for this test's profile (`target/release`), built
/// once per test process with `cargo build` (a no-op when `cargo test --workspace` has built
/// them already).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test's own path");
        // target/<profile>/deps/<test>-<hash> -> target/<profile>
        let dir = exe.parent().and_then(Path::parent).expect("a target folder").to_owned();
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug").to_owned();
        let target = dir.parent().expect("target root");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.arg("build").arg("--quiet").env("CARGO_TARGET_DIR", target);
        if profile == "release" {
            cmd.arg("--release");
        }
        // The whole workspace's binaries: building a subset would resolve other features for
        // shared dependencies than `cargo test --workspace` did, and rebuild them.
        cmd.args(["--workspace", "--bins"]);
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
        dir
    })
}

/// A binary's path.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// Runs `name` with `args` and extra environment variables.
pub fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin(name));
    cmd.args(args).env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
}

/// stdout and stderr of a run.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Asserts a successful run and returns its text.
pub fn ok(name: &str, args: &[&str]) -> String {
    let out = run(name, args, &[]);
    assert!(out.status.success(), "{name} {args:?} failed:\n{}", text(&out));
    text(&out)
}

/// A synthetic RAF-DB-layout set of `train` / `test` faces at 64 px under `dir/synth`.
pub fn synth(dir: &Path, train: usize, test: usize) -> PathBuf {
    let root = dir.join("synth");
    let mut cfg = aue_synth::SynthConfig::new(&root, train, test, 5);
    cfg.size = 64;
    cfg.threads = 1;
    aue_synth::generate(&cfg).expect("synthetic set");
    root
}

/// The flags of a tiny, short stage run (tiny preset, 2 steps per epoch, one thread).
pub fn stage_args(data: &Path, run_dir: &Path, epochs: usize) -> Vec<String> {
    [
        "--data-root",
        data.to_str().unwrap_or_default(),
        "--run-dir",
        run_dir.to_str().unwrap_or_default(),
        "--preset",
        "tiny",
        "--epochs",
        &epochs.to_string(),
        "--max-steps",
        "2",
        "--train-batch-size",
        "8",
        "--test-batch-size",
        "8",
        "--workers",
        "1",
        "--threads",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `&[String]` as `Vec<&str>`.
pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The `__metadata__` of a checkpoint.
pub fn meta(path: &Path) -> BTreeMap<String, String> {
    aue_contract::format::read_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every tensor of a safetensors file, as f64 values.
pub fn tensors(path: &Path) -> BTreeMap<String, Vec<f64>> {
    let (_, t) = aue_contract::format::read_safetensors(path, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    t.into_iter()
        .map(|(k, v)| {
            let v = v.flatten_all().and_then(|v| v.to_dtype(candle_core::DType::F64));
            (k, v.and_then(|v| v.to_vec1::<f64>()).unwrap_or_default())
        })
        .collect()
}

/// Every file below `dir` (relative path -> bytes), to compare a folder before and after.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.insert(p.strip_prefix(root).unwrap_or(&p).to_owned(), bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Copies a folder tree (files as copies, links followed).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create folder");
    for e in std::fs::read_dir(from).expect("list folder").flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy file");
        }
    }
}

/// `metrics.jsonl` as JSON values without the wall-time fields.
pub fn metrics(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|mut v| {
            if let Some(o) = v.as_object_mut() {
                o.remove("seconds");
                o.remove("images_per_s");
            }
            v
        })
        .collect()
}
