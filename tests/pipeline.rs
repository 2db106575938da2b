//! End to end: the real `aue-stage1`, `aue-stage2` and `aue-stage3` binaries, one after the other
//! on a tiny synthetic set in a temp dir (tiny preset, a few steps each), then `aue-report` on
//! the run, with the run folder's files and checkpoint metadata checked, and the errors a user
//! meets first. The binaries are built by the test itself (see `support/lib.rs`).

use std::path::Path;

use aue_contract::meta::sha256_file;
use aue_tests::{ok as ok_bin, run as run_bin, text};

fn run(n: u8, args: &[&str]) -> std::process::Output {
    run_bin(&format!("aue-stage{n}"), args, &[])
}

fn ok(n: u8, args: &[&str]) -> String {
    ok_bin(&format!("aue-stage{n}"), args)
}

fn meta(path: &Path) -> std::collections::BTreeMap<String, String> {
    aue_tests::meta(path)
}

#[test]
fn three_stages_in_a_row() {
    let tmp = tempfile::tempdir().unwrap();
    let data = aue_tests::synth(tmp.path(), 32, 16);
    let run_dir = tmp.path().join("run");
    let (d, r) = (data.to_str().unwrap(), run_dir.to_str().unwrap());
    let common = [
        "--data-root",
        d,
        "--run-dir",
        r,
        "--preset",
        "tiny",
        "--epochs",
        "1",
        "--max-steps",
        "2",
        "--train-batch-size",
        "8",
        "--test-batch-size",
        "8",
        "--workers",
        "1",
    ];

    for n in 1..=3 {
        let help = ok(n, &["--help"]);
        assert!(help.contains(&format!("stage {n}")) && help.contains("--run-dir"), "{help}");
    }

    // Stage 1 from scratch.
    let log1 = ok(1, &common);
    assert!(log1.contains("stage 1 (em) best (test-set selection, epoch 1)"), "{log1}");
    let s1 = run_dir.join("stage1");
    for f in [
        "config.json",
        "metrics.jsonl",
        "train.log",
        "best.safetensors",
        "last.safetensors",
        "commit.json",
        "epoch-0001.safetensors",
        "epoch-0001.optim.safetensors",
    ] {
        assert!(s1.join(f).is_file(), "stage 1 did not write {f}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s1.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["stage"], 1);
    assert_eq!(config["preset"], "tiny");
    assert_eq!(config["lr_milestones"], serde_json::json!([15, 30]));
    let lines = std::fs::read_to_string(s1.join("metrics.jsonl")).unwrap();
    assert!(lines.starts_with("{\"split\":\"train\",\"stage\":1,\"epoch\":1,"), "{lines}");
    let lines: Vec<serde_json::Value> =
        lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[0]["split"].as_str(), lines[1]["split"].as_str()),
        (Some("train"), Some("test"))
    );
    assert_eq!(lines[1]["samples"], 16);
    assert_eq!(lines[1]["confusion"].as_array().map(Vec::len), Some(7));
    let log_file = std::fs::read_to_string(s1.join("train.log")).unwrap();
    assert!(log_file.contains("best (test-set selection"), "train.log: {log_file}");
    let m1 = meta(&s1.join("best.safetensors"));
    assert_eq!(
        (m1["stage"].as_str(), m1["preset"].as_str(), m1["epoch"].as_str()),
        ("1", "tiny", "1")
    );

    // The folder is not overwritten by accident.
    let again = run(1, &common);
    assert!(!again.status.success() && text(&again).contains("--resume"), "{}", text(&again));

    // Stage 2 starts from stage 1's best by default.
    let log2 = ok(2, &common);
    assert!(log2.contains("AU F1 vs true AUs") && log2.contains("prior of the label"), "{log2}");
    let m2 = meta(&run_dir.join("stage2/best.safetensors"));
    assert_eq!(m2["stage"], "2");
    assert_eq!(m2["parent_sha256"], sha256_file(&s1.join("best.safetensors")).unwrap());

    // Stage 3 refuses a stage-1 checkpoint, then runs from stage 2's best, with a config file.
    let s1_best = s1.join("best.safetensors");
    let wrong = run(3, &[&common[..], &["--resume-model", s1_best.to_str().unwrap()]].concat());
    assert!(!wrong.status.success(), "stage 3 accepted a stage-1 checkpoint");
    let err = text(&wrong);
    assert!(err.contains("error:") && err.contains("written by stage 1 (em)"), "{err}");
    let toml = tmp.path().join("stage3.toml");
    std::fs::write(
        &toml,
        format!(
            "preset = \"tiny\"\nepochs = 1\nmax_steps = 2\ntrain_batch_size = 8\n\
             test_batch_size = 8\nworkers = 1\ndata_root = {d:?}\nrun_dir = {r:?}\n"
        ),
    )
    .unwrap();
    let log3 = ok(3, &["--config", toml.to_str().unwrap(), "--lr", "0.005"]);
    assert!(log3.contains("EM head acc"), "{log3}");
    let s3 = run_dir.join("stage3");
    let config3: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s3.join("config.json")).unwrap()).unwrap();
    assert_eq!(config3["lr"], 0.005, "the flag overrides the file");
    assert_eq!(config3["max_steps"], 2, "the file's value is used");
    let m3 = meta(&s3.join("last.safetensors"));
    assert_eq!(m3["stage"], "3");
    assert_eq!(m3["parent_sha256"], sha256_file(&run_dir.join("stage2/best.safetensors")).unwrap());
    let metrics3: serde_json::Value = serde_json::from_str(&m3["metrics"]).unwrap();
    assert!(metrics3["em_head"]["mean_class_acc"].is_number(), "{metrics3}");

    // The report on the three stage folders.
    let out = tmp.path().join("report");
    let printed = ok_bin("aue-report", &["--run", r, "--out", out.to_str().unwrap()]);
    assert!(printed.contains("Wrote") && out.join("report.md").is_file(), "{printed}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("stage 3") || report.contains("Stage 3"), "{report}");
}
