//! The report on hand-made run folders: the published rows to the digit, mean class accuracy
//! with a class without test samples, precision / recall / F1, the ablation, the prior table,
//! the files written, and the committed example run of the real stage binaries.

mod common;

use std::path::{Path, PathBuf};

use aue_model::Stage;
use aue_report::checkpoint::read_prior_table;
use aue_report::output::write_report;
use aue_report::published::{Benchmark, RAFDB, SFEW};
use aue_report::report::display_columns;
use aue_report::{Compare, Report, ReportOptions, StageRun, build_report, default_out_dir};
use common::*;

/// docs/METHOD.md section 7, copied verbatim: every published row must come out of the report
/// exactly like this.
const REFERENCE_RAFDB: &str = "\
| Method | Angry | Disgust | Fear | Happy | Neutral | Sad | Surprised | Ave. |
|---|---|---|---|---|---|---|---|---|
| DCNN-DA | 78.4 | 64.4 | 62.2 | 91.1 | 80.6 | 81.2 | 84.5 | 77.5 |
| WSLGRN | 75.3 | 56.9 | 63.5 | 93.8 | 85.4 | 83.5 | 85.4 | 77.7 |
| CP | 80.0 | 61.0 | 61.0 | 93.0 | 89.0 | 86.0 | 86.0 | 79.4 |
| CompactDLM | 74.5 | 67.6 | 46.9 | 82.3 | 59.1 | 58.0 | 84.6 | 67.6 |
| FSN | 72.8 | 46.9 | 56.8 | 90.5 | 76.9 | 81.6 | 81.8 | 72.5 |
| DLP-CNN | 71.6 | 52.2 | 62.2 | 92.8 | 80.3 | 80.1 | 81.2 | 74.2 |
| MRE-CNN | 84.0 | 57.5 | 60.8 | 88.8 | 80.2 | 79.9 | 86.0 | 76.7 |
| AUE-CRL (paper) | 80.5 | 67.6 | 68.9 | 94.1 | 85.8 | 83.6 | 86.4 | 81.0 |
";

const REFERENCE_SFEW: &str = "\
| Method | Angry | Disgust | Fear | Happy | Neutral | Sad | Surprised | Ave. |
|---|---|---|---|---|---|---|---|---|
| CP | 66.0 | 0.0 | 14.0 | 90.0 | 86.0 | 66.0 | 29.0 | 50.1 |
| DLP-CNN | - | - | - | - | - | - | - | 51.1 |
| IA-CNN | 70.7 | 0.0 | 8.9 | 70.4 | 60.3 | 58.8 | 28.9 | 42.6 |
| IL | 61.0 | 0.0 | 6.4 | 89.0 | 66.2 | 48.0 | 33.3 | 43.4 |
| AUE-CRL (paper) | 75.3 | 17.4 | 25.5 | 86.3 | 72.1 | 50.7 | 42.1 | 52.8 |
";

/// The cells of a Markdown table line.
fn cells(line: &str) -> Vec<String> {
    line.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect()
}

fn load(dirs: &[PathBuf], compare: Compare) -> Report {
    let runs: Vec<StageRun> = dirs.iter().map(|d| StageRun::load(d).unwrap()).collect();
    Report::build(&runs, &ReportOptions { compare }).unwrap()
}

#[test]
fn published_cells_are_the_references_to_the_digit() {
    for (reference, rows) in [(REFERENCE_RAFDB, &RAFDB[..]), (REFERENCE_SFEW, &SFEW[..])] {
        let lines: Vec<&str> = reference.lines().skip(2).collect();
        assert_eq!(lines.len(), rows.len());
        for (line, row) in lines.iter().zip(rows) {
            let want = cells(line);
            let mut got = vec![row.method.to_string()];
            got.extend(row.cells());
            assert_eq!(got, want, "row {}", row.method);
        }
    }
}

