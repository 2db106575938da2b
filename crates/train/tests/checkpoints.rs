//! Checkpoint metadata written by real (tiny) stage runs, and every bad starting checkpoint a
//! stage must refuse before loading a tensor: wrong stage, wrong preset, other fusion width,
//! missing or unreadable file; a foreign checkpoint without metadata is accepted.

mod common;

use std::collections::BTreeMap;

use aue_contract::format as checkpoint;
use aue_contract::meta::sha256_file;
use aue_model::Stage;
use aue_train::{StageArgs, StageConfig};
use candle_core::{DType, Device, Var};
use candle_nn::VarMap;
use common::{args, config, metadata, synth};

fn chain(e: &aue_train::TrainError) -> String {
    common::chain(e)
}

#[test]
fn metadata_and_starting_checkpoint_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path(), 16, 8);
    let run = tmp.path().join("run");

    // Stage 1, and what its checkpoints say about themselves.
    let cfg1 = config(Stage::Em, args(&data, &run, 1, 1));
    common::run(&cfg1).unwrap();
    let best1 = run.join("stage1/best.safetensors");
    let m = metadata(&best1);
    assert_eq!(m["aue_format"], "1");
    assert_eq!(m["kind"], "model");
    assert_eq!(m["stage"], "1");
    assert_eq!(m["preset"], "tiny");
    assert_eq!(m["epoch"], "1");
    assert_eq!(m["dataset"], "rafdb");
    assert_eq!(m["parent_sha256"], "", "stage 1 from scratch has no parent");
    assert!(m["selection"].contains("test-set selection"), "{}", m["selection"]);
    let labels: Vec<String> = serde_json::from_str(&m["labels"]).unwrap();
    assert_eq!(labels, aue_core::EXPRESSIONS_BASIC);
    let saved: StageConfig = serde_json::from_str(&m["config"]).unwrap();
    assert_eq!(saved, cfg1);
    let metrics: serde_json::Value = serde_json::from_str(&m["metrics"]).unwrap();
    assert_eq!(metrics["split"], "test");
    assert!(metrics["mean_class_acc"].as_f64().is_some(), "{metrics}");
    // One epoch: it is both the best and the last, one file under two names.
    assert_eq!(metadata(&run.join("stage1/last.safetensors"))["epoch"], "1");

    // Stage 2 from it records the parent's hash.
    common::run(&config(Stage::Au, args(&data, &run, 1, 1))).unwrap();
    let best2 = run.join("stage2/best.safetensors");
    let m2 = metadata(&best2);
    assert_eq!(m2["stage"], "2");
    assert_eq!(m2["parent_sha256"], sha256_file(&best1).unwrap());
    let metrics2: serde_json::Value = serde_json::from_str(&m2["metrics"]).unwrap();
    assert!(metrics2["au_true"]["mean_f1"].is_number(), "{metrics2}");
    assert!(metrics2["au_prior_baseline"]["mean_f1"].is_number(), "{metrics2}");

    let from = |stage: Stage, path: &std::path::Path, extra: StageArgs| {
        let other = tmp.path().join(format!("other-{}", stage.number()));
        let a = StageArgs { resume_model: Some(path.to_owned()), run_dir: Some(other), ..extra };
        StageConfig::resolve(common::def(stage), a)
            .and_then(|cfg| common::run(&cfg))
            .map_err(|e| chain(&e))
    };
    let base = || args(&data, &run, 1, 1);

    // Wrong stage: stage 3 needs a stage-2 checkpoint, stage 2 a stage-1 one.
    let err = from(Stage::Fuse, &best1, base()).unwrap_err();
    assert!(
        err.contains("written by stage 1 (em)")
            && err.contains("stage 3 (fuse) starts from a stage 2 (au) checkpoint"),
        "{err}"
    );
    let err = from(Stage::Au, &best2, base()).unwrap_err();
    assert!(err.contains("written by stage 2 (au)"), "{err}");

    // Other fusion width than the stages before.
    let err = from(Stage::Fuse, &best2, StageArgs { fuse_dim: Some(16), ..base() }).unwrap_err();
    assert!(err.contains("fuse_dim = 32") && err.contains("--fuse-dim 32"), "{err}");

    // Wrong preset: refused from the metadata alone (this file holds one small tensor).
    let fake = tmp.path().join("resnet18-stage1.safetensors");
    let map = VarMap::new();
    map.data().lock().unwrap().insert("x".into(), Var::zeros(2, DType::F32, &Device::Cpu).unwrap());
    let mut meta: BTreeMap<String, String> = metadata(&best1);
    meta.insert("preset".into(), "resnet18".into());
    checkpoint::save(&map, &fake, &meta).unwrap();
    let err = from(Stage::Au, &fake, base()).unwrap_err();
    assert!(err.contains("preset `resnet18`") && err.contains("`tiny`"), "{err}");

    // Missing file: a configuration error before anything runs.
    let err = from(Stage::Au, &tmp.path().join("nope.safetensors"), base()).unwrap_err();
    assert!(err.contains("nope.safetensors") && err.contains("does not exist"), "{err}");

    // Not a safetensors file.
    let junk = tmp.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint at all").unwrap();
    let err = from(Stage::Au, &junk, base()).unwrap_err();
    assert!(err.contains("junk.safetensors"), "{err}");

    // A foreign checkpoint (the reference's names, no metadata) is accepted with a warning.
    let foreign = tmp.path().join("foreign.safetensors");
    let map = VarMap::new();
    aue_model::AueModel::with_varmap(&map, &cfg1.model_config().unwrap(), &Device::Cpu).unwrap();
    checkpoint::load(&map, &best1).unwrap();
    checkpoint::save(&map, &foreign, &BTreeMap::new()).unwrap();
    from(Stage::Au, &foreign, base()).unwrap();
    let m = metadata(&tmp.path().join("other-2/stage2/last.safetensors"));
    assert_eq!(m["parent_sha256"], sha256_file(&foreign).unwrap());
}

