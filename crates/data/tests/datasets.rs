//! Opening RAF-DB basic / compound and SFEW 2.0 layouts (docs/METHOD.md section 5): what is read,
//! what is skipped as the reference skips it, and an error naming the file (and line) for each
//! kind of malformed input, or a count under `skip_bad`.

mod common;

use std::path::Path;

use aue_data::{
    Augment, DataError, Dataset, DatasetKind, DatasetOptions, Loader, LoaderOptions, Split,
};
use common::*;

const BASIC: &[(&str, usize)] = &[
    ("train_00001.jpg", 1),
    ("train_00002.jpg", 4),
    ("train_00003.jpg", 4),
    ("train_00004.jpg", 7),
    ("test_0001.jpg", 2),
    ("test_0002.jpg", 7),
];

fn opts() -> DatasetOptions {
    DatasetOptions { input_size: 64, ..DatasetOptions::default() }
}

fn skip_bad() -> DatasetOptions {
    DatasetOptions { skip_bad: true, ..opts() }
}

fn open_basic(root: &Path, split: Split, options: &DatasetOptions) -> aue_data::Result<Dataset> {
    Dataset::open(DatasetKind::Rafdb, root, split, options)
}

/// Asserts that `err` names `file` (and `line`).
fn assert_names(err: &DataError, file: &str, line: Option<usize>) {
    let text = err.to_string();
    assert!(text.contains(file), "error does not name {file}: {text}");
    assert_eq!(err.line(), line, "line of: {text}");
    if let Some(line) = line {
        assert!(text.contains(&format!("{file}:{line}:")), "{text}");
    }
}

#[test]
fn raf_basic_splits_labels_and_class_counts() {
    let dir = tempfile::tempdir().unwrap();
    make_raf(dir.path(), "basic", BASIC);
    let train = open_basic(dir.path(), Split::Train, &opts()).unwrap();
    let test = open_basic(dir.path(), Split::Test, &opts()).unwrap();
    assert_eq!((train.len(), test.len()), (4, 2));
    assert_eq!(train.class_names(), aue_core::EXPRESSIONS_BASIC);
    assert_eq!(train.class_counts(), vec![1, 0, 0, 2, 0, 0, 1]);
    assert_eq!(test.class_counts(), vec![0, 1, 0, 0, 0, 0, 1]);
    let s = &train.samples()[1];
    assert_eq!((s.name.as_str(), s.label, s.width, s.height), ("train_00002.jpg", 3, 64, 56));
    // Landmarks are shifted by the box's top-left corner.
    let lm = landmarks(44.0, 44.0, 0.0, 0.0);
    assert_eq!(s.landmarks[0], [lm[0][0] + 6.0, lm[0][1] + 5.0]);
    assert!(!train.has_au_gt());
    assert!(train.report().no_landmarks.is_empty());
}

#[test]
fn raf_compound_has_eleven_classes() {
    let dir = tempfile::tempdir().unwrap();
    make_raf(
        dir.path(),
        "compound",
        &[("train_0001.jpg", 11), ("train_0002.jpg", 9), ("test_0001.jpg", 1)],
    );
    let train =
        Dataset::open(DatasetKind::RafdbCompound, dir.path(), Split::Train, &opts()).unwrap();
    assert_eq!(train.num_classes(), 11);
    assert_eq!(train.class_names()[10], "Disgustedly Surprised");
    assert_eq!(train.samples()[0].label, 10);
    // The basic reader does not see the compound folder.
    assert!(open_basic(dir.path(), Split::Train, &opts()).is_err());
}

#[test]
fn au_ground_truth_is_read_when_the_folder_exists() {
    let dir = tempfile::tempdir().unwrap();
    let base = make_raf(dir.path(), "basic", BASIC);
    let names: Vec<&str> = BASIC.iter().map(|(n, _)| *n).collect();
    add_au_gt(&base, &names);
    let train = open_basic(dir.path(), Split::Train, &opts()).unwrap();
    assert!(train.has_au_gt());
    let gt = train.samples()[1].au_gt.unwrap();
    assert_eq!(gt[0], 0.25);
    assert_eq!(gt[3], 1.0);
    let loader = Loader::new(&train, LoaderOptions::eval(3)).unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();
    let au_gt = batch.au_gt.unwrap();
    assert_eq!(au_gt.dims(), &[3, 17]);
    assert_eq!(au_gt.to_vec2::<f32>().unwrap()[1], gt.to_vec());
    // A missing AU file is then malformed.
    std::fs::remove_file(base.join("Annotation/AU_gt/train_00003.txt")).unwrap();
    let err = open_basic(dir.path(), Split::Train, &opts()).unwrap_err();
    assert_names(&err, "train_00003.txt", None);
    assert_eq!(open_basic(dir.path(), Split::Train, &skip_bad()).unwrap().len(), 3);
}

