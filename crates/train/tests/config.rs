//! Stage configuration: flags over the `--config` file over defaults, and every check.

use std::path::Path;

use aue_cli::DeviceSpec;
use aue_core::io_err;
use aue_model::Preset;
use aue_stage1::Em;
use aue_stage2::Au;
use aue_stage3::Fuse;
use aue_train::config::{Precision, SelectBy, StageArgs, StageConfig};
use aue_train::error::Result;

fn args_in(dir: &Path) -> StageArgs {
    StageArgs { data_root: Some(dir.to_owned()), preset: Some(Preset::Tiny), ..Default::default() }
}

#[test]
fn defaults_are_the_reference_protocol() -> Result<()> {
    let tmp = tempfile::tempdir().map_err(io_err("tempdir", "/tmp"))?;
    let cfg = StageConfig::resolve(&Em, args_in(tmp.path()))?;
    assert_eq!(cfg.epochs, 40);
    assert_eq!(cfg.lr, 0.01);
    assert_eq!(cfg.lr_milestones, [15, 30]);
    assert_eq!(cfg.lr_gamma, 0.1);
    assert_eq!(cfg.momentum, 0.9);
    assert_eq!((cfg.train_batch_size, cfg.test_batch_size), (64, 64));
    assert_eq!(cfg.run_dir, Path::new("checkpoints/rafdb-tiny"));
    assert!(!cfg.frozen_eval);
    Ok(())
}

#[test]
fn flags_override_file_over_defaults() -> Result<()> {
    let tmp = tempfile::tempdir().map_err(io_err("tempdir", "/tmp"))?;
    let file = tmp.path().join("c.toml");
    std::fs::write(&file, "epochs = 7\nlr = 0.5\nlr_milestones = [2]\npreset = \"tiny\"\n")
        .map_err(io_err("write", &file))?;
    let args = StageArgs {
        config: Some(file),
        data_root: Some(tmp.path().to_owned()),
        lr: Some(0.25),
        ..Default::default()
    };
    let cfg = StageConfig::resolve(&Em, args)?;
    assert_eq!(cfg.epochs, 7);
    assert_eq!(cfg.lr, 0.25);
    assert_eq!(cfg.lr_milestones, [2]);
    assert_eq!(cfg.preset, Preset::Tiny);
    Ok(())
}

#[test]
fn bad_values_name_the_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, StageArgs); 6] = [
        ("lr", StageArgs { lr: Some(f64::NAN), ..args_in(tmp.path()) }),
        ("train_batch_size", StageArgs { train_batch_size: Some(0), ..args_in(tmp.path()) }),
        ("input_size", StageArgs { input_size: Some(100), ..args_in(tmp.path()) }),
        ("lr_milestones", StageArgs { lr_milestones: Some(vec![5, 3]), ..args_in(tmp.path()) }),
        (
            "f64 runs on the CPU only",
            StageArgs {
                dtype: Some(Precision::F64),
                device: Some(DeviceSpec::Cuda(0)),
                ..args_in(tmp.path())
            },
        ),
        (
            "data_root",
            StageArgs { data_root: Some(tmp.path().join("nope")), ..args_in(tmp.path()) },
        ),
    ];
    for (key, args) in cases {
        let err = StageConfig::resolve(&Em, args).unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
    // Options that belong to other stages, or out of range.
    let ckpt = tmp.path().join("from.safetensors");
    std::fs::write(&ckpt, b"x").unwrap();
    let later = |a: StageArgs| StageArgs { resume_model: Some(ckpt.clone()), ..a };
    let cases: [(&dyn aue_train::StageDef, &str, StageArgs); 4] = [
        (&Em, "eiau_weight", StageArgs { eiau_weight: Some(0.1), ..args_in(tmp.path()) }),
        (&Au, "eiau_weight", later(StageArgs { eiau_weight: Some(-1.0), ..args_in(tmp.path()) })),
        (&Em, "select_by", StageArgs { select_by: Some(SelectBy::AuF1), ..args_in(tmp.path()) }),
        (
            &Fuse,
            "select_by",
            later(StageArgs { select_by: Some(SelectBy::AuF1), ..args_in(tmp.path()) }),
        ),
    ];
    for (stage, key, args) in cases {
        let err = StageConfig::resolve(stage, args).unwrap_err().to_string();
        assert!(err.contains(key), "{} {key}: {err}", stage.stage());
    }
    let ok = later(StageArgs {
        eiau_weight: Some(0.0),
        select_by: Some(SelectBy::AuF1),
        ..args_in(tmp.path())
    });
    let cfg = StageConfig::resolve(&Au, ok).unwrap();
    assert_eq!((cfg.eiau_weight, cfg.select_by), (Some(0.0), SelectBy::AuF1));
    assert_eq!("last".parse::<SelectBy>(), Ok(SelectBy::Last));
    assert!("best".parse::<SelectBy>().is_err());
}

