//! `--resume` after a kill, the NaN-loss stop, and the files of a `--dtype f64` run, on a tiny synthetic set (stage 1: no dropout,
//! so the run is a pure function of the seed).
//!
//! A kill mid-epoch leaves on disk exactly what the last committed epoch saved, plus possibly a
//! temp file of an interrupted checkpoint write, files of the uncommitted epoch and metrics lines
//! of it. (tests/faults.rs at the top level kills the real binaries at every file operation.) The test builds that state (a run stopped after epoch 1, a stale temp file,
//! a metrics line of epoch 2) and checks that resuming ends with the same weights, momentum
//! buffers and metrics as an uninterrupted run.

mod common;

use aue_contract::format::tensor_infos;
use aue_model::Stage;
use aue_train::{Precision, StageArgs, TrainError};
use candle_core::DType;
use common::{args, config, metadata, metrics, synth, tensors};

/// Metrics without the wall-time fields, which differ between any two runs.
fn without_timing(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("seconds");
        o.remove("images_per_s");
    }
    v
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path(), 24, 8);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));

    common::run(&config(Stage::Em, args(&data, &a, 3, 2))).unwrap();

    common::run(&config(Stage::Em, args(&data, &b, 1, 2))).unwrap();
    let stage_b = b.join("stage1");
    // What a kill during epoch 2 can leave behind.
    std::fs::write(stage_b.join(".epoch-0002.safetensors.tmp.4242"), b"partial").unwrap();
    std::fs::write(stage_b.join("epoch-0002.optim.safetensors"), b"uncommitted").unwrap();
    let mut lines = std::fs::read_to_string(stage_b.join("metrics.jsonl")).unwrap();
    lines.push_str("{\"split\":\"train\",\"stage\":1,\"epoch\":2,\"loss\":9.0}\n");
    std::fs::write(stage_b.join("metrics.jsonl"), lines).unwrap();

    // Without --resume the folder is protected.
    let err = common::run(&config(Stage::Em, args(&data, &b, 3, 2))).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    // --resume with another learning rate is refused.
    let other_lr = StageArgs { lr: Some(0.5), resume: true, ..args(&data, &b, 3, 2) };
    let err = common::run(&config(Stage::Em, other_lr)).unwrap_err();
    assert!(err.to_string().contains("lr: 0.01 in the run, 0.5 now"), "{err}");

    let resume = StageArgs { resume: true, ..args(&data, &b, 3, 2) };
    let summary = common::run(&config(Stage::Em, resume)).unwrap();
    assert_eq!(summary.last.map(|r| r.epoch), Some(3));
    assert!(summary.best.is_some(), "the best epoch is known after resuming");

    assert!(!stage_b.join(".epoch-0002.safetensors.tmp.4242").exists(), "stale temp file kept");
    let stage_a = a.join("stage1");
    for file in ["last.safetensors", "epoch-0003.optim.safetensors", "best.safetensors"] {
        let (ta, tb) = (tensors(&stage_a.join(file)), tensors(&stage_b.join(file)));
        assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>(), "{file}");
        for (key, va) in &ta {
            // Candle's CPU kernels are deterministic for a fixed thread count: bit equality.
            assert_eq!(va, &tb[key], "{file}: `{key}` differs after resuming");
        }
    }
    let (ma, mb) =
        (metadata(&stage_a.join("last.safetensors")), metadata(&stage_b.join("last.safetensors")));
    assert_eq!(ma["epoch"], "3");
    assert_eq!(ma["epoch"], mb["epoch"]);
    assert_eq!(ma["best_epoch"], mb["best_epoch"]);
    let (la, lb) =
        (metrics(&stage_a.join("metrics.jsonl")), metrics(&stage_b.join("metrics.jsonl")));
    assert_eq!(la.len(), 6);
    let la: Vec<_> = la.into_iter().map(without_timing).collect();
    let lb: Vec<_> = lb.into_iter().map(without_timing).collect();
    assert_eq!(la, lb, "metrics differ after resuming");
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path(), 16, 8);
    let run = tmp.path().join("run");
    // Epoch 1 at lr 0.01, then lr 1e28 from epoch 2: the weights overflow within a few steps.
    let blow_up =
        StageArgs { lr_milestones: Some(vec![1]), lr_gamma: Some(1e30), ..args(&data, &run, 2, 2) };
    let err = common::run(&config(Stage::Em, blow_up)).unwrap_err();
    match &err {
        TrainError::NonFiniteLoss { epoch, .. } => assert_eq!(*epoch, 2, "{err}"),
        other => panic!("expected a non-finite loss error, got: {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("last.safetensors") && msg.contains("training stopped"), "{msg}");
    let last = run.join("stage1/last.safetensors");
    assert_eq!(metadata(&last)["epoch"], "1", "the last good checkpoint was replaced");
    assert!(tensors(&last).values().flatten().all(|v| v.is_finite()));
    let lines = metrics(&run.join("stage1/metrics.jsonl"));
    assert!(lines.iter().all(|l| l["epoch"] == 1), "metrics of the failed epoch were written");
}

/// A `--dtype f64` pipeline: stage 1 writes f32 checkpoints and optimizer state, `--resume`
/// widens them back (another dtype is refused), and stage 2 with `--dev-no-dropout` starts from
/// them.
#[test]
fn f64_runs_write_f32_files_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let data = synth(tmp.path(), 16, 8);
    let f64_args =
        |epochs| StageArgs { dtype: Some(Precision::F64), ..args(&data, &run, epochs, 1) };
    common::run(&config(Stage::Em, f64_args(1))).unwrap();
    let stage1 = run.join("stage1");
    for file in ["last.safetensors", "epoch-0001.optim.safetensors"] {
        for (key, (dtype, _)) in tensor_infos(stage1.join(file)).unwrap() {
            assert!(matches!(dtype, DType::F32 | DType::I64), "{file}: `{key}` is {dtype:?}");
        }
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stage1.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(saved["dtype"], "f64");

    let as_f32 = StageArgs { dtype: Some(Precision::F32), resume: true, ..args(&data, &run, 2, 1) };
    let err = common::run(&config(Stage::Em, as_f32)).unwrap_err();
    assert!(err.to_string().contains("dtype: \"f64\" in the run, \"f32\" now"), "{err}");
    let resume = StageArgs { resume: true, ..f64_args(2) };
    assert_eq!(common::run(&config(Stage::Em, resume)).unwrap().last.map(|r| r.epoch), Some(2));

    let stage2 = StageArgs { dev_no_dropout: Some(true), ..f64_args(1) };
    let summary = common::run(&config(Stage::Au, stage2)).unwrap();
    assert!(summary.last.is_some_and(|r| r.loss.is_finite()));
}

/// `--checkpoint-dtype f64`: an f64 run's files keep every bit, so a resumed run equals an
/// uninterrupted one exactly (with f32 files the resumed weights would be rounded), and an f32 run
/// reads them (rounded to nearest). An f32 run cannot ask for f64 files.
#[test]
fn f64_checkpoints_when_asked_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path(), 16, 8);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let f64_args = |run: &std::path::Path, epochs| StageArgs {
        dtype: Some(Precision::F64),
        checkpoint_dtype: Some(Precision::F64),
        ..args(&data, run, epochs, 1)
    };
    common::run(&config(Stage::Em, f64_args(&a, 2))).unwrap();
    common::run(&config(Stage::Em, f64_args(&b, 1))).unwrap();
    for file in ["last.safetensors", "epoch-0001.optim.safetensors"] {
        let infos = tensor_infos(b.join("stage1").join(file)).unwrap();
        assert!(infos.values().any(|(dtype, _)| *dtype == DType::F64), "{file}: no f64 tensor");
        for (key, (dtype, _)) in infos {
            assert!(matches!(dtype, DType::F64 | DType::I64), "{file}: `{key}` is {dtype:?}");
        }
    }
    let resume = StageArgs { resume: true, ..f64_args(&b, 2) };
    common::run(&config(Stage::Em, resume)).unwrap();
    for file in ["last.safetensors", "epoch-0002.optim.safetensors"] {
        let (ta, tb) =
            (tensors(&a.join("stage1").join(file)), tensors(&b.join("stage1").join(file)));
        assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>(), "{file}");
        for (key, va) in &ta {
            assert_eq!(va, &tb[key], "{file}: `{key}` differs after resuming from f64 files");
        }
    }

    // An f32 stage 2 starts from the f64 checkpoint.
    let stage2 = StageArgs { dev_no_dropout: Some(true), ..args(&data, &a, 1, 1) };
    let summary = common::run(&config(Stage::Au, stage2)).unwrap();
    assert!(summary.last.is_some_and(|r| r.loss.is_finite()));

    let f32_run = StageArgs { checkpoint_dtype: Some(Precision::F64), ..args(&data, &b, 1, 1) };
    let err = aue_train::StageConfig::resolve(common::def(Stage::Em), f32_run).unwrap_err();
    assert!(err.to_string().contains("--checkpoint-dtype f64 needs --dtype f64"), "{err}");
}