#[test]
fn images_without_landmarks_are_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let base = make_raf(dir.path(), "basic", BASIC);
    std::fs::remove_file(base.join("Annotation/Landmarks_68_FAN_bbox/train_00002.txt")).unwrap();
    write(&base.join("Annotation/Landmarks_68_FAN_bbox/train_00003.txt"), "1 2\n");
    let train = open_basic(dir.path(), Split::Train, &opts()).unwrap();
    assert_eq!(train.len(), 2);
    assert_eq!(train.report().listed, 4);
    assert_eq!(train.report().no_landmarks, vec!["train_00002.jpg", "train_00003.jpg"]);
    assert!(train.report().bad.is_empty());
}

#[test]
fn sixty_six_point_files_are_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let base = make_raf(dir.path(), "basic", BASIC);
    let mut points = landmarks(44.0, 44.0, 0.0, 0.0);
    let full = points.clone();
    points.remove(64);
    points.remove(60);
    write(&base.join("Annotation/Landmarks_68_FAN_bbox/train_00001.txt"), &points_text(&points));
    let train = open_basic(dir.path(), Split::Train, &opts()).unwrap();
    let lm = train.samples()[0].landmarks;
    assert_eq!(lm[60], lm[48]);
    assert_eq!(lm[64], lm[54]);
    assert_eq!(lm[61], [full[61][0] + 6.0, full[61][1] + 5.0]);
    assert_eq!(lm[67], [full[67][0] + 6.0, full[67][1] + 5.0]);
}

#[test]
fn aligned_images_are_found_under_their_raf_name() {
    let dir = tempfile::tempdir().unwrap();
    let base = make_raf(dir.path(), "basic", BASIC);
    for (i, (name, _)) in BASIC.iter().enumerate() {
        let stem = name.rsplit_once('.').unwrap().0;
        write_image(&base.join(format!("Image/aligned/{stem}_aligned.jpg")), 60, 60, i as u32);
    }
    let options = DatasetOptions { aligned: true, ..opts() };
    let train = open_basic(dir.path(), Split::Train, &options).unwrap();
    assert!(train.samples()[0].image.ends_with("Image/aligned/train_00001_aligned.jpg"));
    assert_eq!(train.samples()[0].width, 60);
}

#[test]
fn raf_box_files_are_found_under_their_raf_name() {
    let dir = tempfile::tempdir().unwrap();
    let base = make_raf(dir.path(), "basic", BASIC);
    let boxes = base.join("Annotation/boundingbox");
    std::fs::rename(boxes.join("train_00001.txt"), boxes.join("train_00001_boundingbox.txt"))
        .unwrap();
    let train = open_basic(dir.path(), Split::Train, &opts()).unwrap();
    assert_eq!(train.len(), 4);
    assert_eq!(train.samples()[0].face_box.x2, 50.0);
}

