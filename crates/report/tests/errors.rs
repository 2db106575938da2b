//! Clear errors: a run folder without metrics, an empty or garbled metrics.jsonl (file and line
//! named), a checkpoint of the wrong stage, label sets that do not match; and the binary's exit
//! status and message.

mod common;

use std::path::Path;
use std::process::Command;

use aue_contract::SplitName;
use aue_model::Stage;
use aue_report::checkpoint::{CheckpointInfo, read_prior_table};
use aue_report::{ReportError, ReportOptions, StageRun, build_report};
use common::*;

fn err_text(e: &dyn std::error::Error) -> String {
    aue_contract::error::error_chain(e)
}

#[test]
fn a_run_folder_without_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stage1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"stage": 1, "dataset": "rafdb"}"#).unwrap();
    let e = StageRun::load(&dir).unwrap_err();
    assert!(matches!(e, ReportError::NoMetrics { .. }), "{e:?}");
    let text = err_text(&e);
    assert!(text.contains(&dir.display().to_string()) && text.contains("metrics.jsonl"), "{text}");
    // A folder that is neither a stage folder nor holds stage folders.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = build_report(std::slice::from_ref(&empty), &ReportOptions::default()).unwrap_err();
    assert!(matches!(e, ReportError::NotARun { .. }), "{e:?}");
    assert!(err_text(&e).contains(&empty.display().to_string()));
    let e = build_report(&[tmp.path().join("missing")], &ReportOptions::default()).unwrap_err();
    assert!(err_text(&e).contains("missing"), "{}", err_text(&e));
}

#[test]
fn empty_and_garbled_metrics_name_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stage1");
    std::fs::create_dir_all(&dir).unwrap();
    let metrics = dir.join("metrics.jsonl");
    std::fs::write(&metrics, "\n  \n").unwrap();
    let e = StageRun::load(&dir).unwrap_err();
    assert!(matches!(e, ReportError::EmptyMetrics { .. }), "{e:?}");
    assert!(err_text(&e).contains(&metrics.display().to_string()));

    let good =
        serde_json::to_string(&record(SplitName::Test, 1, 1, 1.0, &stage1_best(), Some(true)))
            .unwrap();
    for (text, line, needle) in [
        (format!("{good}\n{{\"split\": \"test\", \"epoch\": 2,"), 2, "not a metrics record"),
        (format!("{good}\n\nnot json at all\n"), 3, "not a metrics record"),
        (
            format!("{}\n", good.replace("\"stage\":1", "\"stage\":3")).repeat(1) + &good,
            2,
            "stage 1 record after stage 3",
        ),
        (good.replace("[8,0,0,1,0,0,1],", ""), 1, "confusion matrix has 6 rows for 7 classes"),
    ] {
        std::fs::write(&metrics, &text).unwrap();
        let e = StageRun::load(&dir).unwrap_err();
        let ReportError::MetricsLine { path, line: got, msg } = &e else { panic!("{e:?}") };
        assert_eq!((path.as_path(), *got), (metrics.as_path(), line), "{msg}");
        let shown = err_text(&e);
        assert!(
            shown.contains(&format!("line {line}")) && shown.contains("metrics.jsonl"),
            "{shown}"
        );
        assert!(shown.contains(needle), "{shown}");
    }
    // Records without any test split.
    let train =
        serde_json::to_string(&record(SplitName::Train, 1, 1, 1.0, &stage1_best(), None)).unwrap();
    std::fs::write(&metrics, train + "\n").unwrap();
    assert!(matches!(StageRun::load(&dir).unwrap_err(), ReportError::NoTestRecord { .. }));
}

#[test]
fn a_checkpoint_of_the_wrong_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let (s1, s3) = write_stage1_and_3(tmp.path(), "rafdb");
    // A stage-2 checkpoint inside the stage-1 folder.
    let ck = s1.join("best.safetensors");
    write_prior_checkpoint(&ck, &learned_table(), &meta(Stage::Au, 2, &basic(), "rafdb"));
    let e = StageRun::load(&s1).unwrap_err();
    let text = err_text(&e);
    assert!(
        text.contains(&ck.display().to_string()) && text.contains("is a stage 2 checkpoint"),
        "{text}"
    );
    assert!(text.contains("stage 1"), "{text}");
    // The prior table is learned in stage 2: a stage-1 checkpoint is refused.
    let s1ck = s3.join("stage1-like.safetensors");
    write_prior_checkpoint(&s1ck, &learned_table(), &meta(Stage::Em, 2, &basic(), "rafdb"));
    let e = read_prior_table(&s1ck).unwrap_err();
    assert!(err_text(&e).contains("is a stage 1 checkpoint"), "{}", err_text(&e));
    assert!(err_text(&e).contains("stage 2 or stage 3"), "{}", err_text(&e));
    // A checkpoint without trainer metadata, or without the table.
    let foreign = tmp.path().join("foreign.safetensors");
    let bytes = [0u8; 4];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &bytes).unwrap();
    safetensors::serialize_to_file([("x", view)], None, &foreign).unwrap();
    let e = CheckpointInfo::read_metadata(&foreign).unwrap_err();
    assert!(err_text(&e).contains("no training metadata"), "{}", err_text(&e));
    let e = aue_contract::inspect::read_prior_table(&foreign).unwrap_err();
    assert!(err_text(&e).contains("no `PriorKnowledgeTable`"), "{}", err_text(&e));
}

