//! Exports checkpoints saved as the trainer saves them (random init, trainer metadata) and runs
//! the ONNX files in tract: every output must equal aue's own eval forward pass within relative
//! L2 1e-4, for a batch of 2 and a batch of 5 on the same loaded graph (dynamic batch).

use std::path::{Path, PathBuf};
use std::process::Command;

use aue_contract::meta::ModelMeta;
use aue_export::check::{self, Batch, TractModel};
use aue_export::{ExportConfig, Output};
use aue_model::{AueModel, ModelConfig, Preset, Stage};
use candle_core::Device;

const TOLERANCE: f64 = 1e-4;

/// How the test model's weights are drawn.
#[derive(Clone, Copy)]
enum Init {
    /// crates/model's deterministic parity filler: BatchNorm weights, biases and running
    /// statistics away from 1 / 0, so that folding them is exercised.
    Parity,
    /// crates/model's training-from-scratch init (kaiming backbone), seeded.
    Default(u64),
}

/// A model of `preset` at input side `side`, saved with the trainer's metadata as a checkpoint
/// of `stage`.
fn checkpoint(dir: &Path, preset: Preset, side: usize, stage: Stage, init: Init) -> PathBuf {
    let config = ModelConfig::preset(preset).with_input_size(side).unwrap();
    let model = AueModel::new(&config, &Device::Cpu).unwrap();
    match init {
        Init::Parity => aue_model::init::fill_parity(model.varmap()).unwrap(),
        Init::Default(seed) => aue_model::init::init_default(model.varmap(), seed).unwrap(),
    }
    let meta = ModelMeta::untrained(stage, preset, &config);
    let path = dir.join(format!("{preset}_stage{}.safetensors", stage.number()));
    aue_contract::format::save(model.varmap(), &path, &meta.to_map()).unwrap();
    path
}

fn config(ckpt: &Path, out: &Path, preprocess: bool, all_outputs: bool) -> ExportConfig {
    ExportConfig {
        checkpoint: ckpt.to_path_buf(),
        out: out.to_path_buf(),
        preset: None,
        preprocess,
        all_outputs,
        external_data: false,
    }
}

/// Export `cfg`, write it, load the file in tract, and compare each batch size with aue; returns
/// the worst relative L2 per output and the written model.json.
fn export_and_compare(cfg: &ExportConfig, batches: &[usize]) -> (Vec<(String, f64)>, String) {
    let (info, model) = aue_export::load_checkpoint(cfg).unwrap();
    let (encoded, json) = aue_export::export(&model, &info, cfg).unwrap().encode().unwrap();
    aue_export::write(cfg, &encoded, &json).unwrap();
    let on_disk = std::fs::read(&cfg.out).unwrap();
    assert_eq!(on_disk, encoded.onnx);
    let spec = cfg.spec(&info);
    // External weights are found beside the file; otherwise load from memory.
    let tract = match &encoded.data {
        Some(data) => {
            assert_eq!(&std::fs::read(cfg.data_path()).unwrap(), data);
            TractModel::load_file(&cfg.out, &spec).unwrap()
        }
        None => TractModel::load(&on_disk, &spec).unwrap(),
    };
    let mut worst: Vec<(String, f64)> = Vec::new();
    for (i, &n) in batches.iter().enumerate() {
        let batch = Batch::random(n, info.config.input_size, info.config.grid(), 17 + i as u64);
        let got = tract.run(&batch).unwrap();
        for g in &got {
            assert_eq!(g.shape[0], n, "{}: batch dim", g.name);
        }
        let want = check::aue_outputs(&model, &spec, &batch).unwrap();
        for d in check::compare(&got, &want).unwrap() {
            match worst.iter_mut().find(|(k, _)| *k == d.name) {
                // (a NaN error is kept, where f64::max would drop it)
                Some((_, w)) if d.relative_l2.is_nan() || d.relative_l2 > *w => *w = d.relative_l2,
                Some(_) => {}
                None => worst.push((d.name.clone(), d.relative_l2)),
            }
        }
    }
    (worst, std::fs::read_to_string(cfg.json_path()).unwrap())
}

fn assert_close(what: &str, worst: &[(String, f64)]) {
    eprintln!("{what}: {worst:?}");
    for (name, err) in worst {
        assert!(*err <= TOLERANCE, "{what}: `{name}` differs from aue by relative L2 {err:e}");
    }
}

fn names(outputs: &[Output]) -> Vec<String> {
    outputs.iter().map(|o| o.name().to_string()).collect()
}

