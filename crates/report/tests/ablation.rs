//! The ablation report on a hand-made grid folder: the quick grid's layout with two seeds, run
//! files in the trainer's formats, two runs left unfinished.

mod common;

use aue_contract::SplitName::{Test, Train};
use aue_contract::metrics::ClassMetrics;
use aue_core::EXPRESSIONS_BASIC;
use aue_report::ablation::{GridResults, write_ablation};
use aue_report::document;
use aue_report::grid::{GRID_FILE, GridConfig, GridPaths, Variant};
use common::{record, stage1_best, stage1_other, stage3_best, write_run};

/// A stage-2 run whose best test epoch scores `f1` against the true AUs (every AU present: 0.36).
fn write_stage2(dir: &std::path::Path, f1: f64) {
    let au = |f1: f64| {
        serde_json::from_value(serde_json::json!({
            "mean_precision": f1, "mean_recall": f1, "mean_f1": f1, "per_au": [], "samples": 57
        }))
        .unwrap()
    };
    let mut test = record(Test, 2, 1, 0.2, &stage1_best(), Some(true));
    test.au_true = Some(au(f1));
    test.au_all_present = Some(au(0.36));
    write_run(dir, 2, "rafdb", &[record(Train, 2, 1, 0.3, &stage1_best(), None), test]);
}

/// A stage-1 or stage-3 run of two epochs: `first` then `second` on the test split, the best
/// marked as the trainer marks it.
fn write_stage(dir: &std::path::Path, stage: u8, first: Vec<Vec<u64>>, second: Vec<Vec<u64>>) {
    let second_is_best = second == stage3_best() || first == stage1_other();
    let mut records = [
        record(Train, stage, 1, 1.0, &first, None),
        record(Test, stage, 1, 1.0, &first, Some(true)),
        record(Train, stage, 2, 0.9, &second, None),
        record(Test, stage, 2, 0.9, &second, Some(second_is_best)),
    ];
    // Stage 3's EM head stays at stage 1's best (69.58 %).
    if stage == 3 {
        for r in &mut records {
            r.em_head = Some(ClassMetrics::from_confusion(stage1_best(), &EXPRESSIONS_BASIC));
        }
    }
    write_run(dir, stage, "rafdb", &records);
}

#[test]
fn grid_report_gives_spread_over_seeds_and_names_missing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut grid = GridConfig::builtin(true).unwrap();
    grid.seeds = vec![0, 1];
    std::fs::write(root.join(GRID_FILE), grid.to_toml()).unwrap();
    let paths = GridPaths { root: root.to_owned() };
    let easy = "easy-uniform";
    for seed in [0, 1] {
        // Stage 1: epoch 1 poor, epoch 2 best (69.58 % mean class accuracy).
        write_stage(&paths.stage1(easy, seed), 1, stage1_other(), stage1_best());
        for variant in Variant::ALL {
            let v = paths.variant_dir(easy, seed, variant);
            write_stage2(&v.join("stage2"), 0.5 + 0.1 * seed as f64);
            // Seed 0: stage 3 reaches 79.17 %; seed 1: it stays at stage 1's 69.58 % and its
            // last epoch falls back to 33.3 % (frozen-eval: not finished).
            if seed == 0 {
                write_stage(&v.join("stage3"), 3, stage1_best(), stage3_best());
            } else if variant != Variant::FrozenEval {
                write_stage(&v.join("stage3"), 3, stage1_best(), stage1_other());
            }
        }
    }
    // The second set: seed 0 complete, seed 1 without stage 3.
    let noisy = "medium-rafdb-noise20";
    for seed in [0, 1] {
        write_stage(&paths.stage1(noisy, seed), 1, stage1_other(), stage1_best());
        let v = paths.variant_dir(noisy, seed, Variant::Reference);
        write_stage2(&v.join("stage2"), 0.6);
        if seed == 0 {
            write_stage(&v.join("stage3"), 3, stage1_best(), stage3_best());
        }
    }

    let results = GridResults::load(root).unwrap();
    assert_eq!(
        results.missing,
        vec![
            paths.variant_dir(easy, 1, Variant::FrozenEval).join("stage3"),
            paths.variant_dir(noisy, 1, Variant::Reference).join("stage3"),
        ]
    );
    let rows = results.rows();
    assert_eq!(rows.len(), 4, "three variants of the first set, the reference of the second");
    // A variant not finished leaves out that variant of that seed, not the seed's other runs.
    let seeds: Vec<usize> = rows.iter().map(|r| r.seeds.len()).collect();
    assert_eq!(seeds, [2, 2, 1, 1]);

    let out = root.join("report");
    let doc = write_ablation(&results, &out).unwrap();
    let text = document::to_text(&doc);
    let md = std::fs::read_to_string(out.join("ablation.md")).unwrap();
    assert_eq!(md, document::to_markdown(&doc));
    // Best epochs: stage 1 69.58 % both seeds; stage 3 79.17 % and 69.58 % -> 74.4 ± 6.8;
    // difference +9.58 and 0 -> +4.8 ± 6.8. Accuracy 75.44 % -> 84.21 % / 75.44 %.
    let first = md.lines().find(|l| l.starts_with("| easy-uniform / reference |")).unwrap();
    let cells: Vec<&str> = first.split(" | ").collect();
    // The EM head stays at 69.58 %, so fused - EM head is the same +9.58 and 0.
    assert_eq!(
        &cells[1..10],
        [
            "2",
            "69.6 ± 0.0",
            "74.4 ± 6.8",
            "+4.8 ± 6.8",
            "69.6 ± 0.0",
            "+4.8 ± 6.8",
            "75.4 ± 0.0",
            "79.8 ± 6.2",
            "+4.4 ± 6.2"
        ]
    );
    // Fear has no test sample; Disgust 2/5 -> 3/5 and 2/5; AU F1 0.5 and 0.6.
    assert_eq!(
        &cells[10..],
        ["n/a", "n/a", "40.0 ± 0.0", "50.0 ± 14.1", "55.0 ± 7.1", "36.0 ± 0.0 |"]
    );
    // Last epochs: seed 1's stage 3 ends at 33.3 %: differences +9.58 and -36.25.
    let last_table = md.split("## Last epochs").nth(1).unwrap();
    assert!(
        last_table
            .contains("| easy-uniform / reference | 2 | 69.6 ± 0.0 | 56.2 ± 32.4 | -13.3 ± 32.4 | 69.6 ± 0.0 | -13.3 ± 32.4 |"),
        "{last_table}"
    );
    assert!(md.contains(
        "| medium-rafdb-noise20 / reference | 1 | 69.6 ± 0.0 | 79.2 ± 0.0 | +9.6 ± 0.0 |"
    ));
    assert!(text.contains("Not finished") && text.contains("seed1/reference/stage3"));
    let svg = std::fs::read_to_string(out.join("ablation-delta.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("easy-uniform / frozen-eval"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ablation.json")).unwrap()).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), 4);
}

#[test]
fn a_grid_folder_without_its_grid_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let err = GridResults::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains(GRID_FILE), "{err}");
}