#[test]
fn sfew_with_and_without_id_lists() {
    let dir = tempfile::tempdir().unwrap();
    let entries = [("Happy", "a_01"), ("Angry", "b_02"), ("Surprise", "c_03"), ("Neutral", "d_04")];
    make_sfew(dir.path(), "Train", &entries, Some("id_train_list.txt"));
    make_sfew(dir.path(), "Val", &entries[..2], None);
    let train = Dataset::open(DatasetKind::Sfew, dir.path(), Split::Train, &opts()).unwrap();
    assert_eq!(train.len(), 4);
    let labels: Vec<usize> = train.samples().iter().map(|s| s.label).collect();
    assert_eq!(labels, vec![3, 5, 0, 6]);
    assert!(train.samples()[1].image.ends_with("Train/imgs/Angry/b_02.png"));
    // The box is the landmarks' extent (image pixels), enlarged by 0.20 of its width.
    let s = &train.samples()[0];
    assert_eq!((s.face_box.x1, s.face_box.y1), (16.0, 14.0));
    assert_eq!((s.face_box.x2, s.face_box.y2), (48.0, 46.0));
    assert_eq!(train.half_padding(0).unwrap(), 3); // int(int(32 * 0.2) / 2)
    // Val without a list: the images found, sorted by <Class>/<id>.
    let val = Dataset::open(DatasetKind::Sfew, dir.path(), Split::Test, &opts()).unwrap();
    let names: Vec<&str> = val.samples().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["Angry/b_02", "Happy/a_01"]);
    // An unknown class in a list is an error with its line.
    write(&dir.path().join("list_experiment/id_train_list.txt"), "Happy/a_01\nJoy/x\n");
    let err = Dataset::open(DatasetKind::Sfew, dir.path(), Split::Train, &opts()).unwrap_err();
    assert_names(&err, "id_train_list.txt", Some(2));
}

// ---- malformed inputs: one error naming the file (and line), or a count with skip_bad ----

/// "x y" lines of `points` with 1-based line `line` replaced by `text`.
fn replace_line(points: &[[f64; 2]], line: usize, text: &str) -> String {
    let mut lines: Vec<String> = points.iter().map(|p| format!("{} {}", p[0], p[1])).collect();
    lines[line - 1] = text.to_string();
    lines.join("\n") + "\n"
}

/// Breaks one file of a fresh basic layout, then checks the error of `open` (train split) and
/// the count under `skip_bad`.
fn check_malformed(break_it: impl Fn(&Path), file: &str, line: Option<usize>, message: &str) {
    let dir = tempfile::tempdir().unwrap();
    let base = make_raf(dir.path(), "basic", BASIC);
    break_it(&base);
    let err = open_basic(dir.path(), Split::Train, &opts()).unwrap_err();
    assert_names(&err, file, line);
    assert!(err.to_string().contains(message), "{err}");
    let ds = open_basic(dir.path(), Split::Train, &skip_bad()).unwrap();
    assert_eq!(ds.len(), 3, "{file}");
    assert_eq!(ds.report().bad.len(), 1);
    assert!(ds.report().bad[0].contains(file));
}

#[test]
fn label_out_of_range_names_the_line() {
    check_malformed(
        |base| {
            write(
                &base.join("EmoLabel/list_patition_label.txt"),
                "train_00001.jpg 1\ntrain_00002.jpg 9\ntrain_00003.jpg 4\ntrain_00004.jpg 7\n",
            )
        },
        "list_patition_label.txt",
        Some(2),
        "label 9 is out of range 1..=7",
    );
}

#[test]
fn non_numeric_landmark_names_the_line() {
    check_malformed(
        |base| {
            let text = replace_line(&landmarks(44.0, 44.0, 0.0, 0.0), 2, "12.5 x7");
            write(&base.join("Annotation/Landmarks_68_FAN_bbox/train_00002.txt"), &text);
        },
        "train_00002.txt",
        Some(2),
        "`x7` is not a number",
    );
}

#[test]
fn non_finite_landmark_names_the_line() {
    check_malformed(
        |base| {
            let mut points = landmarks(44.0, 44.0, 0.0, 0.0);
            points[9][1] = f64::NAN;
            write(
                &base.join("Annotation/Landmarks_68_FAN_bbox/train_00003.txt"),
                &points_text(&points),
            );
        },
        "train_00003.txt",
        Some(10),
        "not finite",
    );
}

#[test]
fn truncated_landmark_file_is_an_error() {
    check_malformed(
        |base| {
            let text = points_text(&landmarks(44.0, 44.0, 0.0, 0.0)[..40]);
            write(&base.join("Annotation/Landmarks_68_FAN_bbox/train_00001.txt"), &text);
        },
        "train_00001.txt",
        None,
        "expected 68 or 66 landmark rows, found 40",
    );
    // A last line cut in the middle: a wrong column count on that line.
    check_malformed(
        |base| {
            let text = replace_line(&landmarks(44.0, 44.0, 0.0, 0.0), 68, "39.6");
            write(&base.join("Annotation/Landmarks_68_FAN_bbox/train_00001.txt"), &text);
        },
        "train_00001.txt",
        Some(68),
        "expected 2 columns",
    );
}