#[test]
fn the_main_table_holds_the_published_rows_verbatim_then_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let (s1, s3) = write_stage1_and_3(tmp.path(), "rafdb");
    let report = load(&[s1.clone(), s3.clone()], Compare::Auto);
    assert_eq!(report.benchmark, Some(Benchmark::RafDb));
    let md = report.main_table().to_markdown();
    let lines: Vec<&str> = md.lines().collect();
    // Header, separator and all eight published rows, in order, exactly as docs/METHOD.md.
    for (i, want) in REFERENCE_RAFDB.lines().enumerate() {
        assert_eq!(lines[i], want, "line {i}");
    }
    // Then ours: stage 1 best epoch 2 (Fear has no test samples), worked out in common::stage1_best.
    assert_eq!(
        lines[10],
        "| Ours: stage 1 (EM), pred1, best epoch 2 (test-set selection) | 75.0 | 40.0 | n/a (no \
         samples) | 90.0 | 70.0 | 62.5 | 80.0 | 69.6 |"
    );
    // Last epoch 3: only Surprise and Happiness right; mean over 6 classes = 2/6.
    assert_eq!(
        lines[11],
        "| Ours: stage 1 (EM), pred1, last epoch 3 | 0.0 | 0.0 | n/a (no samples) | 100.0 | 0.0 | \
         0.0 | 100.0 | 33.3 |"
    );
    assert_eq!(
        lines[12],
        "| Ours: stage 3 (Fuse), pred2, best epoch 2 (test-set selection) | 75.0 | 60.0 | n/a (no \
         samples) | 95.0 | 80.0 | 75.0 | 90.0 | 79.2 |"
    );
    assert_eq!(lines.len(), 14);

    // SFEW: the SFEW table, same columns.
    let (s1s, _) = write_stage1_and_3(&tmp.path().join("sfew"), "sfew");
    let sfew = load(&[s1s], Compare::Auto);
    assert_eq!(sfew.benchmark, Some(Benchmark::Sfew));
    assert!(sfew.main_table().to_markdown().starts_with(REFERENCE_SFEW));
}

#[test]
fn mean_class_accuracy_skips_the_class_without_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let (s1, _) = write_stage1_and_3(tmp.path(), "rafdb");
    let report = load(&[s1], Compare::Auto);
    let best = &report.runs[0].best;
    assert_eq!(best.epoch, 2);
    let s = &best.scores;
    let mean = s.mean_class_acc.unwrap();
    assert!((mean - 4.175 / 6.0).abs() < 1e-12, "{mean}");
    assert_eq!(s.classes_in_mean, 6);
    assert_eq!(s.classes_without_samples, ["Fear"]);
    assert_eq!(s.classes[1].recall, None);
    assert!((s.acc.unwrap() - 43.0 / 57.0).abs() < 1e-12);
    // The last epoch is reported beside the best one, not in place of it.
    assert_eq!(report.runs[0].last.epoch, 3);
    assert!((report.runs[0].last.scores.mean_class_acc.unwrap() - 2.0 / 6.0).abs() < 1e-12);
}

#[test]
fn precision_recall_f1_from_the_confusion_matrix() {
    let tmp = tempfile::tempdir().unwrap();
    let (s1, _) = write_stage1_and_3(tmp.path(), "rafdb");
    let report = load(&[s1], Compare::Auto);
    let c = &report.runs[0].best.scores.classes;
    let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-12;
    // Surprise: column sum 9 (8 + Neutral's 1): precision 8/9, recall 8/10, F1 16/19.
    assert_eq!((c[0].support, c[0].predicted, c[0].correct), (10, 9, 8));
    assert!(close(c[0].precision, 8.0 / 9.0));
    assert!(close(c[0].f1, 16.0 / 19.0));
    // Fear: no samples, predicted once (a Sadness image): precision 0, F1 0, recall n/a.
    assert_eq!((c[1].support, c[1].predicted), (0, 1));
    assert_eq!((c[1].recall, c[1].precision, c[1].f1), (None, Some(0.0), Some(0.0)));
    // Happiness: column 1 + 18 + 1 + 1 = 21: precision 18/21, F1 36/41.
    assert!(close(c[3].precision, 18.0 / 21.0));
    assert!(close(c[3].f1, 36.0 / 41.0));
    // The document's per-class table, paper order: Happy row.
    let md = aue_report::document::to_markdown(&report.document(&Default::default()));
    // Last epoch: Happiness predicted for 47 images, 20 right: precision 42.6, F1 40/67.
    assert!(md.contains("| Happy | 20 | 85.7 | 90.0 | 87.8 | 42.6 | 100.0 | 59.7 |"), "{md}");
    assert!(md.contains("| Fear | 0 | 0.0 | n/a (no samples) | 0.0 | n/a (never predicted) | n/a (no samples) | n/a (no samples) |"), "{md}");
}

