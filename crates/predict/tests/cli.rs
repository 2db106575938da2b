//! Runs the real `aue-predict` binary on a tiny stage-3 checkpoint (saved with the trainer's
//! metadata keys) and a real face photo, a blank image and a non-image file.

use std::path::{Path, PathBuf};

use aue_model::Stage;

mod common;

use common::{FACE, parse_csv, run, s, tiny_checkpoint};

/// Image inputs: the astronaut face, a blank grey image, a text file named .jpg.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(imgs.join("sub")).unwrap();
    std::fs::copy(FACE, imgs.join("face.png")).unwrap();
    image::RgbImage::from_pixel(96, 96, image::Rgb([128, 128, 128]))
        .save(imgs.join("sub/blank.png"))
        .unwrap();
    std::fs::write(imgs.join("sub/broken.jpg"), "not an image").unwrap();
    std::fs::write(imgs.join("notes.txt"), "ignored: not an image extension").unwrap();
    vec![imgs]
}

#[test]
fn stage3_csv_has_face_no_face_and_error_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(tmp.path(), Stage::Fuse, true);
    let inputs = inputs(tmp.path());
    let out = tmp.path().join("pred.csv");
    let overlays = tmp.path().join("overlays");
    let o = run(&[
        "--checkpoint",
        s(&ckpt),
        s(&inputs[0]),
        "--out",
        s(&out),
        "--overlay-dir",
        s(&overlays),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (header, rows) = parse_csv(&std::fs::read_to_string(&out).unwrap());
    let mut want: Vec<String> =
        ["file", "frame", "timestamp", "face", "status", "x1", "y1", "x2", "y2", "score"]
            .map(String::from)
            .to_vec();
    want.push("expression".into());
    want.extend(aue_core::EXPRESSIONS_BASIC.iter().map(|e| format!("p_{e}")));
    want.extend(aue_core::AU_NAMES.iter().map(|a| a.to_string()));
    want.extend(aue_core::AU_NAMES.iter().map(|a| format!("att_{a}")));
    assert_eq!(header, want);
    // Folders are walked in name order: face.png, then sub/blank.png, sub/broken.jpg.
    let faces: Vec<_> = rows.iter().filter(|r| r["file"].ends_with("face.png")).collect();
    assert_eq!(faces.len(), 1, "one face in the astronaut photo: {rows:?}");
    let f = faces[0];
    assert_eq!((f["status"].as_str(), f["face"].as_str()), ("ok", "0"));
    let num = |k: &str| f[k].parse::<f32>().unwrap_or_else(|_| panic!("{k} = {:?}", f[k]));
    assert!(num("x2") > num("x1") && num("y2") > num("y1") && num("score") >= 0.5);
    let probs: Vec<f32> =
        aue_core::EXPRESSIONS_BASIC.iter().map(|e| num(&format!("p_{e}"))).collect();
    assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-4, "{probs:?}");
    let best = probs.iter().enumerate().fold(0, |m, (i, &p)| if p > probs[m] { i } else { m });
    assert_eq!(f["expression"], aue_core::EXPRESSIONS_BASIC[best]);
    for a in aue_core::AU_NAMES {
        assert!((0.0..=1.0).contains(&num(a)), "{a}");
    }
    let att: f32 = aue_core::AU_NAMES.iter().map(|a| num(&format!("att_{a}"))).sum();
    assert!((att - 1.0).abs() < 1e-4, "attention sums to {att}");
    let blank: Vec<_> = rows.iter().filter(|r| r["file"].ends_with("blank.png")).collect();
    assert_eq!(blank.len(), 1);
    assert_eq!(blank[0]["status"], "no_face");
    let empty = |k: &str| blank[0][k].is_empty();
    assert!(aue_core::EXPRESSIONS_BASIC.iter().all(|e| empty(&format!("p_{e}"))));
    assert!(empty("AU12") && empty("att_AU12") && empty("x1") && empty("face"));
    // Still images have no frame or timestamp.
    assert!(rows.iter().all(|r| r["frame"].is_empty() && r["timestamp"].is_empty()));
    let broken: Vec<_> = rows.iter().filter(|r| r["file"].ends_with("broken.jpg")).collect();
    assert_eq!(broken.len(), 1);
    assert!(
        broken[0]["status"].starts_with("error: ") && broken[0]["status"].contains("broken.jpg")
    );
    assert_eq!(rows.len(), 3, "notes.txt is not an image: {rows:?}");
    // One overlay per readable image.
    assert!(overlays.join("face.png").is_file() && overlays.join("blank.png").is_file());
    assert!(!overlays.join("broken.png").exists());
}

