//! Runs the real `aue-landmarks` binary on tiny RAF-DB, SFEW and folder layouts in temp dirs:
//! files land where the loader reads them, reruns keep them, faces not found and unreadable images
//! are reported (and listed) rather than crashing the run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/astronaut_face.png");

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aue-landmarks"))
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// 68 lines "x y".
fn points(path: &Path) -> Vec<[f32; 2]> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Vec<f32> = l.split_whitespace().map(|t| t.parse().unwrap()).collect();
            assert_eq!(v.len(), 2, "{l:?}");
            [v[0], v[1]]
        })
        .collect()
}

fn grey(path: &Path) {
    image::RgbImage::from_pixel(64, 48, image::Rgb([128, 128, 128])).save(path).unwrap();
}

#[test]
fn rafdb_layout_relative_points_resume_and_failures() {
    let root = tempfile::tempdir().unwrap();
    let basic = root.path().join("basic");
    for d in ["EmoLabel", "Image/original", "Annotation/boundingbox"] {
        fs::create_dir_all(basic.join(d)).unwrap();
    }
    fs::write(
        basic.join("EmoLabel/list_patition_label.txt"),
        "train_00001.png 4\ntest_0001.png 1\ntest_0002.png 2\n",
    )
    .unwrap();
    fs::copy(FIXTURE, basic.join("Image/original/train_00001.png")).unwrap();
    fs::write(basic.join("Annotation/boundingbox/train_00001.txt"), "47.2 40.5 110.2 100.4\n")
        .unwrap();
    // test_0001: an image that is not an image; test_0002: no box file.
    fs::write(basic.join("Image/original/test_0001.png"), b"not a png").unwrap();
    fs::write(basic.join("Annotation/boundingbox/test_0001.txt"), "1 1 10 10\n").unwrap();
    fs::copy(FIXTURE, basic.join("Image/original/test_0002.png")).unwrap();

    let (ok, text) = run(bin().args(["--dataset", "rafdb", "--root"]).arg(root.path()));
    assert!(ok, "{text}");
    assert!(text.contains("1 written") && text.contains("2 failed"), "{text}");
    let out = basic.join("Annotation/Landmarks_68_FAN_bbox/train_00001.txt");
    let pts = points(&out);
    assert_eq!(pts.len(), 68);
    // Relative to the box corner (47.2, 40.5): the face fills the 63 x 60 box.
    assert!(
        pts.iter().all(|p| p[0] > -10.0 && p[0] < 75.0 && p[1] > -10.0 && p[1] < 75.0),
        "{pts:?}"
    );
    let failed = fs::read_to_string(basic.join("aue-landmarks-failed.txt")).unwrap();
    assert!(failed.contains("test_0001.png") && failed.contains("test_0002.txt"), "{failed}");

    // A rerun keeps the file (resume); --overwrite rewrites it.
    fs::write(&out, "kept\n").unwrap();
    let (ok, text) = run(bin().args(["--dataset", "rafdb", "--root"]).arg(root.path()));
    assert!(ok && text.contains("1 kept"), "{text}");
    assert_eq!(fs::read_to_string(&out).unwrap(), "kept\n");
    let (ok, text) =
        run(bin().args(["--dataset", "rafdb", "--overwrite", "--root"]).arg(root.path()));
    assert!(ok && text.contains("1 written"), "{text}");
    assert_eq!(points(&out).len(), 68);
    // No temporary files are left behind.
    let dir = basic.join("Annotation/Landmarks_68_FAN_bbox");
    assert_eq!(fs::read_dir(dir).unwrap().count(), 1);
}

#[test]
fn sfew_layout_detects_and_lists_faces_not_found() {
    let root = tempfile::tempdir().unwrap();
    let happy = root.path().join("Train/imgs/Happy");
    let sad = root.path().join("Val/imgs/Sad");
    fs::create_dir_all(&happy).unwrap();
    fs::create_dir_all(&sad).unwrap();
    fs::copy(FIXTURE, happy.join("clip_1.png")).unwrap();
    grey(&sad.join("blank.png"));
    let (ok, text) = run(bin().args(["--dataset", "sfew", "--root"]).arg(root.path()));
    assert!(ok, "{text}");
    assert!(text.contains("1 written") && text.contains("1 faces not found"), "{text}");
    let pts = points(&root.path().join("Train/Annotations/Landmarks_68_FAN/Happy/clip_1.txt"));
    // Image pixels: the face is inside the detector box (47, 40)-(110, 100) of the 160 px image.
    assert!(
        pts.iter().all(|p| p[0] > 40.0 && p[0] < 120.0 && p[1] > 35.0 && p[1] < 115.0),
        "{pts:?}"
    );
    let nf = fs::read_to_string(root.path().join("aue-landmarks-not-found.txt")).unwrap();
    assert!(nf.contains("blank.png"), "{nf}");
    assert!(!root.path().join("Val/Annotations/Landmarks_68_FAN/Sad/blank.txt").exists());
}

