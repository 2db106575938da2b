//! The `aue-stage2` binary's command line: help, and a missing stage-1 checkpoint answered with
//! what to do. (Having an integration test also makes `cargo test` build this binary, which the
//! end-to-end test in aue-stage3 runs.)

use std::process::{Command, Output};

fn stage2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aue-stage2")).args(args).output().expect("run aue-stage2")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn help_shows_stage_2_flags() {
    let out = stage2(&["--help"]);
    assert!(out.status.success());
    let help = text(&out);
    assert!(help.contains("stage 2 (AU)") && help.contains("--resume-model"), "{help}");
    assert!(!help.contains("--pretrained"), "stage 2 starts from stage 1: {help}");
}

#[test]
fn missing_stage_1_checkpoint_says_what_to_do() {
    let data = tempfile::tempdir().unwrap();
    let run = data.path().join("run");
    let out = stage2(&[
        "--preset",
        "tiny",
        "--data-root",
        data.path().to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out);
    assert!(err.contains("stage1/best.safetensors") && err.contains("run stage 1 first"), "{err}");
    assert!(!run.exists(), "nothing is written before the configuration is checked");
}
