//! The `aue-stage1` binary's command line: help, and bad flags answered with an error, not a
//! panic. (Having an integration test also makes `cargo test` build this binary, which the
//! end-to-end test in aue-stage3 runs.)

use std::process::{Command, Output};

fn stage1(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aue-stage1")).args(args).output().expect("run aue-stage1")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn help_shows_stage_1_flags() {
    let out = stage1(&["--help"]);
    assert!(out.status.success());
    let help = text(&out);
    assert!(help.contains("stage 1 (EM)") && help.contains("--pretrained"), "{help}");
    assert!(!help.contains("--resume-model"), "stage 1 has no previous stage: {help}");
}

#[test]
fn bad_flags_are_errors() {
    let out = stage1(&["--preset", "vgg16"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("resnet101"), "{}", text(&out));

    let out = stage1(&["--preset", "tiny", "--data-root", "/nonexistent/aue-data"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out);
    assert!(err.starts_with("error: invalid setting `data_root`"), "{err}");
}