#[test]
fn ablation_stage1_against_stage3_per_class_and_on_average() {
    let tmp = tempfile::tempdir().unwrap();
    let (s1, s3) = write_stage1_and_3(tmp.path(), "rafdb");
    let report = load(&[s1.clone(), s3.clone()], Compare::Auto);
    let a = report.ablation.as_ref().unwrap();
    assert_eq!((a.stage1.as_path(), a.stage3.as_path()), (s1.as_path(), s3.as_path()));
    let table = aue_report::document::to_markdown(&report.document(&Default::default()));
    // Best epochs: stage 3 pred2 minus stage 1, paper order (Angry .. Surprised), Ave., Acc.
    assert!(
        table.contains(
            "| difference: stage 3 (pred2) - stage 1 |  | +0.0 | +20.0 | n/a | +5.0 | +10.0 | \
             +12.5 | +10.0 | +9.6 | +8.8 |"
        ),
        "{table}"
    );
    assert!(table.contains(
        "| stage 3: its expression branch (pred1) | 2 | 75.0 | 40.0 | n/a (no samples) | 90.0 | \
         70.0 | 62.5 | 80.0 | 69.6 | 75.4 |"
    ));
    // Without a stage-3 run there is no ablation, and the report says so.
    let only1 = load(&[s1], Compare::Auto);
    assert!(only1.ablation.is_none());
    assert!(only1.notes.iter().any(|n| n.contains("No ablation")));
}

#[test]
fn synthetic_unknown_and_compound_runs_get_our_rows_alone() {
    let tmp = tempfile::tempdir().unwrap();
    // A RAF-DB layout whose data root has ground-truth AUs is the synthetic set.
    let (s1, _) = write_stage1_and_3(tmp.path(), "rafdb");
    std::fs::create_dir_all(s1.join("no-such-data/basic/Annotation/AU_gt")).unwrap();
    let report = load(std::slice::from_ref(&s1), Compare::Auto);
    assert!(report.synthetic);
    assert_eq!(report.benchmark, None);
    let md = report.main_table().to_markdown();
    assert!(md.starts_with(
        "| Method | Angry | Disgust | Fear | Happy | Neutral | Sad | Surprised | Ave. |\n|---|"
    ));
    assert!(!md.contains("DCNN-DA"));
    // --compare forces a table, or none.
    assert_eq!(
        load(std::slice::from_ref(&s1), Compare::Benchmark(Benchmark::RafDb)).published.len(),
        8
    );
    assert!(load(&[s1], Compare::None).published.is_empty());
    // Compound: the 11 classes in label order.
    let labels: Vec<String> =
        aue_core::EXPRESSIONS_COMPOUND.iter().map(|s| s.to_string()).collect();
    let (cols, order) = display_columns(&labels);
    assert_eq!(cols, labels);
    assert_eq!(order, (0..11).collect::<Vec<_>>());
    let (cols, order) = display_columns(&basic());
    assert_eq!(cols[0], "Angry");
    assert_eq!(order, [5, 2, 1, 3, 6, 4, 0]);
}

#[test]
fn prior_table_from_a_tiny_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (s1, s3) = write_stage1_and_3(tmp.path(), "rafdb");
    let table = learned_table();
    write_prior_checkpoint(
        &s3.join("best.safetensors"),
        &table,
        &meta(Stage::Fuse, 2, &basic(), "rafdb"),
    );
    let (info, read) = read_prior_table(&s3.join("best.safetensors")).unwrap();
    assert_eq!(read, table);
    assert_eq!(info.format.as_deref(), Some(aue_contract::format::FORMAT_VERSION));
    assert_eq!(info.meta.epoch, 2);
    let report = load(&[s1, s3.clone()], Compare::Auto);
    let p = report.prior_table.as_ref().unwrap();
    assert_eq!(p.checkpoint, s3.join("best.safetensors"));
    assert_eq!(p.initial[0][0], 1.0);
    assert_eq!(p.learned[6][16], table[6][16]);
    // The largest change is at row 0, column 16: 0.001 * 16.
    assert!((p.max_abs_change - 0.016).abs() < 1e-6);
    assert_eq!(report.runs[1].best_checkpoint_epoch, Some(2));
}