#[test]
fn unknown_file_key_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("c.toml");
    std::fs::write(&file, "epoch = 7\n").unwrap();
    let args = StageArgs { config: Some(file.clone()), ..args_in(tmp.path()) };
    let err = StageConfig::resolve(&Em, args).unwrap_err().to_string();
    assert!(err.contains("c.toml") && err.contains("epoch"), "{err}");
}

#[test]
fn missing_previous_stage_checkpoint_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let args = StageArgs { run_dir: Some(tmp.path().join("run")), ..args_in(tmp.path()) };
    let err = StageConfig::resolve(&Au, args).unwrap_err().to_string();
    assert!(err.contains("stage1/best.safetensors") && err.contains("run stage 1 first"), "{err}");
}

#[test]
fn json_round_trip_and_resume_check() -> Result<()> {
    let tmp = tempfile::tempdir().map_err(io_err("tempdir", "/tmp"))?;
    let cfg = StageConfig::resolve(&Em, args_in(tmp.path()))?;
    let back: StageConfig = serde_json::from_str(&cfg.to_json()).unwrap();
    assert_eq!(back, cfg);
    let more_epochs = StageConfig { epochs: 80, ..cfg.clone() };
    more_epochs.check_resumes(&cfg, Path::new("config.json"))?;
    let other_lr = StageConfig { lr: 0.1, ..cfg.clone() };
    let err = other_lr.check_resumes(&cfg, Path::new("config.json")).unwrap_err().to_string();
    assert!(err.contains("lr: 0.01 in the run, 0.1 now"), "{err}");
    Ok(())
}

#[test]
fn each_stage_trains_what_the_reference_trains() {
    use aue_train::StageDef;
    // (stage, keys it trains, keys it leaves alone)
    let cases: [(&dyn StageDef, [&str; 3], [&str; 3]); 3] = [
        (
            &Em,
            ["backbone.layer1.0.conv1.weight", "reduce_dim_em.0.weight", "pred_em.bias"],
            ["pred_au.weight", "PriorKnowledgeTable", "fc_em_fuse_3.1.weight"],
        ),
        (
            &Au,
            ["deconv_layer1.0.weight", "Crop_Net_2.*.0.weight", "PriorKnowledgeTable"],
            ["backbone.conv1.weight", "pred_em.weight", "PriorKnowledgeTable2"],
        ),
        (
            &Fuse,
            ["fc_au_fuse_3.*.1.weight", "pred_em.weight", "pred_em_fuse_3.bias"],
            ["backbone.conv1.weight", "pred_au.weight", "PriorKnowledgeTable"],
        ),
    ];
    for (stage, trained, frozen) in cases {
        for key in trained {
            assert!(stage.trainable(key), "{}: {key}", stage.stage());
        }
        for key in frozen {
            assert!(!stage.trainable(key), "{}: {key}", stage.stage());
        }
    }
}