#[test]
fn label_sets_that_do_not_match() {
    let tmp = tempfile::tempdir().unwrap();
    let (s1, s3) = write_stage1_and_3(tmp.path(), "rafdb");
    // A checkpoint trained on the 11 compound classes in a 7-class run folder.
    let compound: Vec<String> =
        aue_core::EXPRESSIONS_COMPOUND.iter().map(|s| s.to_string()).collect();
    write_prior_checkpoint(
        &s3.join("best.safetensors"),
        &learned_table(),
        &meta(Stage::Fuse, 2, &compound, "rafdb-compound"),
    );
    let e = StageRun::load(&s3).unwrap_err();
    let text = err_text(&e);
    assert!(text.contains("Happily Surprised") && text.contains("Surprise, Fear"), "{text}");
    // CheckpointInfo::expect_labels against a dataset's label set.
    let info = CheckpointInfo::read_metadata(&s3.join("best.safetensors")).unwrap();
    assert!(info.expect_labels(&compound, "dataset").is_ok());
    assert!(info.expect_labels(&basic(), "dataset").is_err());
    // config.json says compound, the metrics hold the 7 basic classes.
    let cfg = s1.join("config.json");
    std::fs::write(&cfg, r#"{"stage": 1, "dataset": "rafdb-compound"}"#).unwrap();
    let e = StageRun::load(&s1).unwrap_err();
    assert!(matches!(e, ReportError::Inconsistent { .. }), "{e:?}");
    assert!(err_text(&e).contains("config.json"));
    // Runs of different label sets in one report.
    std::fs::write(&cfg, r#"{"stage": 1, "dataset": "rafdb"}"#).unwrap();
    let mut other = record(SplitName::Test, 1, 1, 1.0, &[vec![1, 0], vec![0, 1]], Some(true));
    other.class = Some(aue_contract::metrics::ClassMetrics::from_confusion(
        vec![vec![1, 0], vec![0, 1]],
        &["a", "b"],
    ));
    let d2 = tmp.path().join("two/stage1");
    write_run(&d2, 1, "custom", &[other]);
    let runs = vec![StageRun::load(&s1).unwrap(), StageRun::load(&d2).unwrap()];
    let e = aue_report::Report::build(&runs, &ReportOptions::default()).unwrap_err();
    assert!(matches!(e, ReportError::LabelMismatch { .. }), "{e:?}");
    // Stage numbers that disagree between config.json and the metrics.
    std::fs::write(&cfg, r#"{"stage": 2}"#).unwrap();
    assert!(matches!(StageRun::load(&s1).unwrap_err(), ReportError::Inconsistent { .. }));
}

fn report_bin(args: &[&Path], extra: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_aue-report"));
    for a in args {
        cmd.arg("--run").arg(a);
    }
    cmd.args(extra).output().unwrap()
}

#[test]
fn the_binary_prints_the_chain_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stage1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("metrics.jsonl"), "{\"split\": \"test\"}\n").unwrap();
    let out = report_bin(&[&dir], &["--no-files"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: cannot build the report: "), "{err}");
    assert!(err.contains("metrics.jsonl, line 1: not a metrics record"), "{err}");

    let (s1, s3) = write_stage1_and_3(&tmp.path().join("ok"), "rafdb");
    let out_dir = tmp.path().join("out");
    let out = report_bin(&[&s1, &s3], &["--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("RAF-DB: published results and ours"), "{text}");
    let paper = text.lines().find(|l| l.starts_with("AUE-CRL (paper) ")).unwrap();
    let cells: Vec<&str> = paper["AUE-CRL (paper)".len()..].split_whitespace().collect();
    assert_eq!(cells, ["80.5", "67.6", "68.9", "94.1", "85.8", "83.6", "86.4", "81.0"]);
    assert!(text.contains("Wrote 8 files into"), "{text}");
    assert!(out_dir.join("report.md").exists());
    let out = report_bin(&[&s1], &["--no-files", "--out", "x"]);
    assert!(!out.status.success());
}