#[test]
fn tiny_every_output_matches_aue_for_batches_of_2_and_5() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(dir.path(), Preset::Tiny, 64, Stage::Fuse, Init::Parity);
    let cfg = config(&ckpt, &dir.path().join("model.onnx"), false, true);
    let (worst, json) = export_and_compare(&cfg, &[2, 5]);
    let got: Vec<String> = worst.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(got, names(&Output::ALL));
    assert_close("tiny, every output", &worst);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["stage"], 3);
    assert_eq!(json["opset"], 17);
    assert_eq!(json["input_size"], 64);
    assert_eq!(json["au_grid"], 16);
    assert_eq!(json["labels"][3], "Happiness");
    assert_eq!(json["aus"][16], "AU26");
    assert_eq!(json["normalisation"]["mean"][0], 0.485);
    assert_eq!(json["inputs"][1]["name"], "au_loc");
    assert_eq!(json["inputs"][0]["shape"], serde_json::json!(["N", 3, 64, 64]));
    assert_eq!(json["checkpoint_sha256"], aue_export::sha256_file(&ckpt).unwrap());
}

#[test]
fn resnet18_every_output_matches_aue_for_batches_of_2_and_5() {
    // ResNet-18 widths at S = 64 (grid 16, crop 6): the full-width branches, small crop nets.
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(dir.path(), Preset::Resnet18, 64, Stage::Fuse, Init::Default(3));
    let cfg = config(&ckpt, &dir.path().join("r18.onnx"), false, true);
    let (worst, json) = export_and_compare(&cfg, &[2, 5]);
    assert_eq!(worst.len(), Output::ALL.len());
    assert_close("resnet18, every output", &worst);
    assert!(json.contains("\"preset\": \"resnet18\""), "{json}");
}

#[test]
fn each_stage_exports_its_own_outputs_and_inputs() {
    let dir = tempfile::tempdir().unwrap();
    for stage in Stage::ALL {
        let ckpt = checkpoint(dir.path(), Preset::Tiny, 64, stage, Init::Parity);
        let cfg =
            config(&ckpt, &dir.path().join(format!("s{}.onnx", stage.number())), false, false);
        let (worst, json) = export_and_compare(&cfg, &[3]);
        let got: Vec<String> = worst.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(got, names(&Output::for_stage(stage)), "stage {stage}");
        assert_close(&format!("stage {stage}"), &worst);
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        let inputs: Vec<&str> = json["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        // Stage 1 gives only EM outputs: no AU branch, no au_loc input.
        let want = if stage == Stage::Em { vec!["image"] } else { vec!["image", "au_loc"] };
        assert_eq!(inputs, want, "stage {stage}");
        let outputs: Vec<&str> = json["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap())
            .collect();
        assert_eq!(outputs, names(&Output::for_stage(stage)), "stage {stage}");
        assert_eq!(json["stage"], stage.number());
    }
}

#[test]
fn preprocessing_in_the_graph_takes_rgb_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(dir.path(), Preset::Tiny, 64, Stage::Fuse, Init::Parity);
    let cfg = config(&ckpt, &dir.path().join("pre.onnx"), true, false);
    let (worst, json) = export_and_compare(&cfg, &[2, 5]);
    assert_close("with preprocessing", &worst);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["inputs"][0]["dtype"], "uint8");
    assert_eq!(json["inputs"][0]["shape"], serde_json::json!(["N", 64, 64, 3]));
    assert_eq!(json["normalisation"]["in_graph"], true);
}

#[test]
fn weights_can_go_to_an_external_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(dir.path(), Preset::Tiny, 64, Stage::Fuse, Init::Parity);
    let mut cfg = config(&ckpt, &dir.path().join("ext.onnx"), false, false);
    cfg.external_data = true;
    let (worst, json) = export_and_compare(&cfg, &[2]);
    assert_close("external data", &worst);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["external_data"], "ext.onnx.data");
    // The graph file keeps only the structure and small constants.
    let (onnx, data) = (
        std::fs::metadata(&cfg.out).unwrap().len(),
        std::fs::metadata(cfg.data_path()).unwrap().len(),
    );
    assert!(onnx < 64 << 10 && data > 1 << 20, "onnx {onnx} bytes, data {data} bytes");
}

#[test]
fn the_binary_writes_and_verifies_and_names_bad_input() {
    let bin = env!("CARGO_BIN_EXE_aue-export");
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(dir.path(), Preset::Tiny, 64, Stage::Au, Init::Parity);
    let out = dir.path().join("au.onnx");
    let run = |args: &[&str]| Command::new(bin).args(args).output().unwrap();
    let (c, o) = (ckpt.to_str().unwrap(), out.to_str().unwrap());
    let res = run(&["--checkpoint", c, "--out", o, "--verify", "--verify-batch", "3"]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    assert!(stderr.contains("pred_au"), "{stderr}");
    assert!(out.is_file() && dir.path().join("au.json").is_file());

    let missing = dir.path().join("nope.safetensors");
    let res = run(&["--checkpoint", missing.to_str().unwrap(), "--out", o]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success() && stderr.contains("nope.safetensors"), "{stderr}");

    let res = run(&["--checkpoint", c, "--out", dir.path().join("m.json").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success() && stderr.contains("extension"), "{stderr}");

    // A file that is not a checkpoint: the error names it.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file").unwrap();
    let res = run(&["--checkpoint", junk.to_str().unwrap(), "--out", o]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success() && stderr.contains("junk.safetensors"), "{stderr}");
}
