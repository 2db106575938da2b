//! End to end on real run folders: a tiny synthetic set, stages 1 -> 2 -> 3 of the training
//! engine (the code behind the stage binaries) in a temp dir, then the report on their output,
//! checked against the trainer's own records and checkpoints.

use aue_cli::DeviceSpec;
use aue_contract::error::error_chain;
use aue_data::DatasetKind;
use aue_model::{Preset, Stage};
use aue_report::checkpoint::{CheckpointInfo, read_prior_table};
use aue_report::eval::{EvalOptions, check_checkpoint, evaluate_checkpoint};
use aue_report::output::write_report;
use aue_report::{Report, ReportError, ReportOptions, build_report};
use aue_train::{StageArgs, StageConfig, StageDef};

#[test]
fn stages_then_report() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("synth");
    let mut synth = aue_synth::SynthConfig::new(&data, 24, 16, 5);
    synth.size = 64;
    synth.threads = 1;
    aue_synth::generate(&synth).unwrap();
    let run_dir = tmp.path().join("runs/demo");
    let stages: [&dyn StageDef; 3] = [&aue_stage1::Em, &aue_stage2::Au, &aue_stage3::Fuse];
    for stage in stages {
        let args = StageArgs {
            data_root: Some(data.clone()),
            run_dir: Some(run_dir.clone()),
            preset: Some(Preset::Tiny),
            epochs: Some(2),
            max_steps: Some(2),
            train_batch_size: Some(8),
            test_batch_size: Some(8),
            workers: Some(1),
            ..StageArgs::default()
        };
        let cfg = StageConfig::resolve(stage, args).unwrap();
        aue_train::run(stage, &cfg).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    }

    let (runs, report) =
        build_report(std::slice::from_ref(&run_dir), &ReportOptions::default()).unwrap();
    assert_eq!(report.runs.len(), 3);
    assert!(report.synthetic && report.benchmark.is_none());
    assert!(report.ablation.is_some());
    for (run, r) in runs.iter().zip(&report.runs) {
        // The best epoch is the one saved as best.safetensors; its metadata agrees.
        let ck = CheckpointInfo::read(&run.dir.join("best.safetensors"), None).unwrap();
        assert_eq!(ck.meta.epoch, r.best.epoch);
        assert_eq!(ck.meta.stage, run.stage);
        let (acc, epoch) = ck.meta.best.unwrap();
        assert_eq!(epoch, r.best.epoch);
        assert!((acc - r.best.scores.mean_class_acc.unwrap()).abs() < 1e-9);
        assert_eq!(r.last.epoch, 2);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }
    let au = report.runs[1].au.as_ref().unwrap();
    assert!(au[0].pseudo.is_some() && au[0].truth.is_some() && au[0].prior_baseline.is_some());

    // The header-only prior-table reader against aue-model's full reader.
    let p = report.prior_table.as_ref().unwrap();
    assert_eq!(p.checkpoint, run_dir.join("stage2/best.safetensors"));
    let (_, tensors) =
        aue_contract::format::read_safetensors(&p.checkpoint, &candle_core::Device::Cpu).unwrap();
    let full = tensors["PriorKnowledgeTable"].to_vec2::<f32>().unwrap();
    assert_eq!(p.learned, full);
    assert!(p.max_abs_change > 0.0, "stage 2 trains the table");

    // A real stage-1 checkpoint is refused as the source of a learned table, and its labels
    // do not match the compound set.
    let s1 = run_dir.join("stage1/best.safetensors");
    let e = read_prior_table(&s1).unwrap_err().to_string();
    assert!(e.contains("is a stage 1 checkpoint"), "{e}");
    let compound: Vec<String> =
        aue_core::EXPRESSIONS_COMPOUND.iter().map(|s| s.to_string()).collect();
    let info = CheckpointInfo::read(&s1, None).unwrap();
    let e = info.expect_labels(&compound, "rafdb-compound").unwrap_err().to_string();
    assert!(e.contains("differ from those of rafdb-compound"), "{e}");

    let files = write_report(&report, &tmp.path().join("runs/demo/report")).unwrap();
    assert_eq!(files.len(), 3 * 3 + 3);

    // Evaluating the stage-3 best checkpoint again gives the numbers recorded for its epoch.
    let ck = run_dir.join("stage3/best.safetensors");
    let opts = EvalOptions {
        checkpoint: ck.clone(),
        expect_stage: Some(Stage::Fuse),
        data_root: None,
        dataset: None,
        device: DeviceSpec::Cpu,
        batch_size: 8,
        workers: 1,
    };
    let evaluated = evaluate_checkpoint(&opts, &|_, _| {}).unwrap();
    let again = Report::build(&[evaluated], &ReportOptions::default()).unwrap();
    let (now, then) = (&again.runs[0].best, &report.runs[2].best);
    assert!(again.runs[0].evaluated);
    assert_eq!(now.epoch, then.epoch);
    assert_eq!(now.scores.confusion, then.scores.confusion);
    assert_eq!(now.em_head.as_ref().unwrap().confusion, then.em_head.as_ref().unwrap().confusion);
    // The wrong stage, and a dataset whose classes are not the checkpoint's, are refused
    // before the model is built.
    let wrong_stage = EvalOptions { expect_stage: Some(Stage::Em), ..opts.clone() };
    let e = check_checkpoint(&wrong_stage).unwrap_err().to_string();
    assert!(e.contains("is a stage 3 checkpoint"), "{e}");
    let compound = EvalOptions { dataset: Some(DatasetKind::RafdbCompound), ..opts };
    let e = evaluate_checkpoint(&compound, &|_, _| {}).unwrap_err();
    assert!(matches!(e, ReportError::Contract(_)) && e.to_string().contains("differ"), "{e:?}");
}