#[test]
fn box_outside_the_image_is_an_error() {
    check_malformed(
        |base| write(&base.join("Annotation/boundingbox/train_00004.txt"), "100 5 150 49\n"),
        "train_00004.jpg",
        None,
        "lies outside",
    );
}

#[test]
fn bad_box_files_name_the_line() {
    check_malformed(
        |base| write(&base.join("Annotation/boundingbox/train_00004.txt"), "6 5 50\n"),
        "train_00004.txt",
        Some(1),
        "expected 4 columns",
    );
    check_malformed(
        |base| std::fs::remove_file(base.join("Annotation/boundingbox/train_00004.txt")).unwrap(),
        "train_00004.txt",
        None,
        "missing face box file",
    );
}

#[test]
fn unreadable_image_is_an_error_at_open() {
    check_malformed(
        |base| write(&base.join("Image/original/train_00002.jpg"), "this is not a JPEG at all"),
        "train_00002.jpg",
        None,
        "cannot decode image",
    );
    check_malformed(
        |base| std::fs::remove_file(base.join("Image/original/train_00003.jpg")).unwrap(),
        "train_00003.jpg",
        None,
        "missing image",
    );
}

#[test]
fn truncated_jpeg_is_an_error_when_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let base = make_raf(dir.path(), "basic", BASIC);
    let path = base.join("Image/original/train_00002.jpg");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() * 2 / 3]).unwrap();
    // The header is intact, so the dataset opens; decoding the pixels fails.
    let train = open_basic(dir.path(), Split::Train, &opts()).unwrap();
    let err = train.prepare(1, &Augment::NONE).unwrap_err();
    assert_names(&err, "train_00002.jpg", None);
    let loader = Loader::new(&train, LoaderOptions::eval(4)).unwrap();
    let results: Vec<_> = loader.epoch(0).collect();
    assert_eq!(results.len(), 1);
    assert_names(results[0].as_ref().unwrap_err(), "train_00002.jpg", None);

    // With skip_bad the sample is dropped from its batch and counted.
    let train = open_basic(dir.path(), Split::Train, &skip_bad()).unwrap();
    let loader = Loader::new(&train, LoaderOptions::eval(4)).unwrap();
    let batches: Vec<_> = loader.epoch(0).map(Result::unwrap).collect();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].names, vec!["train_00001.jpg", "train_00003.jpg", "train_00004.jpg"]);
    assert_eq!(batches[0].images.dims(), &[3, 3, 64, 64]);
    assert_eq!(batches[0].labels.to_vec1::<i64>().unwrap(), vec![0, 3, 6]);
    assert_eq!(loader.skipped(), 1);
}

#[test]
fn an_image_replaced_after_open_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = make_raf(dir.path(), "basic", BASIC);
    let train = open_basic(dir.path(), Split::Train, &opts()).unwrap();
    write_image(&base.join("Image/original/train_00001.jpg"), 30, 30, 0);
    let err = train.prepare(0, &Augment::NONE).unwrap_err();
    assert_names(&err, "train_00001.jpg", None);
    assert!(err.to_string().contains("image is 30x30"), "{err}");
}

#[test]
fn bad_options_and_missing_folders_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = open_basic(dir.path(), Split::Train, &opts()).unwrap_err();
    assert!(err.to_string().contains("list_patition_label.txt"), "{err}");
    let err = open_basic(&dir.path().join("nope"), Split::Train, &opts()).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    let bad = DatasetOptions { input_size: 100, ..opts() };
    assert!(matches!(open_basic(dir.path(), Split::Train, &bad), Err(DataError::Options(_))));
}

#[test]
fn an_empty_label_list_is_reported_against_the_list_file() {
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("basic/EmoLabel/list_patition_label.txt");
    std::fs::create_dir_all(list.parent().unwrap()).unwrap();
    std::fs::write(&list, "").unwrap();
    let err = Dataset::open(DatasetKind::Rafdb, tmp.path(), Split::Train, &opts()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("list_patition_label.txt") && text.contains("lists no train"), "{text}");
}
