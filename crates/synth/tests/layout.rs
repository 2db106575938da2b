//! Generates a tiny set and parses every file back: the RAF-DB basic layout of docs/METHOD.md
//! section 5 plus the AU ground truth, as docs/FILES.md ("Data") fixes it.

use std::fs;
use std::path::Path;

use aue_synth::{
    AU_DIR, BOX_DIR, IMAGE_DIR, LABEL_FILE, LANDMARK_DIR, Split, SynthConfig, draw_sample,
    generate, split_expressions,
};

fn floats(path: &Path) -> Vec<Vec<f32>> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| {
            l.split_whitespace()
                .map(|v| v.parse().unwrap_or_else(|e| panic!("{}: {l:?}: {e}", path.display())))
                .collect()
        })
        .collect()
}

#[test]
fn every_file_parses_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SynthConfig::new(dir.path(), 9, 4, 3);
    cfg.size = 64;
    cfg.threads = 2;
    cfg.command_line = "aue-synth --out x --train 9 --test 4 --seed 3 --size 64".into();
    let summary = generate(&cfg).unwrap();
    let root = dir.path();

    // Label file: train lines first, RAF-DB widths, labels 1..7.
    let labels = fs::read_to_string(root.join(LABEL_FILE)).unwrap();
    let lines: Vec<(String, usize)> = labels
        .lines()
        .map(|l| {
            let (name, label) = l.split_once(' ').unwrap();
            (name.to_string(), label.parse().unwrap())
        })
        .collect();
    let expected_names: Vec<String> = (1..=9)
        .map(|i| format!("train_{i:05}.jpg"))
        .chain((1..=4).map(|i| format!("test_{i:04}.jpg")))
        .collect();
    assert_eq!(lines.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), expected_names);
    assert!(lines.iter().all(|&(_, l)| (1..=7).contains(&l)));
    assert_eq!(summary.train.count, 9);
    assert_eq!(summary.test.count, 4);
    assert_eq!(summary.train.per_label.iter().sum::<usize>(), 9);
    // 9 train images over 7 classes: every generating expression appears.
    assert!(summary.train.per_expression.iter().all(|&k| k >= 1));

    let train_expr = split_expressions(&cfg, Split::Train);
    let test_expr = split_expressions(&cfg, Split::Test);
    for (i, (name, label)) in lines.iter().enumerate() {
        let stem = name.trim_end_matches(".jpg");
        let img = image::open(root.join(IMAGE_DIR).join(name)).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (64, 64), "{name}");

        let bbox = floats(&root.join(BOX_DIR).join(format!("{stem}.txt")));
        assert_eq!(bbox.len(), 1, "{stem}: one box line");
        let [x1, y1, x2, y2] = <[f32; 4]>::try_from(bbox[0].clone()).unwrap();
        assert!(0.0 <= x1 && x1 < x2 && x2 <= 64.0 && 0.0 <= y1 && y1 < y2 && y2 <= 64.0);
        // Square-ish like a detector's box.
        let aspect = (x2 - x1) / (y2 - y1);
        assert!((0.7..1.4).contains(&aspect), "{stem}: box aspect {aspect}");

        let lm = floats(&root.join(LANDMARK_DIR).join(format!("{stem}.txt")));
        assert_eq!(lm.len(), 68, "{stem}: 68 landmarks");
        assert!(lm.iter().all(|p| p.len() == 2));
        for p in &lm {
            let (x, y) = (p[0] + x1, p[1] + y1);
            assert!((0.0..=64.0).contains(&x) && (0.0..=64.0).contains(&y), "{stem}: {x} {y}");
        }

        let au = floats(&root.join(AU_DIR).join(format!("{stem}.txt")));
        assert_eq!(au.len(), 1, "{stem}: one AU line");
        assert_eq!(au[0].len(), 17, "{stem}: 17 AUs");
        assert!(au[0].iter().all(|&v| v == 0.0 || (0.3..=1.0).contains(&v)), "{stem}: {:?}", au[0]);

        // The files hold exactly what the generator drew: recompute this sample.
        let (split, index, expr) = if i < 9 {
            (Split::Train, i, train_expr[i])
        } else {
            (Split::Test, i - 9, test_expr[i - 9])
        };
        let sample = draw_sample(&cfg, split, index, expr).unwrap();
        assert_eq!(sample.label + 1, *label, "{stem}: label");
        for (written, drawn) in lm.iter().zip(sample.face.landmarks) {
            assert!((written[0] + x1 - drawn[0]).abs() < 0.01, "{stem}: x");
            assert!((written[1] + y1 - drawn[1]).abs() < 0.01, "{stem}: y");
        }
        for (written, drawn) in au[0].iter().zip(sample.face.aus) {
            assert!((written - drawn).abs() < 1e-6, "{stem}: AU {written} vs {drawn}");
        }
    }

    // No temp files left behind; a README that says what the set is.
    for dir in [IMAGE_DIR, BOX_DIR, LANDMARK_DIR, AU_DIR, "basic/EmoLabel"] {
        for entry in fs::read_dir(root.join(dir)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.ends_with(".tmp"), "left over {name}");
        }
    }
    assert_eq!(fs::read_dir(root.join(IMAGE_DIR)).unwrap().count(), 13);
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains("ynthetic") && readme.contains("Seed: 3"));
    assert!(readme.contains("AU01 AU02 AU04") && readme.contains("--train 9"));
    assert!(readme.contains("Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral"));
}

#[test]
fn rerun_replaces_a_stale_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SynthConfig::new(dir.path(), 5, 2, 1);
    cfg.size = 48;
    generate(&cfg).unwrap();
    cfg.train = 3;
    cfg.test = 0;
    generate(&cfg).unwrap();
    let labels = fs::read_to_string(dir.path().join(LABEL_FILE)).unwrap();
    assert_eq!(labels.lines().count(), 3);
}

#[test]
fn bad_config_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SynthConfig::new(dir.path(), 1, 1, 0);
    cfg.jpeg_quality = 0;
    let err = generate(&cfg).unwrap_err().to_string();
    assert!(err.contains("jpeg quality"), "{err}");
    // The output root is a file: the error names the folder it could not create.
    let file = dir.path().join("plain-file");
    fs::write(&file, b"x").unwrap();
    let cfg = SynthConfig::new(&file, 1, 0, 0);
    let err = generate(&cfg).unwrap_err().to_string();
    assert!(err.contains("plain-file"), "{err}");
}