#[test]
fn files_written_beside_the_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, s3) = write_stage1_and_3(tmp.path(), "rafdb");
    write_prior_checkpoint(
        &s3.join("best.safetensors"),
        &learned_table(),
        &meta(Stage::Fuse, 2, &basic(), "rafdb"),
    );
    let (runs, report) = build_report(&[tmp.path().to_owned()], &ReportOptions::default()).unwrap();
    assert_eq!(runs.len(), 2);
    let out = default_out_dir(&runs[0].dir);
    assert_eq!(out, tmp.path().join("report"));
    let files = write_report(&report, &out).unwrap();
    let names: Vec<String> =
        files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(
        names,
        [
            "stage1-confusion-best.svg",
            "stage1-confusion-last.svg",
            "stage1-curves.svg",
            "stage3-confusion-best.svg",
            "stage3-confusion-last.svg",
            "stage3-curves.svg",
            "prior-table.svg",
            "report.md",
            "report.json",
        ]
    );
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        if f.extension().is_some_and(|e| e == "svg") {
            assert!(
                text.starts_with("<svg") && text.trim_end().ends_with("</svg>"),
                "{}",
                f.display()
            );
        }
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for line in REFERENCE_RAFDB.lines() {
        assert!(md.contains(line), "report.md lacks {line}");
    }
    assert!(md.contains("![prior table, initial and learned](prior-table.svg)"));
    // report.json: numbers, not strings; null where undefined.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["benchmark"], "raf-db");
    assert_eq!(json["published"][7]["ave"], 81.0);
    let best = &json["runs"][0]["best"]["scores"];
    assert!((best["mean_class_acc"].as_f64().unwrap() - 4.175 / 6.0).abs() < 1e-12);
    assert!(best["classes"][1]["recall"].is_null());
    assert_eq!(json["columns"][0], "Angry");
    // Nothing but the written files is left in the folder (no temp files).
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), files.len());
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/synthetic-demo")
}

/// The committed example: config.json and metrics.jsonl of a tiny synthetic-set run of the real
/// stage binaries (aue-synth --train 96 --test 48 --size 64; tiny preset, 3 epochs per stage,
/// batch 16, lr milestone 2). Its train.log said: stage 1 best epoch 3, mean class acc 14.29%;
/// stage 2 best epoch 3, acc 27.08%, mean class acc 15.87%, AU F1 vs pseudo-targets 11.00%, vs
/// true AUs 9.62% (prior-only 68.92%); stage 3 best epoch 1, acc 22.92%, mean class acc 15.16%,
/// last epoch 3 at 14.29%.
#[test]
fn the_committed_run_of_the_stage_binaries() {
    let (runs, report) = build_report(&[fixture()], &ReportOptions::default()).unwrap();
    assert_eq!(runs.iter().map(|r| r.stage.number()).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(report.synthetic, "stage 2 measured ground-truth AUs");
    assert_eq!(report.benchmark, None);
    let pct = |v: Option<f64>| format!("{:.2}", 100.0 * v.unwrap());
    let [r1, r2, r3] = &report.runs[..] else { panic!("three runs") };
    assert_eq!((r1.best.epoch, pct(r1.best.scores.mean_class_acc)), (3, "14.29".into()));
    assert_eq!((r2.best.epoch, pct(r2.best.scores.acc)), (3, "27.08".into()));
    assert_eq!(pct(r2.best.scores.mean_class_acc), "15.87");
    let au = r2.au.as_ref().unwrap();
    assert_eq!(pct(au[0].pseudo.as_ref().unwrap().mean_f1), "11.00");
    assert_eq!(pct(au[0].truth.as_ref().unwrap().mean_f1), "9.62");
    assert_eq!(pct(au[0].prior_baseline.as_ref().unwrap().mean_f1), "68.92");
    assert_eq!((r3.best.epoch, pct(r3.best.scores.acc)), (1, "22.92".into()));
    assert_eq!(pct(r3.best.scores.mean_class_acc), "15.16");
    assert_eq!((r3.last.epoch, pct(r3.last.scores.mean_class_acc)), (3, "14.29".into()));
    assert!(r3.best.em_head.is_some());
    // Stored and recomputed scores agree for every test record of every stage.
    for run in &runs {
        for r in run.tests() {
            let stored = r.class.as_ref().unwrap();
            let s = aue_report::scores::ClassScores::from_confusion(&stored.confusion, &run.labels);
            // serde_json reads floats to within an ulp or so (no `float_roundtrip`).
            assert!((s.mean_class_acc.unwrap() - stored.mean_class_acc).abs() < 1e-12);
            assert!((s.acc.unwrap() - stored.acc).abs() < 1e-12);
        }
    }
    // No checkpoints are committed: no prior table, and the report says why.
    assert!(report.prior_table.is_none());
    assert!(report.notes.iter().any(|n| n.contains("No prior table")));
}
