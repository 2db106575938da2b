//! The stage binaries' command lines: each stage's help shows its own flags, bad flags are errors
//! that name the setting (never a panic), and stage 2 without a stage-1 checkpoint says what to
//! do before it writes anything.

use aue_tests::{run, text};

#[test]
fn help_shows_each_stages_own_flags() {
    // (stage, its title, a flag only it has, a flag it must not have)
    for (n, title, has, lacks) in [
        (1, "stage 1 (EM)", "--pretrained", "--resume-model"),
        (2, "stage 2 (AU)", "--resume-model", "--pretrained"),
        (3, "stage 3 (Fuse)", "--resume-model", "--pretrained"),
    ] {
        let out = run(&format!("aue-stage{n}"), &["--help"], &[]);
        assert!(out.status.success());
        let help = text(&out);
        assert!(help.contains(title) && help.contains(has), "stage {n}: {help}");
        assert!(!help.contains(lacks), "stage {n} has no {lacks}: {help}");
    }
}

#[test]
fn bad_flags_are_errors() {
    let out = run("aue-stage1", &["--preset", "vgg16"], &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("resnet101"), "{}", text(&out));

    let out = run("aue-stage1", &["--preset", "tiny", "--data-root", "/nonexistent/aue-data"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out);
    assert!(err.starts_with("error: invalid setting `data_root`"), "{err}");
}

#[test]
fn missing_stage_1_checkpoint_says_what_to_do() {
    let data = tempfile::tempdir().unwrap();
    let run_dir = data.path().join("run");
    let (d, r) = (data.path().to_str().unwrap(), run_dir.to_str().unwrap());
    let out = run("aue-stage2", &["--preset", "tiny", "--data-root", d, "--run-dir", r], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out);
    assert!(err.contains("stage1/best.safetensors") && err.contains("run stage 1 first"), "{err}");
    assert!(!run_dir.exists(), "nothing is written before the configuration is checked");
}