#[test]
fn jsonl_and_stage1_leave_au_and_attention_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(tmp.path(), Stage::Em, true);
    let out = tmp.path().join("pred.jsonl");
    let o = run(&["--checkpoint", s(&ckpt), FACE, "--out", s(&out), "--format", "jsonl"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r["status"], "ok");
    let probs = r["probs"].as_object().unwrap();
    assert_eq!(probs.len(), 7);
    let sum: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-4);
    assert!(r["aus"].is_null() && r["attention"].is_null());
    assert!(r["frame"].is_null() && r["timestamp"].is_null() && r["face"] == 0);
}

#[test]
fn wrong_checkpoints_are_clear_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("p.csv");
    // Not a safetensors file.
    let bogus = tmp.path().join("bogus.safetensors");
    std::fs::write(&bogus, "hello").unwrap();
    let o = run(&["--checkpoint", s(&bogus), FACE, "--out", s(&out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bogus.safetensors"), "{err}");
    // Trainer metadata says tiny, --preset says resnet18.
    let ckpt = tiny_checkpoint(tmp.path(), Stage::Fuse, true);
    let o = run(&["--checkpoint", s(&ckpt), "--preset", "resnet18", FACE, "--out", s(&out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("stage3.safetensors") && err.contains("resnet18"),
        "{err}"
    );
    // No metadata and no --preset.
    let bare_dir = tmp.path().join("bare");
    std::fs::create_dir_all(&bare_dir).unwrap();
    let bare = tiny_checkpoint(&bare_dir, Stage::Fuse, false);
    let o = run(&["--checkpoint", s(&bare), FACE, "--out", s(&out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--preset"), "{err}");
    // No metadata, wrong --preset: the strict load names a tensor.
    let o = run(&["--checkpoint", s(&bare), "--preset", "resnet18", FACE, "--out", s(&out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("stage3.safetensors") && err.contains("tensor"),
        "{err}"
    );
    // No metadata, right --preset: runs.
    let o = run(&["--checkpoint", s(&bare), "--preset", "tiny", FACE, "--out", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".aue-predict-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn nothing_readable_exits_non_zero_but_writes_the_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(tmp.path(), Stage::Fuse, true);
    let broken = tmp.path().join("x.png");
    std::fs::write(&broken, "no").unwrap();
    let out = tmp.path().join("p.csv");
    let o = run(&["--checkpoint", s(&ckpt), s(&broken), "--out", s(&out)]);
    assert!(!o.status.success());
    let (_, rows) = parse_csv(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(rows.len(), 1);
    assert!(rows[0]["status"].starts_with("error: "));
}

#[test]
fn device_flag_is_parsed_and_cuda_needs_a_cuda_build() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(tmp.path(), Stage::Fuse, true);
    let out = tmp.path().join("p.csv");
    let err = |device: &str| {
        let o = run(&["--checkpoint", s(&ckpt), FACE, "--out", s(&out), "--device", device]);
        assert!(!o.status.success(), "--device {device} should fail here");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    for bad in ["gpu", "cuda:x", "cuda:"] {
        let e = err(bad);
        assert!(e.contains(&format!("unknown device `{bad}`")), "{e}");
    }
    if !cfg!(feature = "cuda") {
        let e = err("cuda:1");
        assert!(e.contains("no CUDA support") && e.contains("--features cuda"), "{e}");
    }
    let o = run(&["--checkpoint", s(&ckpt), FACE, "--out", s(&out), "--device", "cpu"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
