//! Runs the real `aue-synth` binary in a temp dir.

use std::process::Command;

#[test]
fn cli_writes_a_set_and_rejects_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("synth");
    let status = Command::new(env!("CARGO_BIN_EXE_aue-synth"))
        .args(["--out", out.to_str().unwrap(), "--train", "3", "--test", "2", "--seed", "5"])
        .args(["--size", "48", "--difficulty", "hard", "--threads", "2"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let labels = std::fs::read_to_string(out.join(aue_synth::LABEL_FILE)).unwrap();
    assert_eq!(labels.lines().count(), 5);
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("--difficulty hard") && readme.contains("Difficulty: hard"));

    let bad = Command::new(env!("CARGO_BIN_EXE_aue-synth"))
        .args(["--out", out.to_str().unwrap(), "--train", "1", "--test", "0", "--size", "8"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("size 8"), "{err}");

    let bad = Command::new(env!("CARGO_BIN_EXE_aue-synth"))
        .args(["--out", "x", "--train", "1", "--test", "0", "--difficulty", "brutal"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