#[test]
fn folder_mode_and_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("in");
    fs::create_dir_all(&images).unwrap();
    fs::copy(FIXTURE, images.join("a.png")).unwrap();
    let out: PathBuf = dir.path().join("out");
    let (ok, text) = run(bin().arg("--images").arg(&images).arg("--out").arg(&out));
    assert!(ok, "{text}");
    assert_eq!(points(&out.join("a.txt")).len(), 68);

    let (ok, text) = run(bin().args(["--dataset", "rafdb", "--root", "/no/such/dir"]));
    assert!(!ok && text.contains("/no/such/dir"), "{text}");
    let (ok, text) = run(bin()
        .arg("--images")
        .arg(&images)
        .arg("--out")
        .arg(&out)
        .args(["--input-size", "100"]));
    assert!(!ok && text.contains("multiple of 32"), "{text}");
    let (ok, text) = run(&mut bin());
    assert!(!ok && text.contains("--dataset"), "{text}");
}

#[test]
fn unreadable_image_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jpg");
    fs::write(&bad, b"\xff\xd8 truncated").unwrap();
    let e = aue_landmarks::load_image(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.jpg"), "{e}");
    let e = aue_landmarks::load_image(&dir.path().join("missing.png")).unwrap_err().to_string();
    assert!(e.contains("missing.png"), "{e}");
}

/// `eval --faces` on a copy of two real photos: one face (annotated), one photo without a face.
#[test]
fn eval_on_real_photos_prints_found_false_positives_and_nme() {
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real");
    let dir = tempfile::tempdir().unwrap();
    for f in ["takeo.png", "takeo.faces", "takeo.pts", "coffee.jpg", "coffee.faces"] {
        fs::copy(real.join(f), dir.path().join(f)).unwrap();
    }
    let (ok, text) = run(bin().args(["eval", "--device", "cpu", "--faces"]).arg(dir.path()));
    assert!(ok, "{text}");
    assert!(text.contains("2 images, 1 faces (1 with 68-point annotations)"), "{text}");
    // detector, expected, found, false positives, then NME of both nets (1 of 1 annotated).
    let row = text
        .lines()
        .find(|l| l.starts_with("| ssd+blazeface |"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.starts_with("| ssd+blazeface | 1 | 1 | 0 | 0.0"), "{row}");
    assert_eq!(row.matches("(1 of 1)").count(), 2, "{row}");
    assert!(text.contains("| takeo.png | 1 | 1 | 0 | 0.0"), "{text}");
    assert!(text.contains("| coffee.jpg | 0 | 0 | 0 | - | - |"), "{text}");
}

#[test]
fn device_and_detector_flags_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    fs::copy(FIXTURE, dir.path().join("a.png")).unwrap();
    let out = dir.path().join("out");
    let with = |args: &[&str]| {
        run(bin().arg("--images").arg(dir.path()).arg("--out").arg(&out).args(args))
    };
    let (ok, text) = with(&["--device", "gpu"]);
    assert!(!ok && text.contains("unknown device `gpu`"), "{text}");
    let (ok, text) = with(&["--detector", "yolo"]);
    assert!(!ok && text.contains("unknown detector \"yolo\""), "{text}");
    if !cfg!(feature = "cuda") {
        let (ok, text) = with(&["--device", "cuda:1"]);
        assert!(!ok && text.contains("no CUDA support"), "{text}");
    }
    for detector in ["tiny", "ssd-whole"] {
        let (ok, text) = with(&["--device", "cpu", "--detector", detector, "--overwrite"]);
        assert!(ok && text.contains("1 written"), "{detector}: {text}");
    }
}