/// `--pretrained`: torchvision-named backbone weights (no `backbone.` prefix, with an `fc` to be
/// ignored) become stage 1's starting backbone, and the file's hash is the checkpoint's parent.
#[test]
fn pretrained_backbone_is_imported() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path(), 16, 8);
    let run = tmp.path().join("run");
    let cfg = config(Stage::Em, args(&data, &run, 1, 1));

    // A torchvision-style state dict of the tiny backbone, with recognisable values.
    let model_map = VarMap::new();
    aue_model::AueModel::with_varmap(&model_map, &cfg.model_config().unwrap(), &Device::Cpu)
        .unwrap();
    aue_model::init::init_default(&model_map, 99).unwrap();
    let torchvision = VarMap::new();
    for (key, var) in model_map.data().lock().unwrap().iter() {
        if let Some(bare) = key.strip_prefix("backbone.") {
            let copy = Var::from_tensor(var.as_tensor()).unwrap();
            torchvision.data().lock().unwrap().insert(bare.to_string(), copy);
        }
    }
    let weights = tmp.path().join("resnet-tiny.safetensors");
    checkpoint::save(&torchvision, &weights, &BTreeMap::new()).unwrap();

    // A negligible learning rate: after one step the backbone is still the imported one.
    let a =
        StageArgs { pretrained: Some(weights.clone()), lr: Some(1e-12), ..args(&data, &run, 1, 1) };
    common::run(&config(Stage::Em, a)).unwrap();
    let last = run.join("stage1/last.safetensors");
    assert_eq!(metadata(&last)["parent_sha256"], sha256_file(&weights).unwrap());
    let got = common::tensors(&last);
    let want = common::tensors(&weights);
    for key in ["conv1.weight", "layer4.1.conv2.weight", "layer2.0.downsample.0.weight"] {
        let (g, w) = (&got[&format!("backbone.{key}")], &want[key]);
        let diff = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(diff < 1e-6, "backbone.{key} is not the imported tensor (max diff {diff})");
    }
}
